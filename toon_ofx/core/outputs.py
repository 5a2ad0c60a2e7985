"""What a render writes: a movie, an image sequence or one image, and the names of its frame files.

Frame files carry the SOURCE's frame numbers: for a movie source its 0-based
frame index (``clip.000123.png``); for an image-sequence source its own file
numbers and digit count (``shot.1011.png`` comes back as ``shot_toon.1011.png``).
`OutputPlan.frame_path` maps a 0-based frame index to its file. Frame ranges
(``--frames``, farm chunks, a job's ``frames``) are always 0-based indices into
the clip, for sequences too: frame 0 of ``shot.1011.png ...`` is file 1011.

An image source (a still, a sequence: PNG, JPEG, TIFF, DPX, OpenEXR) comes back
in its own format unless the output names another, each frame with its source
frame's header (bit depth, compression, channels, orientation, metadata); a
movie output is encoded from a hidden frame folder of PNGs at the end of the
render. `OutputPlan.warnings` name what the output cannot keep (alpha, a float
plate's values, extra channels, the codec that follows the source).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from . import media
from .errors import UserError
from .media.files import same_file
from .media.frames import DEEP_EXTS
from .media.images import FLOAT_EXTS

MOVIE_SUFFIXES = media.MOVIE_EXTS
SEQUENCE_SUFFIXES = (".png", ".tif", ".tiff", ".exr", ".dpx", ".jpg", ".jpeg", ".tga", ".bmp", ".webp")
ALPHA_IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".webp", ".exr", ".dpx", ".tga")


@dataclass
class OutputPlan:
    kind: str                  # "movie", "sequence" or "image"
    movie: Optional[Path]      # the movie file (kind "movie")
    pattern: str               # printf pattern of the frame files; for "image" the image file itself
    first_number: int = 0      # the number frame 0 carries in `pattern` (the source's own numbering)
    codec: Optional["media.Codec"] = None   # kind "movie": what it is encoded with
    alpha: bool = False        # frames carry alpha: the overlay's, or the source's where the output holds it
    native: bool = True        # frames hold the source's own pixel values (False: the engine's working-space
    #                            pictures, for a float plate written to an integer format or a movie)
    template: Optional["media.MediaInfo"] = None   # written in the source's own format: frame i takes the header
    #                                                of source frame i (depth, compression, metadata, every channel)
    warnings: List[str] = field(default_factory=list)   # what the output cannot keep of the source, one line each

    def frame_path(self, index: int) -> Path:
        """The file of 0-based frame `index`."""
        if self.kind == "image":
            return Path(self.pattern)
        return Path(self.pattern % (self.first_number + index))

    def like(self, index: int) -> Optional[Path]:
        """The source file whose header frame `index` is written with (image sources in their own format)."""
        return self.template.file_for(index) if self.template is not None else None

    @property
    def folder(self) -> Path:
        return Path(self.pattern).parent


def plan_output(info: "media.MediaInfo", output: Path, overlay: bool, work_dir: Optional[Path] = None,
                codec: Optional[str] = None) -> OutputPlan:
    """Decide what `output` means for the source `info`: a movie file, a printf pattern, an image file,
    or a folder (a sequence named after the source in its format; one image for a still); `codec` (a
    media.CODECS name) is checked for a movie and refused for images."""
    output = Path(output)
    if same_file(output, Path(info.path)):
        raise UserError(f"output {output} is the source clip; the source is never written to", field="output")
    suffix = output.suffix.lower()
    own = frame_suffix(info, overlay)
    if "%" in output.name:
        if suffix not in SEQUENCE_SUFFIXES:
            raise UserError(f"image sequence pattern {output.name} must end in one of {', '.join(SEQUENCE_SUFFIXES)}",
                            field="output")
        plan = OutputPlan("sequence", None, str(output), info.first_number)
    elif suffix in MOVIE_SUFFIXES:
        if overlay and suffix != ".mov":
            raise UserError("an RGBA overlay needs a .mov (ProRes 4444) or a PNG sequence output; "
                            f"{output.suffix} cannot carry alpha", field="output")
        frames = Path(work_dir) if work_dir else output.with_name(f".{output.name}.frames")
        plan = OutputPlan("movie", output, str(frames / f"{info.stem}.{info.number_format}.png"), info.first_number)
    elif suffix in media.IMAGE_EXTS:
        if not info.is_still:
            raise UserError(f"{output.name} is one image, but the source has {info.frame_count} frames: give a "
                            "folder, a movie, or a pattern like out/shot.%06d.png", field="output")
        plan = OutputPlan("image", None, str(output))
    elif output.suffix:
        raise UserError(f"unknown output type {output.suffix!r}: use .mp4/.mov/.mkv/.mxf, a folder, an image for a "
                        "still, or a pattern like out/shot.%06d.png", field="output")
    elif info.is_still:
        plan = OutputPlan("image", None, str(output / f"{info.stem}_toon{own}"))
    else:
        plan = OutputPlan("sequence", None, str(output / sequence_name(info, overlay)), info.first_number)
    if codec is not None and plan.kind != "movie":
        raise UserError(f"a codec is for movie outputs; {output} is an image {plan.kind}", field="codec")
    if overlay and plan.kind != "movie" and Path(plan.pattern).suffix.lower() not in ALPHA_IMAGE_SUFFIXES:
        raise UserError(f"an RGBA overlay needs an image format with alpha (.png, .tif, .webp, .exr), not "
                        f"{Path(plan.pattern).suffix}", field="output")
    if info.is_sequence and same_file(plan.frame_path(0), info.file_for(0)):
        raise UserError(f"output {output} would write over the source's frames; the source is never written to",
                        field="output")
    _plan_frames(plan, info, overlay, codec)
    return plan


def sequence_name(info: "media.MediaInfo", overlay: bool = False) -> str:
    """The frame files' printf name in a folder output: ``<clip>_toon.<its numbering><frame_suffix>``
    (``shot_toon.%04d.exr`` for ``shot.%04d.exr``, ``clip_toon.%06d.png`` for a movie)."""
    return f"{info.stem}_toon.{info.number_format}{frame_suffix(info, overlay)}"


def frame_suffix(info: "media.MediaInfo", overlay: bool = False) -> str:
    """The frame suffix an image source comes back in: its own (where writable, and with alpha for an
    overlay), else .png; movies give .png frames."""
    return own_suffix(info.path.suffix.lower() if info.is_sequence else ".png", overlay)


def own_suffix(ext: str, overlay: bool = False) -> str:
    """`ext` (lower case) when frames can be written in it (with alpha for an overlay), else .png."""
    return ext if ext in SEQUENCE_SUFFIXES and (not overlay or ext in ALPHA_IMAGE_SUFFIXES) else ".png"


def _plan_frames(plan: OutputPlan, info: "media.MediaInfo", overlay: bool, codec: Optional[str]) -> None:
    """What the frames hold (codec, alpha, native values, the source's header) and the warnings it brings."""
    suffix = Path(plan.pattern).suffix.lower()
    image = info.image
    is_float = image is not None and image.is_float
    if plan.kind == "movie":
        plan.codec, plan.warnings = media.codec_choice(plan.movie, codec, info, overlay)
        holds_alpha, holds_float, what = plan.codec.alpha, False, f"a {plan.codec.label} movie"
    else:
        holds_alpha = suffix in ALPHA_IMAGE_SUFFIXES
        holds_float, what = suffix in FLOAT_EXTS, f"{suffix} images"
        if info.is_sequence and _same_format(suffix, info.path.suffix.lower()):
            plan.template = info
    plan.alpha = overlay or (info.alpha and holds_alpha)
    plan.native = not is_float or holds_float
    name = info.path.name
    if info.alpha and not holds_alpha and not overlay:
        plan.warnings.append(f"the alpha channel of {name} is left out: {what} cannot hold it (write a .mov in "
                             "ProRes 4444, or .png/.exr/.tif frames, to keep it)")
    if not plan.native:
        plan.warnings.append(f"{what} cannot hold the float values of {name}: the frames are the models' "
                             "display-referred (sRGB) pictures; render to .exr frames to keep the plate's values")
    if image is not None and plan.template is None and len(image.channels) > 3 + image.alpha:
        extra = [c for c in image.channels if c not in ("R", "G", "B", "A")]
        plan.warnings.append(f"the channels {', '.join(extra)} of {name} are left out: only frames in its own "
                             f"format ({info.path.suffix}) keep them")


def _same_format(a: str, b: str) -> bool:
    same = {".jpeg": ".jpg", ".tiff": ".tif"}
    return same.get(a, a) == same.get(b, b)


def frame_bits(plan: OutputPlan, info: "media.MediaInfo", requested: Optional[int]) -> int:
    """Bits per channel of the frames written: `requested`, else the source's depth where the output
    format holds it (an 8-bit image format gets 8)."""
    if requested is not None:
        if requested not in (8, 16):
            raise UserError("bits must be 8 or 16", field="bits")
        if requested == 16 and Path(plan.pattern).suffix.lower() not in DEEP_EXTS:
            raise UserError(f"16-bit frames need .png, .tif, .dpx or .exr, not {Path(plan.pattern).suffix}",
                            field="bits")
        return requested
    bits = media.source_bits(info)
    return bits if Path(plan.pattern).suffix.lower() in DEEP_EXTS else 8


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
