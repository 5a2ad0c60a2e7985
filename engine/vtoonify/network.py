"""VToonify (Yang, Jiang, Liu, Loy, SIGGRAPH Asia 2022): the network, with the reference's names.

An encoder reads the unaligned frame crop (RGB plus a 19-channel face-parsing
map, 22 channels) down to 1/8 of its size (for ``in_size=256``); the StyleGAN2
layers from 64x64 up (``convs[6:]``, ``to_rgbs[3:]``) render from there, driven
by a W+ style code, while fusion blocks mix in the encoder's features at each
scale they share (32..in_size). The output is ``out_size / in_size`` times the
input (4x for the public 256/1024 networks), for any input whose sides are
multiples of 8.

Backbones:

* ``"toonify"`` (VToonify-T): a blended Toonify StyleGAN2 (``generator.*``);
  fusion blocks are plain convolutions.
* ``"dualstylegan"`` (VToonify-D): DualStyleGAN (``generator.generator.*``,
  ``generator.style``, ``generator.res``); fusion blocks are conditioned on the
  style degree ``d_s`` (:class:`Fusion`), the encoder's residual blocks are
  followed by dilated ModRes blocks (``res.*``) fed with the extrinsic code
  through DualStyleGAN's colour transform, and W+ indices 7+ go through its
  structure transform.

As in the reference, the StyleGAN noise inputs are zero (it multiplies fresh
noise by 0), so the network is deterministic.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.generator.stylegan2 import Generator

from .dualstylegan import AdaptiveInstanceNorm, AdaResBlock, DualStyleGAN

__all__ = ["BACKBONES", "VToonify", "VToonifyResBlock", "Fusion"]

BACKBONES = ("toonify", "dualstylegan")
PARSING_CHANNELS = 19  # BiSeNet's face classes, concatenated to the RGB input


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(negative_slope=0.2, inplace=True)


class VToonifyResBlock(nn.Module):
    """``(x + lrelu(conv2(lrelu(conv(x))))) / sqrt(2)`` with plain 3x3 convolutions."""

    def __init__(self, fin: int):
        super().__init__()
        self.conv = nn.Conv2d(fin, fin, 3, 1, 1)
        self.conv2 = nn.Conv2d(fin, fin, 3, 1, 1)
        self.lrelu = _lrelu()

    def forward(self, x):
        out = self.lrelu(self.conv(x))
        out = self.lrelu(self.conv2(out))
        return (out + x) / math.sqrt(2)


class Fusion(nn.Module):
    """VToonify-D's fusion block: a mask m_E from |f_G - f_E| (AdaIN on the style degree) gates f_E into f_G."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels + skip_channels, out_channels, 3, 1, 1, bias=True)
        self.norm = AdaptiveInstanceNorm(in_channels + skip_channels, 128)
        self.conv2 = nn.Conv2d(in_channels + skip_channels, 1, 3, 1, 1, bias=True)
        self.linear = nn.Sequential(nn.Linear(1, 64), _lrelu(), nn.Linear(64, 128), _lrelu())

    def forward(self, f_G, f_E, d_s=1):
        label = self.linear(torch.zeros(f_G.size(0), 1).to(f_G.device) + d_s)
        out = torch.cat([f_G, abs(f_G - f_E)], dim=1)
        m_E = (F.relu(self.conv2(self.norm(out, label)))).tanh()
        f_out = self.conv(torch.cat([f_G, f_E * m_E], dim=1))
        return f_out, m_E


class VToonify(nn.Module):
    """The VToonify network (see the module doc); arguments and parameter names as the reference's.

    ``channels`` overrides the generator's channels per resolution (tests build
    tiny networks this way); None gives the public config-f shapes.
    """

    def __init__(self, in_size: int = 256, out_size: int = 1024, img_channels: int = 3,
                 style_channels: int = 512, num_mlps: int = 8, channel_multiplier: int = 2,
                 num_res_layers: int = 6, backbone: str = "dualstylegan",
                 channels: dict[int, int] | None = None):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        if in_size < 32 or in_size & (in_size - 1) or in_size > out_size:
            raise ValueError(f"in_size must be a power of two in 32..out_size, got {in_size}")
        self.backbone = backbone
        if backbone == "dualstylegan":
            self.generator = DualStyleGAN(out_size, style_channels, num_mlps, channel_multiplier, channels)
        else:
            self.generator = Generator(out_size, style_channels, num_mlps, channel_multiplier, channels=channels)
        self.in_size = in_size
        self.out_size = out_size
        self.style_channels = style_channels
        channels = self.generator.channels

        encoder_res = [2 ** i for i in range(int(np.log2(in_size)), 4, -1)]
        self.encoder = nn.ModuleList()
        self.encoder.append(nn.Sequential(
            nn.Conv2d(img_channels + PARSING_CHANNELS, 32, 3, 1, 1, bias=True), _lrelu(),
            nn.Conv2d(32, channels[in_size], 3, 1, 1, bias=True), _lrelu()))
        for res in encoder_res:
            in_channels = channels[res]
            if res > 32:
                out_channels = channels[res // 2]
                self.encoder.append(nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 3, 2, 1, bias=True), _lrelu(),
                    nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=True), _lrelu()))
            else:
                self.encoder.append(nn.Sequential(*[VToonifyResBlock(in_channels) for _ in range(num_res_layers)]))
                self.encoder.append(nn.Conv2d(in_channels, img_channels, 1, 1, 0, bias=True))

        self.fusion_out = nn.ModuleList()
        self.fusion_skip = nn.ModuleList()
        for res in encoder_res[::-1]:
            n = channels[res]
            if backbone == "dualstylegan":
                self.fusion_out.append(Fusion(n, n, n))
            else:
                self.fusion_out.append(nn.Conv2d(n * 2, n, 3, 1, 1, bias=True))
            self.fusion_skip.append(nn.Conv2d(n + 3, 3, 3, 1, 1, bias=True))

        if backbone == "dualstylegan":  # ModRes blocks after the encoder's residual blocks
            self.res = nn.ModuleList([AdaResBlock(channels[4], style_channels)])  # index 0 unused, as in the reference
            for i in range(3, 6):
                for _ in range(2):
                    self.res.append(AdaResBlock(channels[2 ** i], style_channels, dilation=2 ** (5 - i)))

    @property
    def n_latent(self) -> int:
        return self.generator.n_latent

    def stylegan(self) -> Generator:
        """The StyleGAN2 generator whose layers render the output."""
        return self.generator.generator if self.backbone == "dualstylegan" else self.generator

    def zplus2wplus(self, zplus: torch.Tensor) -> torch.Tensor:
        """Map Z+ codes (N, L, D) through the StyleGAN mapping network, layer by layer, to W+ (N, L, D)."""
        return self.stylegan().style(zplus.reshape(zplus.shape[0] * zplus.shape[1], zplus.shape[2])) \
            .reshape(zplus.shape)

    def _styles(self, style: torch.Tensor):
        """(adastyles, resstyles) as the reference derives them from a W+ (N, L, D) or W (N, D) code."""
        g = self.generator
        resstyles = None
        if style.ndim < 3:
            if self.backbone == "dualstylegan":
                resstyles = g.style(style).unsqueeze(1).repeat(1, g.n_latent, 1)
            adastyles = style.unsqueeze(1).repeat(1, g.n_latent, 1)
        else:
            n_b, n_l, n_d = style.shape
            if self.backbone == "dualstylegan":
                resstyles = g.style(style.reshape(n_b * n_l, n_d)).reshape(n_b, n_l, n_d)
            adastyles = style
        if self.backbone == "dualstylegan":
            adastyles = adastyles.clone()
            for i in range(7, g.n_latent):
                adastyles[:, i] = g.res[i](adastyles[:, i])
        return adastyles, resstyles

    def forward(self, x: torch.Tensor, style: torch.Tensor, d_s: float | None = None,
                return_mask: bool = False, return_feat: bool = False):
        """Stylise ``x`` (N, 3+19, H, W) with ``style`` (N, L, D) W+ or (N, D) W; ``d_s``: style degree (VToonify-D).

        Returns (N, 3, H * out_size / in_size, ...); with ``return_mask`` (VToonify-D)
        also the fusion masks; with ``return_feat`` the encoder's last features and skip.
        """
        dual = self.backbone == "dualstylegan"
        if dual and d_s is None:
            raise ValueError("VToonify-D needs a style degree d_s (0..1)")
        adastyles, resstyles = self._styles(style)

        feat = x
        encoder_features = []
        for block in self.encoder[:-2]:  # the downsampling part of the encoder
            feat = block(feat)
            encoder_features.append(feat)
        encoder_features = encoder_features[::-1]
        for ii, block in enumerate(self.encoder[-2]):
            feat = block(feat)
            if dual:
                feat = self.res[ii + 1](feat, resstyles[:, ii + 1], d_s)
        out = feat
        skip = self.encoder[-1](feat)
        if return_feat:
            return out, skip

        g = self.stylegan()
        index = 1
        masks = []
        for conv1, conv2, to_rgb in zip(g.convs[6::2], g.convs[7::2], g.to_rgbs[3:]):
            if 2 ** (5 + (index - 1) // 2) <= self.in_size:
                fusion_index = (index - 1) // 2
                f_E = encoder_features[fusion_index]
                if dual:
                    out, m_E = self.fusion_out[fusion_index](out, f_E, d_s)
                    skip = self.fusion_skip[fusion_index](torch.cat([skip, f_E * m_E], dim=1))
                    masks.append(m_E)
                else:
                    out = self.fusion_out[fusion_index](torch.cat([out, f_E], dim=1))
                    skip = self.fusion_skip[fusion_index](torch.cat([skip, f_E], dim=1))
            batch, _, height, width = out.shape
            noise = x.new_zeros(batch, 1, height * 2, width * 2)  # the reference's noise * 0.0
            out = conv1(out, adastyles[:, index + 6], noise=noise)
            out = conv2(out, adastyles[:, index + 7], noise=noise)
            skip = to_rgb(out, adastyles[:, index + 8], skip)
            index += 2
        if return_mask and dual:
            return skip, masks
        return skip
