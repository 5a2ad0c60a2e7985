"""Media I/O: the only module that runs ffmpeg/ffprobe.

Sources are movies (anything ffmpeg decodes), image sequences (a printf
pattern such as ``shot.%04d.png``, a ``shot.####.png`` pattern, or a folder
of numbered images) and single still images (a 1-frame clip: a photo can be
toonified like a clip; pass ``allow_still=False`` to `probe` where a clip is
needed).

Frames are counted the way decoders present them
------------------------------------------------
A frame is one picture that the demuxer hands to the decoder and that the
decoder presents: every video packet that is not marked "discard" (edit-list
pre-roll) is one frame, at its own presentation timestamp. We never let
ffmpeg resample the time axis (``-fps_mode passthrough``), so frame N is the
N-th picture of the file, for ffprobe, OpenCV and editors alike.

* ``face_noface.mov`` (HEVC, variable frame rate): **169 frames**, not 192.
  The file holds 169 coded pictures: 73 on a 30 fps grid, one splice frame,
  then 95 on a 24 fps grid (two clips joined; the audio starts 2.43 s in). ffmpeg's default
  ``-vsync cfr`` for rawvideo/image outputs resamples to the stream's nominal
  ``r_frame_rate`` (30/1) over the 6.4 s and so *duplicates* 23 pictures of
  the 24 fps part, giving 192. Rendering those would waste 14 % of the work
  and shift every frame number after 2.4 s against what OpenCV, Resolve and
  Blender show. We keep the 169 pictures and each one's timestamp
  (`MediaInfo.timestamps`); `encode_movie` writes them back with the same
  timestamps, so timing and audio sync survive.
* ``no_face.mp4``: 98 packets, but the first 3 are edit-list pre-roll marked
  discard (negative pts), so 95 frames are presented, every 1/24 s exactly:
  a constant **24 fps** clip of 95 frames. The ``avg_frame_rate`` of
  150528/6359 (~23.67, what OpenCV reports) is 98 packets / 3.945 s and
  matches no frame spacing; encoding 95 frames at 23.67 fps would drift the
  audio by 55 ms by the end.

Constant frame rate is decided from the timestamps: a clip is CFR when every
frame lies within one time-base tick (and under half a frame) of
``start + i / fps`` for a rational fps (the stream's ``r_frame_rate``, its ``avg_frame_rate``, a standard rate
such as 24000/1001 or 30000/1001, or the median spacing); otherwise it is
VFR and keeps per-frame timestamps. Timestamps are seconds from the file's
start (the origin ffmpeg's ``-ss`` uses), so audio can be cut to match.
Streams with no timestamps at all (raw .h264 elementary streams) play at
their nominal rate and are read from the start (``MediaInfo.seekable``).

Seeking: `read_frames` starts ffmpeg with ``-ss`` a quarter tick before the
wanted frame (ffmpeg rounds the seek to the stream's time base and its
accurate seek drops earlier frames), so frame N has the same pixels whether
read from 0 or from a seek, also with coarse time bases (1/30, 1 ms).

Colour: decoding uses the stream's tagged YCbCr matrix (ffmpeg's default,
BT.601, when untagged); encoding converts back with the same matrix and
copies the source's tags, so an output stacked over its source in an editor
lines up in colour.

Outputs are written atomically: frames go to a temp file in the same folder
and are renamed into place; movies are encoded to a temp name next to the
output and renamed only when ffmpeg succeeded. Source media is never written.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import Cancelled, UserError

PathLike = Union[str, os.PathLike]

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
MOVIE_EXTS = (".mp4", ".mov", ".mkv", ".m4v")
DEFAULT_SEQUENCE_FPS = Fraction(24)
FRAME_DIGITS = 6

# ffprobe format names of single pictures (a still given without a known extension)
_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "tiff_pipe", "webp_pipe", "jpegls_pipe",
                  "j2k_pipe", "dpx_pipe", "exr_pipe", "pam_pipe", "pgm_pipe", "ppm_pipe", "qoi_pipe"}
_STANDARD_RATES = [Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
                   Fraction(48), Fraction(50), Fraction(60000, 1001), Fraction(60), Fraction(120),
                   Fraction(12), Fraction(15), Fraction(120000, 1001), Fraction(100)]
_MATRIX = {"bt709": "bt709", "smpte170m": "bt601", "bt470bg": "bt601", "bt601": "bt601",
           "fcc": "fcc", "smpte240m": "smpte240m", "bt2020nc": "bt2020", "bt2020c": "bt2020"}

__all__ = [
    "MediaInfo", "probe", "read_frames", "write_frame", "read_image", "sequence_path", "sequence_pattern",
    "existing_frames", "encode_movie", "MovieWriter", "IMAGE_EXTS", "MOVIE_EXTS", "ffmpeg_exe", "ffprobe_exe",
]


# ============================================================================ MediaInfo

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
            "first_number": self.first_number, "is_still": self.is_still,
        }


# ============================================================================ tools

def ffmpeg_exe() -> str:
    """Path of ffmpeg (``TOON_OFX_FFMPEG`` overrides); UserError when missing."""
    return _tool("ffmpeg", "TOON_OFX_FFMPEG")


def ffprobe_exe() -> str:
    """Path of ffprobe (``TOON_OFX_FFPROBE`` overrides); UserError when missing."""
    return _tool("ffprobe", "TOON_OFX_FFPROBE")


def _tool(name: str, env: str) -> str:
    exe = os.environ.get(env) or shutil.which(name)
    if not exe:
        raise UserError(f"{name} was not found: install ffmpeg (Debian/Ubuntu: apt-get install ffmpeg; "
                        f"macOS: brew install ffmpeg; Windows: winget install ffmpeg) or set {env}")
    return exe


def _url(path: Path) -> str:
    # "file:" keeps names such as "concat:x" or "-y.mp4" from being read as protocols or options.
    return "file:" + str(Path(path).absolute())


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[-n:])


# ============================================================================ probe

def probe(path: Union[PathLike, "MediaInfo"], *, fps: Union[Fraction, float, str, None] = None, allow_still: bool = True) -> MediaInfo:
    """Describe a movie, image sequence or still image; UserError on bad input.

    `fps` sets the rate of image sequences and stills (default 24; movies
    keep their own). A single image is a 1-frame clip unless
    ``allow_still=False``.
    """
    if isinstance(path, MediaInfo):
        return path
    text = os.fspath(path)
    seq_fps = _as_fraction(fps) if fps is not None else DEFAULT_SEQUENCE_FPS
    p = Path(text)
    if _is_pattern(p.name) and not p.exists():  # "take#2.mov" or "100%done.mp4" are files, not patterns
        return _probe_pattern(p, seq_fps)
    if not p.exists():
        raise UserError(f"{p} does not exist", field="source")
    if p.is_dir():
        return _probe_folder(p, seq_fps)
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror or exc}", field="source") from None
    if not head:
        raise UserError(f"{p} is empty (0 bytes): not a video", field="source")
    if p.suffix.lower() in IMAGE_EXTS:
        return _probe_still(p, seq_fps, allow_still)
    return _probe_movie(p, head, seq_fps, allow_still)


def _as_fraction(value) -> Fraction:
    try:
        f = Fraction(value) if not isinstance(value, float) else Fraction(value).limit_denominator(1001)
    except (TypeError, ValueError, ZeroDivisionError):
        raise UserError(f"frame rate {value!r} is not a number", field="fps") from None
    if f <= 0 or f > 1000:
        raise UserError(f"frame rate {value} is out of range (0-1000]", field="fps")
    return f


def _probe_movie(p: Path, head: bytes, seq_fps: Fraction, allow_still: bool) -> MediaInfo:
    import ffmpeg  # ffmpeg-python

    try:
        data = ffmpeg.probe(_url(p), cmd=ffprobe_exe())
    except ffmpeg.Error as exc:
        raise UserError(_probe_error(p, head, (exc.stderr or b"").decode("utf-8", "replace")),
                        field="source") from None
    fmt = data.get("format", {})
    streams = data.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video"
             and not s.get("disposition", {}).get("attached_pic")]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    format_names = set(str(fmt.get("format_name", "")).split(","))
    if video and format_names & _IMAGE_FORMATS:
        return _probe_still(p, seq_fps, allow_still)
    if not video:
        if audio:
            raise UserError(f"{p} is an audio file: it has no video stream", field="source")
        if not streams:
            raise UserError(f"{p} is an empty clip: it contains no streams and no frames", field="source")
        raise UserError(f"{p} has no video stream", field="source")
    vs = video[0]
    index = int(vs["index"])
    tb = _fraction(vs.get("time_base")) or Fraction(1, 90000)
    fmt_start = _float(fmt.get("start_time")) or 0.0
    # the sample count of an MP4/MOV index is exact (AVI headers and others are not)
    nb = str(vs.get("nb_frames", "")) if "mp4" in format_names or "mov" in format_names else ""
    pts, last_dur, synthesized = _video_pts(p, index, tb, int(nb) if nb.isdigit() else 0,
                                            _fraction(vs.get("r_frame_rate")))
    if not pts:
        raise UserError(f"{p} is an empty clip: its video stream has no frames", field="source")

    width, height = int(vs.get("width") or 0), int(vs.get("height") or 0)
    if width <= 0 or height <= 0:
        raise UserError(f"{p}: cannot tell the picture size of its video stream", field="source")
    rotation = _rotation(vs)
    if rotation % 180:
        width, height = height, width

    # frame rate: CFR when every frame sits within a tick of start + i/fps
    n = len(pts)
    deltas = [b - a for a, b in zip(pts, pts[1:])]
    median = Fraction(statistics.median(deltas)) if deltas else Fraction(0)
    r_rate, avg_rate = _fraction(vs.get("r_frame_rate")), _fraction(vs.get("avg_frame_rate"))
    candidates = [r for r in (r_rate, avg_rate) if r and 0 < r <= 1000] + _STANDARD_RATES
    if median > 0:
        candidates.append((1 / (median * tb)).limit_denominator(1001))
    fps = None
    if n == 1:
        fps = r_rate if r_rate and 0 < r_rate <= 1000 else (avg_rate or seq_fps)
    else:
        for cand in candidates:
            if _fits_grid(pts, tb, cand):
                fps = cand
                break
    is_vfr = fps is None
    first = pts[0]
    if last_dur is None or last_dur <= 0:
        last_dur = median if median > 0 else None
    if is_vfr:
        # nominal rate from the timestamps alone, so a re-encode with the same timestamps reports the same
        span = (pts[-1] - first) * tb
        fps = (Fraction(n - 1) / span).limit_denominator(1001) if span > 0 else (r_rate or seq_fps)
        end = pts[-1] + (last_dur or 0)
        duration = float((end - first) * tb)
        timestamps = tuple(float(t * tb) - fmt_start for t in pts)
    else:
        duration = float(Fraction(n) / fps)
        timestamps = None
    return MediaInfo(
        path=p, width=width, height=height, fps=fps, frame_count=n, duration=duration,
        has_audio=bool(audio), codec=str(vs.get("codec_name", "")), pix_fmt=str(vs.get("pix_fmt", "")),
        is_vfr=is_vfr, is_sequence=False, timestamps=timestamps, start_time=float(first * tb) - fmt_start,
        time_base=tb, stream_index=index, audio_codec=audio[0].get("codec_name") if audio else None,
        rotation=rotation, alpha=_has_alpha(str(vs.get("pix_fmt", ""))), seekable=not synthesized,
        bit_depth=int(vs.get("bits_per_raw_sample") or 8) if str(vs.get("bits_per_raw_sample", "")).isdigit() else 8,
        color_space=_tag(vs.get("color_space")), color_range=_tag(vs.get("color_range")),
        color_primaries=_tag(vs.get("color_primaries")), color_transfer=_tag(vs.get("color_transfer")),
    )


def _probe_error(p: Path, head: bytes, stderr: str) -> str:
    low = stderr.lower()
    if "moov atom not found" in low and head[4:8] == b"ftyp":
        return (f"{p} is truncated or was not finished: its index (moov atom) is missing, "
                "so no frame can be read; was the copy or the recording interrupted?")
    if "invalid data found" in low or "moov atom not found" in low:
        return f"{p} is not a video or image file that ffmpeg can read"
    if "permission denied" in low:
        return f"cannot read {p}: permission denied"
    detail = _last_lines(stderr, 2)
    return f"cannot read {p} as video" + (f": {detail}" if detail else "")


def _video_pts(p: Path, index: int, tb: Fraction, indexed: int = 0,
               r_rate: Optional[Fraction] = None) -> Tuple[List[int], Optional[int], bool]:
    """Sorted presentation timestamps (ticks) of the presented frames, and the last one's duration.

    `indexed` is the stream's sample count from the container index (0 if
    unknown): fewer packets than that means the file was cut short. The
    flag is True when the stream has no timestamps at all and they were
    made up at the nominal rate (such a stream cannot be seeked).
    """
    cmd = [ffprobe_exe(), "-v", "error", "-select_streams", str(index),
           "-show_entries", "packet=pts,duration,flags,pos,size", "-of", "compact", _url(p)]
    out = subprocess.run(cmd, capture_output=True)
    if out.returncode != 0:
        raise UserError(f"cannot read the frames of {p}: {_last_lines(out.stderr.decode('utf-8', 'replace'))}",
                        field="source")
    rows = []
    listed = 0
    needs_decode = False
    file_size = p.stat().st_size
    end_byte = 0
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        if not line.startswith("packet|"):
            continue
        kv = dict(item.split("=", 1) for item in line.split("|")[1:] if "=" in item)
        listed += 1
        if "D" in kv.get("flags", ""):
            continue
        pos, size = kv.get("pos", "N/A"), kv.get("size", "N/A")
        if pos.lstrip("-").isdigit() and size.isdigit():
            end_byte = max(end_byte, int(pos) + int(size))
        pts = kv.get("pts", "N/A")
        if not pts.lstrip("-").isdigit():
            needs_decode = True
            rows.append((None, None))
            continue
        dur = kv.get("duration", "N/A")
        rows.append((int(pts), int(dur) if dur.isdigit() else None))
    stderr = out.stderr.decode("utf-8", "replace")
    if end_byte > file_size or "partial file" in stderr or (indexed and listed < indexed):
        detail = f" ({listed} of the {indexed} frames in its index are there)" if indexed and listed < indexed else ""
        raise UserError(f"{p} is truncated: the data of its last frames is missing{detail}; "
                        "was the copy or render interrupted?", field="source")
    if needs_decode:
        decoded, dur = _decoded_pts(p, index)
        if len(decoded) == len(rows):
            return decoded, dur, False
        # no timestamps at all (raw elementary streams): decoders play them at the nominal rate
        rate = r_rate if r_rate and 0 < r_rate <= 1000 else Fraction(25)
        step = 1 / (rate * tb)
        return [int(round(i * step)) for i in range(len(rows))], int(round(step)), True
    rows.sort(key=lambda r: r[0])
    return [r[0] for r in rows], (rows[-1][1] if rows else None), False


def _decoded_pts(p: Path, index: int) -> Tuple[List[int], Optional[int]]:
    """Fallback for streams without packet timestamps (raw elementary streams, some AVI): decode."""
    cmd = [ffprobe_exe(), "-v", "error", "-select_streams", str(index),
           "-show_entries", "frame=best_effort_timestamp,pkt_duration", "-of", "compact", _url(p)]
    out = subprocess.run(cmd, capture_output=True)
    pts: List[int] = []
    dur = None
    for line in out.stdout.decode("utf-8", "replace").splitlines():
        if not line.startswith("frame|"):
            continue
        kv = dict(item.split("=", 1) for item in line.split("|")[1:] if "=" in item)
        t = kv.get("best_effort_timestamp", "N/A")
        if t.lstrip("-").isdigit():
            pts.append(int(t))
            d = kv.get("pkt_duration", "N/A")
            dur = int(d) if d.isdigit() else None
    if out.returncode != 0 and not pts:
        raise UserError(f"cannot decode {p}: {_last_lines(out.stderr.decode('utf-8', 'replace'))}", field="source")
    return sorted(pts), dur


def _fits_grid(pts: Sequence[int], tb: Fraction, fps: Fraction) -> bool:
    """Every frame within one tick (and under half a frame) of first + i/fps, in exact integers."""
    step = 1 / (fps * tb)  # ticks per frame, as a fraction p/q
    p, q = step.numerator, step.denominator
    first = pts[0]
    for i, t in enumerate(pts):
        err = abs((t - first) * q - i * p)  # in 1/q ticks
        if err > q or 2 * err >= p:
            return False
    return True


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


def _has_alpha(pix_fmt: str) -> bool:
    return pix_fmt.startswith(("yuva", "rgba", "bgra", "argb", "abgr", "gbrap", "ya")) or pix_fmt in ("pal8",)


# ---------------------------------------------------------------------------- image sequences

_PRINTF = re.compile(r"%0?(\d*)d")
_HASHES = re.compile(r"#+")
_NUMBERED = re.compile(r"^(?P<stem>.*?)(?P<num>\d+)(?P<ext>\.[A-Za-z0-9]+)$")


def _is_pattern(name: str) -> bool:
    return bool(_PRINTF.search(name)) or "#" in name


def _pattern_regex(name: str) -> Tuple[re.Pattern, str]:
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


def _probe_pattern(p: Path, fps: Fraction) -> MediaInfo:
    folder = p.parent
    if not folder.is_dir():
        raise UserError(f"folder {folder} of image sequence {p.name} does not exist", field="source")
    regex, printf = _pattern_regex(p.name)
    numbers = sorted(int(m.group(1)) for m in (regex.match(e) for e in os.listdir(folder)) if m)
    if not numbers:
        raise UserError(f"no image matches {p.name} in {folder}", field="source")
    return _sequence_info(folder / printf, numbers, fps)


def _probe_folder(folder: Path, fps: Fraction) -> MediaInfo:
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


def _sequence_info(pattern: Path, numbers: List[int], fps: Fraction) -> MediaInfo:
    first, last = numbers[0], numbers[-1]
    if len(set(numbers)) != last - first + 1:
        present = set(numbers)
        missing = [k for k in range(first, last + 1) if k not in present]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"image sequence {pattern.name} has a gap: frame {missing[0]}{more} missing "
                        f"between {first} and {last}", field="source")
    sample = Path(str(pattern) % first)
    image = _decode_image(sample)
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    depth = 16 if image.dtype == np.uint16 else 8
    n = len(numbers)
    return MediaInfo(
        path=pattern, width=w, height=h, fps=fps, frame_count=n, duration=float(Fraction(n) / fps),
        has_audio=False, codec=_image_codec(sample), pix_fmt=_image_pix_fmt(channels, depth),
        is_sequence=True, first_number=first, alpha=channels == 4, bit_depth=depth,
    )


def _probe_still(p: Path, fps: Fraction, allow_still: bool) -> MediaInfo:
    if not allow_still:
        raise UserError(f"{p} is a still image; a video clip or image sequence is needed here", field="source")
    image = _decode_image(p)
    h, w = image.shape[:2]
    channels = 1 if image.ndim == 2 else image.shape[2]
    depth = 16 if image.dtype == np.uint16 else 8
    return MediaInfo(
        path=p, width=w, height=h, fps=fps, frame_count=1, duration=float(1 / fps), has_audio=False,
        codec=_image_codec(p), pix_fmt=_image_pix_fmt(channels, depth), is_sequence=True, is_still=True,
        alpha=channels == 4, bit_depth=depth,
    )


def _image_codec(p: Path) -> str:
    ext = p.suffix.lower().lstrip(".")
    return {"jpg": "mjpeg", "jpeg": "mjpeg", "tif": "tiff"}.get(ext, ext)


def _image_pix_fmt(channels: int, depth: int) -> str:
    base = {1: "gray", 2: "ya", 3: "rgb", 4: "rgba"}.get(channels, "rgb")
    if base == "gray":
        return "gray16le" if depth == 16 else "gray"
    if base == "rgb":
        return "rgb48le" if depth == 16 else "rgb24"
    return base + ("64le" if depth == 16 else "")


def _decode_image(p: Path) -> np.ndarray:
    """cv2 decode with IMREAD_UNCHANGED (BGR/BGRA/gray, uint8/uint16); UserError if unreadable."""
    import cv2

    try:
        data = np.fromfile(str(p), dtype=np.uint8)  # works with non-ASCII paths on Windows
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror or exc}", field="source") from None
    if data.size == 0:
        raise UserError(f"{p} is empty (0 bytes)", field="source")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"{p} is not an image that can be read (damaged or unsupported format)", field="source")
    if image.dtype not in (np.uint8, np.uint16):
        if image.dtype in (np.float32, np.float64):
            image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            image = image.astype(np.uint8)
    return image


def read_image(path: PathLike) -> np.ndarray:
    """One image file as HxWx3 uint8 RGB (alpha dropped, 16-bit rounded to 8)."""
    return _to_rgb8(_decode_image(Path(path)))


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    import cv2

    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 2:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


# ============================================================================ reading

def _check_range(info: MediaInfo, first: int, last: Optional[int]) -> Tuple[int, int]:
    n = info.frame_count
    last = n - 1 if last is None else last
    if not (0 <= first <= last < n):
        raise UserError(f"frame range {first}-{last} is outside the clip {info.path.name} (frames 0-{n - 1})",
                        field="frames")
    return int(first), int(last)


def read_frames(source: Union[PathLike, MediaInfo], first: int = 0, last: Optional[int] = None
                ) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(index, HxWx3 uint8 RGB)`` for frames ``first..last`` (inclusive), lazily.

    Movies stream through an ffmpeg pipe (one frame in memory at a time) and
    seek to the frame before `first`, so frame N has the same pixels whether
    read from 0 or from a seek. Closing the iterator early stops ffmpeg.
    """
    info = source if isinstance(source, MediaInfo) else probe(source)
    first, last = _check_range(info, first, last)
    if info.is_sequence:
        return _read_sequence(info, first, last)
    return _read_movie(info, first, last)


def _read_sequence(info: MediaInfo, first: int, last: int) -> Iterator[Tuple[int, np.ndarray]]:
    for index in range(first, last + 1):
        image = _to_rgb8(_decode_image(info.file_for(index)))
        if image.shape[:2] != (info.height, info.width):
            raise UserError(f"{info.file_for(index).name} is {image.shape[1]}x{image.shape[0]}, but the sequence "
                            f"is {info.width}x{info.height}", field="source")
        yield index, image


def _read_movie(info: MediaInfo, first: int, last: int) -> Iterator[Tuple[int, np.ndarray]]:
    skip = 0 if info.seekable else first  # streams without timestamps: decode from the start
    count = last - first + 1 + skip
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error"]
    if first > 0 and info.seekable:
        cmd += ["-ss", "%.6f" % _seek_point(info, first)]
    cmd += ["-i", _url(info.path), "-map", f"0:{info.stream_index if info.stream_index is not None else 'v:0'}",
            "-an", "-sn", "-dn", "-fps_mode", "passthrough", "-enc_time_base", "-1",
            "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = info.width * info.height * 3
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile,
                                bufsize=0)
        got = 0
        try:
            while got < count:
                frame = np.empty((info.height, info.width, 3), dtype=np.uint8)
                if not _read_exact(proc.stdout, memoryview(frame).cast("B"), frame_bytes):
                    break
                got += 1
                if got > skip:
                    yield first + got - 1 - skip, frame
        finally:
            if proc.poll() is None and got < count:
                proc.kill()
            proc.stdout.close()
            rc = proc.wait()
        if got < count:
            errfile.seek(0)
            err = _last_lines(errfile.read().decode("utf-8", "replace"))
            raise UserError(f"could not decode frame {first + got - skip} of {info.path.name} (got {got} of {count} "
                            f"frames; ffmpeg exit {rc}){': ' + err if err else ''}; the file may be truncated "
                            "or damaged", field="source")


def _seek_point(info: MediaInfo, index: int) -> float:
    """An ``-ss`` time that makes ffmpeg's accurate seek start exactly at frame `index`.

    ffmpeg rounds the seek offset to the stream's time base and drops frames
    before it, so aim a quarter tick (at least 2 us, the printed precision)
    before the frame, but never earlier than midway from the previous frame.
    """
    t = info.frame_time(index)
    tick = float(info.time_base) if info.time_base else 1 / 90000
    midway = (info.frame_time(index - 1) + t) / 2
    return max(midway, t - max(tick / 4, 2e-6))


def _read_exact(stream, view: memoryview, size: int) -> bool:
    pos = 0
    while pos < size:
        n = stream.readinto(view[pos:])
        if not n:
            return False
        pos += n
    return True


# ============================================================================ frame files

def sequence_path(folder: PathLike, stem: str, index: int, ext: str = "png", digits: int = FRAME_DIGITS) -> Path:
    """``folder/stem.000123.png`` for frame `index`."""
    return Path(folder) / f"{stem}.{int(index):0{digits}d}.{ext.lstrip('.')}"


def sequence_pattern(folder: PathLike, stem: str, ext: str = "png", digits: int = FRAME_DIGITS) -> str:
    """printf pattern of `sequence_path` names: ``folder/stem.%06d.png``."""
    return str(Path(folder) / f"{stem}.%0{digits}d.{ext.lstrip('.')}")


def existing_frames(folder: PathLike, stem: str, ext: str = "png") -> List[int]:
    """Sorted frame numbers of the finished ``stem.NNNNNN.ext`` files in `folder` (for resume).

    Temp files of unfinished writes (hidden ``.stem...tmp`` names) and empty
    files are not frames.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    regex = re.compile("^" + re.escape(stem) + r"\.(\d+)\." + re.escape(ext.lstrip(".")) + "$")
    found = []
    with os.scandir(folder) as it:
        for entry in it:
            m = regex.match(entry.name)
            if m and entry.is_file() and entry.stat().st_size > 0:
                found.append(int(m.group(1)))
    return sorted(found)


def write_frame(path: PathLike, image: np.ndarray, bits: int = 8, *, fsync: bool = True) -> Path:
    """Write an RGB/RGBA/gray image atomically (temp file in the same folder, then rename).

    `bits` 8 or 16 (PNG/TIFF only for 16). uint8, uint16 or float [0, 1]
    input. Readers never see a partial file.
    """
    import cv2

    path = Path(path)
    if bits not in (8, 16):
        raise UserError(f"bits must be 8 or 16, not {bits}", field="bits")
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTS:
        raise UserError(f"cannot write frames as {ext or 'files without extension'}: use .png", field="output")
    if bits == 16 and ext not in (".png", ".tif", ".tiff"):
        raise UserError(f"16-bit frames need .png or .tif, not {ext}", field="bits")
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    image = _to_depth(image, bits)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        if ext in (".jpg", ".jpeg", ".bmp"):
            raise UserError(f"{ext} cannot hold alpha: write RGBA frames as .png", field="output")
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image))
    if not ok:
        raise UserError(f"could not encode {path.name}", field="output")
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_bytes(path, buf.tobytes(), fsync=fsync)
    return path


def _to_depth(image: np.ndarray, bits: int) -> np.ndarray:
    if image.dtype in (np.float32, np.float64, np.float16):
        scale = 65535.0 if bits == 16 else 255.0
        return (np.clip(image, 0.0, 1.0) * scale + 0.5).astype(np.uint16 if bits == 16 else np.uint8)
    if image.dtype == np.uint8:
        return image.astype(np.uint16) * 257 if bits == 16 else image
    if image.dtype == np.uint16:
        return image if bits == 16 else ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255 if bits == 8 else image.astype(np.uint16) * 65535
    raise ValueError(f"unsupported image dtype {image.dtype}")


def _temp_sibling(path: Path, suffix: str = ".tmp") -> Path:
    """A fresh hidden name next to `path` (same folder, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    while True:
        tmp = _temp_sibling(path)
        try:  # O_EXCL: never clobber; mode 0o666 minus umask like any normal file
            fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ============================================================================ encoding

def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))


def _resolve_sequence(sequence: PathLike) -> str:
    """printf pattern of the frame files given a pattern or a folder with one sequence."""
    s = os.fspath(sequence)
    p = Path(s)
    if _is_pattern(p.name):
        return str(p.parent / _pattern_regex(p.name)[1])
    if p.is_dir():
        return str(_probe_folder(p, DEFAULT_SEQUENCE_FPS).path)
    raise UserError(f"{s} is neither a frame pattern (e.g. frames/clip.%06d.png) nor a folder of frames",
                    field="output")


def _codec_for(output: Path, codec: Optional[str], alpha: bool) -> str:
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


def _muxer(output: Path) -> str:
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}[output.suffix.lower()]


def _track_timescale(info: MediaInfo, frame_rate: Fraction) -> int:
    """mp4/mov video timescale in which every frame time is a whole number of ticks."""
    if info.is_vfr:
        return frame_rate.numerator  # frame_rate is 1/time_base
    ts = frame_rate.numerator
    while ts < 10000:
        ts *= 2
    return ts


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


def _ffconcat_quote(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"


def _write_ffconcat(list_path: Path, files: List[Path], times: List[float], end: float,
                    frame_rate: Fraction) -> None:
    """ffconcat list: each frame shows until the next one's time (rounded once, no drift)."""
    us = [round(t * 1_000_000) for t in times] + [round(end * 1_000_000)]
    rate = f"{frame_rate.numerator}/{frame_rate.denominator}"
    lines = ["ffconcat version 1.0"]
    for k, f in enumerate(files):
        dur = max(1, us[k + 1] - us[k])
        lines.append(f"file {_ffconcat_quote(str(Path(f).absolute()))}")
        lines.append(f"option framerate {rate}")
        lines.append("duration %d.%06d" % divmod(dur, 1_000_000))
    list_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def encode_movie(sequence: PathLike, output: PathLike, info: MediaInfo, *,
                 first_frame: Optional[int] = None, last_frame: Optional[int] = None,
                 frame_range: Optional[Tuple[int, int]] = None, first_number: int = 0,
                 audio_from: Union[PathLike, MediaInfo, None] = None, codec: Optional[str] = None,
                 alpha: bool = False, crf: int = 16, preset: str = "medium",
                 progress: Optional[Callable[[int, int], None]] = None,
                 cancel: Optional[threading.Event] = None) -> Path:
    """Encode frame files into a movie with the source's timing and audio.

    `sequence` is a printf pattern (``frames/clip.%06d.png``) or a folder
    with one numbered sequence; file number = frame index + `first_number`.
    Frames ``first_frame..last_frame`` (or `frame_range`, inclusive; default
    the whole clip) of `info` are encoded; each keeps its source time
    (VFR included), relative to the first one. Audio from `audio_from` (a
    path or MediaInfo, usually the source) is cut to the same span. H.264
    (yuv420p, CRF `crf`, odd sizes padded by one pixel right/bottom) or
    ProRes 4444 (``alpha=True``, .mov). Written under a temp name next to
    `output` and renamed when ffmpeg succeeded; refuses to overwrite a
    source. Returns the output path.
    """
    output = Path(output)
    codec = _codec_for(output, codec, alpha)
    if frame_range is not None:
        first_frame, last_frame = frame_range
    first, last = _check_range(info, 0 if first_frame is None else first_frame, last_frame)
    pattern = _resolve_sequence(sequence)

    # never write over a source
    audio_info = None
    if isinstance(audio_from, MediaInfo):
        audio_info = audio_from
    elif audio_from is not None:
        audio_info = probe(audio_from)
    protected = [info.path] if not info.is_sequence or info.is_still else []
    if audio_info is not None:
        protected.append(audio_info.path)
    for src in protected:
        if _same_file(output, Path(src)):
            raise UserError(f"output {output} is the source {src}; the source is never written to", field="output")
    if info.is_sequence and not info.is_still:
        m = _pattern_regex(Path(info.path).name)[0].match(output.name)
        if m and output.parent.resolve() == Path(info.path).parent.resolve():
            raise UserError(f"output {output} is a frame of the source sequence", field="output")

    files = [Path(pattern % (k + first_number)) for k in range(first, last + 1)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"cannot encode {output.name}: frame file {missing[0]}{more} missing", field="frames")
    for f in files:
        if _same_file(output, f):
            raise UserError(f"output {output} is one of the frame files", field="output")

    t0 = info.frame_time(first)
    t_end = info.frame_end(last)
    span = t_end - t0
    if info.is_vfr and info.time_base is not None and info.time_base.numerator == 1:
        frame_rate = Fraction(info.time_base.denominator)
    elif info.is_vfr:
        frame_rate = Fraction(90000)
    else:
        frame_rate = info.fps
    times = [info.frame_time(k) - t0 for k in range(first, last + 1)]

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(output, ".partial" + output.suffix)
    with tempfile.TemporaryDirectory(prefix="toon-ofx-enc-") as work:
        list_path = Path(work) / "frames.ffconcat"
        _write_ffconcat(list_path, files, times, span, frame_rate)
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y",
               "-f", "concat", "-safe", "0", "-i", _url(list_path)]
        has_audio = audio_info is not None and audio_info.has_audio and not audio_info.is_sequence
        if has_audio:
            if t0 > 0:
                cmd += ["-ss", "%.6f" % t0]
            cmd += ["-t", "%.6f" % span, "-i", _url(audio_info.path)]
        cmd += ["-map", "0:v:0"]
        if has_audio:
            cmd += ["-map", "1:a:0?"]
        scale, tags = _color_args(info)
        if codec == "h264":
            vf = ["pad=ceil(iw/2)*2:ceil(ih/2)*2", scale, "format=yuv420p"]
            cmd += ["-vf", ",".join(vf), "-c:v", "libx264", "-preset", preset, "-crf", str(int(crf)),
                    "-pix_fmt", "yuv420p"] + tags
        else:
            fmt = "yuva444p10le" if alpha else "yuv444p10le"
            cmd += ["-vf", ",".join([scale, f"format={fmt}"]), "-c:v", "prores_ks", "-profile:v", "4444",
                    "-vendor", "apl0", "-pix_fmt", fmt] + (["-alpha_bits", "16"] if alpha else []) + tags
        cmd += ["-fps_mode", "passthrough", "-enc_time_base", "-1"]
        if has_audio:
            cmd += ["-c:a", "pcm_s16le"] if output.suffix.lower() == ".mov" else ["-c:a", "aac", "-b:a", "192k"]
        muxer = _muxer(output)
        if muxer in ("mp4", "mov"):
            cmd += ["-video_track_timescale", str(_track_timescale(info, frame_rate)), "-movflags", "+faststart"]
        cmd += ["-f", muxer, "-progress", "pipe:1", "-nostats", _url(tmp)]
        try:
            _run_ffmpeg(cmd, len(files), progress, cancel)
            got = probe(tmp)
            if got.frame_count != len(files):
                raise UserError(f"encoding {output.name} produced {got.frame_count} frames instead of "
                                f"{len(files)}", field="output")
            os.replace(tmp, output)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
    return output


def _run_ffmpeg(cmd: List[str], total: int, progress, cancel) -> None:
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile)
        try:
            for raw in proc.stdout:
                if cancel is not None and cancel.is_set():
                    proc.kill()
                    proc.wait()
                    raise Cancelled("encoding cancelled")
                line = raw.decode("ascii", "replace").strip()
                if progress is not None and line.startswith("frame="):
                    try:
                        progress(min(int(line[6:]), total), total)
                    except ValueError:
                        pass
        finally:
            if proc.poll() is None:
                if cancel is not None and cancel.is_set():
                    proc.kill()
            rc = proc.wait()
            proc.stdout.close()
        if rc != 0:
            errfile.seek(0)
            err = _last_lines(errfile.read().decode("utf-8", "replace"))
            raise UserError(f"ffmpeg failed to encode (exit {rc}): {err or 'no message'}", field="output")


# ============================================================================ streaming writer

class MovieWriter:
    """Pipe frames straight into ffmpeg (constant frame rate, no resume).

    ``with MovieWriter(out, width, height, fps) as w: w.write(rgb)``. The
    movie appears under its name only when `close` succeeded; on an
    exception the temp file is deleted. For VFR sources or resumable renders
    use `write_frame` + `encode_movie`.
    """

    def __init__(self, output: PathLike, width: int, height: int, fps: Union[Fraction, float, str], *,
                 codec: Optional[str] = None, alpha: bool = False, crf: int = 16, preset: str = "medium",
                 audio_from: Union[PathLike, MediaInfo, None] = None, audio_start: float = 0.0,
                 color_from: Optional[MediaInfo] = None):
        self.output = Path(output)
        self.codec = _codec_for(self.output, codec, alpha)
        self.width, self.height, self.alpha = int(width), int(height), bool(alpha)
        self.fps = _as_fraction(fps)
        self.frames = 0
        audio = audio_from if isinstance(audio_from, MediaInfo) or audio_from is None else probe(audio_from)
        if audio is not None and _same_file(self.output, Path(audio.path)):
            raise UserError(f"output {self.output} is the source; the source is never written to", field="output")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _temp_sibling(self.output, ".partial" + self.output.suffix)
        rate = f"{self.fps.numerator}/{self.fps.denominator}"
        in_fmt = "rgba" if alpha else "rgb24"
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", in_fmt, "-s", f"{self.width}x{self.height}", "-framerate", rate,
               "-i", "pipe:0"]
        self._has_audio = audio is not None and audio.has_audio and not audio.is_sequence
        if self._has_audio:
            if audio_start > 0:
                cmd += ["-ss", "%.6f" % audio_start]
            cmd += ["-i", _url(audio.path), "-map", "0:v:0", "-map", "1:a:0?", "-shortest"]
        scale, tags = _color_args(color_from) if color_from is not None else ("scale=out_range=tv", [])
        if self.codec == "h264":
            cmd += ["-vf", f"pad=ceil(iw/2)*2:ceil(ih/2)*2,{scale},format=yuv420p", "-c:v", "libx264",
                    "-preset", preset, "-crf", str(int(crf)), "-pix_fmt", "yuv420p"] + tags
        else:
            fmt = "yuva444p10le" if alpha else "yuv444p10le"
            cmd += ["-vf", f"{scale},format={fmt}", "-c:v", "prores_ks", "-profile:v", "4444", "-vendor",
                    "apl0", "-pix_fmt", fmt] + (["-alpha_bits", "16"] if alpha else []) + tags
        if self._has_audio:
            cmd += ["-c:a", "pcm_s16le"] if self.output.suffix.lower() == ".mov" else ["-c:a", "aac", "-b:a", "192k"]
        cmd += ["-f", _muxer(self.output), _url(self._tmp)]
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        self._closed = False

    def write(self, image: np.ndarray) -> None:
        """Append one HxWx3 RGB (or HxWx4 RGBA with alpha=True) uint8 frame."""
        image = np.asarray(image)
        channels = 4 if self.alpha else 3
        if image.dtype != np.uint8:
            image = _to_depth(image, 8)
        if image.ndim == 3 and image.shape[2] == 3 and channels == 4:
            image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
        elif image.ndim == 3 and image.shape[2] == 4 and channels == 3:
            image = image[:, :, :3]
        if image.shape != (self.height, self.width, channels):
            raise ValueError(f"frame shape {image.shape} != {(self.height, self.width, channels)}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(image).tobytes())
        except BrokenPipeError:
            self.abort()
            raise UserError(f"ffmpeg stopped while writing {self.output.name}", field="output") from None
        self.frames += 1

    def close(self) -> Path:
        """Finish the movie and move it into place."""
        if self._closed:
            return self.output
        self._closed = True
        self._proc.stdin.close()
        rc = self._proc.wait()
        self._err.seek(0)
        err = _last_lines(self._err.read().decode("utf-8", "replace"))
        self._err.close()
        if rc != 0 or self.frames == 0:
            self._tmp.unlink(missing_ok=True)
            raise UserError(f"ffmpeg failed to write {self.output.name} (exit {rc}): {err or 'no frames'}",
                            field="output")
        os.replace(self._tmp, self.output)
        return self.output

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file."""
        if self._closed:
            return
        self._closed = True
        try:
            self._proc.kill()
        except OSError:
            pass
        self._proc.wait()
        for fh in (self._proc.stdin, self._err):
            try:
                fh.close()
            except (OSError, ValueError):
                pass
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "MovieWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
