"""MediaInfo, what `probe` found about a source, and the checks of frame rates and frame ranges."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Tuple, Union

from ..errors import UserError

PathLike = Union[str, os.PathLike]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".exr", ".dpx", ".tga")
MOVIE_EXTS = (".mp4", ".mov", ".mkv", ".m4v", ".mxf")
FLOAT_TYPES = ("half", "float", "double")
DEFAULT_SEQUENCE_FPS = Fraction(24)
FRAME_DIGITS = 6  # frame files of a movie source: clip.000123.png
HDR_TRANSFERS = {"smpte2084": "PQ (SMPTE ST 2084)", "arib-std-b67": "HLG (ARIB STD-B67)"}


@dataclass(frozen=True)
class ImageFormat:
    """What an image file holds, read from its header."""

    format: str                    # OIIO's format name: "png", "jpeg", "tiff", "dpx", "openexr"...
    pixel_type: str                # how its pixels are read: "uint8", "uint16", "half" or "float"
    bits: int                      # bits per sample in the file (10 for 10-bit DPX, 16 for half)
    channels: Tuple[str, ...]      # channel names in file order ("R", "G", "B", "A"; grey as "R", "G", "B")
    width: int                     # upright size (after the orientation)
    height: int
    compression: str = ""
    colorspace: Optional[str] = None   # the file's colour space attribute, when it has one
    orientation: int = 1           # EXIF orientation 1-8 (1: stored upright)
    pixel_aspect: float = 1.0
    timecode: Optional[str] = None
    fps: Optional[Fraction] = None

    @property
    def is_float(self) -> bool:
        return self.pixel_type in FLOAT_TYPES

    @property
    def alpha(self) -> bool:
        return "A" in self.channels

    @property
    def rgb(self) -> Tuple[int, int, int]:
        """Indices of the R, G, B channels (by name; else the first three)."""
        names = [c.upper() for c in self.channels]
        if all(c in names for c in "RGB"):
            return names.index("R"), names.index("G"), names.index("B")
        return 0, 1, 2

    @property
    def alpha_index(self) -> Optional[int]:
        return self.channels.index("A") if self.alpha else None


@dataclass(frozen=True)
class Stream:
    """A source stream other than the picture: audio, subtitle or data (ffprobe's index and names)."""

    index: int
    kind: str                 # "audio", "subtitle" or "data"
    codec: str                # ffprobe codec_name ("aac", "pcm_s24le", "mov_text", "none"...)
    tag: str = ""             # codec_tag_string ("tmcd" for a QuickTime timecode track)
    sample_rate: int = 0      # audio: samples per second


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
    profile: Optional[str] = None       # ffprobe's profile name: "HQ", "DNXHR HQX", "Main 10"...
    chroma: Optional[str] = None        # "420", "422", "444"; None for RGB pictures
    field_order: str = "progressive"    # "progressive", "tff" or "bff" (interlaced, which field first)
    timecode: Optional[str] = None      # start timecode "HH:MM:SS:FF" (";" before FF: drop-frame)
    reel_name: Optional[str] = None
    streams: Tuple[Stream, ...] = ()    # audio, subtitle and data streams, in file order
    pixel_aspect: float = 1.0           # sample aspect ratio (width of a pixel / its height)
    image: Optional[ImageFormat] = None  # image sequences and stills: what their files hold (the first file)

    @property
    def interlaced(self) -> bool:
        return self.field_order != "progressive"

    @property
    def hdr(self) -> Optional[str]:
        """The HDR transfer's name (PQ or HLG), None for SDR."""
        return HDR_TRANSFERS.get(self.color_transfer or "")

    @property
    def number_format(self) -> str:
        """printf spec of the frame numbers: a sequence's own (``%04d``), else ``%06d``."""
        if self.is_sequence and not self.is_still:
            m = re.search(r"%0?\d*d", self.path.name)
            if m:
                return m.group(0)
        return f"%0{FRAME_DIGITS}d"

    @property
    def stem(self) -> str:
        """The clip's name for output files: ``shot`` for ``shot.%04d.png``, ``clip`` for ``clip.mov``."""
        if self.is_sequence and not self.is_still:
            prefix = re.split(r"%0?\d*d", self.path.name)[0].rstrip("._- ")
            return prefix or self.path.parent.name
        return self.path.stem

    def frame_number(self, index: int) -> int:
        """The number a frame carries in file names: a sequence's own file number, else the index."""
        return self.first_number + index

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
            "first_number": self.first_number, "is_still": self.is_still, "bit_depth": self.bit_depth,
            "profile": self.profile, "field_order": self.field_order, "timecode": self.timecode,
            "color": {"space": self.color_space, "primaries": self.color_primaries,
                      "transfer": self.color_transfer, "range": self.color_range},
            "alpha": self.alpha, "pixel_aspect": self.pixel_aspect,
            "image": None if self.image is None else {
                "format": self.image.format, "pixel_type": self.image.pixel_type, "bits": self.image.bits,
                "channels": list(self.image.channels), "compression": self.image.compression,
                "colorspace": self.image.colorspace},
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


def check_renderable(info: MediaInfo) -> None:
    """UserError for a source the effect cannot render faithfully (HDR: the face models are SDR)."""
    if info.hdr:
        raise UserError(f"{info.path.name} is HDR ({info.hdr}); the face models work on SDR pictures, and "
                        "stylising HDR values as SDR would give wrong colours and brightness. Export an SDR "
                        "(Rec.709) version of the clip from your editor and render that", field="source")
