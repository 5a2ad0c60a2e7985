"""`probe`: describe a movie, image sequence or still image as a `MediaInfo`.

Movies are read with ffprobe: the picture stream (the default video stream,
else the largest; cover art is not a picture stream), its size, rotation,
bit depth and chroma (`pixfmt`), colour tags, profile and field order, the
start timecode and reel name, and the other streams (audio, subtitles, data)
that an output carries along. Their presented frames come from
`timestamps`; image sequences and stills from `sequences`.

Constant frame rate is decided from the timestamps: a clip is CFR when every
frame lies within one time-base tick (and under half a frame) of
``start + i / fps`` for a rational fps (the stream's ``r_frame_rate``, its ``avg_frame_rate``, a standard rate
such as 24000/1001 or 30000/1001, or the median spacing); otherwise it is
VFR and keeps per-frame timestamps. Timestamps are seconds from the file's
start (the origin ffmpeg's ``-ss`` uses), so audio can be cut to match.
Streams with no timestamps at all (raw .h264 elementary streams) play at
their nominal rate and are read from the start (``MediaInfo.seekable``).
"""
from __future__ import annotations

import json
import os
import re
import statistics
from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Tuple, Union

from ..errors import UserError
from .files import check_regular
from .images import READ_FORMATS
from .info import DEFAULT_SEQUENCE_FPS, IMAGE_EXTS, MediaInfo, PathLike, Stream, as_fraction
from .pixfmt import pixel_format
from .sequences import is_pattern, probe_folder, probe_pattern, probe_still
from .timestamps import fits_grid, video_pts
from .tools import ffprobe_exe, file_url, last_lines, run

# ffprobe format names of single pictures (a still given without a known extension)
_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe", "webp_pipe", "jpegls_pipe",
                  "j2k_pipe", "dpx_pipe", "exr_pipe", "pam_pipe", "pgm_pipe", "ppm_pipe", "qoi_pipe"}
_STANDARD_RATES = [Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
                   Fraction(48), Fraction(50), Fraction(60000, 1001), Fraction(60), Fraction(120),
                   Fraction(12), Fraction(15), Fraction(120000, 1001), Fraction(100)]
_TIMECODE = re.compile(r"^\d{2}:\d{2}:\d{2}[:;.]\d{2}$")


def probe(path: Union[PathLike, "MediaInfo"], *, fps: Union[Fraction, float, str, None] = None, allow_still: bool = True) -> MediaInfo:
    """Describe a movie, image sequence or still image; UserError on bad input.

    `fps` sets the rate of image sequences and stills (default 24; movies
    keep their own). A single image is a 1-frame clip unless
    ``allow_still=False``. Pipes, devices and sockets are refused unopened;
    ffprobe runs under the media timeout (see `tools`).
    """
    if isinstance(path, MediaInfo):
        return path
    text = os.fspath(path)
    given = as_fraction(fps) if fps is not None else None   # sequences: else the files' own rate, else 24
    p = Path(text)
    if is_pattern(p.name) and not p.exists():  # "take#2.mov" or "100%done.mp4" are files, not patterns
        return probe_pattern(p, given)
    if not p.exists():
        raise UserError(f"{p} does not exist", field="source")
    if p.is_dir():
        return probe_folder(p, given)
    check_regular(p)
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror or exc}", field="source") from None
    if not head:
        raise UserError(f"{p} is empty (0 bytes): not a video", field="source")
    if p.suffix.lower() in IMAGE_EXTS:
        return probe_still(p, given, allow_still)
    return _probe_movie(p, head, given, allow_still)


def _probe_movie(p: Path, head: bytes, given: Optional[Fraction], allow_still: bool) -> MediaInfo:
    out = run([ffprobe_exe(), "-v", "error", "-show_format", "-show_streams", "-of", "json", file_url(p)], str(p))
    if out.returncode != 0:
        raise UserError(_probe_error(p, head, out.stderr.decode("utf-8", "replace")), field="source")
    data = json.loads(out.stdout or b"{}")
    fmt = data.get("format", {})
    streams = data.get("streams", [])
    vs = _main_video(streams)
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    format_names = set(str(fmt.get("format_name", "")).split(","))
    if vs is not None and format_names & _IMAGE_FORMATS:
        return probe_still(p, given, allow_still)
    if vs is None:
        if audio:
            raise UserError(f"{p} is an audio file: it has no video stream", field="source")
        if not streams:
            raise UserError(f"{p} is an empty clip: it contains no streams and no frames", field="source")
        raise UserError(f"{p} has no video stream", field="source")
    index = int(vs["index"])
    tb = _fraction(vs.get("time_base")) or Fraction(1, 90000)
    fmt_start = _float(fmt.get("start_time")) or 0.0
    # the sample count of an MP4/MOV index is exact (AVI headers and others are not)
    nb = str(vs.get("nb_frames", "")) if "mp4" in format_names or "mov" in format_names else ""
    pts, last_dur, synthesized = video_pts(p, index, tb, int(nb) if nb.isdigit() else 0,
                                           _fraction(vs.get("r_frame_rate")))
    if not pts:
        raise UserError(f"{p} is an empty clip: its video stream has no frames", field="source")

    width, height = int(vs.get("width") or 0), int(vs.get("height") or 0)
    if width <= 0 or height <= 0:
        raise UserError(f"{p}: cannot tell the picture size of its video stream", field="source")
    rotation = _rotation(vs)
    if rotation % 180:
        width, height = height, width

    n = len(pts)
    first = pts[0]
    fps, is_vfr, median = _frame_rate(pts, tb, vs, given or DEFAULT_SEQUENCE_FPS)
    if last_dur is None or last_dur <= 0:
        last_dur = median if median > 0 else None
    if is_vfr:
        end = pts[-1] + (last_dur or 0)
        duration = float((end - first) * tb)
        timestamps = tuple(float(t * tb) - fmt_start for t in pts)
    else:
        duration = float(Fraction(n) / fps)
        timestamps = None
    pix = pixel_format(str(vs.get("pix_fmt", "")))
    raw_bits = str(vs.get("bits_per_raw_sample", ""))
    timecode, reel = _timecode(vs, streams, fmt)
    others = tuple(Stream(int(s["index"]), s["codec_type"], str(s.get("codec_name") or "none"),
                          str(s.get("codec_tag_string") or ""), int(s.get("sample_rate") or 0)) for s in streams
                   if s.get("codec_type") in ("audio", "subtitle", "data"))
    return MediaInfo(
        path=p, width=width, height=height, fps=fps, frame_count=n, duration=duration,
        has_audio=bool(audio), codec=str(vs.get("codec_name", "")), pix_fmt=pix.name,
        is_vfr=is_vfr, is_sequence=False, timestamps=timestamps, start_time=float(first * tb) - fmt_start,
        time_base=tb, stream_index=index, audio_codec=audio[0].get("codec_name") if audio else None,
        rotation=rotation, alpha=pix.alpha, seekable=not synthesized,
        bit_depth=max(pix.bits, int(raw_bits) if raw_bits.isdigit() else 0),
        color_space=_tag(vs.get("color_space")), color_range=_tag(vs.get("color_range")),
        color_primaries=_tag(vs.get("color_primaries")), color_transfer=_tag(vs.get("color_transfer")),
        profile=_tag(vs.get("profile")), chroma=pix.chroma, field_order=_field_order(p, vs),
        timecode=timecode, reel_name=reel, streams=others, pixel_aspect=_aspect(vs.get("sample_aspect_ratio")),
    )


def _main_video(streams: List[dict]) -> Optional[dict]:
    """The picture stream: the default one among the video streams (cover art excluded), else the largest."""
    video = [s for s in streams if s.get("codec_type") == "video"
             and not s.get("disposition", {}).get("attached_pic")]
    if not video:
        return None
    return max(video, key=lambda s: (bool(s.get("disposition", {}).get("default")),
                                     int(s.get("width") or 0) * int(s.get("height") or 0), -int(s["index"])))


def _frame_rate(pts: List[int], tb: Fraction, vs: dict, seq_fps: Fraction) -> Tuple[Fraction, bool, Fraction]:
    """(fps, is_vfr, median frame spacing in ticks): CFR when every frame sits within a tick of start + i/fps."""
    n = len(pts)
    deltas = [b - a for a, b in zip(pts, pts[1:])]
    median = Fraction(statistics.median(deltas)) if deltas else Fraction(0)
    r_rate, avg_rate = _fraction(vs.get("r_frame_rate")), _fraction(vs.get("avg_frame_rate"))
    if n == 1:
        return (r_rate if r_rate and 0 < r_rate <= 1000 else (avg_rate or seq_fps)), False, median
    candidates = [r for r in (r_rate, avg_rate) if r and 0 < r <= 1000] + _STANDARD_RATES
    if median > 0:
        candidates.append((1 / (median * tb)).limit_denominator(1001))
    for cand in candidates:
        if fits_grid(pts, tb, cand):
            return cand, False, median
    # VFR: a nominal rate from the timestamps alone, so a re-encode with the same timestamps reports the same
    span = (pts[-1] - pts[0]) * tb
    return ((Fraction(n - 1) / span).limit_denominator(1001) if span > 0 else (r_rate or seq_fps)), True, median


def _field_order(p: Path, vs: dict) -> str:
    """"progressive", "tff" or "bff". The stream-level flag is trusted when it says progressive; otherwise
    (H.264 streams report "tt" for either order, many report "unknown") the first frame decides."""
    stated = str(vs.get("field_order") or "unknown")
    if stated == "progressive":
        return "progressive"
    out = run([ffprobe_exe(), "-v", "error", "-select_streams", str(vs["index"]), "-read_intervals", "%+#1",
               "-show_entries", "frame=interlaced_frame,top_field_first", "-of", "json", file_url(p)], str(p))
    frames = json.loads(out.stdout or b"{}").get("frames") or [{}]
    if frames[0].get("interlaced_frame"):
        return "tff" if frames[0].get("top_field_first") else "bff"
    if not frames[0] and stated in ("tt", "tb", "bb", "bt"):  # undecodable here: take the stream's word
        return "tff" if stated[0] == "t" else "bff"
    return "progressive"


def _timecode(vs: dict, streams: List[dict], fmt: dict) -> Tuple[Optional[str], Optional[str]]:
    """(start timecode, reel name): from the video stream, a timecode (tmcd) track, or the container
    (Matroska spells its tags in capitals)."""
    places = [vs.get("tags") or {}]
    places += [s.get("tags") or {} for s in streams if s.get("codec_tag_string") == "tmcd"]
    places.append(fmt.get("tags") or {})
    places = [{str(k).lower(): str(v) for k, v in tags.items()} for tags in places]
    timecode = next((t["timecode"] for t in places if _TIMECODE.match(t.get("timecode", ""))), None)
    reel = next((t["reel_name"] for t in places if t.get("reel_name")), None)
    return timecode, reel


def _probe_error(p: Path, head: bytes, stderr: str) -> str:
    low = stderr.lower()
    if "moov atom not found" in low and head[4:8] == b"ftyp":
        return (f"{p} is truncated or was not finished: its index (moov atom) is missing, "
                "so no frame can be read; was the copy or the recording interrupted?")
    if "invalid data found" in low or "moov atom not found" in low:
        return (f"{p} is not a video or image file that toon-ofx can read (movies: what ffmpeg decodes; images "
                f"and sequences: {READ_FORMATS})")
    if "permission denied" in low:
        return f"cannot read {p}: permission denied"
    detail = last_lines(stderr, 2)
    return f"cannot read {p} as video" + (f": {detail}" if detail else "")


def _aspect(text) -> float:
    """A sample aspect ratio "num:den" as a number (1.0 when absent or unknown)."""
    num, _, den = str(text or "").partition(":")
    try:
        value = float(Fraction(int(num), int(den)))
    except (ValueError, ZeroDivisionError):
        return 1.0
    return value if value > 0 else 1.0


def _fraction(text) -> Optional[Fraction]:
    try:
        f = Fraction(str(text))
    except (ValueError, ZeroDivisionError, TypeError):
        return None
    return f if f > 0 else None


def _float(text) -> Optional[float]:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _tag(value) -> Optional[str]:
    return None if value in (None, "", "unknown", "unspecified", "reserved") else str(value)


def _rotation(stream: dict) -> int:
    for sd in stream.get("side_data_list", []) or []:
        if "rotation" in sd:
            try:
                return int(round(float(sd["rotation"]))) % 360
            except (TypeError, ValueError):
                pass
    rot = (stream.get("tags") or {}).get("rotate")
    try:
        return int(rot) % 360 if rot is not None else 0
    except ValueError:
        return 0
