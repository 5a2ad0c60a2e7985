"""The pipeline's tracking stage: detections in, each frame's tracked faces out, a few frames later.

By construction, frame t's faces are a function of the detections of frames
``t - history`` to ``t + look_ahead`` alone (:func:`engine.temporal.tracking_extent`),
so a render that starts ``history`` frames early reproduces them exactly:

1. **Identity.** The online association of :class:`~engine.faces.tracking.FaceTracker`
   (Hungarian assignment on box overlap and a constant-velocity prediction, a track
   kept through up to ``max_gap`` missed frames) is run afresh, from an empty state,
   over that window for every frame. A tracker carried along the clip would not do:
   its assignments depend on all of its past. The run starts ``max_gap + 2`` frames
   before the smoothing window, so a track that drops out just before the window
   still has its last two observations (for the motion prediction) inside the run.
2. **Smoothing**, over the track's detections near t:
   ``zero-phase`` (renders): a local linear fit with Gaussian weights (sigma frames,
   cut at 3 sigma) centred on t, evaluated at t. Symmetric weights: no lag on steady
   motion, jitter averaged over both sides; at a track's ends it extrapolates the
   fitted line instead of pulling towards the inside. A line cannot follow a turn
   within its window (a head shake of 16 frames a period is cut to three quarters
   of its swing), so the centre follows the motion (:func:`follow_motion`): where a
   local quartic over +-6 frames departs from the line by more than the noise
   explains and by a visible amount (0.25% of the face), the centre moves towards
   the quartic; on a talking head it stays on the line. The size and roll (the
   half-side vector) change slowly and carry most of dlib's errors: they keep the
   line, over a 1.5x wider Gaussian. ``causal`` (live input): the
   one-euro filter over the past ``window`` frames (:func:`~engine.faces.tracking.one_euro_quad`),
   no look-ahead and a little lag. Measured on the fixture clips (bench/bench_temporal.py),
   robust re-weighting (bisquare IRLS) and median-based outlier rejection only added
   jitter (dlib's three-quarter-face errors come in runs of frames, not single
   outliers), so neither is used.
3. **Drop-outs.** A face missing for up to ``max_gap`` frames between two detections
   of its track (a detector miss) is the *same* face: the frames in the gap get the
   fitted quad and are rendered, so the toon face neither blinks nor jumps, and its
   warm-start chain carries on. A face gone longer (it left the frame and came back,
   or a cut) starts a *new* track: new key, cold projection, smoothing from scratch,
   so nothing of the old track leaks into where it reappears.
4. **Outliers.** In zero-phase mode a face is shown only when its track has at least
   ``min_hits`` detections within ``look_ahead`` frames of t (or as many as there are
   frames within that distance: a single-frame preview shows its faces): a false
   detection of one or two frames is never rendered.

Each face carries ``key`` = (frame, anchor), the anchor being its track's latest
detection at or before that frame as (frame, index in the detector's list), and
``previous``, its key one frame earlier (None where the track starts). Keys are the
same in any run that sees the same window, which is what the warm starts follow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from ..temporal import MAX_GAP, RADIUS_SIGMAS, one_euro_params, smoothing_sigma, tracking_extent
from .align import ffhq_quad, quad_from_params, quad_params
from .landmarks import Face
from .tracking import FaceTracker, one_euro_quad

__all__ = ["TrackFace", "LookaheadTracker", "local_linear", "follow_motion"]

Key = Tuple[int, int, int]

MOTION_REACH = 6          # frames each side of the quartic that follows fast motion
MOTION_ORDER = 4
MOTION_SIGNIFICANCE = 6.0  # the line's departure must exceed this many of its noise standard deviations
MOTION_VISIBLE = 0.0025   # ... and this fraction of the face size; twice that: the quartic throughout
SHAPE_SIGMA = 1.5         # the half-side vector's Gaussian, in units of sigma


@dataclass
class TrackFace:
    """One face of one frame: its detection (for a bridged gap, the track's latest earlier one),
    its smoothed FFHQ quad, its key, its key on the previous frame, frames since its last detection."""

    face: Face
    quad: np.ndarray
    key: Key
    previous: Optional[Key]
    missed: int = 0
    raw_quad: Optional[np.ndarray] = field(default=None, repr=False)


def local_linear(frames: np.ndarray, values: np.ndarray, at: float, sigma: float) -> np.ndarray:
    """Value at frame `at` of the line fitted to (frames, values (N, D)) with Gaussian weights around it."""
    d = frames.astype(np.float64) - at
    w = np.exp(-0.5 * (d / sigma) ** 2)
    s0, s1, s2 = w.sum(), (w * d).sum(), (w * d * d).sum()
    t0 = (w[:, None] * values).sum(0)
    det = s0 * s2 - s1 * s1
    if len(d) < 2 or det <= 1e-9 * s0 * s0:
        return t0 / s0  # one frame (or all at one frame): the weighted mean
    t1 = (w[:, None] * d[:, None] * values).sum(0)
    return (s2 * t0 - s1 * t1) / det


def _local_poly(d: np.ndarray, weights: np.ndarray, order: int) -> Tuple[np.ndarray, np.ndarray]:
    """Weighted least squares of a polynomial of `order` in d: (row giving its value at 0, hat matrix)."""
    x = np.vander(d, order + 1, increasing=True)
    a = x.T * weights
    coef = np.linalg.solve(a @ x, a)
    return coef[0], x @ coef


def follow_motion(frames: np.ndarray, centres: np.ndarray, at: float, sigma: float, line: np.ndarray,
                  size: float) -> np.ndarray:
    """The centre (2,) at frame `at`: `line` (the local linear fit), moved towards a local quartic fit
    where the motion turns faster than the line can follow.

    The quartic (flat weights, frames within MOTION_REACH of `at`) is unbiased on a head shake or a
    whip pan; the line is not, but it is quieter. Their difference is the line's bias plus noise whose
    standard deviation follows from the quartic's residuals. Below MOTION_SIGNIFICANCE of those (or
    below MOTION_VISIBLE of the face size) the line stands; from twice that on, the quartic; a linear
    ramp between. Needs 7 frames in reach (residuals with 2 degrees of freedom) and sigma >= 0.5
    (below, the line is all but the detections themselves: nothing to follow).
    """
    d = frames.astype(np.float64) - at
    inside = np.abs(d) <= MOTION_REACH
    n = int(inside.sum())
    if n < MOTION_ORDER + 3 or sigma < 0.5:
        return line
    d, centres = d[inside], centres[inside]
    quartic, hat = _local_poly(d, np.ones(n), MOTION_ORDER)
    linear, _ = _local_poly(d, np.exp(-0.5 * (d / sigma) ** 2), 1)
    noise = ((centres - hat @ centres) ** 2).sum() / (2 * (n - MOTION_ORDER - 1))
    departure = quartic @ centres - line
    start = max(MOTION_SIGNIFICANCE * math.sqrt(noise * ((quartic - linear) ** 2).sum()), MOTION_VISIBLE * size)
    weight = min(max(np.linalg.norm(departure) / start - 1.0, 0.0), 1.0)
    return line + weight * departure


class LookaheadTracker:
    """Detections pushed frame by frame; :meth:`faces_at` gives a frame's faces once
    ``look_ahead`` later frames are in (or the stream has ended there).

    ``smoothing`` in [0, 1] (0: raw quads), ``mode`` "zero-phase" or "causal",
    ``max_gap``: longest detector drop-out bridged, ``min_hits``: detections a track needs
    near a frame to be shown (zero-phase; default 3). Frames must be pushed consecutively.
    """

    def __init__(self, smoothing: float = 0.5, mode: str = "zero-phase", max_gap: int = MAX_GAP,
                 min_hits: Optional[int] = None):
        self.smoothing, self.mode, self.max_gap = float(smoothing), mode, int(max_gap)
        self.behind, self.look_ahead, self.history = tracking_extent(self.smoothing, mode, self.max_gap)
        self.sigma = smoothing_sigma(self.smoothing)
        self.radius = math.ceil(RADIUS_SIGMAS * self.sigma)
        self.min_hits = (3 if mode == "zero-phase" else 1) if min_hits is None else int(min_hits)
        self.reset()

    def reset(self) -> None:
        """Forget every frame (a new shot or clip)."""
        self._faces: Dict[int, List[Face]] = {}
        self._params: Dict[int, List[np.ndarray]] = {}  # per detection: centre, half-side (4,)
        self.first: Optional[int] = None
        self.newest: Optional[int] = None

    def push(self, index: int, faces: List[Face]) -> None:
        """Add the next frame's detections (frame numbers must follow each other)."""
        if self.newest is not None and index != self.newest + 1:
            raise ValueError(f"frame {index} pushed after frame {self.newest}: call reset() at a jump")
        if self.first is None:
            self.first = index
        self.newest = index
        self._faces[index] = list(faces)
        self._params[index] = [np.concatenate(quad_params(ffhq_quad(f.landmarks))) for f in faces]
        for old in [i for i in self._faces if i < index - self.history - self.look_ahead]:
            del self._faces[old], self._params[old]

    def ready(self, index: int) -> bool:
        """True when frame `index` has its full look-ahead."""
        return self.newest is not None and index + self.look_ahead <= self.newest

    def faces_at(self, index: int) -> List[TrackFace]:
        """The faces of frame `index` from the frames pushed so far within its window."""
        if self.newest is None or not self.first <= index <= self.newest:
            raise ValueError(f"frame {index} is not among the frames pushed")
        lo, hi = max(self.first, index - self.history), min(self.newest, index + self.look_ahead)
        association = FaceTracker(smoothing=0.0, max_missing=self.max_gap)
        tracks: Dict[int, Dict[int, int]] = {}  # track -> {frame: detection index}
        for frame in range(lo, hi + 1):
            for j, tracked in enumerate(association.update(self._faces[frame])):
                tracks.setdefault(tracked.track_id, {})[frame] = j
        out = []
        for observed in tracks.values():
            face = self._face_of(index, observed)
            if face is not None:
                out.append(face)
        return out

    def _face_of(self, index: int, observed: Dict[int, int]) -> Optional[TrackFace]:
        """The track's face at `index`: detected there, or inside a gap it bridges; None if absent."""
        frames = sorted(observed)
        before = [f for f in frames if f <= index]
        after = [f for f in frames if f >= index]
        if not before or not after:
            return None  # the track starts after or ends before this frame
        near = [f for f in frames if abs(f - index) <= self.look_ahead]
        seen = min(self.newest, index + self.look_ahead) - max(self.first, index - self.look_ahead) + 1
        if len(near) < min(self.min_hits, seen):  # fewer frames seen (a preview, the clip's end): fewer hits
            return None
        anchor = before[-1]
        j = observed[anchor]
        key = (index, anchor, j)
        previous = None
        if frames[0] < index:
            prev_anchor = max(f for f in frames if f <= index - 1)
            previous = (index - 1, prev_anchor, observed[prev_anchor])
        detected = anchor == index
        values = self._smoothed(index, frames, observed, after[0])
        raw = quad_from_params(*np.split(self._params[index][j], 2)) if detected else None
        return TrackFace(self._faces[anchor][j], quad_from_params(values[:2], values[2:]), key, previous,
                         index - anchor, raw)

    def _smoothed(self, index: int, frames: List[int], observed: Dict[int, int], next_seen: int) -> np.ndarray:
        """Centre and half-side vector (4,) of the track at `index`."""
        def params(f):
            return self._params[f][observed[f]]

        if self.mode == "causal":
            if self.sigma == 0.0 or self.behind == 0:
                return params(index)
            min_cutoff, beta = one_euro_params(self.smoothing)
            history = [(f, params(f)[:2], params(f)[2:]) for f in frames if index - self.behind < f <= index]
            c, x = quad_params(one_euro_quad(history, min_cutoff, beta))
            return np.concatenate([c, x])
        if self.sigma == 0.0:
            prev_seen = max(f for f in frames if f <= index)
            if prev_seen == index:
                return params(index)
            a = (index - prev_seen) / (next_seen - prev_seen)  # a gap: straight line between its ends
            return (1 - a) * params(prev_seen) + a * params(next_seen)
        prev_seen = max(f for f in frames if f <= index)
        reach = max(self.radius, min(MOTION_REACH, self.look_ahead))
        lo, hi = min(index - reach, prev_seen), max(index + reach, next_seen)
        near = np.array([f for f in frames if lo <= f <= hi])
        values = np.stack([params(f) for f in near])
        smooth = (near >= min(index - self.radius, prev_seen)) & (near <= max(index + self.radius, next_seen))
        centre = local_linear(near[smooth], values[smooth, :2], index, self.sigma)
        half_side = local_linear(near[smooth], values[smooth, 2:], index, SHAPE_SIGMA * self.sigma)
        size = 2.0 * float(np.linalg.norm(values[:, 2:], axis=1).mean())
        if self.look_ahead >= MOTION_REACH:
            centre = follow_motion(near, values[:, :2], index, self.sigma, centre, size)
        return np.concatenate([centre, half_side])
