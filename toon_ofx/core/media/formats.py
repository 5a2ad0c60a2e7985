"""Movie outputs: which codec in which container, and the encoder options that keep the source's look.

The seam for codecs: each output codec is one `Codec` row of `CODECS` (the
``--codec`` names). By default the output follows the source (`default_codec`):
ProRes in, the same ProRes profile out; DNxHR in, the same DNxHR profile;
10-bit H.264/HEVC in, 10-bit out; 8-bit H.264/HEVC in, the same at CRF 16
(visually lossless); anything else in, H.264 (8-bit) or HEVC Main 10
(deeper). An overlay (alpha) is always ProRes 4444 with a 16-bit alpha plane.
When the container the caller chose cannot hold that codec, the nearest one it
can (H.264 or HEVC Main 10) is used and named in the result.

An MXF source (DNxHR, XDCAM HD422) is written back as MXF; a codec MXF cannot
carry here (ProRes, H.264, HEVC) is refused in one line that names the .mov to
use. A source with alpha gets ProRes 4444 (its alpha carried) in a .mov.
Every time the codec or its chroma differs from what follows the source, the
reason is one warning line (`codec_choice`).

What each codec cannot do, and what happens:
- ProRes goes in a .mov only, DNxHR in a .mov or .mxf (editors expect them there),
  XDCAM HD422 (MPEG-2 4:2:2 at 50 Mb/s) in a .mxf or .mov.
- MXF holds constant frame rates only: a VFR source is refused there.
- ProRes 4:2:2 at an odd width loses its last chroma column in ffmpeg's encoder
  (measured: the column decodes ~730 levels off in 10 bits): an odd-width
  picture gets ProRes 4444 by default, and an explicit ProRes 422 is refused.
  DNxHR keeps odd sizes in 4:2:2.
- H.264/HEVC 4:2:0 need even sizes (4:2:2 an even width): an odd-sized picture
  is written 4:4:4 (High 4:4:4 / Main 4:4:4) so the size stays exact; some
  editors cannot decode 4:4:4 H.264, ProRes keeps odd sizes in 4:2:2.
- DNxHR and HEVC cannot store interlaced frames: an interlaced source gets
  ProRes 422 HQ (.mov) or H.264 by default, and an explicit DNxHR/HEVC is refused.
- ProRes and DNxHR are limited range: a full-range source is converted to
  limited range and tagged so (the picture looks the same).
- ProRes carries colour tags only through its frame header (`prores_metadata`);
  its transfer codes are BT.709, PQ and HLG: the BT.601 and BT.2020 SDR curves,
  identical to BT.709's, are written as BT.709 (as Apple's own encoder does).

Colour: the encoder converts RGB back to YCbCr with the matrix and range the
decoder used (the source's tags; ffmpeg's BT.601 limited range when untagged)
and writes the source's tags, untagged staying untagged, so an output stacked
over its source lines up in any editor; `ColorPlan.expected` is what ffprobe
must read back from the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import UserError
from .info import MOVIE_EXTS, MediaInfo

MOV_ONLY = (".mov",)
PORTABLE = (".mp4", ".mov", ".mkv", ".m4v")   # what H.264 and HEVC go in
MXF_CODECS = "DNxHR or XDCAM HD422"


@dataclass(frozen=True)
class Codec:
    """One output codec: the ffmpeg encoder and what it can hold."""

    name: str                      # the --codec value
    label: str                     # for messages: "ProRes 422 HQ"
    encoder: str
    bits: int                      # bits per component written (8 or 10)
    pix_fmt: Optional[str] = None  # fixed pixel format; None: chroma follows the source (H.264/HEVC)
    options: Tuple[str, ...] = ()
    containers: Tuple[str, ...] = PORTABLE
    alpha: bool = False            # can carry an alpha plane
    interlace: bool = True         # can store interlaced frames
    full_range: bool = True        # can store full-range YCbCr

    @property
    def family(self) -> str:
        return self.name.split("-")[0]

    @property
    def probe_name(self) -> str:
        """The codec_name ffprobe reports for what this codec writes."""
        return {"libx264": "h264", "libx265": "hevc", "prores_ks": "prores", "dnxhd": "dnxhd",
                "mpeg2video": "mpeg2video"}[self.encoder]


def _prores(name: str, label: str, profile: int, pix_fmt: str, alpha: bool = False) -> Codec:
    return Codec(name, label, "prores_ks", 10, pix_fmt, ("-profile:v", str(profile), "-vendor", "apl0"),
                 MOV_ONLY, alpha=alpha, full_range=False)


def _dnxhr(name: str, label: str, profile: str, bits: int, pix_fmt: str) -> Codec:
    return Codec(name, label, "dnxhd", bits, pix_fmt, ("-profile:v", profile), (".mov", ".mxf"), interlace=False,
                 full_range=False)


CODECS: Dict[str, Codec] = {c.name: c for c in (
    Codec("h264", "H.264 (8-bit)", "libx264", 8),
    Codec("h264-10bit", "H.264 High 10", "libx264", 10),
    Codec("hevc", "HEVC (8-bit)", "libx265", 8, interlace=False),
    Codec("hevc-10bit", "HEVC Main 10", "libx265", 10, interlace=False),
    _prores("prores-proxy", "ProRes 422 Proxy", 0, "yuv422p10le"),
    _prores("prores-lt", "ProRes 422 LT", 1, "yuv422p10le"),
    _prores("prores-422", "ProRes 422", 2, "yuv422p10le"),
    _prores("prores-422hq", "ProRes 422 HQ", 3, "yuv422p10le"),
    _prores("prores-4444", "ProRes 4444", 4, "yuv444p10le", alpha=True),
    _prores("prores-4444xq", "ProRes 4444 XQ", 5, "yuv444p10le", alpha=True),
    _dnxhr("dnxhr-lb", "DNxHR LB", "dnxhr_lb", 8, "yuv422p"),
    _dnxhr("dnxhr-sq", "DNxHR SQ", "dnxhr_sq", 8, "yuv422p"),
    _dnxhr("dnxhr-hq", "DNxHR HQ", "dnxhr_hq", 8, "yuv422p"),
    _dnxhr("dnxhr-hqx", "DNxHR HQX", "dnxhr_hqx", 10, "yuv422p10le"),
    _dnxhr("dnxhr-444", "DNxHR 444", "dnxhr_444", 10, "yuv444p10le"),
    # Sony XDCAM HD422: MPEG-2 4:2:2, 50 Mb/s constant, long GOP (ffmpeg's settings for it)
    Codec("xdcam-hd422", "XDCAM HD422", "mpeg2video", 8, "yuv422p",
          ("-b:v", "50M", "-minrate", "50M", "-maxrate", "50M", "-bufsize", "17825792", "-g", "12", "-bf", "2",
           "-intra_vlc", "1", "-non_linear_quant", "1", "-qmax", "28", "-dc", "10"), (".mxf", ".mov"),
          full_range=False),
)}

# ffprobe profile names -> the codec that writes them again
_PRORES_PROFILES = {"Proxy": "prores-proxy", "LT": "prores-lt", "Standard": "prores-422", "HQ": "prores-422hq",
                    "4444": "prores-4444", "XQ": "prores-4444xq", "4444XQ": "prores-4444xq"}
_DNX_PROFILES = {"DNXHR LB": "dnxhr-lb", "DNXHR SQ": "dnxhr-sq", "DNXHR HQ": "dnxhr-hq",
                 "DNXHR HQX": "dnxhr-hqx", "DNXHR 444": "dnxhr-444"}


def codec_names() -> List[str]:
    """The --codec values."""
    return list(CODECS)


def default_codec(source: Optional[MediaInfo], alpha: bool = False) -> Codec:
    """The codec that follows `source` (see the module docstring); ProRes 4444 for alpha (an overlay's, or
    the source's own)."""
    codec = _follows(source, alpha)
    if source is not None and source.interlaced and not codec.interlace:
        codec = CODECS["prores-422hq"] if ".mov" in codec.containers else _portable(codec.bits > 8, True)
    return codec


def _follows(source: Optional[MediaInfo], alpha: bool = False) -> Codec:
    """The codec of the source's own family and profile (before the interlace check)."""
    if source is None:
        return CODECS["prores-4444" if alpha else "h264"]
    if alpha or source.alpha:
        return CODECS["prores-4444xq" if source.codec == "prores" and source.profile in ("XQ", "4444XQ")
                      else "prores-4444"]
    deep = source.bit_depth > 8
    name = None
    if source.codec == "prores":
        name = _PRORES_PROFILES.get(source.profile or "", "prores-422hq")
    elif source.codec == "dnxhd":
        name = _DNX_PROFILES.get(source.profile or "", "dnxhr-hqx" if deep else "dnxhr-hq")
    elif source.codec in ("h264", "hevc"):
        name = source.codec + ("-10bit" if deep else "")
    elif source.codec == "mpeg2video" and source.chroma == "422":
        name = "xdcam-hd422"
    return CODECS[name] if name else _portable(deep, source.interlaced)


def movie_suffix(source: Optional[MediaInfo], alpha: bool = False) -> str:
    """The container an output movie takes by default: the source's own when it holds the codec that
    follows the source, else that codec's first (.mov for ProRes/DNxHR, .mp4 otherwise)."""
    codec = default_codec(source, alpha)
    ext = source.path.suffix.lower() if source is not None and not source.is_sequence else ""
    return ext if ext in codec.containers else codec.containers[0]


def _portable(deep: bool, interlaced: bool = False) -> Codec:
    """The codec any container holds: H.264 for 8-bit pictures, HEVC Main 10 (H.264 High 10 when
    interlaced: HEVC cannot store interlaced frames here) for deeper ones."""
    if not deep:
        return CODECS["h264"]
    return CODECS["h264-10bit" if interlaced else "hevc-10bit"]


def choose_codec(output: Path, name: Optional[str], source: Optional[MediaInfo], alpha: bool = False,
                 width: Optional[int] = None) -> Codec:
    """The codec for `output`: `name` (a --codec value) checked, or the default that follows `source`.
    `width` is the pictures' width (default: the source's)."""
    ext = output.suffix.lower()
    width = width if width is not None else (source.width if source is not None else 0)
    if ext not in MOVIE_EXTS:
        raise UserError(f"movie output must end in one of {', '.join(MOVIE_EXTS)}, not {ext or 'nothing'}",
                        field="output")
    interlaced = source is not None and source.interlaced
    if name is None:
        codec = default_codec(source, alpha)
        if ext not in codec.containers and not alpha and ext != ".mxf":
            codec = _portable(codec.bits > 8, interlaced)
        if _loses_last_column(codec, width):
            codec = CODECS["prores-4444"]
    else:
        codec = CODECS.get(str(name).lower())
        if codec is None:
            raise UserError(f"unknown codec {name!r}; choose one of {', '.join(CODECS)}", field="codec")
        if _loses_last_column(codec, width):
            raise UserError(f"{codec.label} loses the last colour column of an odd-width picture ({width} px) in "
                            "ffmpeg's ProRes encoder; choose --codec prores-4444 or dnxhr-hqx, which keep it",
                            field="codec")
    if alpha and not codec.alpha:
        raise UserError(f"an overlay (alpha) movie needs ProRes 4444 in a .mov; {codec.label} has no alpha",
                        field="codec" if name else "output")
    if ext == ".mxf" and ext not in codec.containers:
        raise UserError(f"{codec.label} cannot go in an MXF file (toon-ofx writes {MXF_CODECS} there): name the "
                        f"output {output.stem}.mov" + ("" if name else ", or choose --codec dnxhr-hq"),
                        field="codec" if name else "output")
    if ext == ".mxf" and source is not None and source.is_vfr:
        raise UserError(f"an MXF file holds a constant frame rate, and {source.path.name} has a variable one: "
                        f"name the output {output.stem}.mov", field="output")
    if ext not in codec.containers:
        raise UserError(f"{codec.label} goes in a {' or '.join(codec.containers)}, not {ext}: name the output "
                        f"{output.stem}{codec.containers[0]} or choose another --codec", field="output")
    if interlaced and not codec.interlace:
        raise UserError(f"the source is interlaced and {codec.label} cannot store interlaced frames; choose "
                        "--codec prores-422hq (.mov) or h264", field="codec")
    return codec


def codec_choice(output: Path, name: Optional[str], source: Optional[MediaInfo], alpha: bool = False,
                 width: Optional[int] = None, height: Optional[int] = None) -> Tuple[Codec, List[str]]:
    """`choose_codec`, and one warning line for each way the movie differs from what follows the source:
    another codec (the container, an odd width, interlaced frames), 4:4:4 chroma for an odd size."""
    codec = choose_codec(output, name, source, alpha, width)
    if source is None:
        return codec, []
    width = source.width if width is None else width
    height = source.height if height is None else height
    warnings = []
    own = _follows(source, alpha)
    if name is None and codec != own:
        what = f"the {own.label} that follows {source.path.name}"
        if output.suffix.lower() not in own.containers:
            warnings.append(f"written as {codec.label} instead of {what}: a {output.suffix.lower()} cannot hold it "
                            f"(name the output {output.stem}{own.containers[0]} to keep it)")
        elif _loses_last_column(own, width):
            warnings.append(f"written as {codec.label} instead of {what}: ffmpeg's ProRes 4:2:2 encoder loses the "
                            f"last colour column of an odd-width ({width} px) picture")
        elif source.interlaced and not own.interlace:
            warnings.append(f"written as {codec.label} instead of {what}: {own.label} cannot store interlaced frames")
    written, usual = pixel_format_for(codec, width, height, source.chroma, alpha), source.chroma or "420"
    if codec.pix_fmt is None and "444" in written and usual != "444":
        warnings.append(f"{codec.label} written 4:4:4 ({written}): {':'.join(usual)} cannot hold the odd size "
                        f"{width}x{height}; some editors cannot decode 4:4:4 {codec.label.split()[0]}")
    return codec, warnings


def _loses_last_column(codec: Codec, width: int) -> bool:
    """ffmpeg's ProRes 4:2:2 garbles the last chroma column of an odd-width picture."""
    return bool(width % 2) and codec.family == "prores" and codec.pix_fmt == "yuv422p10le"


def muxer_for(output: Path) -> str:
    """ffmpeg muxer name for a movie output (its extension was checked by `choose_codec`)."""
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".mxf": "mxf"}[output.suffix.lower()]


def pixel_format_for(codec: Codec, width: int, height: int, chroma: Optional[str], alpha: bool = False) -> str:
    """The pixel format written: the codec's own, or for H.264/HEVC the source's chroma (4:2:0 for RGB
    sources) raised to 4:4:4 when the size is odd in a subsampled direction."""
    if codec.pix_fmt is not None:
        return "yuva444p10le" if alpha else codec.pix_fmt
    chroma = chroma if chroma in ("420", "422", "444") else "420"
    if (width % 2 and chroma != "444") or (height % 2 and chroma == "420"):
        chroma = "444"
    return f"yuv{chroma}p" + ("10le" if codec.bits == 10 else "")


# ----------------------------------------------------------------------------- colour

_MATRIX = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "bt601": "bt601",
           "fcc": "fcc", "smpte240m": "smpte240m", "bt2020nc": "bt2020", "bt2020c": "bt2020"}
# what a ProRes frame header can say (prores_metadata), with the equivalent codes it stands for
_PRORES_PRIMARIES = {"bt709", "bt470bg", "smpte170m", "bt2020", "smpte431", "smpte432"}
_PRORES_TRANSFER = {"bt709": "bt709", "smpte170m": "bt709", "bt2020-10": "bt709", "bt2020-12": "bt709",
                    "smpte2084": "smpte2084", "arib-std-b67": "arib-std-b67"}
_PRORES_MATRIX = {"bt709": "bt709", "smpte170m": "smpte170m", "bt470bg": "smpte170m", "bt2020nc": "bt2020nc"}


@dataclass
class ColorPlan:
    """How colour is written: the scale filter, encoder tag options, bitstream filter, expected read-back."""

    scale: str
    tags: List[str] = field(default_factory=list)
    bsf: Optional[str] = None
    expected: Dict[str, str] = field(default_factory=dict)   # ffprobe stream key -> value


def color_plan(codec: Codec, source: Optional[MediaInfo]) -> ColorPlan:
    """Matrix, range and tags of `source` as `codec` can write them; UserError if it cannot say them."""
    space = source.color_space if source else None
    space = None if space == "gbr" else space   # an RGB-coded source (FFV1, PNG in MOV) has no YCbCr matrix to keep
    primaries = source.color_primaries if source else None
    transfer = source.color_transfer if source else None
    full = source is not None and source.color_range == "pc"
    out_range = "pc" if full and codec.full_range else "tv"
    matrix = _MATRIX.get(space or "")
    scale = f"scale=out_color_matrix={matrix}:out_range={out_range}" if matrix else f"scale=out_range={out_range}"
    plan = ColorPlan(scale)
    if codec.family == "prores":
        space, primaries, transfer = _prores_tags(codec, space, primaries, transfer)
        bsf = {k: v for k, v in (("color_primaries", primaries), ("color_trc", transfer), ("colorspace", space)) if v}
        if bsf:
            plan.bsf = "prores_metadata=" + ":".join(f"{k}={v}" for k, v in bsf.items())
    for option, key, value in (("-colorspace", "color_space", space), ("-color_primaries", "color_primaries", primaries),
                               ("-color_trc", "color_transfer", transfer)):
        if value:
            plan.tags += [option, value]
            plan.expected[key] = value
    if source is not None and (source.color_range or out_range != "tv"):
        plan.tags += ["-color_range", out_range]
        plan.expected["color_range"] = out_range
    return plan


def _prores_tags(codec: Codec, space, primaries, transfer):
    cannot = [f"{what} {value}" for what, value, ok in (
        ("matrix", space, space is None or space in _PRORES_MATRIX),
        ("primaries", primaries, primaries is None or primaries in _PRORES_PRIMARIES),
        ("transfer", transfer, transfer is None or transfer in _PRORES_TRANSFER)) if not ok]
    if cannot:
        raise UserError(f"{codec.label} cannot tag the source's colour ({', '.join(cannot)}); choose --codec "
                        "h264, h264-10bit or dnxhr-hqx, whose containers can", field="codec")
    return _PRORES_MATRIX.get(space or ""), primaries, _PRORES_TRANSFER.get(transfer or "")


# ----------------------------------------------------------------------------- the video options

def video_args(codec: Codec, pix_fmt: str, colour: ColorPlan, field_order: str = "progressive", *,
               crf: int = 16, preset: str = "medium") -> List[str]:
    """ffmpeg output options for the video stream: filters, encoder, pixel format, tags, field flags."""
    filters = [colour.scale, f"format={pix_fmt}"]
    args = ["-c:v", codec.encoder, *codec.options]
    if codec.encoder in ("libx264", "libx265"):
        args += ["-preset", preset, "-crf", str(int(crf))]
    if codec.encoder == "libx265":
        args += ["-x265-params", "log-level=error"]
    if pix_fmt.startswith("yuva"):
        args += ["-alpha_bits", "16"]
    if field_order != "progressive":
        filters.append("setfield=" + field_order)
        args += ["-flags", "+ildct+ilme" if codec.encoder == "libx264" else "+ildct",
                 "-field_order", "tt" if field_order == "tff" else "bb"]
    args += ["-pix_fmt", pix_fmt] + colour.tags
    if colour.bsf:
        args += ["-bsf:v", colour.bsf]
    return ["-vf", ",".join(filters)] + args
