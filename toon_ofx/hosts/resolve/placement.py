"""Placing engine results on the Resolve timeline, and the report of what landed.

`import_result()` imports each result into a "Toon" Media Pool bin (the current
folder is switched to it first: imports land in the current folder, and
restored after); an image sequence is one clipInfo `{"FilePath": pattern,
"StartIndex", "EndIndex"}` ("Each clipInfo gets imported as one MediaPoolItem",
README.txt) holding exactly the rendered frames. It takes the project frame
rate, so its "FPS" clip property is set back to the clip's rate before it is
cut in.

`place_results()` appends each whole imported item with a clipInfo (README.txt:
"Appends list of clipInfos specified as dict of "mediaPoolItem", "startFrame"
(int), "endFrame" (int), (optional) "mediaType" (int; 1 - Video only, 2 - Audio
only), "trackIndex" (int) and "recordFrame" (int)"; `recordFrame` is absolute:
where the source item shows the first rendered frame)
on a new track above the source or a chosen one, then RE-READS the track with
`GetItemListInTrack` to see what really landed (Resolve drops a clip that would
overlap another without saying so) and reports every clip it could not place.
`endFrame` is exclusive since Resolve 19 (inclusive before); `GetVersion()`
decides. Whether `startFrame` counts an image sequence from 0 or from its first
file's number is not documented: `append_whole()` asks from 0, then from the
item's own "Start" clip property, and keeps the one that lands whole. The
landed item then gets its source item's transform, crop and compositing
(properties.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from .api import BridgeError, Log, as_list, end_frame_exclusive, same_object
from .frames import exact_fps, fps_text, parse_fps, record_offset
from .properties import NOT_COPIED, copy_look
from .timeline import Clip, Skipped, timeline_fps

BIN_NAME = "Toon"


# ----------------------------------------------------------- media pool
def find_or_create_bin(media_pool, name: str = BIN_NAME):
    root = media_pool.GetRootFolder()
    for folder in as_list(root.GetSubFolderList()):
        if folder.GetName() == name:
            return folder
    folder = media_pool.AddSubFolder(root, name)
    if folder is None:
        raise BridgeError(f"Resolve would not create the Media Pool bin {name!r}.")
    return folder


def import_result(media_pool, result: Dict[str, Any], folder, clip_fps: Optional[float] = None):
    """Import one engine result into `folder`; returns (MediaPoolItem or None, note)."""
    previous = media_pool.GetCurrentFolder()
    if not media_pool.SetCurrentFolder(folder):
        return None, f"could not open the {folder.GetName()!r} bin"
    try:
        if result.get("kind") != "movie":
            number = int(result.get("first_number") or 0)  # frame i is file pattern % (first_number + i)
            info = {"FilePath": result["pattern"], "StartIndex": number + int(result["first_frame"]),
                    "EndIndex": number + int(result["last_frame"])}
            items = media_pool.ImportMedia([info])
        else:
            items = media_pool.ImportMedia([result["path"]])
    finally:
        if previous is not None:
            media_pool.SetCurrentFolder(previous)
    items = as_list(items)
    if not items:
        where = result.get("pattern") or result.get("path")
        return None, f"Resolve imported nothing from {where}"
    mpi = items[0]
    note = ""
    if clip_fps:
        have = parse_fps(mpi.GetClipProperty("FPS"))
        if have is None or abs(have - clip_fps) > 1e-3:
            mpi.SetClipProperty("FPS", fps_text(clip_fps))
            have = parse_fps(mpi.GetClipProperty("FPS"))
            if have is None or abs(have - clip_fps) > 1e-3:
                note = (f"imported at {fps_text(have or 0)} fps, not the clip's {fps_text(clip_fps)} fps "
                        "(set Clip Attributes > Frame Rate by hand)")
    return mpi, note


# -------------------------------------------------------------- placing
@dataclass(eq=False)
class Placement:
    clip: Clip
    result: Optional[Dict[str, Any]] = None
    status: str = "pending"      # "placed", "failed", "cancelled", "engine-failed"
    reason: str = ""
    track: Optional[int] = None
    record_frame: Optional[int] = None
    note: str = ""
    media_pool_item: Any = None
    overlay: bool = False        # an RGBA face overlay (composited Normal over the source)
    job_id: Optional[str] = None  # the engine job that rendered it (what --retry resumes)

    def to_json(self) -> Dict[str, Any]:
        return {"clip": self.clip.name, "id": self.clip.id, "status": self.status, "reason": self.reason,
                "track": self.track, "record_frame": self.record_frame, "note": self.note,
                "result": self.result, "job": self.job_id}


@dataclass
class Report:
    placed: List[Placement] = field(default_factory=list)
    failed: List[Placement] = field(default_factory=list)
    skipped: List[Skipped] = field(default_factory=list)
    track: Optional[int] = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def text(self) -> str:
        lines = []
        if self.placed:
            lines.append(f"Placed {len(self.placed)} toon clip(s) on V{self.track}:")
            lines += [f"  {p.clip.name} at frame {p.record_frame}" + (f" ({p.note})" if p.note else "")
                      for p in self.placed]
        if self.failed:
            lines.append(f"Could not place {len(self.failed)} clip(s):")
            lines += [f"  {p.clip.name}: {p.reason}" for p in self.failed]
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} timeline item(s):")
            lines += [f"  {s.name}: {s.reason}" for s in self.skipped]
        if self.placed:
            lines.append(f"Each result has its source's transform, crop, composite mode and opacity; {NOT_COPIED}.")
        if not lines:
            lines.append("Nothing to do.")
        return "\n".join(lines)

    def to_json(self) -> Dict[str, Any]:
        return {"track": self.track, "placed": [p.to_json() for p in self.placed],
                "failed": [p.to_json() for p in self.failed], "skipped": [asdict(s) for s in self.skipped],
                "text": self.text()}


def _add_video_track(timeline) -> int:
    """Add a video track on top (`AddTrack("video")`); returns the new track count, re-read."""
    count = timeline.GetTrackCount("video") or 0
    if not timeline.AddTrack("video"):
        raise BridgeError("Resolve would not add a video track.")
    new_count = timeline.GetTrackCount("video") or 0
    if new_count <= count:
        raise BridgeError("Resolve did not add a video track.")
    return new_count


def choose_track(timeline, source_track: int, target: Any = "new") -> int:
    """The video track to place on: a new one on top ("new"), or the given index (tracks added as needed)."""
    if target in (None, "new", "auto"):
        return _add_video_track(timeline)
    index = int(target)
    if index <= source_track:
        raise BridgeError(f"V{index} is not above the source track V{source_track}; choose a higher track.")
    count = timeline.GetTrackCount("video") or 0
    while count < index:
        count = _add_video_track(timeline)
    return index


def find_item(timeline, clip: Clip):
    """The source item of `clip` on its track (by unique id, else by record start), or None."""
    for item in as_list(timeline.GetItemListInTrack("video", clip.track)):
        try:
            uid = item.GetUniqueId()
        except Exception:
            uid = None
        if (uid and str(uid) == clip.id) or (not uid and int(item.GetStart()) == clip.record_start):
            return item
    return None


def append_whole(media_pool, timeline, mpi, *, track: int, record: int, frames: int, exclusive: bool):
    """Cut all `frames` frames of `mpi` in at `record` on V`track`; the landed item, or None.

    README.txt does not say whether clipInfo frames count an image sequence from 0 or from its first
    file's number; each way is asked in turn (a request outside the item's frames places nothing, or
    a part of it, which is removed again) and the track re-read each time.
    """
    want = frames * exact_fps(timeline_fps(timeline)) / exact_fps(parse_fps(mpi.GetClipProperty("FPS")) or 1)
    starts = [0]
    start_prop = str(mpi.GetClipProperty("Start") or "0")
    if start_prop.isdigit() and int(start_prop) != 0:
        starts.append(int(start_prop))
    for first in starts:
        info = {"mediaPoolItem": mpi, "startFrame": first, "endFrame": first + (frames if exclusive else frames - 1),
                "mediaType": 1, "trackIndex": track, "recordFrame": record}
        media_pool.AppendToTimeline([info])  # its answer is not trusted: the track is re-read
        landed = [it for it in as_list(timeline.GetItemListInTrack("video", track))
                  if int(it.GetStart()) == record and same_object(it.GetMediaPoolItem(), mpi)]
        if not landed:
            continue
        if abs(int(landed[0].GetDuration()) - want) <= 1:
            return landed[0]
        timeline.DeleteClips(landed, False)  # a part of the item: Resolve counts the other way
    return None


def _why_not_placed(timeline, track: int, start: int, end: int) -> str:
    try:
        if timeline.GetIsTrackLocked("video", track):
            return f"V{track} is locked"
    except Exception:
        pass
    blockers = [it for it in as_list(timeline.GetItemListInTrack("video", track))
                if it.GetStart() < end and start < it.GetEnd()]
    if blockers:
        names = ", ".join(f"{b.GetName()!r} ({b.GetStart()}-{b.GetEnd()})" for b in blockers[:3])
        return f"frames {start}-{end} on V{track} overlap {names}; Resolve drops overlapping clips"
    return "Resolve did not add it to the track (AppendToTimeline gave no error)"


def place_results(resolve, project, timeline, placements: Sequence[Placement], *, source_track: int,
                  target: Any = "new", bin_name: str = BIN_NAME, log: Optional[Log] = None) -> Report:
    """Import finished results into the bin, cut them in above the source, re-read the track to confirm."""
    log = log or (lambda message: None)
    report = Report()
    todo = [p for p in placements if p.result and p.status in ("pending", "done")]
    for p in placements:
        if p not in todo:
            if p.status in ("pending", "done"):
                p.status, p.reason = "failed", p.reason or "the engine returned no result"
            report.failed.append(p)
    if not todo:
        return report
    media_pool = project.GetMediaPool()
    # AppendToTimeline works on the CURRENT timeline: the user may have switched while the engine ran.
    current = project.GetCurrentTimeline()
    if not same_object(current, timeline) and not project.SetCurrentTimeline(timeline):
        for p in todo:
            p.status, p.reason = "failed", f"could not switch back to timeline {timeline.GetName()!r}"
            report.failed.append(p)
        return report
    folder = find_or_create_bin(media_pool, bin_name)
    track = choose_track(timeline, source_track, target)
    report.track = track
    exclusive = end_frame_exclusive(resolve)
    for p in todo:
        clip, result = p.clip, p.result
        mpi, note = import_result(media_pool, result, folder, clip.clip_fps)
        p.note = note
        if mpi is None:
            p.status, p.reason = "failed", note
            report.failed.append(p)
            continue
        p.media_pool_item = mpi
        first, last = int(result.get("first_frame", clip.first)), int(result.get("last_frame", clip.last))
        frames = last - first + 1
        record = clip.record_start + record_offset(first - clip.first, clip.clip_fps, clip.timeline_fps)
        expected = record_offset(frames, clip.clip_fps, clip.timeline_fps)
        p.track, p.record_frame = track, record
        landed = append_whole(media_pool, timeline, mpi, track=track, record=record, frames=frames,
                              exclusive=exclusive)
        if landed is None:
            p.status, p.reason = "failed", _why_not_placed(timeline, track, record, record + expected)
            report.failed.append(p)
            log(f"  could not place {clip.name}: {p.reason}")
            continue
        got = int(landed.GetDuration())
        notes = [p.note] if p.note else []
        if abs(got - expected) > (0 if exact_fps(clip.clip_fps) == exact_fps(clip.timeline_fps) else 1):
            notes.append(f"placed {got} frames where the source item has {expected}")
        source = find_item(timeline, clip)
        failed_keys = copy_look(source, landed, overlay=p.overlay) if source is not None else []
        if source is None:
            notes.append("its source item is gone, so its transform was not copied")
        elif failed_keys:
            notes.append(f"Resolve would not take {', '.join(failed_keys)}")
        p.note = "; ".join(notes)
        p.status = "placed"
        report.placed.append(p)
        log(f"  placed {clip.name} on V{track} at frame {record}")
    return report
