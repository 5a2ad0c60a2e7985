"""MediaInfo, what `probe` found about a source, and the checks of frame rates and frame ranges."""
from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Tuple, Union

from ..errors import UserError

PathLike = Union[str, os.PathLike]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MOVIE_EXTS = (".mp4", ".mov", ".mkv", ".m4v")
DEFAULT_SEQUENCE_FPS = Fraction(24)


@dataclass(frozen=True)
class MediaInfo:
    """What `probe` found. Frame indices are 0-based over the presented frames.

    ``path`` is the movie/image file, or for a sequence its printf pattern
    (file number = ``first_number + index``). ``timestamps`` (VFR only) are
    per-frame presentation times in seconds from the file's start; for CFR
    frame i is at ``start_time + i / fps``. ``duration`` runs from the first
    frame's start to the last frame's end.
    """

    path: Path
    width: int
    height: int
    fps: Fraction
    frame_count: int
    duration: float
    has_audio: bool
    codec: str
    pix_fmt: str
    is_vfr: bool = False
    is_sequence: bool = False
    timestamps: Optional[Tuple[float, ...]] = None
    start_time: float = 0.0
    time_base: Optional[Fraction] = None
    first_number: int = 0
    is_still: bool = False
    alpha: bool = False
    bit_depth: int = 8
    stream_index: Optional[int] = None
    audio_codec: Optional[str] = None
    rotation: int = 0
    color_space: Optional[str] = None
    color_range: Optional[str] = None
    color_primaries: Optional[str] = None
    color_transfer: Optional[str] = None
    seekable: bool = True

    def frame_time(self, index: int) -> float:
        """Presentation time of frame `index`, seconds from the file's start."""
        if self.timestamps is not None:
            return self.timestamps[index]
        return float(Fraction(self.start_time).limit_denominator(10**9) + Fraction(index) / self.fps)

    def frame_end(self, index: int) -> float:
        """Time at which frame `index` stops showing."""
        if index + 1 < self.frame_count:
            return self.frame_time(index + 1)
        return self.start_time + self.duration

    def frame_duration(self, index: int) -> float:
        """How long frame `index` shows, in seconds."""
        return self.frame_end(index) - self.frame_time(index)

    def file_for(self, index: int) -> Path:
        """Sequence only: the image file that holds frame `index`."""
        if not self.is_sequence:
            raise ValueError("file_for() is for image sequences")
        if self.is_still:
            return self.path
        return Path(str(self.path) % (self.first_number + index))

    def to_dict(self) -> dict:
        """JSON-friendly summary (fps as "num/den")."""
        return {
            "path": str(self.path), "width": self.width, "height": self.height,
            "fps": f"{self.fps.numerator}/{self.fps.denominator}", "frame_count": self.frame_count,
            "duration": self.duration, "has_audio": self.has_audio, "codec": self.codec,
            "pix_fmt": self.pix_fmt, "is_vfr": self.is_vfr, "is_sequence": self.is_sequence,
            "first_number": self.first_number, "is_still": self.is_still,
        }


def as_fraction(value) -> Fraction:
    """A frame rate given as Fraction, float or "num/den"; UserError unless in (0, 1000]."""
    try:
        f = Fraction(value) if not isinstance(value, float) else Fraction(value).limit_denominator(1001)
    except (TypeError, ValueError, ZeroDivisionError):
        raise UserError(f"frame rate {value!r} is not a number", field="fps") from None
    if f <= 0 or f > 1000:
        raise UserError(f"frame rate {value} is out of range (0-1000]", field="fps")
    return f


def check_range(info: MediaInfo, first: int, last: Optional[int]) -> Tuple[int, int]:
    """``(first, last)`` with `last` None meaning the last frame; UserError outside the clip."""
    n = info.frame_count
    last = n - 1 if last is None else last
    if not (0 <= first <= last < n):
        raise UserError(f"frame range {first}-{last} is outside the clip {info.path.name} (frames 0-{n - 1})",
                        field="frames")
    return int(first), int(last)
