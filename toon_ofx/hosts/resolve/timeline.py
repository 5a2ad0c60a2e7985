"""Reading a Resolve timeline: the items of one video track as `Clip`s the engine can render.

`collect_clips()` reads the items of one video track: by default the topmost
enabled track with an item that has a media file under the playhead
(`source_track()`; Resolve's API has no call for the timeline selection, and
`GetCurrentVideoItem()` answers a title or adjustment clip above the footage
just as well). For each item: the source file (`GetClipProperty("File
Path")`), the used source range from `GetLeftOffset()`/`GetDuration()`
(timeline frames) converted to the clip's own frames with
`GetClipProperty("FPS")` (see frames.py), and the record range (`GetStart()`,
absolute: a timeline usually starts at frame 86400 = 01:00:00:00). Clip
property keys ("File Path", "FPS", "Frames", "Type", "Start") are those of the
Clip Attributes and Media Pool columns: README.txt, "Project and Clip
properties", documents that keys follow the UI's names and that
`GetClipProperty()` with no key lists them.

Items it cannot use come back as `Skipped`, with the reason: no media file,
stills, and speed changes. `GetSourceStartFrame()`/`GetSourceEndFrame()`
("the start/end frame position of the media pool clip in the timeline clip",
README.txt) give the source frames an item spans; when they span more or
fewer frames than its duration at real-time speed, the item is retimed, and
its frames cannot be rendered 1:1 (`speed_change()`).
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

from .api import BridgeError, as_list, same_object
from .frames import exact_fps, parse_fps, source_range, timecode_frames

_BRACKET_SEQ = re.compile(r"^(?P<head>.*)\[(?P<first>\d+)-(?P<last>\d+)\](?P<tail>[^\[\]]*)$")


def engine_source(path: str) -> Tuple[str, str]:
    """(path the engine can read, kind). Resolve shows an image sequence as `name.[0001-0100].png`."""
    m = _BRACKET_SEQ.match(path)
    if m:
        width = len(m.group("first"))
        return f"{m.group('head')}%0{width}d{m.group('tail')}", "sequence"
    return path, "movie"


def sequence_offset(path: str, listdir=os.listdir) -> int:
    """Engine frame of the first file Resolve's item shows (`name.[0020-0100].png`), 0 for a movie.

    The engine counts a pattern's frames from the lowest matching file number in the folder; Resolve's
    item may start later (the folder holds shot.0001.png too, the item was imported from 0020).
    """
    m = _BRACKET_SEQ.match(path)
    if not m:
        return 0
    first, width = int(m.group("first")), len(m.group("first"))
    folder, head = os.path.split(m.group("head"))
    numbered = re.compile(re.escape(head) + r"(\d{%d,})" % width + re.escape(m.group("tail")) + "$")
    try:
        numbers = [int(n.group(1)) for n in (numbered.match(e) for e in listdir(folder or ".")) if n]
    except OSError:
        return 0
    return first - min(numbers + [first])


@dataclass
class Clip:
    """One timeline item as the engine and the placement need it."""

    id: str
    name: str
    source: str                 # movie path, or a printf pattern for an image sequence
    kind: str                   # "movie" or "sequence"
    first: int                  # used source range, inclusive, clip frames counted from 0
    last: int
    clip_fps: float
    timeline_fps: float
    record_start: int           # absolute timeline frames (GetStart())
    record_end: int             # exclusive (GetEnd())
    track: int                  # source video track
    current: bool = False       # the item under the playhead

    @property
    def frames(self) -> int:
        return self.last - self.first + 1

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Dict[str, Any]) -> "Clip":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def _item_id(item, fallback: str) -> str:
    try:
        uid = item.GetUniqueId()
        if uid:
            return str(uid)
    except Exception:
        pass
    return fallback


def timeline_fps(timeline, project=None) -> float:
    for owner in (timeline, project):
        if owner is None:
            continue
        try:
            fps = parse_fps(owner.GetSetting("timelineFrameRate"))
        except Exception:
            fps = None
        if fps:
            return fps
    return 24.0


def media_file(item) -> str:
    """The file behind a timeline item ("" for titles, generators, adjustment and compound clips)."""
    try:
        mpi = item.GetMediaPoolItem()
        return (mpi.GetClipProperty("File Path") or "") if mpi is not None else ""
    except Exception:
        return ""


def playhead_frame(timeline, fps: float) -> Optional[int]:
    try:
        return timecode_frames(timeline.GetCurrentTimecode(), fps)
    except (ValueError, TypeError, AttributeError):
        return None


def source_track(timeline, fps: float) -> Optional[int]:
    """The topmost enabled video track with an item that has a media file under the playhead."""
    current = timeline.GetCurrentVideoItem()
    if current is not None and media_file(current):
        return track_of(timeline, current)
    frame = playhead_frame(timeline, fps)
    if frame is None:
        return track_of(timeline, current) if current is not None else None
    for index in range(timeline.GetTrackCount("video") or 0, 0, -1):
        if not timeline.GetIsTrackEnabled("video", index):
            continue
        for item in as_list(timeline.GetItemListInTrack("video", index)):
            if int(item.GetStart()) <= frame < int(item.GetEnd()) and item.GetClipEnabled() and media_file(item):
                return index
    return None


def speed_change(item, clip_fps: float, tl_fps: float) -> Optional[str]:
    """Why the item cannot be rendered 1:1 when it is retimed, else None.

    Unretimed, the item spans duration x clip fps / timeline fps source frames; the end frame's
    inclusiveness is not documented, so one frame either way is tolerated.
    """
    try:
        start, end = int(item.GetSourceStartFrame()), int(item.GetSourceEndFrame())
    except Exception:  # Resolve before 18.5 has no such calls: nothing to compare with
        return None
    duration = int(item.GetDuration())
    expected = duration * exact_fps(clip_fps) / exact_fps(tl_fps)
    if abs((end - start) - expected) <= 1:
        return None
    speed = float((end - start) / expected) * 100 if expected else 0.0
    return (f"a speed change (its {duration} frames show source frames {start}-{end}, about {speed:.0f}% speed); "
            "Toon Faces renders clips at their own speed: reset Clip Speed, or Render in Place and toonify that")


def track_of(timeline, item) -> Optional[int]:
    """The video track index holding `item`."""
    try:
        kind, index = item.GetTrackTypeAndIndex()
        if kind == "video":
            return int(index)
    except Exception:
        pass
    for index in range(1, (timeline.GetTrackCount("video") or 0) + 1):
        if any(same_object(item, other) for other in as_list(timeline.GetItemListInTrack("video", index))):
            return index
    return None


@dataclass
class Skipped:
    name: str
    reason: str


def collect_clips(timeline, *, track: Optional[int] = None, only_current: bool = False,
                  project=None) -> Tuple[List[Clip], List[Skipped], int]:
    """The clips to toonify: (clips, skipped items with reasons, source track).

    Without `track`, the topmost track with footage under the playhead (`source_track`), else V1.
    """
    tl_fps = timeline_fps(timeline, project)
    current = timeline.GetCurrentVideoItem()
    if track is None:
        track = source_track(timeline, tl_fps) or 1
    count = timeline.GetTrackCount("video") or 0
    if not 1 <= track <= count:
        raise BridgeError(f"the timeline has no video track {track} (it has {count}).")
    items = as_list(timeline.GetItemListInTrack("video", track))
    if only_current:
        items = [it for it in items if same_object(it, current)]
    clips: List[Clip] = []
    skipped: List[Skipped] = []
    for n, item in enumerate(items):
        name = item.GetName() or f"V{track} item {n + 1}"
        mpi = item.GetMediaPoolItem()
        if mpi is None:
            skipped.append(Skipped(name, "no source media (a title, generator or adjustment clip)"))
            continue
        path = mpi.GetClipProperty("File Path") or ""
        if not path:
            skipped.append(Skipped(name, "its media pool clip has no file path (a compound or Fusion clip)"))
            continue
        if (mpi.GetClipProperty("Type") or "").lower() == "still":
            skipped.append(Skipped(name, "a still image; toonify stills with `toon-ofx render`"))
            continue
        clip_fps = parse_fps(mpi.GetClipProperty("FPS")) or tl_fps
        retimed = speed_change(item, clip_fps, tl_fps)
        if retimed:
            skipped.append(Skipped(name, retimed))
            continue
        first, last = source_range(item.GetLeftOffset(), item.GetDuration(), clip_fps, tl_fps)
        total = mpi.GetClipProperty("Frames")
        if total and str(total).isdigit() and int(total) > 0:
            last = min(last, int(total) - 1)
        source, kind = engine_source(path)
        offset = sequence_offset(path)
        first, last = first + offset, last + offset
        start = int(item.GetStart())
        clips.append(Clip(id=_item_id(item, f"V{track}@{start}"), name=name, source=source, kind=kind,
                          first=first, last=last, clip_fps=clip_fps, timeline_fps=tl_fps,
                          record_start=start, record_end=int(item.GetEnd()), track=track,
                          current=same_object(item, current)))
    return clips, skipped, track
