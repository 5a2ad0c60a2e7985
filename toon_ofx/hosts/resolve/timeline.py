"""Reading a Resolve timeline: the items of one video track as `Clip`s the engine can render.

`collect_clips()` reads the items of one video track (the track of the item
under the playhead by default; Resolve's API has no call for the timeline
selection). For each item: the source file (`GetClipProperty("File Path")`),
the used source range from `GetLeftOffset()`/`GetDuration()` (timeline frames)
converted to the clip's own frames with `GetClipProperty("FPS")` (see
frames.py), and the record range (`GetStart()`, absolute: a timeline usually
starts at frame 86400 = 01:00:00:00). Items it cannot use come back as
`Skipped`, with the reason.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

from .api import BridgeError, as_list, same_object
from .frames import parse_fps, source_range

_BRACKET_SEQ = re.compile(r"^(?P<head>.*)\[(?P<first>\d+)-(?P<last>\d+)\](?P<tail>[^\[\]]*)$")


def engine_source(path: str) -> Tuple[str, str]:
    """(path the engine can read, kind). Resolve shows an image sequence as `name.[0001-0100].png`."""
    m = _BRACKET_SEQ.match(path)
    if m:
        width = len(m.group("first"))
        return f"{m.group('head')}%0{width}d{m.group('tail')}", "sequence"
    return path, "movie"


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

    Without `track`, the track of the item under the playhead (`GetCurrentVideoItem()`), else V1.
    """
    tl_fps = timeline_fps(timeline, project)
    current = timeline.GetCurrentVideoItem()
    if track is None:
        track = (track_of(timeline, current) if current is not None else None) or 1
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
            skipped.append(Skipped(name, "no source media (a generator, title, or compound clip)"))
            continue
        path = mpi.GetClipProperty("File Path") or ""
        if not path:
            skipped.append(Skipped(name, "its media pool clip has no file path"))
            continue
        if (mpi.GetClipProperty("Type") or "").lower() == "still":
            skipped.append(Skipped(name, "a still image; toonify stills with `toon-ofx render`"))
            continue
        clip_fps = parse_fps(mpi.GetClipProperty("FPS")) or tl_fps
        first, last = source_range(item.GetLeftOffset(), item.GetDuration(), clip_fps, tl_fps)
        total = mpi.GetClipProperty("Frames")
        if total and str(total).isdigit() and int(total) > 0:
            last = min(last, int(total) - 1)
        source, kind = engine_source(path)
        start = int(item.GetStart())
        clips.append(Clip(id=_item_id(item, f"V{track}@{start}"), name=name, source=source, kind=kind,
                          first=first, last=last, clip_fps=clip_fps, timeline_fps=tl_fps,
                          record_start=start, record_end=int(item.GetEnd()), track=track,
                          current=same_object(item, current)))
    return clips, skipped, track
