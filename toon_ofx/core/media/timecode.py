"""SMPTE timecode: the start timecode of a part of a clip.

A render of frames A..B starts at the source's timecode plus A frames, so
the result conforms by timecode in Resolve, Premiere or Avid. Timecode counts
at the nominal rate (24 for 23.976, 30 for 29.97); a ``;`` (or ``.``) before
the frames field marks drop-frame counting (29.97/59.94), which skips frame
numbers 0 and 1 (0-3 at 59.94) of every minute except each tenth.
"""
from __future__ import annotations

import re
from fractions import Fraction

_TIMECODE = re.compile(r"^(\d{2}):(\d{2}):(\d{2})([:;.])(\d{2})$")


def offset_timecode(timecode: str, frames: int, fps: Fraction) -> str:
    """`timecode` moved on by `frames` frames of a clip at `fps` (wraps at 24 hours)."""
    m = _TIMECODE.match(timecode)
    if m is None:
        raise ValueError(f"not a timecode: {timecode!r}")
    h, mi, s, sep, f = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4), int(m.group(5))
    nominal = max(1, int(round(fps)))
    drop = (2 * nominal // 30) if sep in ";." and nominal % 30 == 0 else 0
    minutes = 60 * h + mi
    count = ((h * 3600 + mi * 60 + s) * nominal + f) - drop * (minutes - minutes // 10)
    count = (count + int(frames)) % (24 * 3600 * nominal - drop * (24 * 60 - 24 * 6))
    if drop:  # back to a frame label: re-insert the skipped numbers
        per_10min = nominal * 600 - drop * 9
        per_min = nominal * 60 - drop
        tens, rest = divmod(count, per_10min)
        count += drop * 9 * tens + (drop * ((rest - drop) // per_min) if rest > drop else 0)
    f = count % nominal
    s = count // nominal % 60
    mi = count // (nominal * 60) % 60
    h = count // (nominal * 3600) % 24
    return f"{h:02d}:{mi:02d}:{s:02d}{sep}{f:02d}"
