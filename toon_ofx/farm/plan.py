"""Chunk planning: which frames each farm task writes, and which it processes first.

Why chunks reproduce a single-pass render exactly (engine.pipeline has the
argument, engine.temporal the arithmetic, shared with the renderer): a frame's
pixels depend only on the detections from shortly before the keyframe of the
oldest warm-start chain it shows (the keyframe at or before it, or the one
before that inside a keyframe cross-fade) to a few frames after it. Every task
decodes that span (frames before its range processed, not written; the
look-ahead after it only detected) and so writes exactly the pixels a
whole-clip render writes, whatever its range.

Where chunks start only decides the work repeated: a chunk starting on the
segment grid 0, K + V, 2K + V, ... (K the keyframe interval, V the cross-fade
overlap) re-projects just the V cross-fade frames of its first chain, which the
chunk before it writes; anywhere else it re-projects more. `plan_chunks`
therefore cuts on that grid, and every export keeps the farm's chunks on it
(see `snap_chunk`).

A VToonify style (the style kind `core.vtoonify` decides) has no keyframe chains:
its plan is `engine.temporal.VToonifyPlan`, a frame depends only on a short window
before it (tracking, style codes), and chunks are frame-exact: any size, cut from
the range's first frame, each task's warm-up what that plan says.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

from engine.temporal import TemporalPlan, VToonifyPlan

from ..core.errors import UserError
from ..core.params import validate

DEFAULT_CHUNK_KEYFRAMES = 2          # default chunk: this many keyframe intervals
FRAME_EXACT_CHUNK = 96               # default chunk of a frame-exact plan: its warm-up (up to ~30 frames
#                                      tracked, a few style codes) stays a few per cent of the task

Plan = Union[TemporalPlan, VToonifyPlan]


@dataclass(frozen=True)
class Chunk:
    """One farm task: write source frames first..last (inclusive).

    `warmup_first` is the first frame the task processes: frames warmup_first..first-1 are
    rendered but not written, so that `first` sees the history it has in a whole-clip render.
    """

    first: int
    last: int
    warmup_first: int

    @property
    def frames(self) -> Tuple[int, int]:
        return self.first, self.last

    @property
    def warmup(self) -> int:
        """Frames processed before `first` (not written)."""
        return self.first - self.warmup_first

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


# -- chunk sizes ----------------------------------------------------------------------------------
def effective_chunk_size(chunk_size: int, keyframe_interval: int) -> int:
    """`chunk_size` moved to the nearest multiple of the keyframe interval (at least one interval).

    A chunk that starts on a keyframe needs no projected warm-up frames; one that starts j frames
    after a keyframe re-projects those j frames. A chunk shorter than an interval cannot split the
    work: a task writing any frame of a keyframe segment projects the segment from its keyframe,
    so smaller chunks only repeat that work (or, snapped onto the grid, have nothing to do). Only
    a shorter keyframe interval makes smaller tasks, and it changes the result: the user's call.
    """
    if chunk_size < 1:
        raise UserError(f"chunk size must be at least 1, got {chunk_size}", field="chunk_size")
    k = keyframe_interval
    if k <= 0:
        return chunk_size
    return max(k, (chunk_size + k // 2) // k * k)


def default_chunk_size(keyframe_interval: int) -> int:
    return DEFAULT_CHUNK_KEYFRAMES * keyframe_interval if keyframe_interval > 0 else 48


def chunk_size_for_workers(n_frames: int, plan: Plan, workers: int) -> int:
    """Default chunk: two keyframe intervals, fewer when that leaves workers idle; a frame-exact plan's
    `FRAME_EXACT_CHUNK` frames, or the range split evenly between the workers when that is fewer."""
    if frame_exact(plan):
        return max(1, min(FRAME_EXACT_CHUNK, math.ceil(n_frames / max(1, workers))))
    keyframes = plan.keyframe_interval
    size = default_chunk_size(keyframes)
    while size > keyframes and math.ceil(n_frames / size) < workers:
        size -= keyframes
    return size


def task_chunk_size(chunk_size: int, plan: Plan) -> int:
    """Frames per task for an asked chunk size: as asked for a frame-exact plan, else moved onto the
    keyframe grid (`effective_chunk_size`)."""
    return effective_chunk_size(chunk_size, 0 if frame_exact(plan) else plan.keyframe_interval)


# -- the plan ---------------------------------------------------------------------------------------
def temporal_plan(params: Dict[str, Any]) -> Plan:
    """The renderer's plan for these effect parameters: a VToonify style's `VToonifyPlan` (style window,
    tracking reach), else the keyframe chains' `TemporalPlan` (keyframes, cross-fade, tracking reach).

    The style's kind comes from its manifest entry or, for a file, from the file when it is readable
    here (`core.vtoonify.vtoonify_style`); a file only the farm's workers see plans as a StyleGAN style."""
    from ..core.vtoonify import vtoonify_style

    p = validate(params)
    if vtoonify_style(p["model"]) is not None:
        return VToonifyPlan.create(p["smoothing"], p["smoothing_mode"])
    return TemporalPlan.create(p["keyframe_interval"], p["keyframe_overlap"], p["smoothing"], p["smoothing_mode"])


def frame_exact(plan: Plan) -> bool:
    """True for a plan without keyframe chains (a VToonify style): chunks of any size, starting anywhere,
    reproduce a single pass and repeat only their warm-up."""
    return isinstance(plan, VToonifyPlan)


# -- warm-up ----------------------------------------------------------------------------------------
def chunk_warmup_first(first: int, warmup: int, plan: Plan) -> int:
    """First frame a task writing from `first` processes (mirrors the renderer): the plan's warm-up
    start, or `warmup` extra frames before `first` if that is earlier."""
    return max(0, min(plan.warmup_start(first), first - warmup))


# -- cutting a range --------------------------------------------------------------------------------
def plan_chunks(first: int, last: int, chunk_size: int, warmup: int = 0, *,
                plan: Plan = TemporalPlan(keyframe_interval=0)) -> List[Chunk]:
    """Split source frames first..last (inclusive) into chunks.

    Keyframe chains: on an absolute grid, the multiples of the (effective) chunk size shifted by
    the plan's cross-fade overlap, so with a chunk size that is a multiple of the keyframe interval
    every chunk but possibly the first starts on the segment grid. A frame-exact plan: chunks of
    exactly `chunk_size` frames from `first` (the last one shorter). `warmup`: extra frames each
    chunk processes before its range, beyond what the plan needs (`warmup_first`).
    """
    if first < 0 or last < first:
        raise UserError(f"bad frame range {first}-{last}", field="frames")
    if warmup < 0:
        raise UserError(f"warm-up must be 0 or more frames, got {warmup}", field="warmup")
    size = task_chunk_size(chunk_size, plan)
    offset = first if frame_exact(plan) else plan.overlap
    return [Chunk(a, b, chunk_warmup_first(a, warmup, plan)) for a, b in grid_chunks(first, last, size, offset)]


def grid_chunks(first: int, last: int, size: int, offset: int = 0) -> List[Tuple[int, int]]:
    """first..last cut at the points ``j * size + offset`` (j >= 1)."""
    cuts = range(max(1, (first - offset) // size + 1), (last - offset) // size + 1)
    bounds = [first] + [j * size + offset for j in cuts if first < j * size + offset <= last] + [last + 1]
    return [(a, b - 1) for a, b in zip(bounds, bounds[1:])]


def grid_ranges(first: int, last: int, size: int, offset: int = 0) -> List[Tuple[int, int]]:
    """(first, last) ranges whose farm chunking of `size` lands on the grid of `grid_chunks`.

    A head range up to the first grid point (when chunking from `first` would miss the grid) and
    the rest, which a farm chunking from its start in steps of `size` then cuts exactly on it.
    """
    if first >= offset and (first - offset) % size == 0:
        return [(first, last)]
    boundary = max(first + (offset - first) % size, size + offset)
    if boundary > last:
        return [(first, last)]
    return [(first, boundary - 1), (boundary, last)]


def snap_chunk(frames: Tuple[int, int], job: Tuple[int, int], plan: Plan) -> Optional[Tuple[int, int]]:
    """Move a farm-chosen chunk's boundaries onto the segment grid of its job.

    Farm managers cut a range into chunks their own way (OpenJD divides it evenly, adaptive
    chunking by run time). Each task can snap its own chunk: interior boundaries move down to
    the segment start at or before them (TemporalPlan.segment_start), the job's own ends stay.
    Because the same monotone map is applied to every boundary, the snapped chunks still cover
    the job range exactly once (a chunk may become empty: None), and each starts on the grid, so
    tasks repeat as little projection as possible. A frame-exact plan keeps every chunk as it is.
    """
    (a, b), (first, last) = frames, job
    if not (first <= a <= b <= last):
        raise UserError(f"chunk {a}-{b} is not inside the job's frames {first}-{last}", field="frames")
    if frame_exact(plan) or plan.keyframe_interval <= 0:
        return a, b

    def snap(x: int) -> int:
        if x <= first or x > last:
            return x
        return max(first, plan.segment_start(x))

    a2, b2 = snap(a), snap(b + 1) - 1
    return (a2, b2) if a2 <= b2 else None
