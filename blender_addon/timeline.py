"""Frame arithmetic between a sequencer strip and its source media (no bpy).

The source frame a movie or image strip shows at timeline frame ``t`` is
computed the way Blender computes it (``give_frame_index`` in the sequencer's
strip_time.cc, then ``round_fl_to_int`` in render.cc), in single precision like
Blender, and checked against Blender's own renderer in the tests (4.2 and 5.0,
movies from 23.976 to 60 fps in scenes from 23.976 to 60 fps):

* ``i = t - frame_start`` (``content_end - 1 - t`` with Reverse Frames), at
  least 0;
* a movie added with "Adjust Playback Rate" (the default when its frame rate
  differs from the scene's) plays in real time: ``i *= movie_fps / scene_fps``
  and the content spans ``int(len / rate)`` timeline frames. Otherwise frames
  play 1:1 at the scene rate, whatever the movie's own rate;
* ``i`` is clamped to ``0 .. len - 1`` (so handles dragged beyond the content
  hold its first or last frame); with Strobe ``n > 1``, ``i -= fmod(i, n)``;
* the source frame is ``animation_offset_start + floor(i + 0.5)``.

Blender 4.5+ adds one twist for movies played slower than the scene: its
source image cache files a decoded frame under ``trunc(i)`` while the decoder
was asked for ``round(i)``, so a timeline frame whose key is already cached
shows the frame decoded for an earlier timeline frame (a 24 fps movie in a 30
fps scene shows 0, 0, 2, 2, 3 instead of 0, 1, 2, 2, 3). What a slowed movie
shows then depends on the order frames were drawn; `shown_frames` follows a
render or playback from the strip's first frame, or from `first_drawn` (the
scene's first frame, or where an enclosing meta strip starts showing it):
what the final render and normal playback do. With the raw cache off, or in
4.2, every frame shows ``round(i)``.

Strips with retiming keys (speed changes) and strips a Speed Control strip plays are not modelled
(planning refuses them by name).

The toonified result is an image sequence named by source frame numbers; it
lines up when a new image strip lists, for each visible timeline frame, the
file of the source frame shown there, and gets the source strip's handles.
"""
from __future__ import annotations

import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

MAX_CHANNEL = 128


class TimelineError(ValueError):
    """The strip's frames cannot be mapped (nothing visible, no free channel, ...)."""


def f32(value: float) -> float:
    """`value` rounded to single precision, as Blender's float arithmetic stores it."""
    return struct.unpack("f", struct.pack("f", value))[0]


def playback_rate(movie_fps: float, scene_fps: int, scene_fps_base: float) -> float:
    """Source frames per timeline frame of a real-time movie, computed like Blender (single precision)."""
    scene = f32(f32(float(scene_fps)) / f32(float(scene_fps_base)))
    return f32(f32(float(movie_fps)) / scene)


def real_time_length(source_length: int, rate: float) -> int:
    """Timeline frames a real-time movie of `source_length` frames spans (Blender truncates)."""
    return int(f32(source_length / rate))


def round_frame(index: float) -> int:
    """Blender's round_fl_to_int: floor(x + 0.5) in single precision."""
    return int(math.floor(f32(index + 0.5)))


@dataclass(frozen=True)
class StripTiming:
    content_start: float      # timeline frame of content element 0 (strip.frame_start)
    content_length: int       # timeline frames the content spans (compat.content_length)
    final_start: int          # first visible timeline frame (strip.frame_final_start)
    final_end: int            # one past the last visible timeline frame (strip.frame_final_end)
    source_offset: int = 0    # source frame of content element 0 (strip.animation_offset_start, plus
                              # the first file's frame number for an image sequence)
    reverse: bool = False     # strip.use_reverse_frames
    rate: float = 1.0         # source frames per timeline frame ("Adjust Playback Rate" movies; `playback_rate`)
    source_length: Optional[int] = None  # source frames the content uses (default: content_length)
    strobe: float = 1.0       # strip.strobe
    cached_keys: bool = False  # Blender 4.5+ with the raw cache on (see the module docstring)
    first_drawn: Optional[int] = None  # first timeline frame a render draws the strip at (default: final_start)

    @property
    def order_matters(self) -> bool:
        """True when what a frame shows depends on which frames were drawn before (see the module docstring)."""
        return self.cached_keys and f32(self.rate) < 1.0

    @property
    def _length(self) -> int:
        return self.source_length if self.source_length is not None else self.content_length

    def frame_index(self, timeline_frame: int) -> float:
        """Blender's (fractional) content frame index at `timeline_frame`, hold frames included."""
        start = f32(self.content_start)
        if self.reverse:
            index = f32(f32(start + self.content_length - 1) - timeline_frame)
        else:
            index = f32(timeline_frame - start)
        index = f32(max(index, 0.0) * f32(self.rate))
        index = min(max(index, 0.0), float(max(self._length - 1, 0)))
        if self.strobe > 1.0:
            index = f32(index - f32(math.fmod(index, self.strobe)))
        return index

    def source_frame_at(self, timeline_frame: int) -> int:
        """The source frame Blender shows at `timeline_frame` when nothing is cached (4.2: always)."""
        return self.source_offset + round_frame(self.frame_index(timeline_frame))

    def visible_timeline_range(self) -> Tuple[int, int]:
        """Inclusive timeline frames where the strip shows content (not hold) frames."""
        first = max(self.final_start, int(math.ceil(self.content_start)))
        last = min(self.final_end, int(math.ceil(self.content_start)) + self.content_length) - 1
        if self.content_length <= 0 or last < first:
            raise TimelineError("the strip shows none of its source frames on the timeline")
        return first, last

    def shown_frames(self) -> List[int]:
        """The source frame shown at each visible content frame, in timeline order.

        With `cached_keys`, as a render or playback from the strip's first frame shows them.
        """
        t0, t1 = self.visible_timeline_range()
        if not self.order_matters:
            return [self.source_frame_at(t) for t in range(t0, t1 + 1)]
        start = max(self.final_start, self.first_drawn if self.first_drawn is not None else self.final_start)
        cache: Dict[int, int] = {}
        shown = {}
        for t in range(start, t1 + 1):  # hold frames before the content fill the cache too
            index = self.frame_index(t)
            shown[t] = self.source_offset + cache.setdefault(math.trunc(index), round_frame(index))
        # frames before the first drawn one are never on screen: any answer does
        return [shown[t] if t in shown else self.source_frame_at(t) for t in range(t0, t1 + 1)]

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
