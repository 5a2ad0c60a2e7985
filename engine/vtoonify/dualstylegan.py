"""DualStyleGAN (Yang et al., CVPR 2022), the generator VToonify-D keeps, with the reference's names.

Only what VToonify uses at inference is exercised, but every module the
reference builds is here so a VToonify-D ``g_ema`` loads strictly:

* ``style``: the colour transform T_c, PixelNorm plus ``n_mlp - 6`` mapping
  layers (two for the public networks) applied to the extrinsic style code;
* ``generator``: the intrinsic StyleGAN2 (:class:`engine.generator.stylegan2.Generator`);
* ``res``: the extrinsic path, one entry per W+ index: ModRes blocks
  (:class:`AdaResBlock`) for indices 0-6 (4x4 to 32x32), the structure
  transform T_s (EqualLinear) for the rest. VToonify applies ``res[7:]`` to the
  extrinsic code and replaces the ModRes blocks by its own.

``channels`` / ``style_dim`` shrink the network for tests (the reference fixes
512); the defaults are the public shapes.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.generator.stylegan2 import ConvLayer, EqualLinear, Generator, PixelNorm

__all__ = ["AdaptiveInstanceNorm", "AdaResBlock", "DualStyleGAN", "RES_INDEX"]

RES_INDEX = 6  # W+ indices 1..6 (8x8 to 32x32) carry ModRes blocks; the rest T_s


class AdaptiveInstanceNorm(nn.Module):
    """Instance norm whose per-channel gain and bias come from a style vector through ``style`` (nn.Linear)."""

    def __init__(self, fin: int, style_dim: int = 512):
        super().__init__()
        self.norm = nn.InstanceNorm2d(fin, affine=False)
        self.style = nn.Linear(style_dim, fin * 2)
        with torch.no_grad():
            self.style.bias[:fin] = 1
            self.style.bias[fin:] = 0

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.style(style).unsqueeze(2).unsqueeze(3).chunk(2, 1)
        return gamma * self.norm(x) + beta


class AdaResBlock(nn.Module):
    """ModRes block: ``x + w * conv2(AdaIN2(conv(AdaIN(x, s)), s))``; returns x itself when ``w == 0``."""

    def __init__(self, fin: int, style_dim: int = 512, dilation: int = 1):
        super().__init__()
        self.conv = ConvLayer(fin, fin, 3, dilation=dilation)
        self.conv2 = ConvLayer(fin, fin, 3, dilation=dilation)
        self.norm = AdaptiveInstanceNorm(fin, style_dim)
        self.norm2 = AdaptiveInstanceNorm(fin, style_dim)
        with torch.no_grad():  # the reference starts the residual near zero
            self.conv[0].weight *= 0.01
            self.conv2[0].weight *= 0.01

    def forward(self, x: torch.Tensor, s: torch.Tensor, w: float = 1) -> torch.Tensor:
        if w == 0:
            return x
        out = self.conv(self.norm(x, s))
        out = self.conv2(self.norm2(out, s))
        return out * w + x


def _near_identity(style_dim: int) -> EqualLinear:
    """The reference's T_s initialisation: identity (times the equalised-lr scale) plus a little noise."""
    layer = EqualLinear(style_dim, style_dim)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(style_dim) * style_dim ** 0.5 + torch.randn(style_dim, style_dim) * 0.01)
    return layer


class DualStyleGAN(nn.Module):
    """The modules of DualStyleGAN's generator under the reference's names (see the module doc)."""

    def __init__(self, size: int, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 channels: dict[int, int] | None = None):
        super().__init__()
        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(n_mlp - 6):
            layers.append(EqualLinear(style_dim, style_dim, lr_mul=0.01, activation="fused_lrelu"))
        self.style = nn.Sequential(*layers)
        self.generator = Generator(size, style_dim, n_mlp, channel_multiplier, channels=channels)
        ch = self.generator.channels
        self.res = nn.ModuleList([AdaResBlock(ch[4], style_dim)])  # for conv1
        for i in range(3, self.generator.log_size + 1):
            if i < 3 + RES_INDEX // 2:
                self.res.extend([AdaResBlock(ch[2 ** i], style_dim), AdaResBlock(ch[2 ** i], style_dim)])
            else:
                self.res.extend([_near_identity(style_dim), _near_identity(style_dim)])
        self.res.append(_near_identity(style_dim))  # for the last to_rgb
        self.size = self.generator.size
        self.style_dim = self.generator.style_dim
        self.n_latent = self.generator.n_latent
        self.channels = self.generator.channels
