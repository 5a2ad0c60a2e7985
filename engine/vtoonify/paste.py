"""Paste VToonify's output back over the frame: the head and only the head, with a seam outside it.

VToonify renders its whole crop (background and clothes too). The product promises
that what is not a face stays untouched, so the output is pasted through a mask made
from the face-parsing map the network already takes as input (BiSeNet, the 19
CelebAMask-HQ labels):

* **What the mask covers**: the head — skin, brows, eyes, glasses, ears, earrings,
  nose, mouth, lips, hair, hat — and the neck with its necklace (the toon skin would
  otherwise end in a seam at the jaw). Background and clothes are left out.
* **Only this face's head**: the head regions that reach the face's own centre
  (another person's head inside the crop is that person's to paste).
* **The seam outside the head**: the mask is 1 on the whole head and falls to 0
  (smoothstep) over ``feather`` outside it, so the soft edge lies on background or
  clothes, never across hair or chin. It also falls to 0 at the crop's edge (a head
  larger than the crop, e.g. long hair, is cut there).

The stylised picture is colour-matched to the original under the mask
(``engine.faces.paste.match_colors``, as the StyleGAN path) and blended by
``engine.faces.paste.composite`` (full frame or RGBA overlay, any depth).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from ..faces.align import warp_affine
from ..faces.paste import composite, match_colors
from ..pixels import check_rgb, peak

__all__ = ["LABELS", "HEAD_LABELS", "head_mask", "HeadLayer", "paste_heads"]

LABELS = ("background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
          "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat")
HEAD_LABELS = tuple(i for i, name in enumerate(LABELS) if name not in ("background", "cloth"))


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def head_mask(labels: np.ndarray, feather: float, centre_radius: float) -> np.ndarray:
    """The paste mask (float32, labels' shape, 0..1) from a crop's parsing labels (argmax, H x W ints).

    1 on the head regions that reach within ``centre_radius`` px of the crop's centre, falling to 0 over
    ``feather`` px outside them and towards the crop's edge.
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    head = np.isin(labels, HEAD_LABELS).astype(np.uint8)
    width = max(float(feather), 1.0)
    # regions: the head dilated by half the feather, so a strand or an ear a few pixels off stays with it
    grow = max(1, int(round(width / 2)))
    joined = cv2.dilate(head, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    count, regions = cv2.connectedComponents(joined, connectivity=8)
    yy, xx = np.mgrid[:h, :w]
    centre = (yy - (h - 1) / 2.0) ** 2 + (xx - (w - 1) / 2.0) ** 2 <= centre_radius ** 2
    keep = np.unique(regions[centre & (joined > 0)])
    own = head & np.isin(regions, keep[keep > 0]).astype(np.uint8)
    if not own.any():
        return np.zeros((h, w), np.float32)
    outside = cv2.distanceTransform(1 - own, cv2.DIST_L2, 5)   # 0 on the head
    mask = _smoothstep(1.0 - outside / width)
    edge = np.minimum(np.minimum(xx, w - 1 - xx), np.minimum(yy, h - 1 - yy)).astype(np.float32)
    mask *= _smoothstep(edge / width)
    return mask.astype(np.float32)


@dataclass
class HeadLayer:
    """One stylised face to paste: ``image`` (h x w x 3 float32 in the frame's levels) with ``to_image``
    (2x3, frame -> image pixels), and its ``mask`` (crop-sized float32) with ``to_mask`` (frame -> crop)."""

    image: np.ndarray
    to_image: np.ndarray
    mask: np.ndarray
    to_mask: np.ndarray


def _roi_map(matrix: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """frame -> X map as a map from ROI pixels (ROI origin at frame (x0, y0))."""
    m = np.array(matrix, dtype=np.float64).reshape(2, 3).copy()
    m[:, 2] += m[:, :2] @ [x0, y0]
    return m


def _layer(frame: np.ndarray, head: HeadLayer, color_match) -> tuple | None:
    h, w = frame.shape[:2]
    inv = np.linalg.inv(np.vstack([head.to_mask, [0.0, 0.0, 1.0]]))[:2]   # crop -> frame
    size = head.mask.shape[0]
    corners = np.array([[-0.5, -0.5], [size - 0.5, size - 0.5]]) @ inv[:, :2].T + inv[:, 2]
    x0, y0 = max(int(np.floor(corners[:, 0].min())) - 1, 0), max(int(np.floor(corners[:, 1].min())) - 1, 0)
    x1, y1 = min(int(np.ceil(corners[:, 0].max())) + 2, w), min(int(np.ceil(corners[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    roi = (x1 - x0, y1 - y0)
    m = warp_affine(head.mask, _roi_map(head.to_mask, x0, y0), roi, interpolation="linear", border="constant",
                    antialias="area")
    m = np.clip(m.reshape(m.shape[:2]), 0.0, 1.0).astype(np.float32)
    m[m < 1e-4] = 0.0
    if not (m > 0).any():
        return None
    face = warp_affine(head.image, _roi_map(head.to_image, x0, y0), roi, interpolation="linear",
                       border="replicate", antialias="lanczos")
    if color_match:
        white = peak(frame.dtype)
        levels = np.clip(np.rint(face), 0, white).astype(frame.dtype)
        face = match_colors(levels, frame[y0:y1, x0:x1], m, space=str(color_match))
    return x0, y0, face.astype(np.float32), m


def paste_heads(frame: np.ndarray, heads: Sequence[HeadLayer], color_match: bool | str = True,
                overlay: bool = False) -> np.ndarray:
    """Paste stylised heads over ``frame`` (uint8 or uint16 RGB) in order: the full frame, or the RGBA
    overlay layer (``overlay``); pixels outside every mask come back bit-identical."""
    frame = check_rgb(frame)
    if color_match is True:
        color_match = "lab"
    layers = [layer for head in heads if (layer := _layer(frame, head, color_match)) is not None]
    return composite(frame, layers, overlay)
