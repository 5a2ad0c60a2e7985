"""Frame-rate arithmetic between a Resolve timeline and its clips' own frames (no Resolve calls).

Timeline item offsets and durations are timeline frames. When a clip's own rate
differs from the timeline's, Resolve plays it at real-time speed, so source
frame = timeline frames x clip fps / timeline fps (rounded). Resolve reports
NTSC rates rounded (23.976) but counts at the exact ones (24000/1001).
"""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Any, Optional, Tuple

_NTSC = {23.976: Fraction(24000, 1001), 29.97: Fraction(30000, 1001), 47.952: Fraction(48000, 1001),
         59.94: Fraction(60000, 1001), 119.88: Fraction(120000, 1001)}


def parse_fps(text: Any) -> Optional[float]:
    """A frame rate from Resolve's strings ("24", "23.976", "29.97 DF"), or None."""
    if text is None:
        return None
    m = re.search(r"\d+(?:\.\d+)?", str(text))
    if not m:
        return None
    value = float(m.group(0))
    return value if value > 0 else None


def exact_fps(fps: float) -> Fraction:
    """Resolve reports 23.976 but counts at 24000/1001."""
    return _NTSC.get(round(float(fps), 3), Fraction(str(round(float(fps), 6))))


def fps_text(fps: float) -> str:
    return f"{float(fps):.3f}".rstrip("0").rstrip(".")


def source_range(left_offset: float, duration: float, clip_fps: float, timeline_fps: float) -> Tuple[int, int]:
    """Inclusive source frames (clip's own rate, 0 = the clip's first frame) used by a timeline item."""
    scale = exact_fps(clip_fps) / exact_fps(timeline_fps)
    first = int(round(Fraction(str(float(left_offset))) * scale))
    count = max(1, int(round(Fraction(str(float(duration))) * scale)))
    return first, first + count - 1


def record_offset(source_frames: int, clip_fps: float, timeline_fps: float) -> int:
    """Timeline frames spanned by `source_frames` of a clip."""
    return int(round(source_frames * exact_fps(timeline_fps) / exact_fps(clip_fps)))


def timecode_frames(timecode: str, fps: float) -> int:
    """Absolute frame number of a Resolve timecode ("01:00:00:00"; "01:00:00;00" is drop-frame)."""
    parts = [int(p) for p in re.split(r"[:;.]", timecode.strip())]
    if len(parts) != 4:
        raise ValueError(f"not a timecode: {timecode!r}")
    hours, minutes, seconds, frames = parts
    nominal = int(round(float(fps)))
    total = ((hours * 60 + minutes) * 60 + seconds) * nominal + frames
    if ";" in timecode and nominal in (30, 60):  # SMPTE drop frame: 2 (4 at 60) numbers skipped per minute but every 10th
        dropped = nominal // 15
        minutes_total = hours * 60 + minutes
        total -= dropped * (minutes_total - minutes_total // 10)
    return total
