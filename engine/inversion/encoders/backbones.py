"""The two feature trunks of the pSp family, with the reference parameter names.

* IR-SE-50 (pSp, e4e, ReStyle on faces): ``input_layer`` (3x3 conv, BatchNorm,
  PReLU) and ``body``, 24 improved-residual units with squeeze-excitation
  (TreB1eN's InsightFace ``bottleneck_IR_SE``), in four stages of 3, 4, 14 and 3
  units of 64, 128, 256 and 512 channels; the first unit of every stage halves
  the resolution.
* ResNet-34 (ReStyle's other backbone): ``conv1`` (7x7, stride 2), ``bn1``,
  ``relu`` (a PReLU, unlike torchvision) and ``body``, torchvision's ``resnet34``
  ``layer1..layer4`` BasicBlocks flattened into one Sequential (16 units: 3, 4,
  6, 3), no max-pool.

Both map a 256x256 input to stages of 64x64 (stage 2), 32x32 (stage 3) and
16x16 (stage 4) features. :class:`Trunk` builds either one as attributes of the
encoder itself, so the state dict keys are exactly the reference's
(``input_layer.0.weight``, ``body.3.shortcut_layer.0.weight``, ``conv1.weight``,
``body.13.downsample.1.running_var``, ...). Widths and unit counts are
parameters only so that tests can build tiny trunks; the defaults are the
public shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Layout", "Trunk", "IR_SE50", "RESNET34", "BACKBONES"]

IR_SE50 = "ir_se50"
RESNET34 = "resnet34"
BACKBONES = (IR_SE50, RESNET34)

_DEFAULT_UNITS = {IR_SE50: (3, 4, 14, 3), RESNET34: (3, 4, 6, 3)}


@dataclass(frozen=True)
class Layout:
    """Shape of an encoder: trunk, input channels/size, styles (defaults: the public networks)."""

    backbone: str = IR_SE50
    input_nc: int = 3
    n_styles: int = 18
    style_dim: int = 512
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    units: tuple[int, int, int, int] | None = None  # None: 3-4-14-3 (IR-SE-50) or 3-4-6-3 (ResNet-34)
    input_size: int = 256  # the encoder's input resolution (the reference resizes faces to 256)

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.units is None:
            object.__setattr__(self, "units", _DEFAULT_UNITS[self.backbone])
        if len(self.widths) != 4 or len(self.units) != 4 or min(self.units) < 1:
            raise ValueError(f"four stages needed: widths={self.widths}, units={self.units}")
        if list(self.widths) != sorted(set(self.widths)):
            raise ValueError(f"stage widths must strictly increase, got {self.widths}")
        if self.input_size < 32 or self.input_size & (self.input_size - 1):
            raise ValueError(f"input_size must be a power of two >= 32, got {self.input_size}")


class SEModule(nn.Module):
    """Squeeze-excitation: x * sigmoid(fc2(relu(fc1(mean(x))))), 1x1 convs without bias."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        if channels // reduction < 1:
            raise ValueError(f"{channels} channels are too few for a squeeze by {reduction}")
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        s = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * s


class _Subsample(nn.Module):
    """The reference's ``MaxPool2d(1, stride)`` shortcut: every stride-th pixel."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x[:, :, ::self.stride, ::self.stride]


class BottleneckIRSE(nn.Module):
    """IR-SE unit: BN, conv3x3, PReLU, conv3x3 (strided), BN, SE; plus a shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = _Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut)."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channel, depth, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(depth)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(depth, depth, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(depth)
        self.downsample = None
        if stride != 1 or in_channel != depth:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Trunk(nn.Module):
    """Base class of the encoders: registers the stem and ``body`` under the reference's names.

    :meth:`stages` returns the output of each of the four stages (the
    reference taps ``body`` units 6, 20 and 23 of IR-SE-50 and 6, 12 and 15 of
    ResNet-34 for its feature pyramid: the ends of stages 2, 3 and 4).
    """

    def __init__(self, layout: Layout):
        super().__init__()
        self.layout = layout
        w, units = layout.widths, layout.units
        if layout.backbone == IR_SE50:
            self.input_layer = nn.Sequential(
                nn.Conv2d(layout.input_nc, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.PReLU(w[0]))
            unit, first_strides = BottleneckIRSE, (2, 2, 2, 2)
        else:
            self.conv1 = nn.Conv2d(layout.input_nc, w[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(w[0])
            self.relu = nn.PReLU(w[0])
            unit, first_strides = BasicBlock, (1, 2, 2, 2)
        modules, in_channel, ends = [], w[0], []
        for depth, n, stride in zip(w, units, first_strides):
            for i in range(n):
                modules.append(unit(in_channel, depth, stride if i == 0 else 1))
                in_channel = depth
            ends.append(len(modules) - 1)
        self.body = nn.Sequential(*modules)
        self._stage_ends = tuple(ends)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout.backbone == IR_SE50:
            return self.input_layer(x)
        return self.relu(self.bn1(self.conv1(x)))

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs (input_size/2, /4, /8, /16 for IR-SE; /2, /4, /8, /16 for ResNet-34)."""
        x = self.stem(x)
        out = []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self._stage_ends:
                out.append(x)
        return out

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output (input_size/16)."""
        return self.body(self.stem(x))
