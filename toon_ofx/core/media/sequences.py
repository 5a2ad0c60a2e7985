"""Image sequences and still images as clips: patterns, numbered folders, gaps.

A sequence is a printf pattern (``shot.%04d.png``), a ``shot.####.png``
pattern or a folder holding one numbered sequence; its `MediaInfo.path` is
the printf pattern and file number = ``first_number + index``. A still
image is a 1-frame clip.
"""
from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import UserError
from .images import image_format
from .info import DEFAULT_SEQUENCE_FPS, IMAGE_EXTS, ImageFormat, MediaInfo, PathLike

_PRINTF = re.compile(r"%0?(\d*)d")
_HASHES = re.compile(r"#+")
_NUMBERED = re.compile(r"^(?P<stem>.*?)(?P<num>\d+)(?P<ext>\.[A-Za-z0-9]+)$")


def is_pattern(name: str) -> bool:
    """Whether a file name is a sequence pattern (``%04d``, ``%d`` or ``####``)."""
    return bool(_PRINTF.search(name)) or "#" in name


def pattern_regex(name: str) -> Tuple[re.Pattern, str]:
    """Regex matching the file names of a printf or #### pattern, and the printf form."""
    if "%" not in name and "#" in name:
        name = _HASHES.sub(lambda m: "%0{}d".format(len(m.group(0))), name, count=1)
    m = _PRINTF.search(name)
    if not m:
        raise UserError(f"{name} is not an image-sequence pattern (use e.g. shot.%04d.png)", field="source")
    width = int(m.group(1) or 0)
    pre, post = name[:m.start()], name[m.end():]
    digits = r"(\d{%d,})" % width if width else r"([1-9]\d*|0)"
    return re.compile("^" + re.escape(pre) + digits + re.escape(post) + "$"), name


def probe_pattern(p: Path, fps: Optional[Fraction]) -> MediaInfo:
    """The sequence of the files matching pattern `p`; UserError when none match or one is missing."""
    folder = p.parent
    if not folder.is_dir():
        raise UserError(f"folder {folder} of image sequence {p.name} does not exist", field="source")
    regex, printf = pattern_regex(p.name)
    numbers = sorted(int(m.group(1)) for m in (regex.match(e) for e in os.listdir(folder)) if m)
    if not numbers:
        raise UserError(f"no image matches {p.name} in {folder}", field="source")
    return _sequence_info(folder / printf, numbers, fps)


def probe_folder(folder: Path, fps: Optional[Fraction]) -> MediaInfo:
    """The one numbered image sequence in `folder`; UserError when there is none or several."""
    groups = {}
    for entry in os.listdir(folder):
        if entry.startswith("."):
            continue
        m = _NUMBERED.match(entry)
        if not m or m.group("ext").lower() not in IMAGE_EXTS:
            continue
        groups.setdefault((m.group("stem"), m.group("ext")), []).append(m.group("num"))
    if not groups:
        raise UserError(f"{folder} holds no numbered images (expected e.g. shot.0001.png)", field="source")
    if len(groups) > 1:
        names = ", ".join(sorted(f"{s}#{e}" for s, e in groups))
        raise UserError(f"{folder} holds several image sequences ({names}): pass a pattern such as "
                        f"{folder / 'shot.%04d.png'}", field="source")
    (stem, ext), nums = next(iter(groups.items()))
    lengths = {len(n) for n in nums}
    if len(lengths) == 1 and (nums[0].startswith("0") or len(nums) > 1):
        spec = "%0{}d".format(lengths.pop())
    elif not any(n.startswith("0") and len(n) > 1 for n in nums):
        spec = "%d"
    else:
        raise UserError(f"the numbers of {stem}#{ext} in {folder} are padded inconsistently", field="source")
    return _sequence_info(folder / f"{stem}{spec}{ext}", sorted(int(n) for n in nums), fps)


def _sequence_info(pattern: Path, numbers: List[int], fps: Optional[Fraction]) -> MediaInfo:
    first, last = numbers[0], numbers[-1]
    if len(set(numbers)) != last - first + 1:
        present = set(numbers)
        missing = [k for k in range(first, last + 1) if k not in present]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"image sequence {pattern.name} has a gap: frame {missing[0]}{more} missing "
                        f"between {first} and {last}", field="source")
    sample = Path(str(pattern) % first)
    return _image_info(pattern, sample, image_format(sample), len(numbers), fps, first_number=first)


def probe_still(p: Path, fps: Optional[Fraction], allow_still: bool) -> MediaInfo:
    """A single image as a 1-frame clip (UserError when `allow_still` is False)."""
    if not allow_still:
        raise UserError(f"{p} is a still image; a video clip or image sequence is needed here", field="source")
    return _image_info(p, p, image_format(p), 1, fps, still=True)


def _image_info(path: Path, sample: Path, fmt: ImageFormat, count: int, fps: Optional[Fraction], *,
                first_number: int = 0, still: bool = False) -> MediaInfo:
    """A sequence or still described by its first file: the rate is `fps`, else the file's own, else 24."""
    fps = fps or fmt.fps or DEFAULT_SEQUENCE_FPS
    depth = fmt.bits if not fmt.is_float else 16
    return MediaInfo(
        path=path, width=fmt.width, height=fmt.height, fps=fps, frame_count=count,
        duration=float(Fraction(count) / fps), has_audio=False, codec=_image_codec(sample),
        pix_fmt=_image_pix_fmt(len(fmt.channels), 16 if depth > 8 else 8), is_sequence=True, is_still=still,
        first_number=first_number, alpha=fmt.alpha, bit_depth=depth, timecode=fmt.timecode,
        pixel_aspect=fmt.pixel_aspect, image=fmt,
    )


def _image_codec(p: Path) -> str:
    ext = p.suffix.lower().lstrip(".")
    return {"jpg": "mjpeg", "jpeg": "mjpeg", "tif": "tiff", "tga": "targa"}.get(ext, ext)


def _image_pix_fmt(channels: int, depth: int) -> str:
    base = {1: "gray", 2: "ya", 3: "rgb", 4: "rgba"}.get(channels, "rgba")
    if base == "gray":
        return "gray16le" if depth == 16 else "gray"
    if base == "rgb":
        return "rgb48le" if depth == 16 else "rgb24"
    return base + ("64le" if depth == 16 else "")


def resolve_sequence(sequence: PathLike) -> str:
    """printf pattern of the frame files given a pattern or a folder with one sequence."""
    s = os.fspath(sequence)
    p = Path(s)
    if is_pattern(p.name):
        return str(p.parent / pattern_regex(p.name)[1])
    if p.is_dir():
        return str(probe_folder(p, DEFAULT_SEQUENCE_FPS).path)
    raise UserError(f"{s} is neither a frame pattern (e.g. frames/clip.%06d.png) nor a folder of frames",
                    field="output")
