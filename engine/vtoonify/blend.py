"""VToonify-T's per-layer blend weights (its ``--weight``) from toon-ofx's swap resolution and blend width.

VToonify blends the toon and FFHQ generators with 18 weights, one per W+
index (``util.gather_params`` / ``blend_models``: conv1 -> 0, to_rgb1 -> 1,
convs.N -> N+1, to_rgbs.N -> 2N+3; parameters = base * (1 - w) + toon * w;
mapping, constant input and noise from the base model). toon-ofx blends by
the resolution of each layer (:func:`engine.generator.blend.toon_weight`).

:func:`blend_weights` gives each W+ index the toon weight of the convolution it
drives, so both blends agree on every convolution. A W+ index drives a to_rgb
too (the one of the resolution below its conv): VToonify's numbering gives
``to_rgbs.k`` the weight of the conv one octave above it (the last index
drives only the last to_rgb, at its own resolution). For the hard swap at 64
this is VToonify's default ``[1]*9 + [0]*9``.
"""

from __future__ import annotations

from engine.generator.blend import toon_weight

__all__ = ["blend_weights", "index_resolution"]


def index_resolution(index: int, n_latent: int = 18) -> int:
    """Resolution of the convolution W+ index ``index`` drives (the last index: the last to_rgb's)."""
    if n_latent < 4 or n_latent % 2 or not 0 <= index < n_latent:
        raise ValueError(f"index must be in 0..{n_latent - 1} (n_latent even >= 4), got {index}")
    if index == 0:
        return 4
    if index == n_latent - 1:
        return 2 ** (n_latent // 2 + 1)
    return 2 ** ((index - 1) // 2 + 3)


def blend_weights(swap_res: int, width: float = 0.0, n_latent: int = 18) -> list[float]:
    """VToonify's 18 toon weights (1 = toon layer, 0 = FFHQ layer) for a swap at ``swap_res`` with ``width``."""
    size = 2 ** (n_latent // 2 + 1)
    if isinstance(swap_res, bool) or int(swap_res) != swap_res or swap_res < 4 or swap_res > size \
            or int(swap_res) & (int(swap_res) - 1):
        raise ValueError(f"swap resolution must be a power of two between 4 and {size}, got {swap_res!r}")
    return [toon_weight(index_resolution(i, n_latent), int(swap_res), width) for i in range(n_latent)]
