"""What a written movie must be, read back with ffprobe before it gets its name.

An encoder that silently drops a tag (prores_ks writes no colour of its own),
a stream or a frame would otherwise hand the editor a file that does not
conform; here such a file is refused with one line naming what differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import UserError
from .pixfmt import pixel_format
from .probe import probe


@dataclass
class Expected:
    """Facts the output must show: frames, size, codec, pixel format, colour, fields, streams, timecode."""

    frames: int
    width: int
    height: int
    codec: str                                            # ffprobe codec_name: h264, hevc, prores, dnxhd
    pix_fmt: str
    color: Dict[str, str] = field(default_factory=dict)   # MediaInfo attribute -> value
    field_order: str = "progressive"
    audio: int = 0
    subtitles: int = 0
    timecode: Optional[str] = None


def verify_movie(path: Path, expected: Expected, name: str) -> None:
    """UserError (naming the output `name`) unless the movie at `path` matches `expected`."""
    got = probe(path)
    wrong: List[str] = []

    def check(what: str, have, want) -> None:
        if have != want:
            wrong.append(f"{what} {'untagged' if have is None else have} instead of {want}")

    check("frames", got.frame_count, expected.frames)
    check("size", f"{got.width}x{got.height}", f"{expected.width}x{expected.height}")
    check("codec", got.codec, expected.codec)
    # a decoder may present more bits than were written (ffmpeg decodes ProRes 4444 as 12-bit)
    have, want = pixel_format(got.pix_fmt), pixel_format(expected.pix_fmt)
    if (have.chroma, have.alpha) != (want.chroma, want.alpha) or have.bits < want.bits:
        wrong.append(f"pixel format {got.pix_fmt} instead of {expected.pix_fmt}")
    for key, value in expected.color.items():
        if not (key == "color_range" and value == "tv" and got.color_range is None):  # untagged YCbCr is limited
            check(key.replace("_", " "), getattr(got, key), value)
    check("field order", got.field_order, expected.field_order)
    check("audio streams", sum(s.kind == "audio" for s in got.streams), expected.audio)
    check("subtitle streams", sum(s.kind == "subtitle" for s in got.streams), expected.subtitles)
    if expected.timecode:
        check("timecode", got.timecode, expected.timecode)
    if wrong:
        raise UserError(f"writing {name} went wrong: it reads back with {'; '.join(wrong)}; nothing was written",
                        field="output")
