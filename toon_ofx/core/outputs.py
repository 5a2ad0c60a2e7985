"""What a render writes: a movie, an image sequence or one image, and the names of its frame files.

Frame files carry the SOURCE's frame numbers: for a movie source its 0-based
frame index (``clip.000123.png``); for an image-sequence source its own file
numbers and digit count (``shot.1011.png`` comes back as ``shot_toon.1011.png``).
`OutputPlan.frame_path` maps a 0-based frame index to its file. Frame ranges
(``--frames``, farm chunks, a job's ``frames``) are always 0-based indices into
the clip, for sequences too: frame 0 of ``shot.1011.png ...`` is file 1011.

A still image renders to one image file, in the source's format unless the
output names another; a movie output is encoded from a hidden frame folder
at the end of the render.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from . import media
from .errors import UserError
from .media.files import same_file

MOVIE_SUFFIXES = media.MOVIE_EXTS
SEQUENCE_SUFFIXES = (".png",)
ALPHA_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".webp")
DEEP_IMAGE_SUFFIXES = (".png", ".tif", ".tiff")


@dataclass
class OutputPlan:
    kind: str                  # "movie", "sequence" or "image"
    movie: Optional[Path]      # the movie file (kind "movie")
    pattern: str               # printf pattern of the frame files; for "image" the image file itself
    first_number: int = 0      # the number frame 0 carries in `pattern` (the source's own numbering)

    def frame_path(self, index: int) -> Path:
        """The file of 0-based frame `index`."""
        if self.kind == "image":
            return Path(self.pattern)
        return Path(self.pattern % (self.first_number + index))

    @property
    def folder(self) -> Path:
        return Path(self.pattern).parent


def plan_output(info: "media.MediaInfo", output: Path, overlay: bool, work_dir: Optional[Path] = None) -> OutputPlan:
    """Decide what `output` means for the source `info`: a movie file, a printf pattern, an image file,
    or a folder (a sequence named after the source; one image for a still)."""
    output = Path(output)
    if same_file(output, Path(info.path)):
        raise UserError(f"output {output} is the source clip; the source is never written to", field="output")
    suffix = output.suffix.lower()
    if "%" in output.name:
        if suffix not in SEQUENCE_SUFFIXES:
            raise UserError(f"image sequence pattern {output.name} must end in .png", field="output")
        plan = OutputPlan("sequence", None, str(output), info.first_number)
    elif suffix in MOVIE_SUFFIXES:
        if overlay and suffix != ".mov":
            raise UserError("an RGBA overlay needs a .mov (ProRes 4444) or a PNG sequence output; "
                            f"{output.suffix} cannot carry alpha", field="output")
        frames = Path(work_dir) if work_dir else output.with_name(f".{output.name}.frames")
        return OutputPlan("movie", output, str(frames / f"{info.stem}.{info.number_format}.png"), info.first_number)
    elif suffix in media.IMAGE_EXTS:
        if not info.is_still:
            raise UserError(f"{output.name} is one image, but the source has {info.frame_count} frames: give a "
                            "folder, a movie, or a pattern like out/shot.%06d.png", field="output")
        plan = OutputPlan("image", None, str(output))
    elif output.suffix:
        raise UserError(f"unknown output type {output.suffix!r}: use .mp4/.mov/.mkv, a folder, an image for a "
                        "still, or a pattern like out/shot.%06d.png", field="output")
    elif info.is_still:
        ext = info.path.suffix.lower() if not overlay or info.path.suffix.lower() in ALPHA_IMAGE_SUFFIXES else ".png"
        plan = OutputPlan("image", None, str(output / f"{info.stem}_toon{ext}"))
    else:
        plan = OutputPlan("sequence", None, str(output / f"{info.stem}_toon.{info.number_format}.png"),
                          info.first_number)
    if overlay and plan.kind == "image" and Path(plan.pattern).suffix.lower() not in ALPHA_IMAGE_SUFFIXES:
        raise UserError(f"an RGBA overlay needs an image format with alpha (.png, .tif, .webp), not "
                        f"{Path(plan.pattern).suffix}", field="output")
    if info.is_sequence and same_file(plan.frame_path(0), info.file_for(0)):
        raise UserError(f"output {output} would write over the source's frames; the source is never written to",
                        field="output")
    return plan


def frame_bits(plan: OutputPlan, info: "media.MediaInfo", requested: Optional[int]) -> int:
    """Bits per channel of the frames written: `requested`, else the source's depth where the output
    format holds it (an 8-bit image format gets 8)."""
    if requested is not None:
        if requested not in (8, 16):
            raise UserError("bits must be 8 or 16", field="bits")
        if requested == 16 and Path(plan.pattern).suffix.lower() not in DEEP_IMAGE_SUFFIXES:
            raise UserError(f"16-bit frames need .png or .tif, not {Path(plan.pattern).suffix}", field="bits")
        return requested
    bits = media.source_bits(info)
    return bits if Path(plan.pattern).suffix.lower() in DEEP_IMAGE_SUFFIXES else 8


def resolve_range(frames: Optional[Tuple[int, int]], frame_count: int) -> Tuple[int, int]:
    """Check an inclusive 0-based frame range against the clip; None means the whole clip."""
    if frame_count <= 0:
        raise UserError("the clip has no frames", field="source")
    if frames is None:
        return 0, frame_count - 1
    first, last = frames
    if first < 0 or last < first or last >= frame_count:
        raise UserError(f"frame range {first}-{last} is outside the clip (frames 0-{frame_count - 1})",
                        field="frames")
    return first, last
