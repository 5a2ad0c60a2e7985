"""pSp, e4e and ReStyle encoder heads on the IR-SE-50 / ResNet-34 trunks.

Each class maps a (N, input_nc, S, S) batch (S = ``layout.input_size``, 256 for
the public networks) to the encoder's raw output: style codes (N, n_styles,
style_dim), or (N, style_dim) for the single-W encoder. Adding ``latent_avg``
(or, in ReStyle, the previous iteration's latent) is the caller's job
(:mod:`.model`), as in the reference, where the ``pSp``/``e4e`` wrappers do it.

==============================================  ==================================================
reference class (``opts.encoder_type``)         here
==============================================  ==================================================
pSp ``GradualStyleEncoder`` (also in e4e and     :class:`GradualStyleEncoder`
ReStyle), ReStyle ``ResNetGradualStyleEncoder``
e4e ``Encoder4Editing``                          :class:`GradualStyleEncoder` (``progressive=True``)
pSp ``BackboneEncoderUsingLastLayerIntoW``,      :class:`BackboneEncoderUsingLastLayerIntoW`
e4e ``SingleStyleCodeEncoder``
pSp ``BackboneEncoderUsingLastLayerIntoWPlus``   :class:`BackboneEncoderUsingLastLayerIntoWPlus`
ReStyle ``BackboneEncoder``,                     :class:`BackboneEncoder`
``ResNetBackboneEncoder``
ReStyle ``ProgressiveBackboneEncoder``,          :class:`BackboneEncoder` (``progressive=True``)
``ResNetProgressiveBackboneEncoder``
==============================================  ==================================================

"Progressive" (e4e) encoders predict one W from the coarsest head and add each
other head's output to it as a per-layer delta. The reference trains them in
stages but constructs them in its last stage (``ProgressiveStage.Inference`` =
18), which the released checkpoints' ``opts`` do not change at test time: every
delta 1..min(18, n_styles - 1) is applied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from engine.generator.stylegan2 import EqualLinear

from .backbones import Layout, Trunk

__all__ = [
    "GradualStyleBlock",
    "GradualStyleEncoder",
    "BackboneEncoder",
    "BackboneEncoderUsingLastLayerIntoW",
    "BackboneEncoderUsingLastLayerIntoWPlus",
]

# Heads 0-2 read the coarsest features, 3-6 the middle, 7+ the finest (pSp's coarse_ind / middle_ind).
COARSE_END, MIDDLE_END = 3, 7
# e4e's ProgressiveStage.Inference: deltas 1..18 at most.
_E4E_LAST_STAGE = 18


class GradualStyleBlock(nn.Module):
    """pSp's map2style: log2(spatial) stride-2 3x3 convs with LeakyReLU(0.01) down to 1x1, then an EqualLinear."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        self.out_c = out_c
        n = max(1, int(math.log2(spatial)))
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x):
        x = self.convs(x)
        if x.shape[-2:] != (1, 1):
            raise ValueError(f"map2style expected its features to reduce to 1x1, got {tuple(x.shape[-2:])}; "
                             "is the input the encoder's input size?")
        return self.linear(x.flatten(1))


def _upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """FPN merge: x resized bilinearly (align_corners=True) to y's size, plus y."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


def _assemble(heads: list[torch.Tensor], progressive: bool) -> torch.Tensor:
    """(N, n, D) codes: the heads stacked, or (e4e) head 0 as W plus the others as per-layer deltas."""
    if not progressive:
        return torch.stack(heads, dim=1)
    w = heads[0].unsqueeze(1).repeat(1, len(heads), 1)
    for i in range(1, min(_E4E_LAST_STAGE + 1, len(heads))):
        w[:, i] += heads[i]
    return w


class GradualStyleEncoder(Trunk):
    """pSp's encoder: a feature pyramid over the trunk, one map2style head per style (e4e: progressive).

    Heads 0-2 read stage 4 (input/16), heads 3-6 the stage-4 features upsampled
    onto ``latlayer1(stage 3)`` (input/8), heads 7+ those upsampled onto
    ``latlayer2(stage 2)`` (input/4).
    """

    def __init__(self, layout: Layout = Layout(), progressive: bool = False):
        super().__init__(layout)
        self.progressive = progressive
        w, s = layout.widths, layout.input_size
        self.styles = nn.ModuleList(
            GradualStyleBlock(w[3], layout.style_dim, s // 16 if i < COARSE_END else s // 8 if i < MIDDLE_END
                              else s // 4)
            for i in range(layout.n_styles))
        self.latlayer1 = nn.Conv2d(w[2], w[3], 1)
        self.latlayer2 = nn.Conv2d(w[1], w[3], 1)

    def forward(self, x):
        _, c1, c2, c3 = self.stages(x)
        n = len(self.styles)
        heads = [self.styles[j](c3) for j in range(min(n, COARSE_END))]
        if n > COARSE_END:
            p2 = _upsample_add(c3, self.latlayer1(c2))
            heads += [self.styles[j](p2) for j in range(COARSE_END, min(n, MIDDLE_END))]
            if n > MIDDLE_END:
                p1 = _upsample_add(p2, self.latlayer2(c1))
                heads += [self.styles[j](p1) for j in range(MIDDLE_END, n)]
        return _assemble(heads, self.progressive)


class BackboneEncoder(Trunk):
    """ReStyle's simpler encoder: every map2style head reads the last stage (input/16); e4e: progressive."""

    def __init__(self, layout: Layout = Layout(input_nc=6), progressive: bool = False):
        super().__init__(layout)
        self.progressive = progressive
        self.styles = nn.ModuleList(
            GradualStyleBlock(layout.widths[3], layout.style_dim, layout.input_size // 16)
            for _ in range(layout.n_styles))

    def forward(self, x):
        x = self.features(x)
        return _assemble([style(x) for style in self.styles], self.progressive)


class BackboneEncoderUsingLastLayerIntoW(Trunk):
    """pSp's single-W encoder: global average pool of the last stage, then an EqualLinear -> (N, style_dim)."""

    def __init__(self, layout: Layout = Layout()):
        super().__init__(layout)
        self.output_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = EqualLinear(layout.widths[3], layout.style_dim, lr_mul=1)

    def forward(self, x):
        return self.linear(self.output_pool(self.features(x)).flatten(1))


class BackboneEncoderUsingLastLayerIntoWPlus(Trunk):
    """pSp's W+ baseline: BN, 7x7 average pool, Linear, then one EqualLinear to all n_styles codes."""

    def __init__(self, layout: Layout = Layout()):
        super().__init__(layout)
        c, d = layout.widths[3], layout.style_dim
        self.output_layer_2 = nn.Sequential(
            nn.BatchNorm2d(c), nn.AdaptiveAvgPool2d((7, 7)), nn.Flatten(), nn.Linear(c * 49, d))
        self.linear = EqualLinear(d, d * layout.n_styles, lr_mul=1)

    def forward(self, x):
        x = self.linear(self.output_layer_2(self.features(x)))
        return x.view(-1, self.layout.n_styles, self.layout.style_dim)
