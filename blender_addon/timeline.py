"""Frame arithmetic between a sequencer strip and its source media (no bpy).

How Blender picks the source frame a movie or image strip shows at timeline
frame ``t`` (checked against Blender's own renderer in the tests):

* ``idx = t - frame_start`` (``frame_start + length - 1 - t`` with Reverse
  Frames), clamped to ``0 .. length - 1``; so handles dragged beyond
  the content hold its first or last frame;
* with Strobe ``n > 1``: ``idx -= idx mod n``;
* a movie added with "Adjust Playback Rate" (the default when its frame rate
  differs from the scene's) plays in real time: ``idx *= movie_fps / scene_fps``
  and the content's timeline length shrinks or grows by the same factor (5.0's
  ``frame_duration``; 4.2's stays the movie's frame count). Otherwise frames
  play 1:1 at the scene rate, whatever the movie's own rate;
* the source frame is ``animation_offset_start + round(idx)`` (halves up),
  at most the last frame the strip uses.

Strips with retiming keys (speed changes) are not modelled.

The toonified result is an image sequence named by source frame numbers; it
lines up when a new image strip lists, for each visible timeline frame, the
file of the source frame shown there, and gets the source strip's handles.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

MAX_CHANNEL = 128


class TimelineError(ValueError):
    """The strip's frames cannot be mapped (nothing visible, no free channel, ...)."""


@dataclass(frozen=True)
class StripTiming:
    content_start: int        # timeline frame of content element 0 (strip.frame_start)
    content_length: int       # timeline frames the content spans (compat.content_length)
    final_start: int          # first visible timeline frame (strip.frame_final_start)
    final_end: int            # one past the last visible timeline frame (strip.frame_final_end)
    source_offset: int = 0    # source frame of content element 0 (strip.animation_offset_start, plus
                              # the first file's frame number for an image sequence)
    reverse: bool = False     # strip.use_reverse_frames
    rate: float = 1.0         # source frames per timeline frame ("Adjust Playback Rate" movies)
    source_length: Optional[int] = None  # source frames the content uses (default: content_length * rate)
    strobe: float = 1.0       # strip.strobe

    def source_frame_at(self, timeline_frame: int) -> int:
        """The source frame Blender shows at `timeline_frame` (hold frames included)."""
        last_index = self.content_length - 1
        if self.reverse:
            index = float(self.content_start + last_index - timeline_frame)
        else:
            index = float(timeline_frame - self.content_start)
        index = min(max(index, 0.0), float(last_index))
        if self.strobe > 1.0:
            index -= math.fmod(index, self.strobe)
        index *= self.rate
        available = self.source_length if self.source_length is not None else \
            int(math.floor(self.content_length * self.rate + 1e-6))
        index = min(max(index, 0.0), float(max(available - 1, 0)))
        return self.source_offset + int(math.floor(index + 0.5))

    def visible_timeline_range(self) -> Tuple[int, int]:
        """Inclusive timeline frames where the strip shows content (not hold) frames."""
        first = max(self.final_start, self.content_start)
        last = min(self.final_end, self.content_start + self.content_length) - 1
        if self.content_length <= 0 or last < first:
            raise TimelineError("the strip shows none of its source frames on the timeline")
        return first, last

    def shown_frames(self) -> List[int]:
        """The source frame shown at each visible content frame, in timeline order."""
        t0, t1 = self.visible_timeline_range()
        return [self.source_frame_at(t) for t in range(t0, t1 + 1)]

    def visible_source_range(self) -> Tuple[int, int]:
        """Inclusive source frames that the strip shows: what needs rendering."""
        shown = self.shown_frames()
        return min(shown), max(shown)


def first_free_channel(occupied: Iterable[Tuple[int, int, int]], above: int, start: int, end: int,
                       max_channel: int = MAX_CHANNEL) -> int:
    """The lowest channel above `above` with no strip overlapping timeline frames [start, end).

    `occupied` holds (channel, frame_final_start, frame_final_end) of the other strips.
    """
    busy = set()
    for channel, s, e in occupied:
        if s < end and start < e:
            busy.add(channel)
    for channel in range(above + 1, max_channel + 1):
        if channel not in busy:
            return channel
    raise TimelineError(f"no free channel above channel {above} for frames {start}-{end - 1}")


_NUMBERED = re.compile(r"^(?P<stem>.*?)(?P<num>\d+)(?P<ext>\.[A-Za-z0-9]+)$")


def image_sequence_source(directory: str, filenames: Sequence[str],
                          listdir: Callable[[str], Iterable[str]] = os.listdir) -> Tuple[str, int]:
    """The engine source for an image strip's files, and the source frame of the first file.

    One file is a still (a 1-frame clip). Several files must be one numbered
    run (``shot.0011.png``, ``shot.0012.png``, ...): the source is its printf
    pattern (``shot.%04d.png``). The engine numbers a pattern's frames from the
    lowest matching file number on disk, 0-based, so the first file's source
    frame is its number minus that lowest number.
    """
    if len(filenames) == 1:
        return os.path.join(directory, filenames[0]), 0
    matches = [_NUMBERED.match(name) for name in filenames]
    if not all(matches) or len({(m.group("stem"), m.group("ext")) for m in matches}) != 1:
        raise TimelineError("its files are not one numbered image sequence (like shot.0001.png, shot.0002.png)")
    numbers = [int(m.group("num")) for m in matches]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise TimelineError("its files are not consecutively numbered")
    stem, ext = matches[0].group("stem"), matches[0].group("ext")
    widths = {len(m.group("num")) for m in matches}
    if len(widths) == 1:
        width = widths.pop()
        spec, digits = f"%0{width}d", r"(\d{%d,})" % width
    else:
        spec, digits = "%d", r"([1-9]\d*|0)"
    regex = re.compile("^" + re.escape(stem) + digits + re.escape(ext) + "$")
    on_disk = [int(m.group(1)) for m in (regex.match(e) for e in listdir(directory)) if m]
    lowest = min(on_disk + [numbers[0]])
    return os.path.join(directory, f"{stem}{spec}{ext}"), numbers[0] - lowest
