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

Source pixels. The engine takes RGB pictures, 8 or 16 bits, in its working
colour space (`toon_ofx.core.colour`). A plain source (RGB video or images
in that space, no alpha) is read as such and its stylised pictures are the
frames written. Any other source (float OpenEXR, a plate in another colour
space, alpha, extra channels) is read as it is (`media.read_native`); the
engine sees its RGB converted, and `restore` builds the frame to write from
the SOURCE's pixels: only the pixels the engine changed (the faces) take the
stylised value converted back through the exact inverse; every other pixel,
channel and the alpha stay exactly as they came. The source pixels of the
pictures to be written are kept from decode to write (`expect`), so memory
holds only the frames in flight.
"""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional, Set, Tuple

import numpy as np

from . import media
from .colour import IDENTITY_VIDEO, Colour
from .media.images import to_depth


class Pictures:
    """Read a clip as pictures at `bits` (8 or 16) per channel: frames, or fields when it is interlaced.

    The engine sees RGB pictures in the working colour space (`colour`); `restore` turns a stylised
    picture back into what the output's frames hold (see the module docstring, "Source pixels").
    `output` (a core.outputs.OutputPlan) says whether frames keep the source's own pixels
    (`native`), its alpha (`alpha`) and every channel (`template`: written like the source file).
    """

    def __init__(self, info: "media.MediaInfo", bits: int, colour: Optional[Colour] = None, output=None):
        self.info, self.bits = info, bits
        self.per_frame = 2 if info.interlaced else 1
        # the row parity (0 even, 1 odd) of the field shown first, then of the second
        self.parities = (0, 1) if info.field_order == "tff" else (1, 0)
        self.colour = colour or IDENTITY_VIDEO
        image = info.image
        self.rgb = list(image.rgb) if image is not None else [0, 1, 2]
        self.alpha_index = image.alpha_index if image is not None else (3 if info.alpha else None)
        self.float = image is not None and image.is_float
        extra = image is not None and len(image.channels) != 3
        # plain: the decoded RGB frame is the engine's picture and the frame written (today's path, no copies)
        self.plain = self.colour.identity and not info.alpha and not self.float and not extra
        self.native = output is None or getattr(output, "native", True)
        self.keep_alpha = output is not None and getattr(output, "alpha", False)
        self.every_channel = output is not None and getattr(output, "template", None) is not None
        self._expected: Set[int] = set()
        self._kept: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def of_frames(self, frames: Iterable[int]) -> List[int]:
        """The pictures of `frames`, in order."""
        return [f * self.per_frame + k for f in frames for k in range(self.per_frame)]

    def frame_of(self, picture: int) -> int:
        return picture // self.per_frame

    def expect(self, pictures: Iterable[int]) -> None:
        """The pictures that will be restored (written): their source pixels are kept until then."""
        self._expected.update(pictures)

    def read(self, start: int, end: int) -> Iterator[Tuple[int, np.ndarray]]:
        """``(picture, H x W x 3 image)`` for pictures ``start..end``; closing it stops the decoder."""
        first, last = self.frame_of(start), self.frame_of(end)
        if self.plain:
            frames = media.read_frames(self.info, first, last, bits=self.bits)
        else:
            frames = media.read_native(self.info, first, last, bits=self.bits)
        try:
            for frame_index, frame in frames:
                for k in range(self.per_frame):
                    picture = frame_index * self.per_frame + k
                    if not start <= picture <= end:
                        continue
                    source = frame if self.per_frame == 1 else field_picture(frame, self.parities[k])
                    if self.plain:
                        yield picture, source
                        continue
                    seen = self.to_engine(source)
                    if picture in self._expected:
                        self._kept[picture] = (source, seen)
                    yield picture, seen
        finally:
            frames.close()

    # -- source pixels ----------------------------------------------------------------------------
    def to_engine(self, source: np.ndarray) -> np.ndarray:
        """The engine's picture of a source picture: its RGB in the working space at `bits`."""
        return self.colour.to_engine(np.ascontiguousarray(source[:, :, self.rgb]), self.bits)

    def from_engine(self, values: np.ndarray, like: np.ndarray) -> np.ndarray:
        """Engine RGB values (N x 3 or H x W x 3) back in the source's colour space and pixel type (`like`'s)."""
        if self.colour.identity and not self.float and values.dtype == like.dtype:
            return values
        x = values.astype(np.float32) / np.float32(np.iinfo(values.dtype).max)
        x = self.colour.from_working(x)
        if like.dtype.kind == "f":
            return x.astype(like.dtype)
        top = np.iinfo(like.dtype).max
        return np.clip(np.rint(x * top), 0, top).astype(like.dtype)

    def restore(self, picture: int, image: np.ndarray) -> np.ndarray:
        """The frame to write for stylised `picture`: the engine's `image` where it changed the picture, the
        source's own pixels everywhere else (every channel, alpha included, as the output holds them)."""
        if self.plain:
            return image
        self._expected.discard(picture)
        source, seen = self._kept.pop(picture)
        if image.shape[2] == 4:   # an overlay: the faces over transparency
            if not self.native or (self.colour.identity and not self.float):
                return image
            out = self.from_engine(image[:, :, :3], source)
            alpha = image[:, :, 3:].astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
            alpha = alpha.astype(source.dtype) if source.dtype.kind == "f" else \
                np.rint(alpha * np.iinfo(source.dtype).max).astype(source.dtype)
            return np.concatenate([out, alpha], axis=2)
        if not self.native:   # float plate into an integer format: the engine's picture (+ the source's alpha)
            if self.keep_alpha and self.alpha_index is not None:
                alpha = to_depth(source[:, :, self.alpha_index], 16 if image.dtype == np.uint16 else 8)
                return np.concatenate([image, alpha[:, :, None]], axis=2)
            return image
        out = source.copy()
        where = np.nonzero((image != seen).any(axis=2))
        if where[0].size:
            pixels = out[where]
            pixels[:, self.rgb] = self.from_engine(image[where], source)
            out[where] = pixels
        if self.every_channel:
            return out
        keep = self.rgb + ([self.alpha_index] if self.keep_alpha and self.alpha_index is not None else [])
        return np.ascontiguousarray(out[:, :, keep])


class Weaver:
    """Collects stylised pictures and hands out each frame when all its pictures are in."""

    def __init__(self, pictures: Pictures):
        self.pictures = pictures
        self._waiting: Dict[int, Dict[int, Tuple[np.ndarray, int]]] = {}

    def add(self, picture: int, image: np.ndarray, faces: int) -> Optional[Tuple[int, np.ndarray, int]]:
        """``(frame, image, faces)`` once `picture` completes its frame, else None; `image` is the stylised
        picture, the frame the one to write (`Pictures.restore`)."""
        p = self.pictures
        image = p.restore(picture, image)
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
