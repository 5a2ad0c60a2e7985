"""Network blending ("layer swapping", Pinkney & Adler's Toonify) of two StyleGAN2 generators.

Both generators share one architecture: *base* (real faces) and *toon* (base
fine-tuned on toon faces).  The blended generator takes its synthesis layers at
resolutions up to the swap resolution ``r`` from toon (shape, eyes, proportions)
and those above from base (texture, lighting).  Work is done on rosinality
parameter names, so blending is a dictionary operation:

* ``style.*`` (mapping network): from ``mapping_from``;
* ``input.input`` (learned 4x4 constant): from ``const_from``;
* ``conv1.*``, ``to_rgb1.*`` (4x4), ``convs.N.*``, ``to_rgbs.N.*``: by the
  resolution :func:`engine.generator.stylegan2.layer_resolution` gives them -- toon at
  or below ``r``, base above;
* ``noises.noise_N`` (fixed noise buffers): follow their layer;
* ``latent_avg`` (non-persistent buffer: truncation and projection start): from
  ``latent_avg_from`` (default: ``mapping_from``, as it is a statistic of the mapping).

Smooth blending convention (see :func:`toon_weight`): each synthesis layer gets
a toon weight ``t`` and its parameters become ``lerp(base, toon, t)``.  ``t`` is
a logistic function of ``log2(resolution)`` centred half an octave above the
swap resolution, at ``log2(r) + 0.5``: the midpoint between the last toon layer
and the first base layer of the hard swap.  So ``width -> 0`` reproduces the
hard swap exactly (``width == 0`` *is* the hard swap), the weight decreases
monotonically with resolution, and it is 0.5 at the boundary midpoint.  (Pinkney's
TF ``blend_models`` and its ports centre the logistic on the swap layer itself
and count the width in layer positions, so their widths and ours are not
interchangeable.)  Noise buffers are not mixed -- averaging two unit Gaussian maps would
shrink their variance -- but taken whole from the model whose weight is >= 0.5.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from pathlib import Path
from typing import Callable, Mapping

import torch

__all__ = [
    "SOURCES",
    "toon_weight",
    "param_resolution",
    "layer_weights",
    "blend_state_dicts",
    "blend_generators",
    "blend_checkpoints",
]

SOURCES = ("base", "toon")


def toon_weight(resolution: int, swap_res: int, width: float) -> float:
    """Weight of the toon model (1 = all toon, 0 = all base) for a layer at ``resolution``.

    ``width`` is in log2-resolution units (octaves); ``width == 0`` is the hard
    swap ``resolution <= swap_res``.  Otherwise
    ``1 / (1 + exp((log2(resolution) - log2(swap_res) - 0.5) / width))``.
    """
    if resolution <= 0 or swap_res <= 0:
        raise ValueError("resolution and swap_res must be positive")
    if not math.isfinite(width) or width < 0:
        raise ValueError(f"blend width must be a finite number >= 0, got {width}")
    if width == 0:
        return 1.0 if resolution <= swap_res else 0.0
    z = (math.log2(resolution) - (math.log2(swap_res) + 0.5)) / width
    if z >= 0:
        e = math.exp(-z)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(z))


def param_resolution(name: str) -> int | None:
    """Resolution of a synthesis parameter or noise buffer; None for mapping/const."""
    if name.startswith("style.") or name.startswith("input.") or name == "latent_avg":
        return None
    from engine.generator.stylegan2 import layer_resolution

    return layer_resolution(name)


def _check_source(name: str, value: str) -> str:
    if value not in SOURCES:
        raise ValueError(f"{name} must be 'base' or 'toon', got {value!r}")
    return value


def _infer_size(keys, resolution_fn: Callable[[str], int | None]) -> int:
    sizes = [r for r in (resolution_fn(k) for k in keys) if r is not None]
    if not sizes:
        raise ValueError("state dict has no synthesis layers (not a StyleGAN2 generator?)")
    return max(sizes)


def _check_swap_res(swap_res: int, size: int) -> int:
    if isinstance(swap_res, bool) or not isinstance(swap_res, numbers.Real):
        raise ValueError(f"swap resolution must be an integer power of two, got {swap_res!r}")
    if not isinstance(swap_res, numbers.Integral):
        if not math.isfinite(swap_res) or float(swap_res) != int(swap_res):
            raise ValueError(f"swap resolution must be an integer power of two, got {swap_res!r}")
    swap_res = int(swap_res)
    if swap_res < 4 or swap_res > size or swap_res & (swap_res - 1):
        raise ValueError(f"swap resolution must be a power of two between 4 and {size}, got {swap_res}")
    return swap_res


def _check_same_architecture(base_sd: Mapping[str, torch.Tensor], toon_sd: Mapping[str, torch.Tensor]) -> None:
    only_base = sorted(set(base_sd) - set(toon_sd))
    only_toon = sorted(set(toon_sd) - set(base_sd))
    shapes = [
        f"{k}: base {tuple(base_sd[k].shape)} vs toon {tuple(toon_sd[k].shape)}"
        for k in base_sd
        if k in toon_sd and tuple(base_sd[k].shape) != tuple(toon_sd[k].shape)
    ]
    if only_base or only_toon or shapes:
        parts = []
        if only_base:
            parts.append(f"{len(only_base)} keys only in base (e.g. {only_base[:3]})")
        if only_toon:
            parts.append(f"{len(only_toon)} keys only in toon (e.g. {only_toon[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise ValueError(
            "base and toon generators must have the same architecture (same resolution, "
            "style_dim, mapping depth and channels): " + "; ".join(parts)
        )


def layer_weights(
    keys,
    swap_res: int,
    *,
    width: float = 0.0,
    mapping_from: str = "base",
    const_from: str = "toon",
    latent_avg_from: str | None = None,
    size: int | None = None,
    resolution_fn: Callable[[str], int | None] | None = None,
) -> dict[str, float]:
    """Toon weight (0..1) of every key of a rosinality generator state dict.

    Validates ``swap_res`` (a power of two in 4..size; size inferred from the
    keys if not given) and the source names.  Raises ValueError on a key that
    is neither mapping, constant, nor a synthesis layer.
    """
    resolution_fn = resolution_fn or param_resolution
    keys = list(keys)
    _check_source("mapping_from", mapping_from)
    _check_source("const_from", const_from)
    latent_avg_from = _check_source("latent_avg_from", latent_avg_from or mapping_from)
    if size is None:
        size = _infer_size(keys, resolution_fn)
    swap_res = _check_swap_res(swap_res, size)
    toon_weight(4, swap_res, width)  # validates width
    pick = {"base": 0.0, "toon": 1.0}
    out: dict[str, float] = {}
    for k in keys:
        if k.startswith("style."):
            out[k] = pick[mapping_from]
        elif k.startswith("input."):
            out[k] = pick[const_from]
        elif k == "latent_avg":
            out[k] = pick[latent_avg_from]
        else:
            res = resolution_fn(k)
            if res is None:
                raise ValueError(f"cannot tell which layer {k!r} belongs to (not a rosinality generator key)")
            out[k] = toon_weight(res, swap_res, width)
    return out


def blend_state_dicts(
    base_sd: Mapping[str, torch.Tensor],
    toon_sd: Mapping[str, torch.Tensor],
    swap_res: int,
    *,
    width: float = 0.0,
    mapping_from: str = "base",
    const_from: str = "toon",
    latent_avg_from: str | None = None,
    size: int | None = None,
    resolution_fn: Callable[[str], int | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Blend two rosinality generator state dicts (see the module doc); inputs are not modified.

    Float parameters become ``torch.lerp(base, toon, t)`` (exact copies when t
    is 0 or 1); noise buffers and non-float tensors are copied whole from the
    model with ``t >= 0.5``.  Tensors land on the base tensors' device/dtype.
    """
    _check_same_architecture(base_sd, toon_sd)
    weights = layer_weights(
        base_sd.keys(),
        swap_res,
        width=width,
        mapping_from=mapping_from,
        const_from=const_from,
        latent_avg_from=latent_avg_from,
        size=size,
        resolution_fn=resolution_fn,
    )
    out: dict[str, torch.Tensor] = {}
    for k, b in base_sd.items():
        t = toon_sd[k].to(device=b.device, dtype=b.dtype)
        w = weights[k]
        if w == 0.0:
            out[k] = b.detach().clone()
        elif w == 1.0:
            out[k] = t.detach().clone()
        elif k.startswith("noises.") or not b.is_floating_point():
            out[k] = (t if w >= 0.5 else b).detach().clone()
        else:
            out[k] = torch.lerp(b.detach(), t.detach(), w)
    return out


def blend_generators(
    base,
    toon,
    swap_res: int,
    *,
    width: float = 0.0,
    mapping_from: str = "base",
    const_from: str = "toon",
    latent_avg_from: str | None = None,
):
    """A new Generator: toon's synthesis layers up to ``swap_res``, base's above.

    ``width`` > 0 gives the smooth per-layer logistic blend (:func:`toon_weight`).
    ``mapping_from`` / ``const_from`` / ``latent_avg_from`` ("base" or "toon")
    choose who supplies the mapping network, the 4x4 constant and ``latent_avg``
    (default: the mapping's source).  Base and toon are left unchanged.
    Raises ValueError on different architectures or a bad ``swap_res``.
    """
    base_size, toon_size = getattr(base, "size", None), getattr(toon, "size", None)
    if base_size != toon_size:
        raise ValueError(f"base and toon generators have different resolutions: {base_size} vs {toon_size}")
    latent_avg_from = _check_source("latent_avg_from", latent_avg_from or _check_source("mapping_from", mapping_from))
    base_sd, toon_sd = base.state_dict(), toon.state_dict()
    blended_sd = blend_state_dicts(
        base_sd,
        toon_sd,
        swap_res,
        width=width,
        mapping_from=mapping_from,
        const_from=const_from,
        latent_avg_from=latent_avg_from,
        size=base_size,
    )
    out = copy.deepcopy(base)
    out.load_state_dict(blended_sd, strict=True)
    src = base if latent_avg_from == "base" else toon
    avg = getattr(src, "latent_avg", None)
    if avg is not None and hasattr(out, "latent_avg"):
        if tuple(avg.shape) != tuple(out.latent_avg.shape):
            raise ValueError(
                f"latent_avg shapes differ: {tuple(avg.shape)} vs {tuple(out.latent_avg.shape)}"
            )
        with torch.no_grad():
            out.latent_avg.copy_(avg.to(out.latent_avg.device, out.latent_avg.dtype))
    return out


def blend_checkpoints(
    base_path: str | os.PathLike,
    toon_path: str | os.PathLike,
    out_path: str | os.PathLike,
    swap_res: int,
    *,
    device: str = "cpu",
    width: float = 0.0,
    mapping_from: str = "base",
    const_from: str = "toon",
    latent_avg_from: str | None = None,
):
    """Load two checkpoints (any format engine.generator.checkpoints reads), blend, save a rosinality ``.pt``.

    Returns the blended Generator.  Raises ValueError (``CheckpointError`` for
    unreadable/incompatible checkpoints) with a clear message; refuses to
    overwrite either input.
    """
    from engine.generator.checkpoints import load_generator, save_generator

    base_path, toon_path, out_path = Path(base_path), Path(toon_path), Path(out_path)
    for src in (base_path, toon_path):
        if out_path.resolve() == src.resolve():
            raise ValueError(f"output path {out_path} is one of the inputs; choose another file")
    base = load_generator(base_path, device=device)
    toon = load_generator(toon_path, device=device, expect_size=base.size)
    blended = blend_generators(
        base,
        toon,
        swap_res,
        width=width,
        mapping_from=mapping_from,
        const_from=const_from,
        latent_avg_from=latent_avg_from,
    )
    meta = {
        "base": str(base_path.name),
        "toon": str(toon_path.name),
        "swap_res": int(swap_res),
        "width": float(width),
        "mapping_from": mapping_from,
        "const_from": const_from,
        "latent_avg_from": latent_avg_from or mapping_from,
    }
    save_generator(out_path, blended, extra={"toon_ofx_blend": meta})
    return blended
