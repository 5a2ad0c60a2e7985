"""Movie outputs: codec and container checks, colour tags and the ffmpeg encoder options.

Colour: encoding converts back to YCbCr with the source's matrix and copies
its tags, so an output stacked over its source in an editor lines up in
colour.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

from ..errors import UserError
from .info import MOVIE_EXTS, MediaInfo

_MATRIX = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "bt601": "bt601",
           "fcc": "fcc", "smpte240m": "smpte240m", "bt2020nc": "bt2020", "bt2020c": "bt2020"}


def codec_for(output: Path, codec: Optional[str], alpha: bool) -> str:
    """The codec ("h264" or "prores", default by `alpha`) checked against `output`'s container."""
    ext = output.suffix.lower()
    if codec is None:
        codec = "prores" if alpha else "h264"
    codec = codec.lower()
    if codec not in ("h264", "prores"):
        raise UserError(f"codec must be 'h264' or 'prores', not {codec!r}", field="codec")
    if alpha and codec != "prores":
        raise UserError("an alpha (overlay) movie needs ProRes 4444 in a .mov; H.264 has no alpha",
                        field="output")
    if ext not in MOVIE_EXTS:
        raise UserError(f"movie output must end in one of {', '.join(MOVIE_EXTS)}, not {ext or 'nothing'}",
                        field="output")
    if codec == "prores" and ext not in (".mov", ".mkv"):
        raise UserError(f"ProRes goes in a .mov, not {ext}", field="output")
    return codec


def muxer_for(output: Path) -> str:
    """ffmpeg muxer name for a movie output (its extension was checked by `codec_for`)."""
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}[output.suffix.lower()]


def _color_args(info: MediaInfo) -> Tuple[str, List[str]]:
    """(scale filter options, encoder tag options) reproducing the source's YCbCr matrix and tags."""
    matrix = _MATRIX.get(info.color_space or "")
    scale = f"scale=out_color_matrix={matrix}:out_range=tv" if matrix else "scale=out_range=tv"
    tags = []
    if info.color_space:
        tags += ["-colorspace", info.color_space]
    if info.color_primaries:
        tags += ["-color_primaries", info.color_primaries]
    if info.color_transfer:
        tags += ["-color_trc", info.color_transfer]
    if matrix:
        tags += ["-color_range", "tv"]
    return scale, tags


def video_args(codec: str, *, alpha: bool, crf: int, preset: str, color_from: Optional[MediaInfo]) -> List[str]:
    """Filter and encoder options for `codec` in the YCbCr matrix and tags of `color_from` (None: untagged).

    H.264: yuv420p, CRF `crf`, odd sizes padded by one pixel right/bottom.
    ProRes 4444: 10-bit 4:4:4, with a 16-bit alpha plane when `alpha`.
    """
    scale, tags = _color_args(color_from) if color_from is not None else ("scale=out_range=tv", [])
    if codec == "h264":
        vf = ["pad=ceil(iw/2)*2:ceil(ih/2)*2", scale, "format=yuv420p"]
        return ["-vf", ",".join(vf), "-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)),
                "-pix_fmt", "yuv420p"] + tags
    fmt = "yuva444p10le" if alpha else "yuv444p10le"
    return ["-vf", ",".join([scale, f"format={fmt}"]), "-c:v", "prores_ks", "-profile:v", "4444",
            "-vendor", "apl0", "-pix_fmt", fmt] + (["-alpha_bits", "16"] if alpha else []) + tags


def audio_args(output: Path) -> List[str]:
    """Audio encoder options: PCM in a .mov, AAC in other containers."""
    return ["-c:a", "pcm_s16le"] if output.suffix.lower() == ".mov" else ["-c:a", "aac", "-b:a", "192k"]
