"""Paste stylised face crops back into the frame.

Each stylised crop is warped back through the inverse of its alignment transform and
blended into the frame with a feathered elliptical mask (optionally after matching its
colours to the original face). Output is the full frame, or an RGBA overlay (straight,
not premultiplied, alpha) holding only the faces, for an editor to stack above the
original clip. Pixels the mask does not reach are returned bit-identical.

Frames are uint8 or uint16 (a deep source, see engine.pixels): blending runs in float and
the result, overlay alpha included, keeps the frame's depth; a crop of the other depth
is rescaled to the frame's first.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from ..pixels import check_rgb, peak, to_dtype
from .align import AlignTransform, warp_affine

__all__ = ["face_mask", "paste_faces", "composite", "match_colors", "FACE_ELLIPSE_CENTER", "FACE_ELLIPSE_AXES"]

# The pasted region in FFHQ-crop fractions: an ellipse over face, hairline and chin
# (the toon generator reshapes the head, so the region is generous; the crop's
# surroundings come from the projection, which reproduces them closely).
FACE_ELLIPSE_CENTER = (0.5, 0.52)
FACE_ELLIPSE_AXES = (0.36, 0.44)

# Warping a crop back into the frame usually shrinks it (a 1024 px crop onto a ~200 px
# face): supersample and reduce with a Lanczos-4 filter cut a little above the frame's
# Nyquist frequency -- anti-aliased, yet a crop aligned from these very pixels comes back
# within a fraction of a grey level (Pillow's Lanczos-3 would soften it by ~1 level).
_PASTE_INTERP = "linear"
_PASTE_AA = (4, 1.15)


@lru_cache(maxsize=16)
def _face_mask_cached(size: int, feather: float, center: tuple, axes: tuple) -> np.ndarray:
    s = float(size)
    coords = (np.arange(size, dtype=np.float64) + 0.5) / s  # pixel centres, crop fractions
    dx = (coords[None, :] - center[0])
    dy = (coords[:, None] - center[1])
    a, b = axes
    f = (dx / a) ** 2 + (dy / b) ** 2 - 1.0  # < 0 inside
    gx, gy = 2 * dx / a**2, 2 * dy / b**2
    grad = np.hypot(gx, gy)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.where(grad > 0, -f / grad, np.inf)  # ~ distance inside the ellipse (fractions)
    if feather <= 0:
        mask = (dist > 0).astype(np.float64)
    else:
        t = np.clip(dist / feather, 0.0, 1.0)
        mask = t * t * (3.0 - 2.0 * t)  # smoothstep
    mask = mask.astype(np.float32)
    mask.setflags(write=False)
    return mask


def face_mask(size: int, feather: float = 0.08, *, center=FACE_ELLIPSE_CENTER,
              axes=FACE_ELLIPSE_AXES) -> np.ndarray:
    """Soft face mask (float32 size x size, 0..1) in aligned-crop coordinates.

    An ellipse over the FFHQ face area, exactly 0 on and outside its edge, rising
    smoothly (smoothstep) to 1 over ``feather`` x size pixels inside it; it never
    reaches the crop's border, so no box edge shows.
    """
    size = int(size)
    if size < 1:
        raise ValueError("size must be positive")
    feather = float(feather)
    if not 0.0 <= feather <= 0.5:
        raise ValueError(f"feather must be within [0, 0.5], got {feather}")
    return _face_mask_cached(size, feather, tuple(map(float, center)), tuple(map(float, axes))).copy()


def _weighted_stats(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ws = w.sum()
    mu = (x * w[..., None]).reshape(-1, x.shape[-1]).sum(0) / ws
    var = (((x - mu) ** 2) * w[..., None]).reshape(-1, x.shape[-1]).sum(0) / ws
    return mu, np.sqrt(np.maximum(var, 1e-12))


def match_colors(styled: np.ndarray, reference: np.ndarray, weights: np.ndarray,
                 space: str = "lab", max_gain: float = 2.0) -> np.ndarray:
    """Shift ``styled`` (uint8 or uint16 RGB, as ``reference``) so its weighted mean/std per channel
    (in Lab or RGB) match ``reference``'s; the std gain is limited to [1/max_gain, max_gain]."""
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 1e-6:
        return styled
    white = float(peak(styled.dtype))
    if space == "lab":
        s = cv2.cvtColor(styled.astype(np.float32) / white, cv2.COLOR_RGB2Lab).astype(np.float64)
        r = cv2.cvtColor(reference.astype(np.float32) / white, cv2.COLOR_RGB2Lab).astype(np.float64)
    elif space == "rgb":
        s, r = styled.astype(np.float64), reference.astype(np.float64)
    else:
        raise ValueError(f"colour space must be 'lab' or 'rgb', got {space!r}")
    mu_s, sd_s = _weighted_stats(s, w)
    mu_r, sd_r = _weighted_stats(r, w)
    gain = np.clip(sd_r / sd_s, 1.0 / max_gain, max_gain)
    out = (s - mu_s) * gain + mu_r
    if space == "lab":
        out = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2RGB) * white
    return np.clip(np.rint(out), 0, white).astype(styled.dtype)


def paste_faces(
    frame: np.ndarray,
    faces: Sequence[tuple[np.ndarray, AlignTransform]],
    feather: float = 0.08,
    color_match: bool | str = False,
    overlay: bool = False,
) -> np.ndarray:
    """Blend stylised crops back into ``frame`` (uint8 or uint16 H x W x 3 RGB).

    ``faces`` holds ``(crop S x S x 3, AlignTransform)`` pairs; a crop whose size
    differs from its transform's (e.g. a 256 px generator on a 1024 px alignment) is
    placed over the same quad. ``color_match`` (True/"lab" or "rgb") matches each
    crop's colour statistics under the mask to the original face first. Returns the
    full frame (H x W x 3), or with ``overlay=True`` an RGBA layer (H x W x 4: the
    faces' colours with alpha = the warped masks, fully transparent black elsewhere)
    that, composited "over" the original, gives the full-frame result. The result has
    the frame's dtype.
    """
    frame = check_rgb(frame)
    if color_match is True:
        color_match = "lab"
    layers = [lay for crop, transform in faces
              if (lay := _warp_face(frame, crop, transform, feather, color_match)) is not None]
    return composite(frame, layers, overlay)


def composite(frame: np.ndarray, layers: Sequence[tuple[int, int, np.ndarray, np.ndarray]],
              overlay: bool = False) -> np.ndarray:
    """Blend face layers ``(x0, y0, colours float32 h x w x 3, mask float32 h x w)`` over ``frame`` at
    (x0, y0), in order: the full frame (pixels no mask reaches come back bit-identical), or with
    ``overlay`` the RGBA layer of the faces alone (straight alpha = the masks). The frame's dtype."""
    white = peak(frame.dtype)
    h, w = frame.shape[:2]
    if not overlay:
        result = frame.copy()
        for x0, y0, face, m in layers:
            region = result[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
            m3 = m[:, :, None]
            blended = region.astype(np.float32) * (1 - m3) + face * m3
            inside = m > 0
            region[inside] = np.clip(np.rint(blended[inside]), 0, white).astype(frame.dtype)
        return result
    result = np.zeros((h, w, 4), frame.dtype)
    if not layers:
        return result
    # accumulate premultiplied colour and alpha ("over") on the union of the face regions
    ux0 = min(x0 for x0, _, _, _ in layers)
    uy0 = min(y0 for _, y0, _, _ in layers)
    ux1 = max(x0 + m.shape[1] for x0, _, _, m in layers)
    uy1 = max(y0 + m.shape[0] for _, y0, _, m in layers)
    prem = np.zeros((uy1 - uy0, ux1 - ux0, 3), np.float32)
    alpha = np.zeros((uy1 - uy0, ux1 - ux0), np.float32)
    for x0, y0, face, m in layers:
        sl = (slice(y0 - uy0, y0 - uy0 + m.shape[0]), slice(x0 - ux0, x0 - ux0 + m.shape[1]))
        prem[sl] = prem[sl] * (1 - m[:, :, None]) + face * m[:, :, None]
        alpha[sl] = alpha[sl] * (1 - m) + m
    a = np.clip(np.rint(alpha * float(white)), 0, white).astype(frame.dtype)
    keep = a > 0
    out = result[uy0:uy1, ux0:ux1]
    rgb = prem[keep] / alpha[keep][:, None]
    out[keep, :3] = np.clip(np.rint(rgb), 0, white).astype(frame.dtype)
    out[keep, 3] = a[keep]
    return result


def _warp_face(frame, crop, transform: AlignTransform, feather: float, color_match):
    """Warp one crop and its mask into the frame: (x0, y0, face float32, mask float32) or None."""
    h, w = frame.shape[:2]
    crop = check_rgb(crop, "crop")
    if crop.shape[0] != crop.shape[1]:
        raise ValueError(f"crop must be square, got {crop.shape}")
    crop = to_dtype(crop, frame.dtype)
    if not isinstance(transform, AlignTransform):
        raise TypeError(f"expected an AlignTransform, got {type(transform).__name__}")
    size = crop.shape[0]
    t = transform if transform.size == size else transform.resized(size)
    mask = face_mask(size, feather)
    if color_match:
        original = warp_affine(frame, t.inverse(), (size, size), interpolation="linear",
                               border="reflect", antialias="lanczos")
        crop = match_colors(crop, original, mask, space=str(color_match))
    q = t.quad  # the frame region the crop covers
    x0 = max(int(np.floor(q[:, 0].min())) - 2, 0)
    y0 = max(int(np.floor(q[:, 1].min())) - 2, 0)
    x1 = min(int(np.ceil(q[:, 0].max())) + 3, w)
    y1 = min(int(np.ceil(q[:, 1].max())) + 3, h)
    if x1 <= x0 or y1 <= y0:
        return None
    m_roi = t.matrix.copy()  # roi pixel -> crop pixel
    m_roi[:, 2] += t.matrix[:, :2] @ [x0, y0]
    roi_size = (x1 - x0, y1 - y0)
    m = warp_affine(mask, m_roi, roi_size, interpolation="linear", border="constant",
                    antialias="area")
    m = np.clip(m.reshape(m.shape[:2]), 0.0, 1.0).astype(np.float32)
    m[m < 1e-4] = 0.0
    if not (m > 0).any():
        return None
    face = warp_affine(crop, m_roi, roi_size, interpolation=_PASTE_INTERP, border="replicate",
                       antialias="lanczos", aa_lobes=_PASTE_AA[0], aa_cutoff=_PASTE_AA[1])
    face = face.astype(np.float32)
    return x0, y0, face, m
