"""The last step of a farm render: find the frame sequence, check it is whole, encode the movie.

`toon-ofx assemble SEQ.%06d.EXT --source SRC -o OUT.mp4 --frames F-L` runs
`assemble`; the Ray backend calls it directly. The frames are in any format the
media layer reads: PNG frames (a movie source's) are encoded as they are; other
formats (a plate's own: DPX, OpenEXR, TIFF...) are read through OpenImageIO and
handed to the encoder as PNG pictures, each as a render into that movie would
have written it (`core.outputs.plan_output`): a float plate's frames converted to
the display-referred working space with the render's colour (`input_colorspace`,
$OCIO), integer ones at their own values, alpha where the movie holds it.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..core.errors import UserError

MOVIE_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".mxf")
_PRINTF = re.compile(r"%(0?)(\d*)d")


def find_sequence(path: Path) -> str:
    """A printf pattern for `path`: a pattern as given, or the one numbered image sequence in a folder."""
    from ..core.media import IMAGE_EXTS

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
        m = re.fullmatch(r"(.*?)(\d+)(\.[A-Za-z]+)", entry.name)
        if m and m.group(3).lower() in IMAGE_EXTS and not entry.name.startswith("."):
            key = (m.group(1), len(m.group(2)), m.group(3))
            groups[key] = groups.get(key, 0) + 1
    if not groups:
        raise UserError(f"no numbered image frames ({', '.join(IMAGE_EXTS)}) in {folder}", field="sequence")
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
             *, info=None, codec: Optional[str] = None, input_colorspace: str = "auto"):
    """Encode frames of a finished image sequence into `output` with the source's timing, look and streams.

    `frames` is a 0-based range of the source; the files carry the source's frame numbers (an image
    sequence source's own). Every frame of the range must be there (farm chunks that failed are
    named); the movie is written by media.encode_frames (atomically, in `codec` or the codec that follows
    the source) and may be re-run: it replaces its own output. Frames with alpha of a source without it
    are an overlay (a .mov only). `input_colorspace` (and $OCIO) are the render's: float frames become the
    movie's display-referred pictures through them. Returns media.Encoded whose notes are every warning:
    what the movie cannot keep of the source (as a render into it says), then the streams converted or left out.
    """
    from ..core import media
    from ..core.outputs import plan_output

    pattern = find_sequence(Path(sequence))
    source, output = Path(source), Path(output)
    if output.suffix.lower() not in MOVIE_SUFFIXES:
        raise UserError(f"output {output} must be a movie ({', '.join(MOVIE_SUFFIXES)})", field="output")
    if "%" not in source.name and "#" not in source.name and not source.exists():   # a sequence: probe says
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
    kind = media.image_format(Path(pattern % info.frame_number(first)))
    overlay = kind.alpha and not info.alpha
    if overlay and output.suffix.lower() != ".mov":
        raise UserError("the frames carry alpha (an overlay): assemble them into a .mov", field="output")
    plan = plan_output(info, output, overlay, codec=codec)   # the movie a render of this source writes
    output.parent.mkdir(parents=True, exist_ok=True)
    if kind.format == "png":
        encoded = media.encode_frames(pattern, output, info, first_frame=first, last_frame=last, audio_from=info,
                                      alpha=plan.alpha, codec=codec)
    else:
        with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as work:
            pictures = str(Path(work) / "f.%09d.png")
            converter = _MovieFrames(plan, info, input_colorspace)
            for index in range(first, last + 1):
                number = info.frame_number(index)
                bits, image = converter.frame(Path(pattern % number))
                media.write_frame(pictures % number, image, bits, fsync=False)
            encoded = media.encode_frames(pictures, output, info, first_frame=first, last_frame=last,
                                          audio_from=info, alpha=plan.alpha, codec=codec)
    return replace(encoded, notes=plan.warnings + [n for n in encoded.notes if n not in plan.warnings])


class _MovieFrames:
    """What a render into the movie `plan` would have written for a frame file of another format: its RGB
    (+ alpha where the movie holds it) at 16 bits for deep or float files (8 for 8-bit ones); a float file's
    colour turned into the engine's display-referred working space where the movie cannot hold its values."""

    def __init__(self, plan, info, input_colorspace: str):
        self.plan, self.info, self.input_colorspace = plan, info, input_colorspace
        self._colour = None

    def frame(self, path: Path):
        import numpy as np

        from ..core import media
        from ..core.media.images import to_depth

        pixels, kind = media.read_pixels(path)
        bits = 16 if kind.bits > 8 or kind.is_float else 8
        rgb = np.ascontiguousarray(pixels[:, :, list(kind.rgb)])
        if kind.is_float and not self.plan.native:
            rgb = self.colour.to_engine(rgb, bits)
        else:
            rgb = to_depth(rgb, bits)
        if self.plan.alpha and kind.alpha:
            rgb = np.concatenate([rgb, to_depth(pixels[:, :, kind.alpha_index], bits)[:, :, None]], axis=2)
        return bits, rgb

    @property
    def colour(self):
        if self._colour is None:
            from ..core.colour import plan_colour

            self._colour = plan_colour(self.info, self.input_colorspace)
        return self._colour
