"""The last step of a farm render: find the frame sequence, check it is whole, encode the movie.

`toon-ofx assemble SEQ.%06d.png --source SRC -o OUT.mp4 --frames F-L` runs
`assemble`; the Ray backend calls it directly.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..core.errors import UserError

MOVIE_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v")
_PRINTF = re.compile(r"%(0?)(\d*)d")


def find_sequence(path: Path) -> str:
    """A printf pattern for `path`: a pattern as given, or the one numbered PNG sequence in a folder."""
    text = str(path)
    if "%" in Path(text).name:
        if not _PRINTF.search(Path(text).name):
            raise UserError(f"{text}: expected a frame pattern like name.%06d.png", field="sequence")
        return text
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder} is neither a frame folder nor a pattern like name.%06d.png", field="sequence")
    groups: Dict[Tuple[str, int, str], int] = {}
    for entry in folder.iterdir():
        m = re.fullmatch(r"(.*?)(\d+)(\.png)", entry.name, flags=re.IGNORECASE)
        if m and not entry.name.startswith("."):
            key = (m.group(1), len(m.group(2)), m.group(3))
            groups[key] = groups.get(key, 0) + 1
    if not groups:
        raise UserError(f"no numbered PNG frames in {folder}", field="sequence")
    # Frames past the padding width (e.g. 1000000 with %06d) land in their own group: merge by prefix.
    prefixes = {(prefix, ext) for prefix, _, ext in groups}
    if len(prefixes) > 1:
        names = ", ".join(f"{p}#{e}" for p, e in sorted(prefixes))
        raise UserError(f"{folder} holds more than one frame sequence ({names}); give the pattern", field="sequence")
    prefix, ext = prefixes.pop()
    width = min(w for p, w, e in groups)
    return str(folder / f"{prefix}%0{width}d{ext}")


def sequence_frames(pattern: str) -> List[int]:
    """Frame numbers present for a printf pattern (sorted)."""
    folder, name = Path(pattern).parent, Path(pattern).name
    m = _PRINTF.search(name)
    if not m:
        raise UserError(f"{pattern}: expected a frame pattern like name.%06d.png", field="sequence")
    regex = re.compile(re.escape(name[:m.start()]) + r"(\d+)" + re.escape(name[m.end():]) + r"\Z")
    if not folder.is_dir():
        return []
    frames = []
    for entry in folder.iterdir():
        hit = regex.match(entry.name)
        if hit and (pattern % int(hit.group(1))) == str(folder / entry.name):
            frames.append(int(hit.group(1)))
    return sorted(frames)


def png_has_alpha(path: Path) -> bool:
    """True when a PNG's colour type carries alpha (grey+alpha or RGBA)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise UserError(f"{path} is not a PNG file", field="sequence")
    return struct.unpack(">B", head[25:26])[0] in (4, 6)


def _ranges(numbers: Sequence[int]) -> str:
    out, start, prev = [], None, None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(out)


def assemble(sequence: Path, source: Path, output: Path, frames: Optional[Tuple[int, int]] = None,
             *, info=None, codec: Optional[str] = None):
    """Encode frames of a finished image sequence into `output` with the source's timing, look and streams.

    `frames` is a 0-based range of the source; the files carry the source's frame numbers (an image
    sequence source's own). Every frame of the range must be there (farm chunks that failed are
    named); the movie is written by media.encode_frames (atomically, in `codec` or the codec that follows
    the source) and may be re-run: it replaces its own output. Returns media.Encoded.
    """
    from ..core import media

    pattern = find_sequence(Path(sequence))
    source, output = Path(source), Path(output)
    if output.suffix.lower() not in MOVIE_SUFFIXES:
        raise UserError(f"output {output} must be a movie ({', '.join(MOVIE_SUFFIXES)})", field="output")
    if not source.exists():
        raise UserError(f"source clip {source} does not exist", field="source")
    if output.resolve() == source.resolve():
        raise UserError(f"output {output} is the source clip; the source is never written to", field="output")
    if info is None:
        info = media.probe(source)
    present = [n - info.first_number for n in sequence_frames(pattern)]
    if frames is None:
        if not present:
            raise UserError(f"no frames match {pattern}", field="sequence")
        frames = (present[0], present[-1])
    first, last = frames
    if first < 0 or last < first or last >= info.frame_count:
        raise UserError(f"frame range {first}-{last} is outside the clip (frames 0-{info.frame_count - 1})",
                        field="frames")
    have = set(present)
    missing = [i for i in range(first, last + 1) if i not in have]
    if missing:
        numbers = [info.frame_number(i) for i in missing[:200]]
        raise UserError(f"{len(missing)} frame(s) of {first}-{last} are missing from {pattern} (file numbers "
                        f"{_ranges(numbers)}{' ...' if len(missing) > 200 else ''}); "
                        "re-run the chunks that render them", field="sequence")
    alpha = png_has_alpha(Path(pattern % info.frame_number(first)))
    if alpha and output.suffix.lower() != ".mov":
        raise UserError("the frames carry alpha (an overlay): assemble them into a .mov", field="output")
    output.parent.mkdir(parents=True, exist_ok=True)
    return media.encode_frames(pattern, output, info, first_frame=first, last_frame=last, audio_from=info, alpha=alpha,
                        codec=codec)
