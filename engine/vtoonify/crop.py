"""Where VToonify looks: the face crop of a frame, by the reference's recipe, following the face.

The reference (VToonify's ``style_transfer.py`` with ``util.get_video_crop_parameter``)
scales the frame so that the eyes are 64 px apart, pre-blurs high-resolution frames
with the separable [1, 3, 3, 1] / 8 filter (once at scale <= 0.75, twice at
<= 0.375), resizes the whole frame bilinearly and cuts a box 200 px to each side
of the eye centre, sides multiples of 8, from the first frame's face only. Here:

* **Per frame, from the track.** The smoothed FFHQ quad of the face's track
  (``engine.faces.lookahead``) gives the eye centre (47% down the quad's middle)
  and the "eye distance" (a quarter of the quad's side), so the crop follows the
  face. The quad's side is the larger of 2 eye distances and 1.8 eye-to-mouth
  distances: what FFHQ alignment, and so VToonify's training faces, normalise to
  a quarter of the 256 px crop. It does not collapse when the head turns, as the
  reference's horizontal eye distance does. On the fixtures' frontal faces the
  crop scale is 0.94-1.00x the reference's, on a three-quarter face 0.79x
  (bench/bench_vtoonify.py crop).
* **One affine warp, fixed size.** The crop is always ``size`` x ``size``
  (400 for the public models: 2 x 200, a multiple of 8): crops of several faces
  and frames stack into one batch. Only the frame region under the crop is
  blurred and resampled (bilinear, as the reference's resize, in the frame's own
  depth), not the whole frame; where the crop runs past the frame's edge its edge
  pixels are repeated (the reference clips the box instead; the paste-back never
  writes outside the frame). On the same box as the reference's, on real frames
  from 640x360 to 4K, the warp is within 2 grey levels of the reference's blur +
  resize + crop, mean 0.05-0.09 (bench/bench_vtoonify.py crop).
* **The blur without its drift.** The 4-tap filter moves the picture by half a
  pixel per pass (OpenCV anchors it at tap 2); the warp takes that back, so the
  crop lines up with the frame exactly and the paste-back lands where it came
  from. Near the thresholds the blur fades in over 10% of scale instead of
  switching, so a face whose scale hovers at 0.75 does not flicker (at or below
  each threshold it is exactly the reference's pass).

Scale conventions: ``scale`` is crop pixels per frame pixel (the reference's
``scale``); pixel centres at integer coordinates in both images.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import cv2
import numpy as np

from ..faces.align import _extract, quad_params   # _extract: the border-aware region reader of warp_affine
from ..pixels import check_rgb

__all__ = ["CropGeometry", "FaceCrop", "face_crop", "crop_image", "warp_crop", "blur_passes", "BLUR_KERNEL"]

BLUR_KERNEL = np.array([1.0, 3.0, 3.0, 1.0], np.float32) / 8.0   # the reference's kernel_1d
BLUR_THRESHOLDS = (0.75, 0.375)   # one pass at or below each
BLUR_RAMP = 0.1                   # the pass fades in between t and t * (1 + BLUR_RAMP)
EYES_BELOW_CENTRE = 0.06          # eye centre = quad centre - 0.06 y (FFHQ crops: eyes at 47% of the height)


@dataclass(frozen=True)
class CropGeometry:
    """The reference's crop in the model's own terms: eyes ``eye_distance`` px apart, ``padding`` px of
    crop on each side of the eye centre, the side rounded down to a multiple of ``multiple``."""

    eye_distance: float = 64.0
    padding: int = 200
    multiple: int = 8

    @classmethod
    def for_model(cls, in_size: int) -> "CropGeometry":
        """The geometry a VToonify model trained on ``in_size`` face crops expects: its training faces are
        FFHQ-aligned, so their eyes are in_size / 4 apart (64 at 256, the reference's numbers)."""
        ratio = in_size / 256.0
        return cls(64.0 * ratio, int(round(200 * ratio)), max(1, int(round(8 * ratio))))

    @property
    def size(self) -> int:
        return max(self.multiple, (2 * self.padding) // self.multiple * self.multiple)


@dataclass(frozen=True)
class FaceCrop:
    """One face's crop: frame -> crop is ``u = scale * (X - centre) + (size - 1) / 2`` (per axis)."""

    centre: Tuple[float, float]   # the eye centre, frame pixels
    scale: float                  # crop pixels per frame pixel
    size: int
    blur: float                   # pre-blur passes, 0..2 (fractions only near a threshold)

    @property
    def matrix(self) -> np.ndarray:
        """2x3 affine frame -> crop."""
        s, half = self.scale, (self.size - 1) / 2.0
        return np.array([[s, 0.0, half - s * self.centre[0]], [0.0, s, half - s * self.centre[1]]])

    def box(self) -> Tuple[float, float, float, float]:
        """The frame region the crop covers (x0, y0, x1, y1), pixel edges."""
        half = self.size / (2.0 * self.scale)
        return self.centre[0] - half, self.centre[1] - half, self.centre[0] + half, self.centre[1] + half


def blur_passes(scale: float) -> float:
    """Pre-blur passes at a crop scale: the reference's 0, 1 or 2, faded in over BLUR_RAMP above each threshold."""
    passes = sum(np.clip((t * (1 + BLUR_RAMP) - scale) / (t * BLUR_RAMP), 0.0, 1.0) for t in BLUR_THRESHOLDS)
    return round(float(passes), 6)


def face_crop(quad, geometry: CropGeometry = CropGeometry()) -> FaceCrop:
    """The crop of the face whose (smoothed) FFHQ quad is ``quad``."""
    c, x = quad_params(quad)
    y = np.array([-x[1], x[0]])
    eyes = c - EYES_BELOW_CENTRE * y
    eye_distance = float(np.hypot(*x)) / 2.0
    scale = geometry.eye_distance / max(eye_distance, 1e-6)
    return FaceCrop((float(eyes[0]), float(eyes[1])), scale, geometry.size, blur_passes(scale))


def _blur(roi: np.ndarray, passes: float) -> np.ndarray:
    """``passes`` (0..2) of the reference's filter; a fraction mixes the neighbouring whole counts."""
    whole = int(np.floor(passes))
    low = roi
    for _ in range(whole):
        low = cv2.sepFilter2D(low, -1, BLUR_KERNEL, BLUR_KERNEL, borderType=cv2.BORDER_REFLECT_101)
    part = passes - whole
    if part <= 0:
        return low
    high = cv2.sepFilter2D(low, -1, BLUR_KERNEL, BLUR_KERNEL, borderType=cv2.BORDER_REFLECT_101)
    return cv2.addWeighted(low, 1.0 - part, high, part, 0.0)


def crop_image(frame: np.ndarray, crop: FaceCrop) -> np.ndarray:
    """The crop (size x size x 3 float32, in the frame's levels)."""
    to_frame = np.linalg.inv(np.vstack([crop.matrix, [0.0, 0.0, 1.0]]))[:2]
    return warp_crop(frame, to_frame, crop.size, crop.blur)


def warp_crop(frame: np.ndarray, to_frame: np.ndarray, size: int, blur: float = 0.0,
              undrift: bool = True) -> np.ndarray:
    """Blur the frame region a crop needs ``blur`` passes, then one bilinear warp through ``to_frame``
    (2x3, crop -> frame) to size x size x 3 float32 (whole levels of the frame's depth, as the reference's
    uint8 steps). ``undrift=False`` keeps the reference's half-pixel
    shift per blur pass (for comparisons with it)."""
    frame = check_rgb(frame)
    m = np.array(to_frame, dtype=np.float64).reshape(2, 3)
    if undrift:
        m[:, 2] += 0.5 * blur   # the filter moved the picture by +0.5 px per pass: sample where it went
    corners = np.array([[-0.5, -0.5], [size - 0.5, size - 0.5]]) @ m[:, :2].T + m[:, 2]
    margin = 6   # the filter taps (2 px a pass) and the bilinear neighbour stay inside the region read
    x0, y0 = (np.floor(corners.min(0)) - margin).astype(int)
    x1, y1 = (np.ceil(corners.max(0)) + margin + 1).astype(int)
    roi = np.ascontiguousarray(_extract(frame, x0, y0, x1, y1, cv2.BORDER_REPLICATE, 0))
    if blur > 0:   # in the frame's own depth, as the reference (and 4x faster than in float on a 4K face)
        roi = _blur(roi, blur)
    m[:, 2] -= [x0, y0]
    crop = cv2.warpAffine(roi, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REPLICATE)
    return crop.astype(np.float32)
