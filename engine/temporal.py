"""How far in time each frame's result reaches: the arithmetic of exact chunks and resume.

Standard library only: the farm planner (on a submit host) uses it as it is, so
the renderer, the farm and the tests share one definition of which frames a
render of A..B has to decode and project.

Three things carry information between frames, and each is bounded:

* **Face tracks.** The faces of frame t (identities, smoothed quads, gap
  bridging) are a function of the detections of frames ``t - history`` to
  ``t + look_ahead`` only (:class:`engine.faces.lookahead.LookaheadTracker`).
* **Warm-start chains.** A chain starts cold at a keyframe (a multiple of the
  keyframe interval K) and is carried warm, face by face, to the next keyframe
  and ``overlap`` frames beyond it.
* **Cross-fade.** In the first ``overlap`` frames after a keyframe the face's
  latent is a blend of the old chain and the new one.

So frame t depends on the frames from ``projection_start(t) - history`` to
``t + look_ahead``, where ``projection_start(t)`` is the keyframe of the oldest
chain that frame t shows. A run that decodes that span and projects from that
keyframe computes, for every frame it writes, exactly what a single pass
computes (see :func:`TemporalPlan.warmup_start`).

A VToonify style (``engine.vtoonify.video``) has no chains: :class:`VToonifyPlan`
bounds what passes between its frames (the tracking stage and a face's style
codes over a short window), so a run may start on any frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

__all__ = ["TemporalPlan", "VToonifyPlan", "smoothing_sigma", "one_euro_window", "tracking_extent",
           "style_window", "MAX_GAP", "MODES", "STYLE_STRIDE"]

MODES = ("zero-phase", "causal")
MAX_GAP = 6           # frames: detector drop-outs up to this long are bridged (same track)
SIGMA_PER_STRENGTH = 4.0   # zero-phase Gaussian sigma (frames) at smoothing strength 1
RADIUS_SIGMAS = 3.0        # the zero-phase kernel is cut at this many sigmas
MAX_WINDOW = 150           # frames: caps the causal filter's window at the heaviest settings
STYLE_STRIDE = 4           # VToonify: frames between a face's style codes (besides where its track starts)


def smoothing_sigma(smoothing: float) -> float:
    """Zero-phase smoother's Gaussian sigma in frames for a strength in [0, 1] (0: off)."""
    return SIGMA_PER_STRENGTH * min(max(float(smoothing), 0.0), 1.0)


def one_euro_params(smoothing: float) -> Tuple[float, float]:
    """(min_cutoff in cycles/frame, beta) of the causal one-euro filter for a strength in (0, 1].

    The half-side vector (scale and rotation: noisier, changing slower) uses the same
    min_cutoff and a quarter of beta.
    """
    s = min(max(float(smoothing), 0.0), 1.0)
    min_cutoff = 0.08 * (1.0 - s) ** 2 + 0.005  # 0.085 (light) .. 0.005 (heavy); 0.5 -> 0.025
    beta = 40.0 * (1.0 - s) ** 1.5 + 2.0  # 42 .. 2; 0.5 -> 16
    return min_cutoff, beta


def one_euro_window(min_cutoff: float) -> int:
    """Frames the causal filter is re-run over: about five time constants of a still face."""
    return max(1, min(MAX_WINDOW, math.ceil(5.0 / (2.0 * math.pi * min_cutoff))))


def tracking_extent(smoothing: float, mode: str = "zero-phase", max_gap: int = MAX_GAP) -> Tuple[int, int, int]:
    """(behind, ahead, history) of the tracking stage, in frames.

    Frame t's faces are smoothed over the frames ``t - behind .. t + ahead`` of their
    track; telling which detections form that track takes the association run from
    ``max_gap + 2`` frames earlier (a track missing up to ``max_gap`` frames, and its
    last two observations for the motion prediction). ``history`` = behind + max_gap + 2:
    detections older than ``t - history`` never change frame t.
    """
    if mode not in MODES:
        raise ValueError(f"smoothing mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "causal":
        behind = one_euro_window(one_euro_params(smoothing)[0]) if smoothing > 0 else 0
        ahead = 0
    else:
        radius = math.ceil(RADIUS_SIGMAS * smoothing_sigma(smoothing))
        behind = ahead = max(radius, max_gap)
    return behind, ahead, behind + max_gap + 2


@dataclass(frozen=True)
class TemporalPlan:
    """Keyframe chains with a cross-fade overlap, plus the tracking stage's reach.

    ``keyframe_interval`` K (0: one chain from the first frame, never restarted);
    ``overlap`` V: the old chain runs V frames past each keyframe and is cross-faded
    into the new one (at most K // 2); ``history`` / ``look_ahead``: frames before /
    after a frame whose detections can change it (:func:`tracking_extent`).
    """

    keyframe_interval: int = 48
    overlap: int = 0
    history: int = 0
    look_ahead: int = 0

    @classmethod
    def create(cls, keyframe_interval: int, overlap: int, smoothing: float, mode: str = "zero-phase",
               max_gap: int = MAX_GAP) -> "TemporalPlan":
        k = max(0, int(keyframe_interval))
        v = min(max(0, int(overlap)), k // 2)
        _, ahead, history = tracking_extent(smoothing, mode, max_gap)
        return cls(k, v, history, ahead)

    # -- chains ------------------------------------------------------------------------------
    def chain_of(self, index: int) -> int:
        """The newest chain at a frame: the keyframe at or before it (0 without keyframes)."""
        k = self.keyframe_interval
        return index - index % k if k > 0 else 0

    def fading_chain(self, index: int):
        """(old chain's keyframe, weight of the new chain) inside a cross-fade, else None.

        Frame ``keyframe + j`` (j < V) shows ``(1 - a) * old + a * new`` with
        ``a = (j + 1) / (V + 1)``: a linear ramp that never repeats either end.
        """
        k, v = self.keyframe_interval, self.overlap
        if k <= 0 or v <= 0 or index < k:
            return None
        j = index % k
        if j >= v:
            return None
        return index - j - k, (j + 1) / (v + 1)

    def projection_start(self, first: int) -> int:
        """Keyframe of the oldest chain that frame `first` shows: projection must start there."""
        k = self.keyframe_interval
        if k <= 0:
            return 0  # one unbroken chain: only a render from the start reproduces it
        return max(0, (first - self.overlap) // k * k)

    def warmup_start(self, first: int) -> int:
        """First frame to decode so that frame `first` comes out as in a single pass.

        Frames before :meth:`projection_start` only feed the tracking stage.
        """
        return max(0, self.projection_start(first) - self.history)

    def decode_end(self, last: int, frame_count: int) -> int:
        """Last frame to decode so that frame `last` sees its look-ahead (the clip's end clips both
        a single pass and a chunk in the same place)."""
        return min(frame_count - 1, last + self.look_ahead)

    # -- chunk grid ----------------------------------------------------------------------------
    def segment_start(self, index: int) -> int:
        """Start of the segment holding `index` on the grid 0, K + V, 2K + V, ...

        A chunk starting on this grid projects only V frames it does not write (the
        new chain's cross-fade frames, which the chunk before it writes); anywhere else
        it re-projects more. Without keyframes there is one segment.
        """
        k = self.keyframe_interval
        if k <= 0:
            return 0
        s = (index - self.overlap) // k
        return s * k + self.overlap if s >= 1 else 0

    def segments(self, frames: List[int]) -> List[List[int]]:
        """Sorted frames grouped by :meth:`segment_start`."""
        out: dict = {}
        for index in frames:
            out.setdefault(self.segment_start(index), []).append(index)
        return list(out.values())


def style_window(smoothing: float) -> int:
    """Frames a VToonify style code is averaged over: the zero-phase smoother's span (2 x 3 sigma + 1; 1 = off)."""
    return 2 * math.ceil(RADIUS_SIGMAS * smoothing_sigma(smoothing)) + 1


@dataclass(frozen=True)
class VToonifyPlan:
    """Which frames a VToonify frame depends on: the style window W and the tracking stage's reach.

    No keyframe chains: a run writing A..B that decodes from ``warmup_start(A)``
    reproduces a single pass wherever A lies, so chunks of any size may start on
    any frame and repeat only their warm-up's tracking and style codes.
    """

    style_window: int = 1
    history: int = 0
    look_ahead: int = 0

    @classmethod
    def create(cls, smoothing: float, mode: str = "zero-phase", max_gap: int = MAX_GAP) -> "VToonifyPlan":
        _, ahead, history = tracking_extent(smoothing, mode, max_gap)
        return cls(style_window(smoothing), history, ahead)

    @property
    def style_stride(self) -> int:
        return min(STYLE_STRIDE, self.style_window)

    def style_start(self, first: int) -> int:
        """First frame whose style code frame `first` reads."""
        return max(0, first - self.style_window + 1)

    def track_start(self, first: int) -> int:
        """First frame the tracking stage hands on: one before style_start, whose links decide which faces
        of style_start need a code."""
        return max(0, self.style_start(first) - 1)

    def warmup_start(self, first: int) -> int:
        """First frame to decode so that frame `first` comes out as in a single pass."""
        return max(0, self.track_start(first) - self.history)

    def decode_end(self, last: int, frame_count: int) -> int:
        return min(frame_count - 1, last + self.look_ahead)
