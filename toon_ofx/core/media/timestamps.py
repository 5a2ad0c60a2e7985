"""The presented frames of a movie's video stream and their timestamps.

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
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..errors import UserError
from .tools import ffprobe_exe, file_url, last_lines, run


def video_pts(p: Path, index: int, tb: Fraction, indexed: int = 0,
              r_rate: Optional[Fraction] = None) -> Tuple[List[int], Optional[int], bool]:
    """Sorted presentation timestamps (ticks) of the presented frames, and the last one's duration.

    `indexed` is the stream's sample count from the container index (0 if
    unknown): fewer packets than that means the file was cut short. The
    flag is True when the stream has no timestamps at all and they were
    made up at the nominal rate (such a stream cannot be seeked).
    """
    cmd = [ffprobe_exe(), "-v", "error", "-select_streams", str(index),
           "-show_entries", "packet=pts,duration,flags,pos,size", "-of", "compact", file_url(p)]
    out = run(cmd, str(p))
    if out.returncode != 0:
        raise UserError(f"cannot read the frames of {p}: {last_lines(out.stderr.decode('utf-8', 'replace'))}",
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
           "-show_entries", "frame=best_effort_timestamp,pkt_duration", "-of", "compact", file_url(p)]
    out = run(cmd, str(p))
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
        raise UserError(f"cannot decode {p}: {last_lines(out.stderr.decode('utf-8', 'replace'))}", field="source")
    return sorted(pts), dur


def fits_grid(pts: Sequence[int], tb: Fraction, fps: Fraction) -> bool:
    """Every frame within one tick (and under half a frame) of first + i/fps, in exact integers."""
    step = 1 / (fps * tb)  # ticks per frame, as a fraction p/q
    p, q = step.numerator, step.denominator
    first = pts[0]
    for i, t in enumerate(pts):
        err = abs((t - first) * q - i * p)  # in 1/q ticks
        if err > q or 2 * err >= p:
            return False
    return True
