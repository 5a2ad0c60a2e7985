"""Chunk planning: which frames each farm task writes, and which it processes first.

Why chunks reproduce a single-pass render exactly: the engine restarts its
warm-start chain (a cold projection) at every keyframe, i.e. every source frame
whose number is a multiple of the `keyframe_interval` parameter, and the face
tracker's smoothing only looks back a bounded number of frames. So the state in
which a frame is rendered depends only on the frames since shortly before the
preceding keyframe, never on where a render started: every chunk pre-rolls
from there (frames processed, not written) and writes exactly the pixels a
whole-clip render writes. Chunks whose first frame is a keyframe pre-roll only
the tracker's few frames; `plan_chunks` therefore cuts on the keyframe grid,
and every export keeps the farm's chunks on it (see `snap_chunk`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from ..core.errors import UserError

DEFAULT_CHUNK_KEYFRAMES = 2          # default chunk: this many keyframe intervals


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
    after a keyframe re-projects those j frames. Sizes below one interval are kept as given.
    """
    if chunk_size < 1:
        raise UserError(f"chunk size must be at least 1, got {chunk_size}", field="chunk_size")
    k = keyframe_interval
    if k <= 0 or chunk_size < k:
        return chunk_size
    return max(k, (chunk_size + k // 2) // k * k)


def default_chunk_size(keyframe_interval: int) -> int:
    return DEFAULT_CHUNK_KEYFRAMES * keyframe_interval if keyframe_interval > 0 else 48


def chunk_size_for_workers(n_frames: int, keyframes: int, workers: int) -> int:
    """Default chunk: two keyframe intervals, fewer when that leaves workers idle."""
    size = default_chunk_size(keyframes)
    while size > keyframes and math.ceil(n_frames / size) < workers:
        size -= keyframes
    return size


# -- warm-up ----------------------------------------------------------------------------------------
def chunk_warmup_first(first: int, overlap: int, keyframe_interval: int) -> int:
    """First frame a task writing from `first` has to process (mirrors the renderer).

    With keyframes every K frames the projection chain restarts at the keyframe at or before
    `first`, and the landmark tracker needs `overlap` frames of history before that. Without
    keyframes (K = 0) the chain never restarts: only a render from frame 0 reproduces it.
    """
    if keyframe_interval <= 0:
        return 0
    keyframe = first - first % keyframe_interval
    return max(0, min(keyframe, first - overlap))


def tracker_memory(params: Dict[str, Any]) -> int:
    """Frames of history the landmark tracker keeps (0 when the engine is not importable)."""
    try:
        from engine.faces.tracking import FaceTracker
    except Exception:
        return 0
    try:
        return int(getattr(FaceTracker(smoothing=params.get("smoothing", 0.5)), "memory", 0))
    except Exception:
        return 0


# -- cutting a range --------------------------------------------------------------------------------
def plan_chunks(first: int, last: int, chunk_size: int, overlap: int = 0, *,
                keyframe_interval: int = 0) -> List[Chunk]:
    """Split source frames first..last (inclusive) into chunks on an absolute grid.

    Chunk boundaries are the multiples of the (effective) chunk size, so with a chunk size that is
    a multiple of `keyframe_interval` every chunk but possibly the first starts on a keyframe.
    `overlap` is the pre-roll each chunk processes before its range (at least the landmark
    tracker's memory); `warmup_first` adds what the keyframe chain needs on top.
    """
    if first < 0 or last < first:
        raise UserError(f"bad frame range {first}-{last}", field="frames")
    if overlap < 0:
        raise UserError(f"warm-up must be 0 or more frames, got {overlap}", field="warmup")
    size = effective_chunk_size(chunk_size, keyframe_interval)
    chunks = []
    for j in range(first // size, last // size + 1):
        a, b = max(first, j * size), min(last, (j + 1) * size - 1)
        chunks.append(Chunk(a, b, chunk_warmup_first(a, overlap, keyframe_interval)))
    return chunks


def grid_ranges(first: int, last: int, size: int) -> List[Tuple[int, int]]:
    """(first, last) ranges whose farm chunking of `size` lands on the absolute size grid.

    A head range up to the first grid point (when `first` is not on it) and the rest, which a
    farm chunking from its start in steps of `size` then cuts exactly on the grid.
    """
    boundary = -(-first // size) * size
    if boundary == first or boundary > last:
        return [(first, last)]
    return [(first, boundary - 1), (boundary, last)]


def snap_chunk(frames: Tuple[int, int], job: Tuple[int, int], keyframe_interval: int) -> Optional[Tuple[int, int]]:
    """Move a farm-chosen chunk's boundaries onto the keyframe grid of its job.

    Farm managers cut a range into chunks their own way (OpenJD divides it evenly, adaptive
    chunking by run time). Each task can snap its own chunk: interior boundaries move down to
    the keyframe at or before them, the job's own ends stay. Because the same monotone map is
    applied to every boundary, the snapped chunks still cover the job range exactly once (a
    chunk may become empty: None), and each starts on a keyframe, so no task re-projects frames
    that another task writes.
    """
    (a, b), (first, last) = frames, job
    if not (first <= a <= b <= last):
        raise UserError(f"chunk {a}-{b} is not inside the job's frames {first}-{last}", field="frames")
    k = keyframe_interval
    if k <= 0:
        return a, b

    def snap(x: int) -> int:
        if x <= first or x > last:
            return x
        return max(first, x - x % k)

    a2, b2 = snap(a), snap(b + 1) - 1
    return (a2, b2) if a2 <= b2 else None
