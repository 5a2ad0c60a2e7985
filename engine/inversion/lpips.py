"""LPIPS perceptual distance (VGG16 variant), implemented without torchvision.

The distance follows Zhang et al., "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric" (LPIPS v0.1, ``net="vgg"``):

1. inputs in [-1, 1] are shifted and scaled by LPIPS's ``ScalingLayer``
   constants;
2. both images go through the VGG16 convolutional trunk; the activations after
   relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 are kept;
3. each activation is normalised to unit length along the channel axis;
4. the squared difference is weighted per channel by a learned 1x1 convolution
   (the "linear heads") and averaged over space;
5. the five per-layer values are summed.

Weight files (never in git; the model store fetches them):

* the trunk: torchvision's ``vgg16-397923af.pth`` -- keys
  ``features.N.weight`` / ``features.N.bias`` (``classifier.*`` is ignored);
* the heads: the lpips package's ``weights/v0.1/vgg.pth`` -- keys
  ``lin0.model.1.weight`` ... ``lin4.model.1.weight``.

Any ``nn.Module`` that maps two ``(N,3,H,W)`` batches in [-1, 1] to ``(N,)``
distances satisfies the :class:`PerceptualLoss` protocol; :class:`TinyPerceptual`
is a small stand-in with the same structure for tests. A projection compares
many renders with one constant target: :func:`bind_target` gives it a distance
to that target whose features are computed once (as NVIDIA's projector does),
instead of sending the target through the trunk forward and backward each step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PerceptualLoss",
    "LPIPSWeightsError",
    "VGG16Features",
    "LPIPS",
    "TinyPerceptual",
    "load_lpips",
    "bind_target",
    "normalize_channels",
    "VGG16_CONFIG",
    "VGG16_TAPS",
    "VGG16_CHANNELS",
    "LPIPS_SHIFT",
    "LPIPS_SCALE",
    "PULL_HINT",
]

# torchvision's vgg16 "D" configuration; "M" is a 2x2 max-pool.  The trunk stops
# after relu5_3 (features index 29), before the fifth pool.
VGG16_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices in ``features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG16_TAPS = (3, 8, 15, 22, 29)
VGG16_CHANNELS = (64, 128, 256, 512, 512)

# LPIPS ScalingLayer constants (ImageNet mean/std expressed for [-1, 1] input).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

PULL_HINT = "run `toon-ofx models pull lpips-vgg` to fetch it"


@runtime_checkable
class PerceptualLoss(Protocol):
    """Anything mapping two (N,3,H,W) batches in [-1,1] to (N,) distances."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        ...


class LPIPSWeightsError(FileNotFoundError):
    """An LPIPS weight file is missing, unreadable or has the wrong keys/shapes."""


def normalize_channels(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Scale each spatial feature vector to unit length (LPIPS ``normalize_tensor``).

    A vanishing 1e-20 inside the square root keeps the gradient finite where a
    ReLU output is zero in every channel; it does not change float32 values.
    """
    norm = torch.sqrt(torch.sum(feat * feat, dim=1, keepdim=True) + 1e-20)
    return feat / (norm + eps)


def _vgg16_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=False))
            in_ch = int(item)
    assert len(layers) == VGG16_TAPS[-1] + 1
    return nn.Sequential(*layers)


class VGG16Features(nn.Module):
    """VGG16 convolutional trunk with torchvision's ``features`` indices, up to relu5_3.

    ``state_dict()`` keys are ``features.N.weight`` / ``features.N.bias``, so the
    ``features.*`` part of torchvision's ``vgg16-397923af.pth`` loads directly.
    ``forward`` returns the five LPIPS taps.
    """

    taps = VGG16_TAPS
    channels = VGG16_CHANNELS

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_features()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        h = x
        taps = set(self.taps)
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in taps:
                outs.append(h)
        return outs


class _LinHead(nn.Module):
    """LPIPS ``NetLinLayer``: (dropout slot) + 1x1 conv to one channel, no bias.

    Index 0 is an identity so the conv sits at ``model.1`` like the lpips
    package (whose index 0 is a Dropout that is inactive in eval mode).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, stride=1, padding=0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _LPIPSCore(nn.Module):
    """Shared LPIPS computation over any trunk returning a list of feature maps."""

    def __init__(self, trunk: nn.Module, channels: Sequence[int], resize: int | None = None) -> None:
        super().__init__()
        self.net = trunk
        self.chns = tuple(int(c) for c in channels)
        for i, c in enumerate(self.chns):
            setattr(self, f"lin{i}", _LinHead(c))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.resize = resize
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    @property
    def lins(self) -> list[_LinHead]:
        return [getattr(self, f"lin{i}") for i in range(len(self.chns))]

    def train(self, mode: bool = True) -> "_LPIPSCore":  # a metric: always in eval mode
        return super().train(False)

    def _maybe_resize(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is None:
            return x
        h, w = x.shape[-2:]
        if max(h, w) <= self.resize:
            return x
        s = self.resize / max(h, w)
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        # Area averaging: for integer factors this is exactly the block mean
        # rosinality's projector uses before LPIPS.
        return F.interpolate(x, size=size, mode="area")

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS inputs must be (N,3,H,W), got {tuple(x.shape)}")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The channel-normalised trunk features LPIPS compares, one map per tap."""
        self._check(x)
        x = self._maybe_resize(x)
        x = (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)
        return [normalize_channels(f) for f in self.net(x)]

    def _per_layer(self, fx: list[torch.Tensor], fy: list[torch.Tensor]) -> list[torch.Tensor]:
        return [lin((a - b) ** 2).mean(dim=(1, 2, 3)) for lin, a, b in zip(self.lins, fx, fy)]

    def per_layer(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer spatially averaged distances, each (N,)."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        # Two trunk passes, not one over torch.cat([x, y]): a target that needs no
        # gradient then costs no backward pass (and bind_target can cache it).
        return self._per_layer(self.features(x), self.features(y))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances (N,) between two (N,3,H,W) batches in [-1, 1]."""
        return _sum(self.per_layer(x, y))

    def bind_target(self, y: torch.Tensor):
        """``x -> self(x, y)`` for a fixed ``y``: y's features are computed once, without gradient.

        Same values and gradients with respect to x as calling the module with y
        each time (the projection's target is constant for all its steps).
        """
        with torch.no_grad():
            fy = [f.detach() for f in self.features(y)]

        def distance(x: torch.Tensor) -> torch.Tensor:
            if x.shape != y.shape:
                raise ValueError(f"LPIPS inputs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
            return _sum(self._per_layer(self.features(x), fy))
        return distance


def _sum(values: list[torch.Tensor]) -> torch.Tensor:
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def bind_target(perceptual, y: torch.Tensor):
    """``x -> perceptual(x, y)`` for a fixed target ``y``; cached target features where the loss offers it."""
    bind = getattr(perceptual, "bind_target", None)
    if bind is not None:
        return bind(y)
    return lambda x: perceptual(x, y)


class LPIPS(_LPIPSCore):
    """LPIPS v0.1 with the VGG16 trunk.  ``forward(x, y) -> (N,)``, inputs in [-1, 1].

    ``resize``: inputs whose longer side exceeds it are area-downsampled to it
    first (rosinality's projector compares at 256); ``None`` compares at full
    resolution.  Parameters are frozen; gradients flow to the inputs.
    Weights are random until loaded; use :func:`load_lpips`.
    """

    def __init__(self, resize: int | None = None) -> None:
        super().__init__(VGG16Features(), VGG16_CHANNELS, resize=resize)

    def lin_state_dict(self) -> dict[str, torch.Tensor]:
        """The heads in the lpips package's ``vgg.pth`` layout."""
        return {f"lin{i}.model.1.weight": lin.model[1].weight.detach().clone() for i, lin in enumerate(self.lins)}

    def vgg_state_dict(self) -> dict[str, torch.Tensor]:
        """The trunk in torchvision's ``vgg16`` layout (``features.*`` keys only)."""
        return {k: v.detach().clone() for k, v in self.net.state_dict().items()}


class _TinyTrunk(nn.Module):
    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        layers = []
        in_ch = 3
        for i, c in enumerate(channels):
            stage = [nn.Conv2d(in_ch, c, 3, padding=1), nn.ReLU()]
            if i > 0:
                stage.insert(0, nn.AvgPool2d(2))
            layers.append(nn.Sequential(*stage))
            in_ch = c
        self.stages = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class TinyPerceptual(_LPIPSCore):
    """A small random-weight stand-in with LPIPS's structure (for tests and benches).

    Deterministic given ``seed``; heads are positive so distances are >= 0.
    """

    def __init__(self, channels: Sequence[int] = (8, 16), seed: int = 0, resize: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed)
        trunk = _TinyTrunk(channels)
        super().__init__(trunk, channels, resize=resize)
        with torch.no_grad():
            for m in trunk.modules():
                if isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * math.sqrt(2.0 / fan_in))
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
            for lin in self.lins:
                w = lin.model[1].weight
                w.copy_(torch.rand(w.shape, generator=gen) + 0.5)


# ----------------------------------------------------------------------------- loading


def _read_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LPIPSWeightsError(f"LPIPS {what} weights not found: {path} ({PULL_HINT})")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, not a torch file, pickled code
        raise LPIPSWeightsError(
            f"LPIPS {what} weights could not be read from {path}: {exc.__class__.__name__}: {exc} ({PULL_HINT})"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LPIPSWeightsError(f"LPIPS {what} weights in {path} are not a state dict of tensors ({PULL_HINT})")
    return obj


def _check_and_pick(
    sd: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path, what: str, alt_prefixes: Sequence[str]
) -> dict[str, torch.Tensor]:
    picked: dict[str, torch.Tensor] = {}
    missing, bad_shape = [], []
    for key, ref in expected.items():
        val = sd.get(key)
        if val is None:
            for pre in alt_prefixes:
                cand = pre[0] + key[len(pre[1]):] if key.startswith(pre[1]) else None
                if cand is not None and cand in sd:
                    val = sd[cand]
                    break
        if val is None:
            missing.append(key)
        elif tuple(val.shape) != tuple(ref.shape):
            bad_shape.append(f"{key}: {tuple(val.shape)} != {tuple(ref.shape)}")
        else:
            picked[key] = val
    if missing or bad_shape:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if bad_shape:
            parts.append(f"wrong shapes {bad_shape[:4]}{' ...' if len(bad_shape) > 4 else ''}")
        raise LPIPSWeightsError(
            f"{path} is not an LPIPS {what} weight file ({'; '.join(parts)}); {PULL_HINT}"
        )
    return picked


def load_lpips(
    vgg_path: str | Path, lin_path: str | Path, device: str | torch.device = "cpu", resize: int | None = 256
) -> LPIPS:
    """Build :class:`LPIPS` from torchvision's VGG16 weights and LPIPS's v0.1 heads.

    Raises :class:`LPIPSWeightsError` (a ``FileNotFoundError``) naming the file
    and how to fetch it when a file is missing, unreadable or has other keys.
    ``resize`` (default 256, as rosinality's projector) bounds the compared size.
    """
    vgg_path, lin_path = Path(vgg_path), Path(lin_path)
    model = LPIPS(resize=resize)
    vgg_sd = _read_state_dict(vgg_path, "VGG16")
    lin_sd = _read_state_dict(lin_path, "linear-head")
    trunk = _check_and_pick(vgg_sd, model.net.state_dict(), vgg_path, "VGG16", alt_prefixes=(("", "features."),))
    heads = _check_and_pick(
        lin_sd,
        model.lin_state_dict(),
        lin_path,
        "linear-head",
        alt_prefixes=tuple((f"lins.{i}.", f"lin{i}.") for i in range(5)),
    )
    with torch.no_grad():
        model.net.load_state_dict({k: v.float() for k, v in trunk.items()}, strict=True)
        for i, lin in enumerate(model.lins):
            lin.model[1].weight.copy_(heads[f"lin{i}.model.1.weight"].float())
    return model.to(device)
