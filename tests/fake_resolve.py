"""An in-memory fake of DaVinci Resolve's scripting API, for tests.

Only calls documented in Resolve's own Developer/Scripting/README.txt are
implemented, with their documented signatures (positional-only, as the real
bridge takes them: a keyword argument is a TypeError here just as it is
unreliable there). Calls the add-on does not need are left out rather than
guessed at; calling one is an AttributeError, so a script that strays from the
documented API fails its test.

The documented objects: Resolve, ProjectManager, Project, MediaStorage,
MediaPool, Folder, MediaPoolItem, Timeline, TimelineItem.

Pitfalls of the real application reproduced here on purpose:

* Record frames are ABSOLUTE. A new timeline starts at 01:00:00:00, i.e.
  frame 86400 at 24 fps (90000 at 25). `TimelineItem.GetStart()` answers
  absolute frames, and `AppendToTimeline`'s "recordFrame" is absolute: a
  clip appended at recordFrame 0 lands an hour before the timeline starts
  (it reads back fine and renders nothing).
* A clipInfo that would overlap an item already on its track, that names a
  track that does not exist, or a locked track, is dropped SILENTLY:
  `AppendToTimeline` still hands back a TimelineItem for it (one that is on
  no track), so a script must re-read the track with `GetItemListInTrack`.
* `ImportMedia` (and `MediaStorage.AddItemListToMediaPool`) put the new items
  into the CURRENT Media Pool folder; `AddSubFolder` does not change the
  current folder. Media that does not exist imports nothing (an empty list).
* An image sequence imports as ONE MediaPoolItem, whether given as a clipInfo
  `{"FilePath": "x_%06d.png", "StartIndex": a, "EndIndex": b}` or as the
  list of its frame files; its "FPS" clip property is the project frame
  rate, not the rate the frames were rendered at.
* Clip-info `startFrame`/`endFrame` are frames of the media pool item counted
  from its first frame (0). Since Resolve 19 `endFrame` is EXCLUSIVE (the
  item is endFrame - startFrame frames long); Resolve 18 treated it as
  inclusive. The fake follows the version it is built with.
* Timeline item offsets (`GetLeftOffset`, `GetDuration`, `GetStart`) are in
  timeline frames; a clip whose own frame rate differs from the timeline's
  plays at real-time speed, so its source frames are timeline frames scaled
  by clip fps / timeline fps.
* There is no documented call for the timeline selection; the "current"
  item is `Timeline.GetCurrentVideoItem()`, the top video item under the
  playhead (`SetCurrentTimecode`), whatever it is: a title or an adjustment
  clip above the footage is "current" too.
* Titles, generators and adjustment clips are timeline items with no media
  pool item; a compound clip's media pool item has no file path.
* A speed change (retime) keeps the item's source in point and changes its
  duration: `GetSourceStartFrame()`/`GetSourceEndFrame()` (source frames,
  end exclusive here) then span more or fewer frames than the duration at
  real-time speed. Nothing else in the documented API reports the speed.
* How clipInfo `startFrame`/`endFrame` count the frames of an imported image
  sequence (say `shot.[0020-0049].png`) is not documented: from 0, or from
  the first file's number. `Resolve(sequence_frames="zero" | "numbered")`
  picks one; a script must work with both. A request outside the item's
  frames places nothing. `GetSourceStartFrame` counts the same way.
* `TimelineItem.GetProperty`/`SetProperty` take the keys of the README's
  "Looking up Timeline item properties" (one key and value, or a dict);
  an unknown key or a value of the wrong kind is refused (False), values
  beyond the range are clipped.

Methods with a leading underscore are test set-up helpers, not API.
"""
from __future__ import annotations

import itertools
import os
import re
from fractions import Fraction
from typing import Any, Dict, List, Optional, Tuple

_ids = itertools.count(1)
TRACK_TYPES = ("video", "audio", "subtitle")
NTSC = {23.976: Fraction(24000, 1001), 29.97: Fraction(30000, 1001), 47.952: Fraction(48000, 1001),
        59.94: Fraction(60000, 1001), 119.88: Fraction(120000, 1001)}


#: TimelineItem properties from the README ("Looking up Timeline item properties"): key -> (kind, low, high,
#: default); low/high as numbers or "width"/"height" multiples resolved against the timeline size.
ITEM_PROPERTIES = {
    "Pan": ("float", (-4.0, "width"), (4.0, "width"), 0.0), "Tilt": ("float", (-4.0, "height"), (4.0, "height"), 0.0),
    "ZoomX": ("float", 0.0, 100.0, 1.0), "ZoomY": ("float", 0.0, 100.0, 1.0), "ZoomGang": ("bool", 0, 1, True),
    "RotationAngle": ("float", -360.0, 360.0, 0.0),
    "AnchorPointX": ("float", (-4.0, "width"), (4.0, "width"), 0.0),
    "AnchorPointY": ("float", (-4.0, "height"), (4.0, "height"), 0.0),
    "Pitch": ("float", -1.5, 1.5, 0.0), "Yaw": ("float", -1.5, 1.5, 0.0),
    "FlipX": ("bool", 0, 1, False), "FlipY": ("bool", 0, 1, False),
    "CropLeft": ("float", 0.0, (1.0, "width"), 0.0), "CropRight": ("float", 0.0, (1.0, "width"), 0.0),
    "CropTop": ("float", 0.0, (1.0, "height"), 0.0), "CropBottom": ("float", 0.0, (1.0, "height"), 0.0),
    "CropSoftness": ("float", -100.0, 100.0, 0.0), "CropRetain": ("bool", 0, 1, False),
    "DynamicZoomEase": ("enum", 0, 3, 0), "CompositeMode": ("enum", 0, 30, 0), "Opacity": ("float", 0.0, 100.0, 100.0),
    "Distortion": ("float", -1.0, 1.0, 0.0), "RetimeProcess": ("enum", 0, 3, 0), "MotionEstimation": ("enum", 0, 6, 0),
    "Scaling": ("enum", 0, 4, 0), "ResizeFilter": ("enum", 0, 15, 0),
}
TIMELINE_SIZE = (1920, 1080)


def _limit(bound, size) -> float:
    if isinstance(bound, tuple):
        factor, axis = bound
        return factor * (size[0] if axis == "width" else size[1])
    return float(bound)


def _uid(prefix: str) -> str:
    return f"{prefix}-{next(_ids):08x}"


def _exact(fps: float) -> Fraction:
    return NTSC.get(round(float(fps), 3), Fraction(str(float(fps))))


def _fps_text(fps: float) -> str:
    text = f"{float(fps):.3f}".rstrip("0").rstrip(".")
    return text


def _nominal(fps: float) -> int:
    return int(round(float(fps)))


# --------------------------------------------------------------------- media
def probe_media(path: str) -> Optional[Dict[str, Any]]:
    """What Resolve would learn about a file on import: {"frames", "fps", "width", "height"}."""
    if not os.path.isfile(path):
        return None
    lower = path.lower()
    if lower.endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".dpx")):
        return {"frames": 1, "fps": None, "still": True}
    try:
        import cv2
    except ImportError:  # pragma: no cover
        return None
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            return None
        frames = int(round(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        fps = float(cap.get(cv2.CAP_PROP_FPS)) or 24.0
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        cap.release()
    if frames <= 0:
        return None
    return {"frames": frames, "fps": fps, "width": width, "height": height, "still": False}


_NUMBERED = re.compile(r"^(.*?)(\d+)(\.[^.]+)$")


def _sequence_key(path: str) -> Optional[Tuple[str, int, str, int]]:
    """(prefix, width, suffix, number) for a numbered frame file, else None."""
    m = _NUMBERED.match(path)
    if not m:
        return None
    return m.group(1), len(m.group(2)), m.group(3), int(m.group(2))


# ------------------------------------------------------------------ objects
class MediaPoolItem:
    def __init__(self, pool: "MediaPool", name: str, props: Dict[str, str]):
        self._pool = pool
        self._name = name
        self._props = dict(props)
        self._id = _uid("mpi")
        self._metadata: Dict[str, str] = {}

    # documented
    def GetName(self, /):
        return self._name

    def GetMediaId(self, /):
        return self._id

    def GetUniqueId(self, /):
        return self._id

    def GetClipProperty(self, propertyName=None, /):
        if propertyName is None:
            return dict(self._props)
        return self._props.get(propertyName, "")

    def SetClipProperty(self, propertyName, propertyValue, /):
        if propertyName not in self._props or not isinstance(propertyValue, str):
            return False
        if propertyName == "FPS":
            try:
                float(propertyValue)
            except ValueError:
                return False
            if self._pool._used_on_timeline(self):
                return False  # Resolve refuses to re-time a clip already cut into a timeline
        self._props[propertyName] = propertyValue
        return True

    def GetMetadata(self, metadataType=None, /):
        return dict(self._metadata) if metadataType is None else self._metadata.get(metadataType, "")

    def SetMetadata(self, *args):
        if len(args) == 1 and isinstance(args[0], dict):
            self._metadata.update({str(k): str(v) for k, v in args[0].items()})
            return True
        if len(args) == 2:
            self._metadata[str(args[0])] = str(args[1])
            return True
        raise TypeError("SetMetadata(metadataType, metadataValue) or SetMetadata({metadata})")

    # helpers
    def _frames(self) -> int:
        return int(self._props["Frames"])

    def _fps(self) -> float:
        return float(self._props["FPS"])

    def _first_number(self) -> int:
        """An image sequence's first file number (0 for anything else)."""
        return int(self._props.get("Start") or 0)

    def __repr__(self):
        return f"<MediaPoolItem {self._name!r}>"


class Folder:
    def __init__(self, name: str, parent: Optional["Folder"] = None):
        self._name = name
        self._parent = parent
        self._clips: List[MediaPoolItem] = []
        self._subfolders: List["Folder"] = []
        self._id = _uid("folder")

    def GetClipList(self, /):
        return list(self._clips)

    def GetName(self, /):
        return self._name

    def GetSubFolderList(self, /):
        return list(self._subfolders)

    def GetUniqueId(self, /):
        return self._id

    def GetIsFolderStale(self, /):
        return False

    def __repr__(self):
        return f"<Folder {self._name!r}>"


class TimelineItem:
    def __init__(self, timeline: "Timeline", mpi: Optional[MediaPoolItem], name: str, start: int,
                 duration: int, left_offset: int, track: Tuple[str, int]):
        self._timeline = timeline
        self._mpi = mpi
        self._name = name
        self._start = start          # absolute timeline frame
        self._duration = duration    # timeline frames
        self._left = left_offset     # timeline frames trimmed from the clip's head
        self._track = track
        self._enabled = True
        self._speed = Fraction(1)   # retime: source frames per real-time frame
        self._props = {key: spec[3] for key, spec in ITEM_PROPERTIES.items()}
        self._id = _uid("ti")

    def GetName(self, /):
        return self._name

    def GetDuration(self, subframe_precision=False, /):
        return float(self._duration) if subframe_precision else self._duration

    def GetStart(self, subframe_precision=False, /):
        return float(self._start) if subframe_precision else self._start

    def GetEnd(self, subframe_precision=False, /):
        end = self._start + self._duration
        return float(end) if subframe_precision else end

    def GetLeftOffset(self, subframe_precision=False, /):
        return float(self._left) if subframe_precision else self._left

    def GetRightOffset(self, subframe_precision=False, /):
        if self._mpi is None:
            return 0
        total = round(self._mpi._frames() * self._timeline._fps_exact() / _exact(self._mpi._fps()))
        right = max(0, total - self._left - self._duration)
        return float(right) if subframe_precision else right

    def GetSourceStartFrame(self, /):
        return int(round(self._left * self._scale() * self._speed)) + self._counted_from()

    def GetSourceEndFrame(self, /):
        return int(round((self._left + self._duration) * self._scale() * self._speed)) + self._counted_from()

    def GetProperty(self, propertyKey=None, /):
        if propertyKey is None:
            return dict(self._props)
        return self._props.get(propertyKey)

    def SetProperty(self, *args):
        if len(args) == 1 and isinstance(args[0], dict):
            return all([self.SetProperty(k, v) for k, v in args[0].items()])
        if len(args) != 2:
            raise TypeError("SetProperty(propertyKey, propertyValue) or SetProperty({properties})")
        key, value = args
        spec = ITEM_PROPERTIES.get(key)
        if spec is None or isinstance(value, str) or value is None:
            return False
        kind, low, high, _ = spec
        if kind == "bool":
            if not isinstance(value, (bool, int)):
                return False
            self._props[key] = bool(value)
            return True
        if not isinstance(value, (int, float)) or (kind == "enum" and not float(value).is_integer()):
            return False
        lo, hi = _limit(low, TIMELINE_SIZE), _limit(high, TIMELINE_SIZE)
        value = min(max(float(value), lo), hi)  # "Values beyond the range will be clipped"
        self._props[key] = int(value) if kind == "enum" else value
        return True

    def GetSourceStartTime(self, /):
        return float(self._left / self._timeline._fps_exact())

    def GetSourceEndTime(self, /):
        return float((self._left + self._duration) / self._timeline._fps_exact())

    def GetMediaPoolItem(self, /):
        return self._mpi

    def GetUniqueId(self, /):
        return self._id

    def GetTrackTypeAndIndex(self, /):
        return [self._track[0], self._track[1]]

    def GetClipEnabled(self, /):
        return self._enabled

    def SetClipEnabled(self, enabled, /):
        self._enabled = bool(enabled)
        return True

    def _scale(self) -> Fraction:
        if self._mpi is None or not self._mpi._props.get("FPS"):
            return Fraction(1)
        return _exact(self._mpi._fps()) / self._timeline._fps_exact()

    def _counted_from(self) -> int:
        """Where this Resolve counts the item's source frames from (0, or an image sequence's first number)."""
        return self._mpi._first_number() if self._mpi is not None and self._timeline._numbered() else 0

    def _set_speed(self, percent: float) -> None:
        """Change Clip Speed: the source in point stays, the duration follows the new speed."""
        start = Fraction(self._left) * self._scale() * self._speed
        span = Fraction(self._duration) * self._scale() * self._speed
        self._speed = Fraction(str(percent)) / 100
        self._left = int(round(start / (self._scale() * self._speed)))
        self._duration = int(round(span / (self._scale() * self._speed)))

    def __repr__(self):
        return f"<TimelineItem {self._name!r} {self._track[0]}{self._track[1]} @{self._start}+{self._duration}>"


class Timeline:
    def __init__(self, project: "Project", name: str, fps: float, start_timecode: str = "01:00:00:00"):
        self._project = project
        self._name = name
        self._fps = float(fps)
        self._start = self._tc_to_frames(start_timecode)
        self._tracks: Dict[str, List[Dict[str, Any]]] = {t: [] for t in TRACK_TYPES}
        self._tracks["video"].append(self._new_track("video", 1))
        self._tracks["audio"].append(self._new_track("audio", 1))
        self._playhead = self._start
        self._id = _uid("timeline")

    @staticmethod
    def _new_track(kind: str, index: int) -> Dict[str, Any]:
        prefix = {"video": "V", "audio": "A", "subtitle": "ST"}[kind]
        return {"name": f"{prefix}{index}", "items": [], "locked": False, "enabled": True}

    def _fps_exact(self) -> Fraction:
        return _exact(self._fps)

    def _numbered(self) -> bool:
        return self._project._resolve._sequence_frames == "numbered"

    def _add_item(self, name: str, track: int, record: int, duration: int, media_pool_item=None) -> "TimelineItem":
        """Set-up: a title, adjustment clip or compound clip (no media file) at `record` frames after the start."""
        while len(self._tracks["video"]) < track:
            self.AddTrack("video")
        start = self._start + record
        item = TimelineItem(self, media_pool_item, name, start, duration, 0, ("video", track))
        self._tracks["video"][track - 1]["items"].append(item)
        return item

    def _tc_to_frames(self, tc: str) -> int:
        h, m, s, f = (int(x) for x in re.split(r"[:;]", tc))
        return ((h * 60 + m) * 60 + s) * _nominal(self._fps) + f

    def _frames_to_tc(self, frames: int) -> str:
        n = _nominal(self._fps)
        s, f = divmod(frames, n)
        m, s = divmod(s, 60)
        h, m = divmod(m, 60)
        return f"{h:02d}:{m:02d}:{s:02d}:{f:02d}"

    def _track(self, kind: str, index: Any) -> Optional[Dict[str, Any]]:
        if kind not in TRACK_TYPES or not isinstance(index, int) or isinstance(index, bool):
            return None
        tracks = self._tracks[kind]
        return tracks[index - 1] if 1 <= index <= len(tracks) else None

    # documented
    def GetName(self, /):
        return self._name

    def SetName(self, timelineName, /):
        self._name = str(timelineName)
        return True

    def GetUniqueId(self, /):
        return self._id

    def GetStartFrame(self, /):
        return self._start

    def GetEndFrame(self, /):
        ends = [it._start + it._duration for tracks in self._tracks.values() for t in tracks for it in t["items"]]
        return max([self._start] + ends)

    def GetStartTimecode(self, /):
        return self._frames_to_tc(self._start)

    def SetStartTimecode(self, timecode, /):
        delta = self._tc_to_frames(timecode) - self._start
        for tracks in self._tracks.values():
            for t in tracks:
                for it in t["items"]:
                    it._start += delta
        self._start += delta
        return True

    def GetSetting(self, settingName=None, /):
        settings = {"timelineFrameRate": _fps_text(self._fps)}
        return dict(settings) if settingName is None else settings.get(settingName, "")

    def GetTrackCount(self, trackType, /):
        if trackType not in TRACK_TYPES:
            return 0
        return len(self._tracks[trackType])

    def AddTrack(self, trackType, subTrackTypeOrOptions=None, /):
        if trackType not in TRACK_TYPES:
            return False
        tracks = self._tracks[trackType]
        index = len(tracks) + 1
        if isinstance(subTrackTypeOrOptions, dict) and "index" in subTrackTypeOrOptions:
            wanted = subTrackTypeOrOptions["index"]
            if isinstance(wanted, int) and 1 <= wanted <= len(tracks):
                index = wanted
        tracks.insert(index - 1, self._new_track(trackType, index))
        for i, t in enumerate(tracks, 1):
            for it in t["items"]:
                it._track = (trackType, i)
        return True

    def GetTrackName(self, trackType, trackIndex, /):
        t = self._track(trackType, trackIndex)
        return t["name"] if t else ""

    def SetTrackName(self, trackType, trackIndex, name, /):
        t = self._track(trackType, trackIndex)
        if t is None:
            return False
        t["name"] = str(name)
        return True

    def GetIsTrackLocked(self, trackType, trackIndex, /):
        t = self._track(trackType, trackIndex)
        return bool(t and t["locked"])

    def SetTrackLock(self, trackType, trackIndex, locked, /):
        t = self._track(trackType, trackIndex)
        if t is None:
            return False
        t["locked"] = bool(locked)
        return True

    def GetIsTrackEnabled(self, trackType, trackIndex, /):
        t = self._track(trackType, trackIndex)
        return bool(t and t["enabled"])

    def SetTrackEnable(self, trackType, trackIndex, enabled, /):
        t = self._track(trackType, trackIndex)
        if t is None:
            return False
        t["enabled"] = bool(enabled)
        return True

    def GetItemListInTrack(self, trackType, index, /):
        t = self._track(trackType, index)
        if t is None:
            return None
        return sorted(t["items"], key=lambda it: it._start)

    def DeleteClips(self, timelineItems, ripple=False, /):
        found = False
        for tracks in self._tracks.values():
            for t in tracks:
                keep = [it for it in t["items"] if it not in timelineItems]
                found |= len(keep) != len(t["items"])
                t["items"] = keep
        return found

    def GetCurrentTimecode(self, /):
        return self._frames_to_tc(self._playhead)

    def SetCurrentTimecode(self, timecode, /):
        try:
            self._playhead = self._tc_to_frames(timecode)
        except ValueError:
            return False
        return True

    def GetCurrentVideoItem(self, /):
        for t in reversed(self._tracks["video"]):
            if not t["enabled"]:
                continue
            for it in t["items"]:
                if it._start <= self._playhead < it._start + it._duration:
                    return it
        return None

    def InsertGeneratorIntoTimeline(self, generatorName, /):
        """A generator (no media pool item) at the playhead on V1, 5 seconds long; None if it would overlap."""
        duration = 5 * _nominal(self._fps)
        t = self._tracks["video"][0]
        start = self._playhead
        if t["locked"] or any(start < o._start + o._duration and o._start < start + duration for o in t["items"]):
            return None
        item = TimelineItem(self, None, str(generatorName), start, duration, 0, ("video", 1))
        t["items"].append(item)
        return item

    # helpers
    def _place(self, mpi: MediaPoolItem, start_frame: int, end_frame: int, record: int, track: int,
               media_type: Optional[int]) -> Tuple[TimelineItem, bool]:
        """Cut [start_frame, end_frame) of `mpi` in at `record` on V`track`; returns (item, placed)."""
        scale = self._fps_exact() / _exact(mpi._fps())
        left = int(round(start_frame * scale))
        duration = int(round((end_frame - start_frame) * scale))
        item = TimelineItem(self, mpi, mpi.GetName(), int(record), duration, left, ("video", track))
        t = self._track("video", track)
        if t is None or t["locked"] or duration <= 0:
            return item, False
        for other in t["items"]:
            if record < other._start + other._duration and other._start < record + duration:
                return item, False  # overlap: dropped without a word
        t["items"].append(item)
        if media_type != 1 and mpi._props.get("Audio Ch", "0") not in ("", "0"):
            audio = TimelineItem(self, mpi, mpi.GetName(), int(record), duration, left, ("audio", 1))
            if self._tracks["audio"]:
                self._tracks["audio"][0]["items"].append(audio)
        return item, True

    def _next_free(self, track: int) -> int:
        t = self._track("video", track)
        ends = [it._start + it._duration for it in t["items"]] if t else []
        return max([self._start] + ends)

    def __repr__(self):
        return f"<Timeline {self._name!r}>"


class MediaPool:
    def __init__(self, project: "Project"):
        self._project = project
        self._root = Folder("Master")
        self._current = self._root

    def _all_folders(self) -> List[Folder]:
        out, todo = [], [self._root]
        while todo:
            f = todo.pop()
            out.append(f)
            todo.extend(f._subfolders)
        return out

    def _used_on_timeline(self, mpi: MediaPoolItem) -> bool:
        for tl in self._project._timelines:
            for tracks in tl._tracks.values():
                for t in tracks:
                    if any(it._mpi is mpi for it in t["items"]):
                        return True
        return False

    # documented
    def GetRootFolder(self, /):
        return self._root

    def AddSubFolder(self, folder, name, /):
        if not isinstance(folder, Folder) or not isinstance(name, str) or not name:
            return None
        sub = Folder(name, folder)
        folder._subfolders.append(sub)
        return sub

    def GetCurrentFolder(self, /):
        return self._current

    def SetCurrentFolder(self, folder, /):
        if not isinstance(folder, Folder) or folder not in self._all_folders():
            return False
        self._current = folder
        return True

    def CreateEmptyTimeline(self, name, /):
        if any(t._name == name for t in self._project._timelines):
            return None
        tl = Timeline(self._project, name, self._project._fps)
        self._project._timelines.append(tl)
        if self._project._current is None:
            self._project._current = tl
        return tl

    def DeleteClips(self, clips, /):
        ok = False
        for f in self._all_folders():
            keep = [c for c in f._clips if c not in clips]
            ok |= len(keep) != len(f._clips)
            f._clips = keep
        return ok

    def MoveClips(self, clips, targetFolder, /):
        if not isinstance(targetFolder, Folder):
            return False
        for f in self._all_folders():
            for c in list(f._clips):
                if c in clips:
                    f._clips.remove(c)
                    targetFolder._clips.append(c)
        return True

    def ImportMedia(self, items, /):
        if not isinstance(items, list):
            raise TypeError("ImportMedia takes a list of file/folder paths or a list of clipInfo dicts")
        created: List[MediaPoolItem] = []
        loose: List[str] = []
        for entry in items:
            if isinstance(entry, dict):
                mpi = self._import_clip_info(entry)
                if mpi is not None:
                    created.append(mpi)
            elif isinstance(entry, str):
                if os.path.isdir(entry):
                    loose.extend(sorted(os.path.join(entry, n) for n in os.listdir(entry)))
                else:
                    loose.append(entry)
            else:
                raise TypeError(f"ImportMedia: unexpected item {entry!r}")
        created.extend(self._import_paths(loose))
        self._current._clips.extend(created)
        return created

    def AppendToTimeline(self, *args):
        timeline = self._project._current
        if timeline is None:
            return []
        if len(args) == 1 and isinstance(args[0], list):
            entries = args[0]
        else:
            entries = list(args)
        out: List[TimelineItem] = []
        for entry in entries:
            if isinstance(entry, MediaPoolItem):
                track = 1
                out.append(timeline._place(entry, 0, entry._frames(), timeline._next_free(track), track, None)[0])
                continue
            if not isinstance(entry, dict):
                raise TypeError(f"AppendToTimeline: unexpected item {entry!r}")
            unknown = set(entry) - {"mediaPoolItem", "startFrame", "endFrame", "mediaType", "trackIndex",
                                    "recordFrame"}
            if unknown:
                raise TypeError(f"AppendToTimeline: undocumented clipInfo keys {sorted(unknown)}")
            mpi = entry.get("mediaPoolItem")
            if not isinstance(mpi, MediaPoolItem):
                continue
            start = entry.get("startFrame", 0)
            end = entry.get("endFrame", mpi._frames())
            for key, value in (("startFrame", start), ("endFrame", end)):
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise TypeError(f"clipInfo {key} must be a number, got {value!r}")
            if not self._project._resolve._end_exclusive():
                end = end + 1  # Resolve 18: endFrame inclusive
            start, end = int(start), int(end)
            if self._project._resolve._sequence_frames == "numbered":
                start, end = start - mpi._first_number(), end - mpi._first_number()
            if start < 0 or end > mpi._frames() or end <= start:
                continue
            track = entry.get("trackIndex", 1)
            record = entry.get("recordFrame")
            if record is None:
                record = timeline._next_free(track) if isinstance(track, int) and timeline._track("video", track) else 0
            media_type = entry.get("mediaType")
            out.append(timeline._place(mpi, start, end, int(record), track, media_type)[0])
        return out

    # helpers
    def _new_item(self, name: str, props: Dict[str, str]) -> MediaPoolItem:
        return MediaPoolItem(self, name, props)

    def _movie_item(self, path: str, info: Dict[str, Any]) -> MediaPoolItem:
        fps = info["fps"] or self._project._fps
        frames = info["frames"]
        return self._new_item(os.path.basename(path), {
            "File Path": path, "File Name": os.path.basename(path), "Clip Name": os.path.basename(path),
            "Type": "Still" if info.get("still") else "Video", "FPS": _fps_text(fps), "Frames": str(frames),
            "Start": "0", "End": str(frames - 1),
            "Resolution": f"{info.get('width', 0)}x{info.get('height', 0)}", "Audio Ch": "0",
        })

    def _sequence_item(self, prefix: str, width: int, suffix: str, first: int, last: int) -> MediaPoolItem:
        shown = f"{prefix}[{first:0{width}d}-{last:0{width}d}]{suffix}"
        fps = self._project._fps  # image sequences take the project frame rate
        frames = last - first + 1
        return self._new_item(os.path.basename(shown), {
            "File Path": shown, "File Name": os.path.basename(shown), "Clip Name": os.path.basename(shown),
            "Type": "Video", "FPS": _fps_text(fps), "Frames": str(frames),
            "Start": str(first), "End": str(last), "Audio Ch": "0",
        })

    def _import_clip_info(self, info: Dict[str, Any]) -> Optional[MediaPoolItem]:
        path = info.get("FilePath")
        if not isinstance(path, str):
            return None
        if "StartIndex" in info or "EndIndex" in info or re.search(r"%0?\d*d", path):
            first, last = int(info.get("StartIndex", 0)), int(info.get("EndIndex", 0))
            if last < first:
                return None
            try:
                files = [path % i for i in range(first, last + 1)]
            except (TypeError, ValueError):
                return None
            if not all(os.path.isfile(f) for f in files):
                return None
            m = re.search(r"%0?(\d*)d", path)
            width = int(m.group(1) or 1)
            return self._sequence_item(path[:m.start()], width, path[m.end():], first, last)
        items = self._import_paths([path])
        return items[0] if items else None

    def _import_paths(self, paths: List[str]) -> List[MediaPoolItem]:
        """Consolidate numbered frames into sequences ('Show Individual Frames' off)."""
        created: List[MediaPoolItem] = []
        groups: Dict[Tuple[str, int, str], List[int]] = {}
        for path in paths:
            key = _sequence_key(path)
            info = probe_media(path)
            if info is None:
                continue
            if info.get("still") and key is not None:
                groups.setdefault(key[:3], []).append(key[3])
                continue
            created.append(self._movie_item(path, info))
        for (prefix, width, suffix), numbers in groups.items():
            numbers.sort()
            runs: List[List[int]] = []
            for n in numbers:
                if runs and n == runs[-1][-1] + 1:
                    runs[-1].append(n)
                else:
                    runs.append([n])
            for run in runs:
                if len(run) == 1:
                    path = f"{prefix}{run[0]:0{width}d}{suffix}"
                    created.append(self._movie_item(path, {"frames": 1, "fps": None, "still": True}))
                else:
                    created.append(self._sequence_item(prefix, width, suffix, run[0], run[-1]))
        return created


class MediaStorage:
    def __init__(self, resolve: "Resolve"):
        self._resolve = resolve

    def GetMountedVolumeList(self, /):
        return ["/"]

    def GetSubFolderList(self, folderPath, /):
        if not os.path.isdir(folderPath):
            return []
        return sorted(os.path.join(folderPath, n) for n in os.listdir(folderPath)
                      if os.path.isdir(os.path.join(folderPath, n)))

    def GetFileList(self, folderPath, /):
        if not os.path.isdir(folderPath):
            return []
        return sorted(os.path.join(folderPath, n) for n in os.listdir(folderPath)
                      if os.path.isfile(os.path.join(folderPath, n)))

    def AddItemListToMediaPool(self, *args):
        paths = args[0] if len(args) == 1 and isinstance(args[0], list) else list(args)
        project = self._resolve._pm._current
        if project is None:
            return []
        return project._pool.ImportMedia([str(p) for p in paths])


class Project:
    def __init__(self, resolve: "Resolve", name: str, fps: float):
        self._resolve = resolve
        self._name = name
        self._fps = float(fps)
        self._pool = MediaPool(self)
        self._timelines: List[Timeline] = []
        self._current: Optional[Timeline] = None
        self._id = _uid("project")

    def GetName(self, /):
        return self._name

    def GetUniqueId(self, /):
        return self._id

    def GetMediaPool(self, /):
        return self._pool

    def GetTimelineCount(self, /):
        return len(self._timelines)

    def GetTimelineByIndex(self, idx, /):
        return self._timelines[idx - 1] if isinstance(idx, int) and 1 <= idx <= len(self._timelines) else None

    def GetCurrentTimeline(self, /):
        return self._current

    def SetCurrentTimeline(self, timeline, /):
        if timeline not in self._timelines:
            return False
        self._current = timeline
        return True

    def GetSetting(self, settingName=None, /):
        settings = {"timelineFrameRate": _fps_text(self._fps)}
        return dict(settings) if settingName is None else settings.get(settingName, "")

    def SetSetting(self, settingName, settingValue, /):
        if settingName != "timelineFrameRate" or self._timelines:
            return False  # Resolve locks the project frame rate once a timeline exists
        self._fps = float(settingValue)
        return True


class ProjectManager:
    def __init__(self, resolve: "Resolve"):
        self._resolve = resolve
        self._projects: Dict[str, Project] = {}
        self._current: Optional[Project] = None

    def CreateProject(self, projectName, /):
        if projectName in self._projects:
            return None
        project = Project(self._resolve, projectName, self._resolve._default_fps)
        self._projects[projectName] = project
        self._current = project
        return project

    def LoadProject(self, projectName, /):
        project = self._projects.get(projectName)
        if project is not None:
            self._current = project
        return project

    def GetCurrentProject(self, /):
        return self._current

    def GetProjectListInCurrentFolder(self, /):
        return list(self._projects)

    def SaveProject(self, /):
        return self._current is not None


class Resolve:
    """The object `app.GetResolve()` / `DaVinciResolveScript.scriptapp("Resolve")` hands back."""

    def __init__(self, version=(19, 1, 4, 11, ""), product="DaVinci Resolve Studio", fps: float = 24.0,
                 sequence_frames: str = "zero"):
        assert sequence_frames in ("zero", "numbered")
        self._sequence_frames = sequence_frames
        self._version = list(version)
        self._product = product
        self._default_fps = float(fps)
        self._pm = ProjectManager(self)
        self._storage = MediaStorage(self)
        self._page = "edit"

    def _end_exclusive(self) -> bool:
        return self._version[0] >= 19

    # documented
    def GetProjectManager(self, /):
        return self._pm

    def GetMediaStorage(self, /):
        return self._storage

    def GetProductName(self, /):
        return self._product

    def GetVersion(self, /):
        return list(self._version)

    def GetVersionString(self, /):
        major, minor, patch, build, suffix = (self._version + [0, 0, 0, 0, ""])[:5]
        return f"{major}.{minor}.{patch}{suffix}.{build}"

    def OpenPage(self, pageName, /):
        if pageName in ("media", "cut", "edit", "fusion", "color", "fairlight", "deliver"):
            self._page = pageName
            return True
        return False

    def GetCurrentPage(self, /):
        return self._page


# ------------------------------------------------------------------ set-up
def make_edit(clips: List[Dict[str, Any]], *, timeline_fps: float = 24.0, version=(19, 1, 4, 11, ""),
              product: str = "DaVinci Resolve Studio", project_name: str = "Toon test",
              timeline_name: str = "Edit 1", sequence_frames: str = "zero") -> Tuple[Resolve, Project, Timeline]:
    """A project with one timeline cut from `clips`, built through the documented calls only.

    Each clip: {"path" (a file, or an image-sequence clipInfo dict), "start" (source frame, clip fps, 0 = the
    first frame), "end" (exclusive), "record" (frames after the timeline start), "track" (default 1)}.
    """
    resolve = Resolve(version=version, product=product, fps=timeline_fps, sequence_frames=sequence_frames)
    project = resolve.GetProjectManager().CreateProject(project_name)
    pool = project.GetMediaPool()
    timeline = pool.CreateEmptyTimeline(timeline_name)
    project.SetCurrentTimeline(timeline)
    for clip in clips:
        track = clip.get("track", 1)
        while timeline.GetTrackCount("video") < track:
            timeline.AddTrack("video")
        path = clip["path"]
        items = pool.ImportMedia([path if isinstance(path, dict) else str(path)])
        assert items, f"fake Resolve could not import {path}"
        base = items[0]._first_number() if sequence_frames == "numbered" else 0
        end = base + (clip["end"] if resolve._end_exclusive() else clip["end"] - 1)
        placed = pool.AppendToTimeline([{"mediaPoolItem": items[0], "startFrame": base + clip["start"],
                                         "endFrame": end,
                                         "mediaType": 1, "trackIndex": track,
                                         "recordFrame": timeline.GetStartFrame() + clip["record"]}])
        assert placed and placed[0] in timeline.GetItemListInTrack("video", track)
    return resolve, project, timeline


def all_items(timeline: Timeline, kind: str = "video") -> List[TimelineItem]:
    out: List[TimelineItem] = []
    for i in range(1, timeline.GetTrackCount(kind) + 1):
        out.extend(timeline.GetItemListInTrack(kind, i) or [])
    return out


__all__ = ["Resolve", "ProjectManager", "Project", "MediaStorage", "MediaPool", "Folder", "MediaPoolItem",
           "Timeline", "TimelineItem", "make_edit", "all_items", "probe_media"]
