"""StyleGAN2 config-f generator and discriminator in pure PyTorch.

Parameter and buffer names follow rosinality's stylegan2-pytorch exactly
(``style.N``, ``input.input``, ``conv1``, ``to_rgb1``, ``convs.N``, ``to_rgbs.N``,
``noises.noise_N``), so a ``state_dict()`` of :class:`Generator` *is* the
de-facto checkpoint format and layer swapping is a dictionary operation.
No custom CUDA ops: upfirdn2d and fused leaky ReLU are written with plain
torch functions, so the modules run on CPU, CUDA, float32 and half precision.
Deliberately one file (over the usual module size), like rosinality's
``model.py``: the whole network reads at once, and its names are the format.
"""

from __future__ import annotations

import math
import random
import re
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "Generator",
    "Discriminator",
    "layer_resolution",
    "default_channels",
    "state_dict_shapes",
    "upfirdn2d",
    "fused_leaky_relu",
]

DEFAULT_BLUR_KERNEL = (1, 3, 3, 1)


def default_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """Channels per resolution of rosinality's config-f networks, 4..size."""
    table = {
        4: 512,
        8: 512,
        16: 512,
        32: 512,
        64: 256 * channel_multiplier,
        128: 128 * channel_multiplier,
        256: 64 * channel_multiplier,
        512: 32 * channel_multiplier,
        1024: 16 * channel_multiplier,
    }
    return {r: c for r, c in table.items() if r <= size}


def _resolve_channels(size, channel_multiplier, channels) -> dict[int, int]:
    if size < 8 or size & (size - 1):
        raise ValueError(f"size must be a power of two >= 8, got {size}")
    out = default_channels(size, channel_multiplier)
    if channels is not None:
        out.update({int(r): int(c) for r, c in channels.items() if int(r) <= size})
    missing = [2**i for i in range(2, int(math.log2(size)) + 1) if 2**i not in out]
    if missing:
        raise ValueError(f"no channel count for resolution(s) {missing}; pass channels={{res: n}}")
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- ops


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2,
                     scale: float = 2**0.5) -> torch.Tensor:
    """leaky_relu(x + bias, 0.2) * sqrt(2), bias broadcast over dim 1."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape).to(x.dtype), negative_slope) * scale


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad, FIR-filter (true convolution), downsample.

    Same semantics as the upfirdn2d op of rosinality/NVIDIA with the same pad on
    both axes; pads may be negative (crop).
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, (max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)))
    if p0 < 0 or p1 < 0:
        x = x[:, :, max(-p0, 0): x.shape[2] - max(-p1, 0), max(-p0, 0): x.shape[3] - max(-p1, 0)]
    kh, kw = kernel.shape
    weight = kernel.flip([0, 1]).to(x.dtype).view(1, 1, kh, kw).expand(c, 1, kh, kw)
    return F.conv2d(x, weight, stride=down, groups=c)


def make_kernel(k: Sequence[float]) -> torch.Tensor:
    """Separable FIR kernel normalised to sum 1 (float32)."""
    k = torch.tensor(k, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


# ----------------------------------------------------------------------- layers


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class Upsample(nn.Module):
    def __init__(self, kernel=DEFAULT_BLUR_KERNEL, factor=2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = self.kernel.shape[0] - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class Blur(nn.Module):
    def __init__(self, kernel, pad, upsample_factor=1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor**2
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel, bias=True, negative_slope=0.2, scale=2**0.5):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel)) if bias else None
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x):
        if self.bias is None:
            return F.leaky_relu(x, self.negative_slope) * self.scale
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate (weight scaled at runtime)."""

    def __init__(self, in_dim, out_dim, bias=True, bias_init=0.0, lr_mul=1.0, activation=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim).div_(lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init))) if bias else None
        self.activation = activation
        self.scale = (1 / math.sqrt(in_dim)) * lr_mul
        self.lr_mul = lr_mul

    def forward(self, x):
        bias = None if self.bias is None else self.bias * self.lr_mul
        if self.activation:
            out = F.linear(x, self.weight * self.scale)
            return fused_leaky_relu(out, bias) if bias is not None else F.leaky_relu(out, 0.2) * 2**0.5
        return F.linear(x, self.weight * self.scale, bias=bias)


class EqualConv2d(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, stride=1, padding=0, bias=True, dilation=1):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channel, in_channel, kernel_size, kernel_size))
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.stride = stride
        self.padding = padding
        self.dilation = dilation  # DualStyleGAN / VToonify's ModRes blocks use dilated 3x3 convs
        self.bias = nn.Parameter(torch.zeros(out_channel)) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, bias=self.bias, stride=self.stride,
                        padding=self.padding, dilation=self.dilation)


class ModulatedConv2d(nn.Module):
    """Modulated (and optionally demodulated) conv, fused over the batch with grouped convs."""

    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True,
                 upsample=False, blur_kernel=DEFAULT_BLUR_KERNEL):
        super().__init__()
        self.eps = 1e-8
        self.kernel_size = kernel_size
        self.in_channel = in_channel
        self.out_channel = out_channel
        self.upsample = upsample
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                             upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)
        self.demodulate = demodulate

    def forward(self, x, style):
        batch, in_channel, height, width = x.shape
        k = self.kernel_size
        style = self.modulation(style).view(batch, 1, in_channel, 1, 1)
        weight = self.scale * self.weight * style
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8)
            weight = weight * demod.view(batch, self.out_channel, 1, 1, 1)
        x = x.reshape(1, batch * in_channel, height, width)
        if self.upsample:
            weight = weight.transpose(1, 2).reshape(batch * in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, padding=0, stride=2, groups=batch)
            out = out.view(batch, self.out_channel, *out.shape[2:])
            return self.blur(out)
        weight = weight.view(batch * self.out_channel, in_channel, k, k)
        out = F.conv2d(x, weight, padding=self.padding, groups=batch)
        return out.view(batch, self.out_channel, *out.shape[2:])


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, image, noise=None):
        if noise is None:
            batch, _, height, width = image.shape
            noise = image.new_empty(batch, 1, height, width).normal_()
        return image + self.weight * noise.to(image.dtype)


class ConstantInput(nn.Module):
    def __init__(self, channel, size=4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, x):
        return self.input.repeat(x.shape[0], 1, 1, 1)


class StyledConv(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, style_dim, upsample=False,
                 blur_kernel=DEFAULT_BLUR_KERNEL, demodulate=True):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    demodulate=demodulate, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x, style, noise=None, clamp=None):
        out = self.activate(self.noise(self.conv(x, style), noise=noise))
        if clamp is not None:
            out = out.clamp(-clamp, clamp)
        return out


class ToRGB(nn.Module):
    def __init__(self, in_channel, style_dim, upsample=True, blur_kernel=DEFAULT_BLUR_KERNEL):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, style, skip=None, clamp=None):
        out = self.conv(x, style) + self.bias
        if clamp is not None:
            out = out.clamp(-clamp, clamp)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# -------------------------------------------------------------------- generator


class Generator(nn.Module):
    """StyleGAN2 config-f generator (skip architecture), rosinality-compatible.

    ``channels`` overrides the channel count of some or all resolutions (tests
    build tiny nets this way). ``latent_avg`` is a non-persistent buffer: it is
    not part of ``state_dict()`` (rosinality keeps it beside ``g_ema``).
    ``conv_clamp`` (None by default) clamps layer outputs to +-conv_clamp as
    NVIDIA's stylegan2-ada networks do when trained with ``conv_clamp=256``.
    """

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8,
                 channel_multiplier: int = 2, channels: dict[int, int] | None = None,
                 blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL, lr_mlp: float = 0.01):
        super().__init__()
        self.size = int(size)
        self.style_dim = int(style_dim)
        self.n_mlp = int(n_mlp)
        self.channel_multiplier = channel_multiplier
        self.channels = _resolve_channels(self.size, channel_multiplier, channels)
        self.conv_clamp: float | None = None

        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(self.n_mlp):
            layers.append(EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation="fused_lrelu"))
        self.style = nn.Sequential(*layers)

        ch = self.channels
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)

        self.log_size = int(math.log2(self.size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = (layer_idx + 5) // 2
            self.noises.register_buffer(f"noise_{layer_idx}", torch.randn(1, 1, 2**res, 2**res))

        in_channel = ch[4]
        for i in range(3, self.log_size + 1):
            out_channel = ch[2**i]
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True,
                                         blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim,
                                         blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel

        self.n_latent = self.log_size * 2 - 2
        self.register_buffer("latent_avg", torch.zeros(self.style_dim), persistent=False)

    # ---- helpers (rosinality API)

    def make_noise(self, device=None) -> list[torch.Tensor]:
        """Fresh per-layer noise maps [(1,1,res,res)], one per synthesis conv."""
        ref = self.input.input
        device = ref.device if device is None else device
        sizes = [4] + [2**i for i in range(3, self.log_size + 1) for _ in range(2)]
        return [torch.randn(1, 1, s, s, device=device, dtype=ref.dtype) for s in sizes]

    @torch.no_grad()
    def mean_latent(self, n_latent: int) -> torch.Tensor:
        """Mean of ``n_latent`` mapped random z, shape (1, style_dim)."""
        ref = self.input.input
        z = torch.randn(n_latent, self.style_dim, device=ref.device, dtype=ref.dtype)
        return self.style(z).mean(0, keepdim=True)

    def get_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Map z (N, style_dim) to w (N, style_dim)."""
        return self.style(z)

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """Map z (N, style_dim) to w (N, style_dim)."""
        return self.style(z)

    def synthesis(self, ws: torch.Tensor, noise: list[torch.Tensor] | None = None,
                  randomize_noise: bool = False) -> torch.Tensor:
        """Render W+ latents (N, n_latent, style_dim) to images (N, 3, size, size).

        With ``noise=None`` and ``randomize_noise=False`` the stored
        ``noises.noise_N`` buffers are used, so the output is deterministic.
        """
        if ws.ndim != 3 or ws.shape[1] != self.n_latent or ws.shape[2] != self.style_dim:
            raise ValueError(f"ws must be (N, {self.n_latent}, {self.style_dim}), got {tuple(ws.shape)}")
        return self._synthesize(ws, self._noise_list(noise, randomize_noise))

    def _noise_list(self, noise, randomize_noise):
        if noise is not None:
            if len(noise) != self.num_layers:
                raise ValueError(f"expected {self.num_layers} noise maps, got {len(noise)}")
            return list(noise)
        if randomize_noise:
            return [None] * self.num_layers
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def _synthesize(self, latent, noise):
        clamp = self.conv_clamp
        out = self.input(latent)
        out = self.conv1(out, latent[:, 0], noise=noise[0], clamp=clamp)
        skip = self.to_rgb1(out, latent[:, 1], clamp=clamp)
        i = 1
        for conv1, conv2, noise1, noise2, to_rgb in zip(
            self.convs[::2], self.convs[1::2], noise[1::2], noise[2::2], self.to_rgbs
        ):
            out = conv1(out, latent[:, i], noise=noise1, clamp=clamp)
            out = conv2(out, latent[:, i + 1], noise=noise2, clamp=clamp)
            skip = to_rgb(out, latent[:, i + 2], skip, clamp=clamp)
            i += 2
        return skip

    def forward(self, styles, return_latents=False, inject_index=None, truncation=1,
                truncation_latent=None, input_is_latent=False, noise=None, randomize_noise=True):
        """rosinality's Generator.forward: returns ``(image, latent or None)``."""
        if not input_is_latent:
            styles = [self.style(s) for s in styles]
        noise = self._noise_list(noise, randomize_noise)

        if truncation < 1:
            styles = [truncation_latent + truncation * (s - truncation_latent) for s in styles]

        if len(styles) < 2:
            inject_index = self.n_latent
            if styles[0].ndim < 3:
                latent = styles[0].unsqueeze(1).repeat(1, inject_index, 1)
            else:
                latent = styles[0]
        else:
            if inject_index is None:
                inject_index = random.randint(1, self.n_latent - 1)
            latent = styles[0].unsqueeze(1).repeat(1, inject_index, 1)
            latent2 = styles[1].unsqueeze(1).repeat(1, self.n_latent - inject_index, 1)
            latent = torch.cat([latent, latent2], 1)

        image = self._synthesize(latent, noise)
        return (image, latent) if return_latents else (image, None)


def state_dict_shapes(size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                      channels: dict[int, int] | None = None) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``Generator(...).state_dict()``, without building the module."""
    ch = _resolve_channels(size, channel_multiplier, channels)
    out: dict[str, tuple[int, ...]] = {}
    for i in range(1, n_mlp + 1):
        out[f"style.{i}.weight"] = (style_dim, style_dim)
        out[f"style.{i}.bias"] = (style_dim,)
    out["input.input"] = (1, ch[4], 4, 4)

    def styled(prefix, cin, cout, up):
        out[f"{prefix}.conv.weight"] = (1, cout, cin, 3, 3)
        if up:
            out[f"{prefix}.conv.blur.kernel"] = (4, 4)
        out[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        out[f"{prefix}.conv.modulation.bias"] = (cin,)
        out[f"{prefix}.noise.weight"] = (1,)
        out[f"{prefix}.activate.bias"] = (cout,)

    def rgb(prefix, cin, up):
        out[f"{prefix}.bias"] = (1, 3, 1, 1)
        if up:
            out[f"{prefix}.upsample.kernel"] = (4, 4)
        out[f"{prefix}.conv.weight"] = (1, 3, cin, 1, 1)
        out[f"{prefix}.conv.modulation.weight"] = (cin, style_dim)
        out[f"{prefix}.conv.modulation.bias"] = (cin,)

    styled("conv1", ch[4], ch[4], False)
    rgb("to_rgb1", ch[4], False)
    log_size = int(math.log2(size))
    for i in range(log_size - 2):
        cin, cout = ch[2 ** (i + 2)], ch[2 ** (i + 3)]
        styled(f"convs.{2 * i}", cin, cout, True)
        styled(f"convs.{2 * i + 1}", cout, cout, False)
    for i in range(log_size - 2):
        rgb(f"to_rgbs.{i}", ch[2 ** (i + 3)], True)
    for k in range((log_size - 2) * 2 + 1):
        r = 2 ** ((k + 5) // 2)
        out[f"noises.noise_{k}"] = (1, 1, r, r)
    return out


_LAYER_RE = re.compile(r"^(input|conv1|to_rgb1|convs\.(\d+)|to_rgbs\.(\d+)|noises\.noise_(\d+))(\.|$)")


def layer_resolution(param_name: str) -> int | None:
    """Synthesis resolution a Generator parameter/buffer belongs to, None if not synthesis.

    conv1/to_rgb1/input/noise_0 -> 4; convs.2i and convs.2i+1 -> 2**(i+3);
    to_rgbs.i -> 2**(i+3); noises.noise_(2i+1), noise_(2i+2) -> 2**(i+3);
    style.* (mapping) and anything else -> None.
    """
    m = _LAYER_RE.match(param_name)
    if not m:
        return None
    if m.group(2) is not None:
        return 2 ** (int(m.group(2)) // 2 + 3)
    if m.group(3) is not None:
        return 2 ** (int(m.group(3)) + 3)
    if m.group(4) is not None:
        k = int(m.group(4))
        return 4 if k == 0 else 2 ** ((k - 1) // 2 + 3)
    return 4


# ---------------------------------------------------------------- discriminator


class ConvLayer(nn.Sequential):
    def __init__(self, in_channel, out_channel, kernel_size, downsample=False,
                 blur_kernel=DEFAULT_BLUR_KERNEL, bias=True, activate=True, dilation=1):
        layers: list[nn.Module] = []
        if downsample:
            factor = 2
            p = (len(blur_kernel) - factor) + (kernel_size - 1)
            layers.append(Blur(blur_kernel, pad=((p + 1) // 2, p // 2)))
            stride, padding = 2, 0
        else:
            stride, padding = 1, kernel_size // 2 + dilation - 1
        layers.append(EqualConv2d(in_channel, out_channel, kernel_size, padding=padding,
                                  stride=stride, bias=bias and not activate, dilation=dilation))
        if activate:
            layers.append(FusedLeakyReLU(out_channel, bias=bias))
        super().__init__(*layers)


class ResBlock(nn.Module):
    def __init__(self, in_channel, out_channel, blur_kernel=DEFAULT_BLUR_KERNEL):
        super().__init__()
        self.conv1 = ConvLayer(in_channel, in_channel, 3)
        self.conv2 = ConvLayer(in_channel, out_channel, 3, downsample=True, blur_kernel=blur_kernel)
        self.skip = ConvLayer(in_channel, out_channel, 1, downsample=True, activate=False,
                              bias=False, blur_kernel=blur_kernel)

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        return (out + self.skip(x)) / math.sqrt(2)


class Discriminator(nn.Module):
    """StyleGAN2 residual discriminator with rosinality's names; forward -> (N, 1) logits."""

    def __init__(self, size: int, channel_multiplier: int = 2,
                 channels: dict[int, int] | None = None,
                 blur_kernel: Sequence[int] = DEFAULT_BLUR_KERNEL):
        super().__init__()
        self.size = int(size)
        self.channels = _resolve_channels(self.size, channel_multiplier, channels)
        ch = self.channels
        convs: list[nn.Module] = [ConvLayer(3, ch[self.size], 1)]
        log_size = int(math.log2(self.size))
        in_channel = ch[self.size]
        for i in range(log_size, 2, -1):
            out_channel = ch[2 ** (i - 1)]
            convs.append(ResBlock(in_channel, out_channel, blur_kernel))
            in_channel = out_channel
        self.convs = nn.Sequential(*convs)
        self.stddev_group = 4
        self.stddev_feat = 1
        self.final_conv = ConvLayer(in_channel + 1, ch[4], 3)
        self.final_linear = nn.Sequential(
            EqualLinear(ch[4] * 4 * 4, ch[4], activation="fused_lrelu"),
            EqualLinear(ch[4], 1),
        )

    def forward(self, x):
        out = self.convs(x)
        batch, channel, height, width = out.shape
        # rosinality uses min(batch, 4) and fails for batches not divisible by it;
        # the largest divisor <= 4 gives the same groups whenever that works.
        group = next(g for g in range(min(batch, self.stddev_group), 0, -1) if batch % g == 0)
        stddev = out.view(group, -1, self.stddev_feat, channel // self.stddev_feat, height, width)
        stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8)
        stddev = stddev.mean([2, 3, 4], keepdim=True).squeeze(2)
        stddev = stddev.repeat(group, 1, height, width)
        out = torch.cat([out, stddev], 1)
        out = self.final_conv(out)
        return self.final_linear(out.view(batch, -1))
