"""The pictures the engine sees of a clip: its frames, or the fields of interlaced frames in time order.

An interlaced frame holds two fields taken half a frame apart: the even rows
(top field) and the odd rows (bottom field). Stylised as one picture, a face
in motion would be combed and its fields mixed; so each field is stylised on
its own, in the order they are shown ("tff": top first), as a full-height
picture: the field's rows in place, the rows between them interpolated (so a
face keeps its shape for detection and projection). Afterwards each field
keeps only its own rows and the two are woven back into the frame (`Weaver`),
which the encoder flags with the source's field order. Rows a field does not
change come back bit-identical, as for progressive frames.

Pictures are numbered ``frame * per_frame + k`` (k = 0 for the field shown
first), so keyframes, warm-up and chunk determinism work on pictures exactly
as on frames; a progressive clip's pictures are its frames.
"""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from . import media


class Pictures:
    """Read a clip as pictures at `bits` (8 or 16) per channel: frames, or fields when it is interlaced."""

    def __init__(self, info: "media.MediaInfo", bits: int):
        self.info, self.bits = info, bits
        self.per_frame = 2 if info.interlaced else 1
        # the row parity (0 even, 1 odd) of the field shown first, then of the second
        self.parities = (0, 1) if info.field_order == "tff" else (1, 0)

    def of_frames(self, frames: Iterable[int]) -> List[int]:
        """The pictures of `frames`, in order."""
        return [f * self.per_frame + k for f in frames for k in range(self.per_frame)]

    def frame_of(self, picture: int) -> int:
        return picture // self.per_frame

    def read(self, start: int, end: int) -> Iterator[Tuple[int, np.ndarray]]:
        """``(picture, H x W x 3 image)`` for pictures ``start..end``; closing it stops the decoder."""
        frames = media.read_frames(self.info, self.frame_of(start), self.frame_of(end), bits=self.bits)
        try:
            for frame_index, frame in frames:
                for k in range(self.per_frame):
                    picture = frame_index * self.per_frame + k
                    if start <= picture <= end:
                        yield picture, frame if self.per_frame == 1 else field_picture(frame, self.parities[k])
        finally:
            frames.close()


class Weaver:
    """Collects stylised pictures and hands out each frame when all its pictures are in."""

    def __init__(self, pictures: Pictures):
        self.pictures = pictures
        self._waiting: Dict[int, Dict[int, Tuple[np.ndarray, int]]] = {}

    def add(self, picture: int, image: np.ndarray, faces: int) -> Optional[Tuple[int, np.ndarray, int]]:
        """``(frame, image, faces)`` once `picture` completes its frame, else None."""
        p = self.pictures
        frame, k = divmod(picture, p.per_frame)
        if p.per_frame == 1:
            return frame, image, faces
        parts = self._waiting.setdefault(frame, {})
        parts[k] = (image, faces)
        if len(parts) < p.per_frame:
            return None
        del self._waiting[frame]
        woven = parts[0][0].copy()
        rows = p.parities[1]
        woven[rows::2] = parts[1][0][rows::2]
        return frame, woven, max(parts[0][1], parts[1][1])


def field_picture(frame: np.ndarray, parity: int) -> np.ndarray:
    """A full-height picture of one field: rows of `parity` (0 even, 1 odd) kept, the others the mean of
    their neighbours (the edge row copies its one neighbour)."""
    out = frame.copy()
    h = frame.shape[0]
    if h < 2:
        return out
    own = frame[parity::2].astype(np.uint32)
    other = np.arange(1 - parity, h, 2)               # rows of the other field
    above = np.clip((other - 1 - parity) // 2, 0, len(own) - 1)
    below = np.clip((other - 1 - parity) // 2 + 1, 0, len(own) - 1)
    out[other] = ((own[above] + own[below] + 1) // 2).astype(frame.dtype)
    return out
