"""DaVinci Resolve side of toon-ofx: read the timeline, send work to the engine, place the result.

Standard library only (Python 3.7+): this module runs inside Resolve's own
Python, which has no torch and usually no PySide6. It imports nothing heavier
than `toon_ofx.client` (the engine's HTTP client) and `toon_ofx.core.params`.

Every call into Resolve is one documented in Resolve's Developer/Scripting
README.txt, with its documented arguments. The flow:

1. `get_resolve()` finds the scripting API: in-app (`resolve`, `app.GetResolve()`,
   `bmd.scriptapp("Resolve")`) or the external `DaVinciResolveScript` module.
   When none answers, `ResolveUnavailable` carries one clear message saying
   which edition and settings are needed.
2. `collect_clips()` reads the items of one video track (the track of the item
   under the playhead by default; Resolve's API has no call for the timeline
   selection). For each item: the source file (`GetClipProperty("File Path")`),
   the used source range from `GetLeftOffset()`/`GetDuration()` (timeline
   frames) converted to the clip's own frames with `GetClipProperty("FPS")`,
   and the record range (`GetStart()`, absolute: a timeline usually starts at
   frame 86400 = 01:00:00:00).
3. The PySide6 panel (`<engine python> -m toon_ofx.panel --clips ... --result
   ...`) chooses parameters, previews, submits and shows progress; or, in
   `--direct` mode, this module submits with the stdlib client and waits.
4. `import_result()` imports each result into a "Toon" Media Pool bin (the
   current folder is switched to it first: imports land in the current
   folder, and restored after); an image sequence is one clipInfo
   `{"FilePath": pattern, "StartIndex", "EndIndex"}` and comes back as one item.
5. `place_results()` appends each result with a clipInfo (`startFrame`/
   `endFrame` in the imported item's own frames, `trackIndex`, absolute
   `recordFrame` = the source item's `GetStart()`) on a new track above the
   source or a chosen one, then RE-READS the track with `GetItemListInTrack`
   to see what really landed (Resolve drops a clip that would overlap another
   without saying so) and reports every clip it could not place.

Frame rates: timeline item offsets and durations are timeline frames. When a
clip's own rate differs from the timeline's, Resolve plays it at real-time
speed, so source frame = timeline frames x clip fps / timeline fps (rounded).
The engine renders in the clip's frames; an imported image sequence takes the
project frame rate, so its "FPS" clip property is set back to the clip's rate
before it is cut in. `endFrame` in a clipInfo is exclusive since Resolve 19
(inclusive before); `GetVersion()` decides.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..core.errors import UserError

SCRIPT_NAME = "Toon Faces.py"
BIN_NAME = "Toon"
ENV_PYTHON = "TOON_OFX_PYTHON"
ENV_ARGS = "TOON_OFX_RESOLVE_ARGS"
ENV_OUTPUT = "TOON_OFX_OUTPUT_DIR"
CONFIG_NAME = "resolve.json"
EXCHANGE_VERSION = 1
IN_APP_NAMES = ("resolve", "app", "bmd", "fusion", "fu")  # globals Resolve gives a script it runs

Log = Callable[[str], None]


# ----------------------------------------------------------------- errors
class BridgeError(Exception):
    """Something the user can fix (no project, empty track, engine missing); one clear message."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ResolveUnavailable(BridgeError):
    """The scripting API could not be reached."""


EDITION_HELP = (
    "What is needed:\n"
    "  * DaVinci Resolve must be running, with a project and a timeline open.\n"
    "  * Run from inside Resolve (Workspace > Scripts > Utility > Toon Faces): DaVinci Resolve Studio, or\n"
    "    the free DaVinci Resolve up to 21.0. The free edition from 21.1 on has no Python scripting:\n"
    "    use the standalone panel instead (`toon-ofx panel clip.mp4`) and import its output yourself.\n"
    "  * Run from outside Resolve (external scripting): Studio, or free up to 21.0, with\n"
    "    Preferences > System > General > 'External scripting using' set to Local, and Resolve's\n"
    "    scripting module on the path: PYTHONPATH=$RESOLVE_SCRIPT_API/Modules and RESOLVE_SCRIPT_LIB\n"
    "    pointing at fusionscript (see Resolve's Developer/Scripting/README.txt)."
)


def _unavailable(reason: str) -> ResolveUnavailable:
    return ResolveUnavailable(f"Toon Faces cannot reach DaVinci Resolve's scripting API: {reason}\n{EDITION_HELP}")


# -------------------------------------------------------- reaching Resolve
def default_api_dirs(system: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> List[str]:
    """Where Resolve installs DaVinciResolveScript.py (Developer/Scripting/Modules), per OS."""
    env = os.environ if env is None else env
    system = system or sys.platform
    dirs = []
    if env.get("RESOLVE_SCRIPT_API"):
        dirs.append(os.path.join(env["RESOLVE_SCRIPT_API"], "Modules"))
    if system.startswith("win"):
        program_data = env.get("PROGRAMDATA", r"C:\ProgramData")
        dirs.append(program_data + r"\Blackmagic Design\DaVinci Resolve\Support\Developer\Scripting\Modules")
    elif system == "darwin":
        dirs.append("/Library/Application Support/Blackmagic Design/DaVinci Resolve/Developer/Scripting/Modules")
    else:
        dirs += ["/opt/resolve/Developer/Scripting/Modules", "/home/resolve/Developer/Scripting/Modules"]
    return dirs


def _import_script_module(importer: Callable[[str], Any]):
    try:
        return importer("DaVinciResolveScript")
    except ImportError:
        pass
    added = [d for d in default_api_dirs() if os.path.isdir(d) and d not in sys.path]
    sys.path.extend(added)
    try:
        return importer("DaVinciResolveScript")
    except ImportError:
        return None


def get_resolve(namespace: Optional[Dict[str, Any]] = None, *, external: bool = True,
                importer: Optional[Callable[[str], Any]] = None):
    """The `Resolve` object, or ResolveUnavailable with a message that says what is needed.

    `namespace` is the script's globals when Resolve runs it from Workspace > Scripts: Resolve
    provides `resolve` (and Fusion's `app`/`bmd`). Outside Resolve the external module is tried.
    """
    ns = namespace or {}
    candidates: List[Callable[[], Any]] = []
    if ns.get("resolve") is not None:
        candidates.append(lambda: ns["resolve"])
    for name in ("app", "fusion", "fu"):  # Fusion's application object inside Resolve
        if ns.get(name) is not None and hasattr(ns[name], "GetResolve"):
            candidates.append(lambda obj=ns[name]: obj.GetResolve())
    if ns.get("bmd") is not None and hasattr(ns["bmd"], "scriptapp"):
        candidates.append(lambda: ns["bmd"].scriptapp("Resolve"))
    for get in candidates:
        try:
            resolve = get()
        except Exception:  # the in-app objects are remote proxies: any failure means "not there"
            resolve = None
        if resolve is not None:
            return resolve
    if not external:
        raise _unavailable("the script was not started by Resolve.")
    if importer is None:
        import importlib
        importer = importlib.import_module
    module = _import_script_module(importer)
    if module is None:
        raise _unavailable("the DaVinciResolveScript module was not found (this Python is not Resolve's, "
                           "and RESOLVE_SCRIPT_API is not set).")
    try:
        resolve = module.scriptapp("Resolve")
    except Exception as exc:  # fusionscript missing or refused
        raise _unavailable(f"DaVinciResolveScript.scriptapp failed ({exc}).") from None
    if resolve is None:
        raise _unavailable("Resolve did not answer: it is not running, external scripting is off in its "
                           "preferences, or this edition has no Python scripting.")
    return resolve


def resolve_version(resolve) -> Tuple[int, ...]:
    try:
        version = resolve.GetVersion()
        if isinstance(version, dict):  # Lua-table style answers from old bridges
            version = [version[k] for k in sorted(version)]
        return tuple(int(v) for v in list(version)[:3] if str(v).isdigit())
    except Exception:
        return ()


def end_frame_exclusive(resolve) -> bool:
    """clipInfo "endFrame" is exclusive from Resolve 19 on (inclusive in 18)."""
    version = resolve_version(resolve)
    return not version or version[0] >= 19


# ----------------------------------------------------------- frame rates
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


# ---------------------------------------------------------------- clips
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


def _list(value) -> List[Any]:
    """A Resolve list answer as a Python list (old bridges hand back Lua tables as {1: a, 2: b})."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [v for _, v in sorted(value.items())]
    return list(value)


def _same(a, b) -> bool:
    """Two Resolve objects are the same one (proxies are not identical Python objects)."""
    if a is None or b is None:
        return False
    if a is b:
        return True
    for getter in ("GetUniqueId", "GetMediaId"):
        try:
            ia, ib = getattr(a, getter)(), getattr(b, getter)()
        except Exception:
            continue
        if ia and ib:
            return ia == ib
    return False


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
        if any(_same(item, other) for other in _list(timeline.GetItemListInTrack("video", index))):
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
    items = _list(timeline.GetItemListInTrack("video", track))
    if only_current:
        items = [it for it in items if _same(it, current)]
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
                          current=_same(item, current)))
    return clips, skipped, track


# ----------------------------------------------------------- media pool
def find_or_create_bin(media_pool, name: str = BIN_NAME):
    root = media_pool.GetRootFolder()
    for folder in _list(root.GetSubFolderList()):
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
            info = {"FilePath": result["pattern"], "StartIndex": int(result["first_frame"]),
                    "EndIndex": int(result["last_frame"])}
            items = media_pool.ImportMedia([info])
        else:
            items = media_pool.ImportMedia([result["path"]])
    finally:
        if previous is not None:
            media_pool.SetCurrentFolder(previous)
    items = _list(items)
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

    def to_json(self) -> Dict[str, Any]:
        return {"clip": self.clip.name, "id": self.clip.id, "status": self.status, "reason": self.reason,
                "track": self.track, "record_frame": self.record_frame, "note": self.note,
                "result": self.result}


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
        if not lines:
            lines.append("Nothing to do.")
        return "\n".join(lines)

    def to_json(self) -> Dict[str, Any]:
        return {"track": self.track, "placed": [p.to_json() for p in self.placed],
                "failed": [p.to_json() for p in self.failed], "skipped": [asdict(s) for s in self.skipped],
                "text": self.text()}


def choose_track(timeline, source_track: int, target: Any = "new") -> int:
    """The video track to place on: a new one on top ("new"), or the given index (tracks added as needed)."""
    count = timeline.GetTrackCount("video") or 0
    if target in (None, "new", "auto"):
        if not timeline.AddTrack("video"):
            raise BridgeError("Resolve would not add a video track.")
        new_count = timeline.GetTrackCount("video") or 0
        if new_count <= count:
            raise BridgeError("Resolve did not add a video track.")
        return new_count
    index = int(target)
    if index <= source_track:
        raise BridgeError(f"V{index} is not above the source track V{source_track}; choose a higher track.")
    while count < index:
        if not timeline.AddTrack("video"):
            raise BridgeError("Resolve would not add a video track.")
        new_count = timeline.GetTrackCount("video") or 0
        if new_count <= count:
            raise BridgeError("Resolve did not add a video track.")
        count = new_count
    return index


def _why_not_placed(timeline, track: int, start: int, end: int) -> str:
    try:
        if timeline.GetIsTrackLocked("video", track):
            return f"V{track} is locked"
    except Exception:
        pass
    blockers = [it for it in _list(timeline.GetItemListInTrack("video", track))
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
    if not _same(current, timeline) and not project.SetCurrentTimeline(timeline):
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
        info = {"mediaPoolItem": mpi, "startFrame": 0, "endFrame": frames if exclusive else frames - 1,
                "mediaType": 1, "trackIndex": track, "recordFrame": record}
        media_pool.AppendToTimeline([info])  # its answer is not trusted: the track is re-read below
        landed = [it for it in _list(timeline.GetItemListInTrack("video", track))
                  if int(it.GetStart()) == record and _same(it.GetMediaPoolItem(), mpi)]
        p.track, p.record_frame = track, record
        if not landed:
            p.status, p.reason = "failed", _why_not_placed(timeline, track, record, record + expected)
            report.failed.append(p)
            log(f"  could not place {clip.name}: {p.reason}")
            continue
        got = int(landed[0].GetDuration())
        if abs(got - expected) > (0 if exact_fps(clip.clip_fps) == exact_fps(clip.timeline_fps) else 1):
            extra = f"placed {got} frames where the source item has {expected}"
            p.note = f"{p.note}; {extra}" if p.note else extra
        p.status = "placed"
        report.placed.append(p)
        log(f"  placed {clip.name} on V{track} at frame {record}")
    return report


# ------------------------------------------------------------ the engine
def params_hash(params: Dict[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def output_folder_for(clip: Clip, params: Dict[str, Any], root: Optional[str] = None) -> str:
    """One folder per source and parameter set: the engine resumes into it, never mixes settings."""
    stem = os.path.splitext(os.path.basename(clip.source.split("%")[0].rstrip("._-") or clip.name))[0] or "clip"
    base = root or os.environ.get(ENV_OUTPUT) or os.path.join(os.path.dirname(clip.source) or ".", "toon_ofx")
    return os.path.join(base, f"{stem}_{params_hash(params)}")


def config_path() -> str:
    try:
        from ..core.dirs import user_config_dir
        return os.path.join(user_config_dir(), CONFIG_NAME)
    except Exception:
        return os.path.join(os.path.expanduser("~"), ".config", "toon-ofx", CONFIG_NAME)


def read_config() -> Dict[str, Any]:
    try:
        with open(config_path(), encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def find_engine_python(explicit: Optional[str] = None) -> str:
    """The Python that has toon-ofx with torch and PySide6: argument, $TOON_OFX_PYTHON, config, installer."""
    for candidate, origin in ((explicit, "the installer"), (os.environ.get(ENV_PYTHON), f"${ENV_PYTHON}"),
                              (read_config().get("python"), config_path())):
        if not candidate:
            continue
        path = os.path.expanduser(str(candidate))
        if os.path.isfile(path) or shutil.which(path):
            return path
        raise BridgeError(f"the engine Python {path!r} (from {origin}) does not exist. Point {ENV_PYTHON} "
                          "at the Python where toon-ofx is installed, or re-run `toon-ofx install-resolve-script`.")
    checkout = os.path.dirname(package_dir())
    for guess in (os.path.join(checkout, ".venv", "bin", "python"),
                  os.path.join(checkout, ".venv", "Scripts", "python.exe")):
        if os.path.isfile(guess):
            return guess
    raise BridgeError(f"no engine Python configured. Set {ENV_PYTHON} to the Python where toon-ofx is installed "
                      "(for example ~/toon-ofx/.venv/bin/python), or run `toon-ofx install-resolve-script` "
                      "from that Python.")


def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment for the engine Python: without the variables Resolve sets for its own Python and Qt."""
    env = dict(os.environ)
    for key in ("PYTHONHOME", "PYTHONPATH", "PYTHONSTARTUP", "QT_PLUGIN_PATH", "QT_QPA_PLATFORM_PLUGIN_PATH",
                "QML2_IMPORT_PATH", "DYLD_LIBRARY_PATH", "DYLD_FRAMEWORK_PATH"):
        env.pop(key, None)
    if env.get("LD_LIBRARY_PATH") and "resolve" in env["LD_LIBRARY_PATH"].lower():
        env.pop("LD_LIBRARY_PATH")
    env.update(extra or {})
    return env


def write_json_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def clips_document(clips: Sequence[Clip], *, project: str, timeline: str, source_track: int, video_tracks: int,
                   skipped: Sequence[Skipped] = (), params: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """What the panel is given (clips.json)."""
    return {"version": EXCHANGE_VERSION, "host": "resolve", "project": project, "timeline": timeline,
            "source_track": source_track, "video_tracks": video_tracks,
            "clips": [c.to_json() for c in clips], "skipped": [asdict(s) for s in skipped],
            "params": params or {}}


def launch_panel(python: str, clips_json: str, result_json: str, *, wait: bool = True,
                 extra_args: Sequence[str] = ()) -> int:
    """Run the PySide6 panel with the engine's Python and wait for it to close."""
    cmd = [python, "-m", "toon_ofx.panel", "--clips", clips_json, "--result", result_json, *extra_args]
    try:
        proc = subprocess.Popen(cmd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise BridgeError(f"could not start the panel with {python}: {exc}") from None
    out, _ = proc.communicate()
    text = out.decode("utf-8", "replace") if out else ""
    if proc.returncode != 0 and not os.path.exists(result_json):
        if "No module named 'PySide6'" in text:
            raise BridgeError(f"the panel needs PySide6 in the engine Python {python}: "
                              "pip install 'toon-ofx[panel]' there.")
        if "No module named 'toon_ofx" in text:
            raise BridgeError(f"{python} has no toon-ofx installed; point {ENV_PYTHON} at the right Python.")
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise BridgeError(f"the panel exited with code {proc.returncode}:\n{tail}")
    return proc.returncode


def show_report(python: Optional[str], report_json: str) -> None:
    """Show the placement report in a small PySide6 dialog (fire and forget)."""
    if not python:
        return
    try:
        subprocess.Popen([python, "-m", "toon_ofx.panel", "--report", report_json], env=child_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        pass


def run_engine_direct(client, clips: Sequence[Clip], params: Dict[str, Any], *, output_root: Optional[str] = None,
                      output_kind: str = "sequence", log: Optional[Log] = None, poll: float = 0.5,
                      timeout: Optional[float] = None) -> List[Placement]:
    """Submit every clip to the engine process and wait; one Placement per clip."""
    log = log or (lambda message: None)
    placements = []
    for clip in clips:
        job = client.submit(clip.source, frames=[clip.first, clip.last], params=params,
                            output_folder=output_folder_for(clip, params, output_root), output_kind=output_kind)
        log(f"  submitted {clip.name}: frames {clip.first}-{clip.last} (job {job['id']})")
        placements.append((clip, job))
    out = []
    for clip, job in placements:
        def progress(j, name=clip.name):
            pr = j.get("progress") or {}
            log(f"  {name}: {pr.get('stage', j.get('state'))} {pr.get('frames_done', 0)}/{pr.get('frames_total', 0)}")
        job = client.wait(job["id"], poll=poll, callback=progress, timeout=timeout)
        out.append(placement_from_job(clip, job))
    return out


def placement_from_job(clip: Clip, job: Optional[Dict[str, Any]]) -> Placement:
    if not job:
        return Placement(clip, status="failed", reason="not rendered")
    state = job.get("state")
    if state == "done" and job.get("result"):
        return Placement(clip, result=job["result"], status="done")
    if state == "cancelled":
        return Placement(clip, status="cancelled", reason="cancelled")
    return Placement(clip, status="engine-failed", reason=job.get("error") or f"engine job ended {state}")


def placements_from_result_doc(clips: Sequence[Clip], doc: Dict[str, Any]) -> List[Placement]:
    by_id = {c.id: c for c in clips}
    out = []
    for entry in doc.get("results") or []:
        clip = by_id.get(entry.get("clip"))
        if clip is not None:
            out.append(placement_from_job(clip, entry.get("job")))
    return out


# ------------------------------------------------------------------ run
@dataclass
class Options:
    mode: str = "panel"                 # "panel" or "direct"
    track: Optional[int] = None         # source track; None = track under the playhead
    only_current: bool = False
    target: Any = "new"                 # "new" or a track index
    params: Dict[str, Any] = field(default_factory=dict)
    output_root: Optional[str] = None
    output_kind: str = "sequence"
    engine_python: Optional[str] = None
    workdir: Optional[str] = None
    bin_name: str = BIN_NAME
    show_report: bool = True
    panel_args: List[str] = field(default_factory=list)


def run(resolve, options: Options, *, client=None, panel: Optional[Callable[..., int]] = None,
        log: Optional[Log] = None) -> Report:
    """Read the timeline, render through the panel or the engine directly, import and place."""
    log = log or print
    pm = resolve.GetProjectManager()
    project = pm.GetCurrentProject() if pm is not None else None
    if project is None:
        raise BridgeError("no project is open in Resolve.")
    timeline = project.GetCurrentTimeline()
    if timeline is None:
        raise BridgeError("no timeline is open: open the timeline with the clips to toonify.")
    clips, skipped, source_track = collect_clips(timeline, track=options.track, only_current=options.only_current,
                                                 project=project)
    if not clips:
        report = Report(skipped=skipped)
        raise BridgeError(f"no clip with source media on V{source_track}.\n{report.text()}")
    log(f"Toon Faces: {len(clips)} clip(s) on V{source_track} of {timeline.GetName()!r}")
    target = options.target
    if options.mode == "panel":
        python = find_engine_python(options.engine_python)
        workdir = options.workdir or tempfile.mkdtemp(prefix="toon_ofx_resolve_")
        clips_json, result_json = os.path.join(workdir, "clips.json"), os.path.join(workdir, "result.json")
        write_json_atomic(clips_json, clips_document(
            clips, project=project.GetName(), timeline=timeline.GetName(), source_track=source_track,
            video_tracks=timeline.GetTrackCount("video") or 0, skipped=skipped, params=options.params))
        if panel is not None:
            panel(python, clips_json, result_json)
        else:
            launch_panel(python, clips_json, result_json, extra_args=options.panel_args)
        try:
            with open(result_json, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            log("Toon Faces: the panel closed without rendering; nothing placed.")
            return Report(skipped=skipped)
        placements = placements_from_result_doc(clips, doc)
        target = doc.get("target_track", target)
        if not placements:
            log("Toon Faces: nothing was rendered; nothing placed.")
            return Report(skipped=skipped)
    else:
        from ..core import params as schema

        params = schema.validate(options.params)
        if client is None:
            from ..client import EngineClient
            client = EngineClient.connect(python=find_engine_python(options.engine_python), start=True)
        placements = run_engine_direct(client, clips, params, output_root=options.output_root,
                                       output_kind=options.output_kind, log=log)
    report = place_results(resolve, project, timeline, placements, source_track=source_track, target=target,
                           bin_name=options.bin_name, log=log)
    report.skipped = list(skipped)
    log(report.text())
    if options.mode == "panel" and options.show_report and (report.failed or report.skipped or report.placed):
        path = os.path.join(options.workdir or tempfile.gettempdir(), f"toon_ofx_report_{os.getpid()}.json")
        write_json_atomic(path, report.to_json())
        show_report(find_engine_python(options.engine_python), path)
    return report


# --------------------------------------------------------- command line
def _param_value(text: str) -> Tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="Toon Faces", description="Toonify the faces of the clips on a Resolve "
                                "video track and place the result on a track above.")
    p.add_argument("--direct", action="store_true", help="no panel: submit with --set parameters and wait")
    p.add_argument("--track", type=int, help="source video track (default: the track under the playhead)")
    p.add_argument("--current", action="store_true", help="only the item under the playhead")
    p.add_argument("--target", default="new", help="'new' (a new track on top) or a track index above the source")
    p.add_argument("--set", dest="params", action="append", type=_param_value, default=[], metavar="NAME=VALUE",
                   help="an effect parameter (see `toon-ofx render --help`)")
    p.add_argument("--output-dir", help=f"where results go (default: a toon_ofx folder beside each source; "
                   f"${ENV_OUTPUT})")
    p.add_argument("--output-kind", choices=("sequence", "movie"), default="sequence")
    p.add_argument("--python", help=f"the engine Python (default ${ENV_PYTHON} or the installer's choice)")
    p.add_argument("--bin", default=BIN_NAME, help="Media Pool bin for the results")
    p.add_argument("--no-report", action="store_true", help="do not show the placement report window")
    p.add_argument("--panel-arg", dest="panel_args", action="append", default=[], help=argparse.SUPPRESS)
    return p


def options_from_args(args: argparse.Namespace, engine_python: Optional[str] = None) -> Options:
    target: Any = args.target
    if target not in ("new", "auto"):
        try:
            target = int(target)
        except ValueError:
            raise BridgeError(f"--target must be 'new' or a track number, got {target!r}") from None
    return Options(mode="direct" if args.direct else "panel", track=args.track, only_current=args.current,
                   target=target, params=dict(args.params), output_root=args.output_dir,
                   output_kind=args.output_kind, engine_python=args.python or engine_python, bin_name=args.bin,
                   show_report=not args.no_report, panel_args=list(args.panel_args))


def script_main(namespace: Optional[Dict[str, Any]] = None, *, engine_python: Optional[str] = None,
                argv: Optional[Sequence[str]] = None, log: Optional[Log] = None, client=None,
                panel: Optional[Callable[..., int]] = None) -> int:
    """Entry point of the Resolve script; returns an exit code and never raises for user errors."""
    log = log or print
    in_app = bool(namespace) and any(namespace.get(k) is not None for k in IN_APP_NAMES)
    if argv is None:
        argv = shlex.split(os.environ.get(ENV_ARGS, "")) if in_app else list(sys.argv[1:])
    try:
        args, unknown = build_parser().parse_known_args(list(argv))
    except SystemExit as exc:  # --help, or a bad option
        return int(exc.code or 0)
    try:
        options = options_from_args(args, engine_python)
        resolve = get_resolve(namespace, external=True)
        report = run(resolve, options, client=client, panel=panel, log=log)
    except BridgeError as exc:
        log(f"Toon Faces: {exc.message}")
        return 2
    except UserError as exc:  # a parameter out of range, a bad path
        log(f"Toon Faces: {exc.message}")
        return 2
    except Exception as exc:  # the engine client's errors, mostly: one line, not a traceback
        name = type(exc).__name__
        log(f"Toon Faces: {name}: {exc}")
        return 1
    return 0 if report.ok else 3


# ------------------------------------------------------------ installer
def scripts_dir(system: Optional[str] = None, *, all_users: bool = False, env: Optional[Dict[str, str]] = None,
                home: Optional[str] = None) -> str:
    """Resolve's Fusion/Scripts/Utility folder for this OS (README.txt, "Using a script")."""
    env = os.environ if env is None else env
    system = system or sys.platform
    home = home or os.path.expanduser("~")
    if system.startswith("win"):
        if all_users:
            base = env.get("PROGRAMDATA", r"C:\ProgramData") + r"\Blackmagic Design\DaVinci Resolve\Fusion\Scripts"
        else:
            appdata = env.get("APPDATA") or (home + r"\AppData\Roaming")
            base = appdata + r"\Blackmagic Design\DaVinci Resolve\Support\Fusion\Scripts"
        return base + r"\Utility"
    if system == "darwin":
        root = "/Library" if all_users else os.path.join(home, "Library")
        return os.path.join(root, "Application Support", "Blackmagic Design", "DaVinci Resolve", "Fusion",
                            "Scripts", "Utility")
    if all_users:
        return "/opt/resolve/Fusion/Scripts/Utility"
    return os.path.join(home, ".local", "share", "DaVinciResolve", "Fusion", "Scripts", "Utility")


SCRIPT_TEMPLATE = '''"""Toon Faces: toonify the faces of the clips on a DaVinci Resolve video track.

Workspace > Scripts > Utility > Toon Faces reads the clips on the track under the
playhead, opens the toon-ofx panel (parameters, preview, render, cancel), then
imports the results into a "Toon" Media Pool bin and places them on a new video
track above the source, at the same record frames.

Installed by `toon-ofx install-resolve-script` (or `python resolve_scripts/install.py`).
From a terminal (external scripting): python "Toon Faces.py" [--direct --set steps=200 ...]
"""
import os
import sys

TOON_OFX_LIB = {lib!r}  # folder holding the toon_ofx client package
TOON_OFX_PYTHON = {python!r}  # the Python with toon-ofx, torch and PySide6 (the engine)


def _find_lib():
    here = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
    for folder in (os.environ.get("TOON_OFX_LIB"), TOON_OFX_LIB, os.path.dirname(here)):
        if folder and os.path.isfile(os.path.join(folder, "toon_ofx", "hosts", "resolve.py")):
            return folder
    return None


_lib = _find_lib()
if _lib is None:
    print("Toon Faces: the toon-ofx client files are missing; run `toon-ofx install-resolve-script` again.")
else:
    if _lib not in sys.path:
        sys.path.insert(0, _lib)
    from toon_ofx.hosts import resolve as resolve_bridge

    _code = resolve_bridge.script_main(globals(), engine_python=TOON_OFX_PYTHON)
    if __name__ == "__main__" and not any(globals().get(k) for k in resolve_bridge.IN_APP_NAMES):
        sys.exit(_code)
'''


def render_script(lib: Optional[str] = None, python: Optional[str] = None) -> str:
    return SCRIPT_TEMPLATE.format(lib=lib, python=python)


def package_dir() -> str:
    """The toon_ofx package folder this module belongs to."""
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def install(dest: Optional[str] = None, *, all_users: bool = False, python: Optional[str] = None,
            lib_dir: Optional[str] = None, link: bool = False, dry_run: bool = False,
            log: Optional[Log] = None) -> List[str]:
    """Copy the script into Resolve's Scripts/Utility folder, with the client vendored beside nothing visible.

    The client files go to `lib_dir` (default: <user data dir>/resolve-lib), outside Resolve's Scripts
    folder (Resolve lists every .py there as a menu entry). With `link`, the script points at this
    package's own folder instead (a development checkout).
    """
    log = log or print
    dest = dest or scripts_dir(all_users=all_users)
    python = python or sys.executable
    written: List[str] = []
    if link:
        lib = os.path.dirname(package_dir())
    else:
        if lib_dir is None:
            try:
                from ..core.dirs import user_data_dir
                lib_dir = os.path.join(user_data_dir(), "resolve-lib")
            except Exception:
                lib_dir = os.path.join(os.path.expanduser("~"), ".toon-ofx", "resolve-lib")
        lib = lib_dir
        target_pkg = os.path.join(lib, "toon_ofx")
        from .. import vendor

        for name in vendor.closure(vendor.RESOLVE_ROOTS):
            src = os.path.join(package_dir(), *name.split("/"))
            dst = os.path.join(target_pkg, *name.split("/"))
            if not dry_run:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)
            written.append(dst)
    script = os.path.join(dest, SCRIPT_NAME)
    if not dry_run:
        os.makedirs(dest, exist_ok=True)
        tmp = script + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(render_script(lib, python))
        os.replace(tmp, script)
    written.append(script)
    log(("would write " if dry_run else "wrote ") + script)
    log(f"  engine Python: {python}")
    log(f"  client files:  {lib}")
    log("Restart Resolve (it lists scripts at start-up), then: Workspace > Scripts > Utility > Toon Faces.")
    return written


def uninstall(dest: Optional[str] = None, *, all_users: bool = False, log: Optional[Log] = None) -> List[str]:
    log = log or print
    dest = dest or scripts_dir(all_users=all_users)
    script = os.path.join(dest, SCRIPT_NAME)
    removed = []
    if os.path.exists(script):
        os.remove(script)
        removed.append(script)
        log(f"removed {script}")
    else:
        log(f"nothing to remove at {script}")
    return removed


def add_install_parser(sub) -> None:
    """`toon-ofx install-resolve-script` (wired into cli.py by the lead)."""
    p = sub.add_parser("install-resolve-script", help="install the DaVinci Resolve script (Workspace > Scripts)",
                       description="Copy 'Toon Faces.py' into Resolve's Fusion/Scripts/Utility folder.")
    add_install_options(p)


def add_install_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", help="Scripts/Utility folder (default: the per-user one for this OS)")
    p.add_argument("--all-users", action="store_true", help="the all-users Scripts folder (needs admin rights)")
    p.add_argument("--python", help="the engine Python the script starts (default: this Python)")
    p.add_argument("--lib-dir", help="where the client files are copied (default: <user data dir>/resolve-lib)")
    p.add_argument("--link", action="store_true", help="point at this checkout instead of copying the client")
    p.add_argument("--dry-run", action="store_true", help="say what would be written")
    p.add_argument("--uninstall", action="store_true", help="remove the script")


def run_install(args: argparse.Namespace) -> int:
    if args.uninstall:
        uninstall(args.dest, all_users=args.all_users)
        return 0
    try:
        install(args.dest, all_users=args.all_users, python=args.python, lib_dir=args.lib_dir, link=args.link,
                dry_run=args.dry_run)
    except OSError as exc:
        print(f"toon-ofx: error: could not install the Resolve script: {exc}", file=sys.stderr)
        return 2
    return 0
