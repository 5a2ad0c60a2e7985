"""Face identities across frames and causal smoothing of the alignment quad.

:class:`FaceTracker` is the online tracker: it gives each face a ``track_id``
(Hungarian assignment on box overlap and distance to a constant-velocity prediction)
and smooths each track's FFHQ quad causally with a one-euro filter, so the aligned
crop does not jitter while still following real motion with little lag. The quad is
smoothed through its centre and half-side vector (position, and scale + rotation),
in units of the face's size, so the behaviour does not depend on the resolution.
Time is counted in frames.

The smoothing has finite memory: the filter is run afresh over the track's
observations of the last ``window`` frames (about five filter time constants) at
every frame (:func:`one_euro_quad`). Identities do not: which track a detection
joins depends on every earlier assignment, so a tracker started mid-clip can differ
from one started at frame 0 (rarely, e.g. two faces crossing just after the start).
Renders therefore do not carry a FaceTracker along a clip: the pipeline's tracking
stage (:mod:`engine.faces.lookahead`) re-runs the association over a bounded window
for every frame, which makes each frame's faces a function of that window alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..temporal import one_euro_params, one_euro_window
from .align import ffhq_quad, quad_from_params, quad_params
from .landmarks import Face

__all__ = ["OneEuroFilter", "TrackedFace", "FaceTracker", "smoothing_params", "one_euro_quad", "box_iou"]

smoothing_params = one_euro_params  # (min_cutoff, beta) for a strength; defined with the other frame counts


class OneEuroFilter:
    """One-euro filter (Casiez et al. 2012) on a vector; time in frames.

    The cut-off frequency (cycles per frame) rises with the filtered speed:
    ``cutoff = min_cutoff + beta * |speed| / scale``, so still signals are smoothed
    hard and fast motion passes with little lag.
    """

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float = 0.2):
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None

    @staticmethod
    def _alpha(cutoff: float, dt: float) -> float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self.x = None
        self.dx = None

    def __call__(self, value, dt: float = 1.0, scale: float = 1.0) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        if self.x is None:
            self.x = value.copy()
            self.dx = np.zeros_like(value)
            return self.x.copy()
        dt = max(float(dt), 1e-6)
        raw_dx = (value - self.x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self.dx = self.dx + a_d * (raw_dx - self.dx)
        speed = float(np.linalg.norm(self.dx)) / max(float(scale), 1e-9)
        a = self._alpha(self.min_cutoff + self.beta * speed, dt)
        self.x = self.x + a * (value - self.x)
        return self.x.copy()


def box_iou(a, b) -> float:
    """Intersection over union of two x0, y0, x1, y1 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class TrackedFace:
    """A face with its identity and its (smoothed) FFHQ quad.

    ``missed`` is 0 for a face detected in this frame; a track held over a detector
    miss (``FaceTracker(hold=...)``) is reported with its last face, its last quad and
    the number of frames it has been missing.
    """

    track_id: int
    face: Face
    quad: np.ndarray
    raw_quad: np.ndarray = field(repr=False, default=None)
    missed: int = 0


class _Track:
    """One face over time: its recent raw observations and the smoothed quad."""

    def __init__(self, track_id: int, frame: int, face: Face, raw_quad: np.ndarray, params):
        self.track_id = track_id
        self.params = params  # (min_cutoff, beta, window) or None: no smoothing
        self.history: list[tuple[int, np.ndarray, np.ndarray]] = []  # (frame, centre, half-side)
        self.centres: list[tuple[int, np.ndarray]] = []  # box centres, for the motion prediction
        self.missed = 0
        self.face = face
        self.raw_quad = raw_quad
        self.quad = raw_quad
        self.observe(frame, face, raw_quad)

    @property
    def size(self) -> float:
        return max(math.sqrt(max(self.face.area, 1e-9)), 1.0)

    @property
    def velocity(self) -> np.ndarray:
        """Box-centre motion per frame from the last two observations."""
        if len(self.centres) < 2:
            return np.zeros(2)
        (f0, c0), (f1, c1) = self.centres[-2:]
        return (c1 - c0) / max(f1 - f0, 1)

    def predicted_box(self) -> np.ndarray:
        shift = self.velocity * (self.missed + 1)
        return self.face.box + np.concatenate([shift, shift])

    def observe(self, frame: int, face: Face, raw_quad: np.ndarray) -> None:
        self.face = face
        self.raw_quad = raw_quad
        self.missed = 0
        self.centres = (self.centres + [(frame, face.center)])[-2:]
        if self.params is None:
            self.quad = raw_quad.copy()
            return
        min_cutoff, beta, window = self.params
        c, x = quad_params(raw_quad)
        self.history = [h for h in self.history if h[0] > frame - window] + [(frame, c, x)]
        self.quad = one_euro_quad(self.history, min_cutoff, beta)


def one_euro_quad(history, min_cutoff: float, beta: float) -> np.ndarray:
    """The causal one-euro filter run over a track's recent observations; its last quad.

    ``history``: (frame, centre, half-side vector) tuples in time order, e.g. those of
    the last ``window`` frames: the result depends on nothing else (bounded memory).
    """
    frames = [h[0] for h in history]
    scales = [math.hypot(*h[2]) for h in history]
    cs = _one_euro_run(frames, [h[1] for h in history], scales, min_cutoff, beta)
    xs = _one_euro_run(frames, [h[2] for h in history], scales, min_cutoff, beta / 4.0)
    return quad_from_params(cs, xs)


def _one_euro_run(frames, values, scales, min_cutoff, beta, d_cutoff=0.2) -> np.ndarray:
    """:class:`OneEuroFilter` over a short 2-D sequence (plain floats: fast); last output."""
    x0, x1 = float(values[0][0]), float(values[0][1])
    d0 = d1 = 0.0
    two_pi = 2.0 * math.pi
    for k in range(1, len(values)):
        dt = max(float(frames[k] - frames[k - 1]), 1e-6)
        v0, v1 = float(values[k][0]), float(values[k][1])
        a_d = 1.0 / (1.0 + 1.0 / (two_pi * d_cutoff * dt))
        d0 += a_d * ((v0 - x0) / dt - d0)
        d1 += a_d * ((v1 - x1) / dt - d1)
        cutoff = min_cutoff + beta * math.hypot(d0, d1) / max(scales[k], 1e-9)
        a = 1.0 / (1.0 + 1.0 / (two_pi * cutoff * dt))
        x0 += a * (v0 - x0)
        x1 += a * (v1 - x1)
    return np.array([x0, x1])


class FaceTracker:
    """Associate faces across frames and smooth their quads (causal one-euro filter).

    ``smoothing`` in [0, 1]: 0 turns smoothing off (quads are the raw FFHQ quads);
    0.5 (default) removes most landmark jitter with well under a frame of lag on
    fast motion; 1 is heaviest. ``min_cutoff``/``beta`` override the filter and
    ``window`` (frames) its memory. A track is dropped after ``max_missing``
    consecutive frames without its face (a face returning later gets a new id).
    ``hold`` > 0 also reports a track for up to that many missed frames with its last
    quad, to bridge detector drop-outs. A detection joins a track when its box
    overlaps the track's predicted box by at least ``min_iou`` or its centre lies
    within ``max_distance`` face sizes of it. Frames are assumed consecutive: call
    :meth:`reset` at a cut or a jump in time.
    """

    def __init__(
        self,
        smoothing: float = 0.5,
        max_missing: int = 10,
        *,
        hold: int = 0,
        min_iou: float = 0.2,
        max_distance: float = 0.6,
        min_cutoff: float | None = None,
        beta: float | None = None,
        window: int | None = None,
    ):
        if not 0.0 <= float(smoothing) <= 1.0:
            raise ValueError(f"smoothing must be within [0, 1], got {smoothing}")
        if int(max_missing) < 0 or int(hold) < 0:
            raise ValueError("max_missing and hold must be >= 0")
        self.smoothing = float(smoothing)
        self.max_missing = int(max_missing)
        self.hold = min(int(hold), self.max_missing)
        self.min_iou = float(min_iou)
        self.max_distance = float(max_distance)
        if self.smoothing == 0.0 and min_cutoff is None:
            self._params = None
            self.window = 1
        else:
            mc, b = smoothing_params(self.smoothing)
            mc = mc if min_cutoff is None else float(min_cutoff)
            b = b if beta is None else float(beta)
            if window is None:  # ~5 time constants of the still-face filter
                window = one_euro_window(mc)
            self.window = max(1, int(window))
            self._params = (mc, b, self.window)
        self._tracks: list[_Track] = []
        self._next_id = 0
        self._frame = -1

    def reset(self) -> None:
        """Forget all tracks (e.g. at a cut); ids start again from 0."""
        self._tracks = []
        self._next_id = 0
        self._frame = -1

    @property
    def active_tracks(self) -> list[int]:
        """Ids of the tracks currently kept (including ones missing a few frames)."""
        return [t.track_id for t in self._tracks]

    def _cost(self, track: _Track, face: Face) -> float:
        pred = track.predicted_box()
        iou = box_iou(pred, face.box)
        pc = np.array([(pred[0] + pred[2]) / 2, (pred[1] + pred[3]) / 2])
        dist = float(np.linalg.norm(face.center - pc)) / track.size
        ratio = math.sqrt(max(face.area, 1e-9)) / track.size
        if not (0.5 <= ratio <= 2.0) or (iou < self.min_iou and dist > self.max_distance):
            return math.inf
        return dist + (1.0 - iou) + abs(math.log(ratio))

    def update(self, faces: list[Face]) -> list[TrackedFace]:
        """Feed the next frame's faces; returns them (in input order) with track ids and
        smoothed quads, followed by held tracks (``hold``) missing from this frame."""
        self._frame += 1
        faces = list(faces)
        n_t, n_f = len(self._tracks), len(faces)
        assigned: dict[int, int] = {}  # face index -> track index
        if n_t and n_f:
            cost = np.full((n_t, n_f), 1e9)
            for i, tr in enumerate(self._tracks):
                for j, f in enumerate(faces):
                    c = self._cost(tr, f)
                    if math.isfinite(c):
                        cost[i, j] = c
            rows, cols = linear_sum_assignment(cost)
            for i, j in zip(rows, cols):
                if cost[i, j] < 1e9:
                    assigned[j] = i
        out: list[TrackedFace] = []
        matched_tracks = set(assigned.values())
        new_tracks: list[_Track] = []
        for j, f in enumerate(faces):
            raw = ffhq_quad(f.landmarks)
            if j in assigned:
                tr = self._tracks[assigned[j]]
                tr.observe(self._frame, f, raw)
            else:
                tr = _Track(self._next_id, self._frame, f, raw, self._params)
                self._next_id += 1
                new_tracks.append(tr)
            out.append(TrackedFace(tr.track_id, f, tr.quad.copy(), raw, 0))
        kept: list[_Track] = []
        for i, tr in enumerate(self._tracks):
            if i not in matched_tracks:
                tr.missed += 1
                if tr.missed > self.max_missing:
                    continue
                if tr.missed <= self.hold:
                    out.append(TrackedFace(tr.track_id, tr.face, tr.quad.copy(), tr.raw_quad, tr.missed))
            kept.append(tr)
        self._tracks = kept + new_tracks
        return out
