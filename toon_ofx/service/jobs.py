"""The engine process's job model: strict request checks, a durable SQLite queue, one worker per device.

A job is one render of one source clip (a frame range, one parameter set) into
one output: an image sequence named by SOURCE frame numbers, or a movie encoded
from such a sequence. The queue lives in SQLite (WAL) in the user's data folder,
so it survives a crash: on start, jobs left "running" go back to "queued" and
are run again; the renderer skips frames that are already on disk (each frame
is written atomically), so a resumed job neither loses nor re-renders a frame.

Outputs are never overwritten: a new job whose output name is taken (by a file
on disk or by any earlier job) gets a unique name, or 409 when the caller chose
the name. Source media is only ever read.

Standard library only at import time (the CLI imports the server, which imports
this); the renderer, media probing and torch are imported lazily.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..core.errors import Cancelled, UserError
from ..core.params import ParamError, validate

log = logging.getLogger("toon_ofx.service.jobs")

STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset(("done", "failed", "cancelled"))
OUTPUT_KINDS = ("sequence", "movie")
REQUEST_FIELDS = ("source", "frames", "params", "output")
OUTPUT_FIELDS = ("folder", "kind", "name")
FRAME_DIGITS = 6
MAX_CRASHES = 3           # a job the engine died during this many times is failed, not retried forever
SCHEMA_VERSION = 1


class RequestError(UserError):
    """Bad request content; `http_status` says which 4xx."""

    def __init__(self, message: str, field: Optional[str] = None, status: int = 400):
        super().__init__(message, field=field)
        self.http_status = status


class Conflict(RequestError):
    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message, field=field, status=409)


class NotFound(RequestError):
    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message, field=field, status=404)


# --------------------------------------------------------------------------- media and devices

@dataclass
class SourceInfo:
    frame_count: int
    fps: Optional[float]


def probe_source(path: str, field_name: str = "source") -> SourceInfo:
    """Frame count and rate of a movie or image sequence; UserError naming `field_name` if not media."""
    try:
        from ..core import media  # ffmpeg-based; may be missing in a trimmed install
    except ImportError:
        media = None
    if media is not None:
        try:
            info = media.probe(Path(path))
        except UserError as exc:
            raise RequestError(exc.message, field=field_name) from None
        except (OSError, ValueError) as exc:
            raise RequestError(f"{path} is not a readable video or image sequence ({exc})", field=field_name) from None
        fps = getattr(info, "fps", None)
        return SourceInfo(int(info.frame_count), float(fps) if fps else None)
    return _ffprobe(path, field_name)


def _ffprobe(path: str, field_name: str) -> SourceInfo:  # fallback while toon_ofx.core.media is unavailable
    if os.path.isdir(path):
        frames = sorted(e for e in os.listdir(path) if e.lower().endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr")))
        if not frames:
            raise RequestError(f"{path} is a folder with no image frames", field=field_name)
        return SourceInfo(len(frames), None)
    exe = shutil.which("ffprobe")
    if exe is None:
        raise RequestError("cannot check the source: ffprobe is not installed", field=field_name)
    cmd = [exe, "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
           "stream=nb_read_packets,avg_frame_rate,r_frame_rate", "-of", "json", path]
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=60, check=False)
        streams = json.loads(out.stdout or b"{}").get("streams") or []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        streams = []
    if not streams:
        raise RequestError(f"{path} is not a video or image file", field=field_name)
    s = streams[0]
    count = int(s.get("nb_read_packets") or 0)
    if count <= 0:
        raise RequestError(f"{path} has no video frames", field=field_name)
    fps = None
    for key in ("avg_frame_rate", "r_frame_rate"):
        num, _, den = str(s.get(key) or "0/0").partition("/")
        try:
            if float(den or 1):
                fps = float(num) / float(den or 1)
                break
        except ValueError:
            pass
    return SourceInfo(count, fps)


_DEVICE_CACHE: Dict[str, str] = {}


def normalize_device(name: str) -> str:
    """The device as stored with a job: "auto", "cpu", "mps" or "cuda:N"."""
    return "cuda:0" if name == "cuda" else name


def check_device(name: str) -> str:
    """`normalize_device`, and a 422 now for a CUDA device this machine lacks (imports torch only then)."""
    name = normalize_device(name)
    if name.startswith("cuda:"):
        resolve_device(name)
    return name


def resolve_device(name: str) -> str:
    """The device a job really runs on ("auto" is resolved once; imports torch unless cpu/mps)."""
    name = normalize_device(name)
    if name in ("cpu", "mps"):
        return name
    if name in _DEVICE_CACHE:
        return _DEVICE_CACHE[name]
    try:
        import torch
    except ImportError:  # no engine here: whatever renders will say so
        torch = None
    if name == "auto":
        resolved = "cpu"
        if torch is not None and torch.cuda.is_available():
            resolved = "cuda:0"
        elif torch is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            resolved = "mps"
    else:  # cuda:N
        if torch is None or not torch.cuda.is_available():
            raise RequestError(f"device {name!r} asked for, but this machine has no CUDA GPU",
                               field="params.device", status=422)
        if int(name[5:]) >= torch.cuda.device_count():
            raise RequestError(f"device {name!r} does not exist (this machine has {torch.cuda.device_count()} GPU(s))",
                               field="params.device", status=422)
        resolved = name
    _DEVICE_CACHE[name] = resolved
    return resolved


# --------------------------------------------------------------------------- output folders

def _norm(path: str) -> str:
    return os.path.normcase(os.path.normpath(path))


def _inside(path: str, folder: str) -> bool:
    """True when `path` is `folder` or below it (both normalised)."""
    path, folder = _norm(path), _norm(folder)
    if path == folder:
        return True
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def system_folders() -> Tuple[List[str], List[str]]:
    """(folders nothing may be written inside, folders nothing may be written directly into)."""
    if sys.platform == "win32":  # pragma: no cover - Windows only
        env = os.environ
        inside = [env.get("SystemRoot") or env.get("windir") or r"C:\Windows",
                  env.get("ProgramFiles") or r"C:\Program Files",
                  env.get("ProgramFiles(x86)") or r"C:\Program Files (x86)",
                  env.get("ProgramW6432") or r"C:\Program Files",
                  env.get("ProgramData") or r"C:\ProgramData"]
        exact = [f"{d}:\\" for d in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"] + [r"C:\Users"]
        return inside, exact
    inside = ["/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/run",
              "/sbin", "/sys", "/usr", "/var/lib", "/var/log", "/var/cache", "/var/spool", "/var/run",
              "/System", "/Library", "/private/etc", "/private/var/db", "/private/var/log", "/cores"]
    exact = ["/", "/var", "/home", "/Users", "/Volumes", "/private", "/private/var", "/opt", "/srv",
             "/mnt", "/media", "/root", "/snap", "/Applications", "/Network"]
    return inside, exact


def is_system_folder(folder: str) -> bool:
    inside, exact = system_folders()
    for candidate in {os.path.abspath(folder), os.path.realpath(folder)}:
        if any(_inside(candidate, s) for s in inside):
            return True
        if any(_norm(candidate) == _norm(s) for s in exact):
            return True
    return False


_BAD_NAME_CHARS = set('<>:"/\\|?*%#') | {chr(c) for c in range(32)}
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


def check_name(name: Any) -> str:
    """An output stem chosen by the caller: a plain file name without extension."""
    if not isinstance(name, str):
        raise RequestError("output.name must be a string (a file name without folder or extension)",
                           field="output.name")
    if not name or name in (".", "..") or name.startswith(".") or name != name.strip() or name.endswith("."):
        raise RequestError(f"output.name {name!r} is not a usable file name", field="output.name")
    bad = sorted(set(name) & _BAD_NAME_CHARS)
    if bad:
        raise RequestError(f"output.name must not contain {' '.join(repr(c) for c in bad)}", field="output.name")
    if len(name) > 150:
        raise RequestError("output.name is longer than 150 characters", field="output.name")
    if name.split(".")[0].lower() in _WINDOWS_RESERVED:
        raise RequestError(f"output.name {name!r} is a reserved device name on Windows", field="output.name")
    return name


def _is_sequence_source(source: str) -> bool:
    return os.path.isdir(source) or "%" in os.path.basename(source) or "#" in os.path.basename(source) or \
        source.lower().endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".dpx"))


def check_output_folder(folder: Any, source: str) -> str:
    """An absolute, writable, non-system folder that cannot hold or overwrite the source."""
    if not isinstance(folder, str) or not folder.strip():
        raise RequestError("output.folder must be a folder path", field="output.folder")
    if "\x00" in folder:
        raise RequestError("output.folder contains a NUL character", field="output.folder")
    if not os.path.isabs(folder):
        raise RequestError(f"output.folder must be an absolute path, got {folder!r}", field="output.folder")
    folder = os.path.normpath(folder)
    real = os.path.realpath(folder)
    real_source = os.path.realpath(source)
    if _norm(real) == _norm(real_source):
        raise RequestError("output.folder is the source itself; the source is never written to",
                           field="output.folder")
    if is_system_folder(folder):
        raise RequestError(f"output.folder {folder} is a system folder; choose a folder of your own",
                           field="output.folder")
    if os.path.isdir(real_source) and _inside(real, real_source):
        raise RequestError("output.folder is inside the source image-sequence folder; "
                           "the source is never written to", field="output.folder")
    if _is_sequence_source(source) and not os.path.isdir(real_source) and \
            _norm(real) == _norm(os.path.dirname(real_source)):
        raise RequestError("output.folder is the folder of the source image sequence; "
                           "choose another folder so source frames cannot be touched", field="output.folder")
    if os.path.exists(real) and not os.path.isdir(real):
        raise RequestError(f"output.folder {folder} exists and is not a folder", field="output.folder")
    return folder


def ensure_folder(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise RequestError(f"cannot create output.folder {folder}: {exc.strerror or exc}",
                           field="output.folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RequestError(f"output.folder {folder} is not writable", field="output.folder")


# --------------------------------------------------------------------------- requests

@dataclass
class JobSpec:
    """A checked submission: everything a job needs except its id and final output name."""

    source: str
    frames: Tuple[int, int]
    params: Dict[str, Any]
    kind: str
    folder: str
    stem: str
    explicit_name: bool
    device: str
    fps: Optional[float] = None
    frame_count: int = 0

    @property
    def movie_suffix(self) -> str:
        return ".mov" if self.params.get("output_kind") == "overlay" else ".mp4"

    def output_for(self, stem: str, work_root: Optional[Path], job_id: str) -> Dict[str, Any]:
        folder = self.folder
        if self.kind == "sequence":
            pattern = os.path.join(folder, f"{stem}.%0{FRAME_DIGITS}d.png")
            return {"folder": folder, "kind": "sequence", "name": stem, "path": folder, "pattern": pattern,
                    "work_dir": None}
        work = str(Path(work_root) / job_id) if work_root is not None else None
        return {"folder": folder, "kind": "movie", "name": stem, "path": os.path.join(folder, stem + self.movie_suffix),
                "pattern": None, "work_dir": work}


def _strict_object(value: Any, what: str, allowed: Tuple[str, ...], prefix: str = "") -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be a JSON object", field=prefix.rstrip(".") or None)
    for key in value:
        if key not in allowed:
            raise RequestError(f"unknown field {prefix}{key!r}; allowed: {', '.join(allowed)}",
                               field=f"{prefix}{key}")
    return value


def check_source(source: Any, field_name: str = "source") -> Tuple[str, SourceInfo]:
    if source is None:
        raise RequestError(f"{field_name} is required", field=field_name)
    if not isinstance(source, str) or not source.strip():
        raise RequestError(f"{field_name} must be a file path", field=field_name)
    if "\x00" in source:
        raise RequestError(f"{field_name} contains a NUL character", field=field_name)
    if not os.path.isabs(source):
        raise RequestError(f"{field_name} must be an absolute path (the engine's working folder is not yours), "
                           f"got {source!r}", field=field_name)
    source = os.path.normpath(source)
    pattern = "%" in os.path.basename(source) or "#" in os.path.basename(source)  # an image-sequence pattern
    if not pattern and not os.path.exists(source):
        raise RequestError(f"{field_name} {source} does not exist", field=field_name)
    if not pattern and not os.access(source, os.R_OK):
        raise RequestError(f"{field_name} {source} is not readable", field=field_name)
    return source, probe_source(source, field_name)


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise RequestError(f"{name} must be an integer, got {value!r}", field=name)
    return int(value)


def check_frames(frames: Any, frame_count: int) -> Tuple[int, int]:
    if frame_count <= 0:
        raise RequestError("the source has no frames", field="source")
    if frames is None:
        return 0, frame_count - 1
    if not isinstance(frames, (list, tuple)) or len(frames) != 2:
        raise RequestError("frames must be [first, last] (inclusive, 0-based) or null", field="frames")
    first, last = (_check_int(v, "frames") for v in frames)
    if first < 0 or last < first or last >= frame_count:
        raise RequestError(f"frame range {first}-{last} is outside the clip (frames 0-{frame_count - 1})",
                           field="frames", status=422)
    return first, last


def check_params(params: Any) -> Dict[str, Any]:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError("params must be a JSON object", field="params")
    try:
        return validate(params)
    except ParamError as exc:
        raise RequestError(exc.message, field=f"params.{exc.field}", status=422) from None


def check_models(params: Mapping[str, Any]) -> None:
    """422 now (not a failed job later) when `model` or `base_model` is neither a file nor an installed model."""
    try:
        from ..core import model_store
    except ImportError:  # pragma: no cover - trimmed install: the renderer will say what is missing
        return
    for name in ("base_model", "model"):
        try:
            model_store.resolve(params[name])
        except UserError as exc:
            raise RequestError(exc.message, field=f"params.{name}", status=422) from None


def parse_submission(body: Any, *, device_check: Callable[[str], str] = check_device,
                     default_folder: Optional[str] = None) -> JobSpec:
    """Check a POST /v1/jobs body field by field; RequestError names the first bad field."""
    body = _strict_object(body, "the request body", REQUEST_FIELDS)
    source, info = check_source(body.get("source"))
    frames = check_frames(body.get("frames"), info.frame_count)
    params = check_params(body.get("params"))
    output = body.get("output")
    if output is None:
        output = {}
    output = _strict_object(output, "output", OUTPUT_FIELDS, "output.")
    kind = output.get("kind", "sequence")
    if kind is None:
        kind = "sequence"
    if kind not in OUTPUT_KINDS:
        raise RequestError(f"output.kind must be one of {', '.join(OUTPUT_KINDS)}; got {kind!r}", field="output.kind")
    folder = output.get("folder")
    if folder is None:
        if default_folder is None:
            raise RequestError("output.folder is required", field="output.folder")
        folder = default_folder
    folder = check_output_folder(folder, source)
    explicit = output.get("name") is not None
    stem = check_name(output["name"]) if explicit else _default_stem(source)
    device = device_check(params["device"])
    spec = JobSpec(source=source, frames=frames, params=params, kind=kind, folder=folder, stem=stem,
                   explicit_name=explicit, device=device, fps=info.fps, frame_count=info.frame_count)
    target = spec.output_for(stem, None, "x")["path"]
    if kind == "movie" and _norm(os.path.realpath(target)) == _norm(os.path.realpath(source)):
        raise RequestError("the output movie would be the source file; the source is never written to",
                           field="output.name")
    return spec


def _default_stem(source: str) -> str:
    base = os.path.basename(source.rstrip("/\\")) or "clip"
    stem = base.split("%")[0].split("#")[0].rstrip("._-") if ("%" in base or "#" in base) else os.path.splitext(base)[0]
    stem = "".join("_" if c in _BAD_NAME_CHARS else c for c in stem).strip(" .") or "clip"
    return (stem[:120] + "_toon")


def parse_preview(body: Any) -> Tuple[str, int, Dict[str, Any]]:
    """Check a POST /v1/preview body: (source, frame, params)."""
    body = _strict_object(body, "the request body", ("source", "frame", "params"))
    source, info = check_source(body.get("source"))
    frame = body.get("frame", 0)
    if frame is None:
        frame = 0
    frame = _check_int(frame, "frame")
    if not 0 <= frame < info.frame_count:
        raise RequestError(f"frame {frame} is outside the clip (frames 0-{info.frame_count - 1})",
                           field="frame", status=422)
    return source, frame, check_params(body.get("params"))


# --------------------------------------------------------------------------- the store

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    device TEXT NOT NULL,
    source TEXT NOT NULL,
    first_frame INTEGER NOT NULL,
    last_frame INTEGER NOT NULL,
    fps REAL,
    params TEXT NOT NULL,
    output TEXT NOT NULL,
    out_key TEXT NOT NULL,
    progress TEXT NOT NULL,
    error TEXT,
    result TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    crashes INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs(state, device, seq);
CREATE INDEX IF NOT EXISTS jobs_out ON jobs(out_key);
"""


def _out_key(folder: str, stem: str) -> str:
    return _norm(os.path.realpath(folder)) + "\x00" + os.path.normcase(stem)


class JobStore:
    """Jobs in SQLite (WAL). One connection, serialised by a lock; every change is one transaction."""

    def __init__(self, path: Path, work_root: Optional[Path] = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.work_root = Path(work_root) if work_root is not None else self.path.parent / "work"
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UserError(f"{self.path} was written by a newer toon-ofx (schema {version}); "
                                "upgrade toon-ofx or use another data folder")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- helpers
    def _tx(self):
        return _Transaction(self._db, self._lock)

    @staticmethod
    def to_dict(row: sqlite3.Row) -> Dict[str, Any]:
        output = json.loads(row["output"])
        return {
            "id": row["id"],
            "state": row["state"],
            "source": row["source"],
            "frames": [row["first_frame"], row["last_frame"]],
            "params": json.loads(row["params"]),
            "output": {k: output.get(k) for k in ("folder", "kind", "name", "path", "pattern")},
            "progress": json.loads(row["progress"]),
            "error": row["error"],
            "result": json.loads(row["result"]) if row["result"] else None,
            "device": row["device"],
            "cancel_requested": bool(row["cancel_requested"]),
            "attempts": row["attempts"],
            "created": row["created"],
            "updated": row["updated"],
            "started": row["started"],
            "finished": row["finished"],
        }

    def _row(self, job_id: str) -> Optional[sqlite3.Row]:
        return self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()

    def row(self, job_id: str) -> Optional[sqlite3.Row]:
        with self._lock:
            return self._row(job_id)

    # -- queries
    def get(self, job_id: str) -> Optional[Dict[str, Any]]:
        with self._lock:
            row = self._row(job_id)
        return self.to_dict(row) if row is not None else None

    def list(self, state: Optional[str] = None) -> List[Dict[str, Any]]:
        with self._lock:
            if state:
                rows = self._db.execute("SELECT * FROM jobs WHERE state=? ORDER BY seq", (state,)).fetchall()
            else:
                rows = self._db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
        return [self.to_dict(r) for r in rows]

    def devices_with_queued(self) -> List[str]:
        """The (requested) devices that have queued jobs."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT device FROM jobs WHERE state='queued'")]

    # -- changes
    def _name_taken(self, folder: str, stem: str) -> bool:
        if self._db.execute("SELECT 1 FROM jobs WHERE out_key=? LIMIT 1", (_out_key(folder, stem),)).fetchone():
            return True
        try:
            entries = os.listdir(folder)
        except OSError:
            return False
        key = os.path.normcase(stem)
        for entry in entries:
            e = os.path.normcase(entry)
            if e == key or e.startswith(key + ".") or e.startswith("." + key + "."):
                return True
        return False

    def add(self, spec: JobSpec) -> Dict[str, Any]:
        """Queue `spec` under a fresh id; its output name is made unique (or 409 when chosen by the caller)."""
        with self._tx():
            stem = spec.stem
            if self._name_taken(spec.folder, stem):
                if spec.explicit_name:
                    raise Conflict(f"output name {stem!r} is already used in {spec.folder} (by a file or "
                                   "another job); finished outputs are never overwritten: choose another name",
                                   field="output.name")
                n = 2
                while self._name_taken(spec.folder, f"{stem}_{n}"):
                    n += 1
                stem = f"{stem}_{n}"
            job_id = secrets.token_hex(6)
            while self._row(job_id) is not None:  # pragma: no cover - 48 random bits
                job_id = secrets.token_hex(6)
            output = spec.output_for(stem, self.work_root, job_id)
            now = time.time()
            total = spec.frames[1] - spec.frames[0] + 1
            progress = {"frames_done": 0, "frames_total": total, "stage": "queued", "eta_seconds": None, "faces": 0}
            self._db.execute(
                "INSERT INTO jobs (id, state, device, source, first_frame, last_frame, fps, params, output, out_key,"
                " progress, created, updated) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, spec.device, spec.source, spec.frames[0], spec.frames[1], spec.fps,
                 json.dumps(spec.params), json.dumps(output), _out_key(spec.folder, stem), json.dumps(progress),
                 now, now))
            return self.to_dict(self._row(job_id))

    def recover(self) -> List[str]:
        """After a restart: jobs left running go back to the queue (or end, if cancelled or retried too often)."""
        resumed = []
        now = time.time()
        with self._tx():
            for row in self._db.execute("SELECT * FROM jobs WHERE state='running'").fetchall():
                if row["cancel_requested"]:
                    self._set_state(row["id"], "cancelled", now, error=None, finished=now)
                elif row["crashes"] + 1 >= MAX_CRASHES:
                    self._set_state(row["id"], "failed", now, finished=now, crashes=row["crashes"] + 1,
                                    error=f"the engine died during this job {row['crashes'] + 1} times; giving up "
                                          "(see the engine's log); finished frames are kept")
                else:
                    progress = json.loads(row["progress"])
                    progress.update(stage="queued", eta_seconds=None)
                    self._db.execute("UPDATE jobs SET state='queued', progress=?, crashes=crashes+1, updated=? "
                                     "WHERE id=?", (json.dumps(progress), now, row["id"]))
                    resumed.append(row["id"])
        return resumed

    def claim_next(self, devices: Any) -> Optional[sqlite3.Row]:
        """The oldest queued job asking for one of `devices`, now marked running (attempts + 1)."""
        devices = [devices] if isinstance(devices, str) else sorted(devices)
        if not devices:
            return None
        with self._tx():
            marks = ",".join("?" * len(devices))
            row = self._db.execute(f"SELECT * FROM jobs WHERE state='queued' AND device IN ({marks}) "
                                   "ORDER BY seq LIMIT 1", devices).fetchone()
            if row is None:
                return None
            now = time.time()
            progress = json.loads(row["progress"])
            progress.update(stage="starting", eta_seconds=None)
            self._db.execute("UPDATE jobs SET state='running', attempts=attempts+1, started=COALESCE(started, ?),"
                             " updated=?, progress=? WHERE id=?", (now, now, json.dumps(progress), row["id"]))
            return self._row(row["id"])

    def set_progress(self, job_id: str, progress: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET progress=?, updated=? WHERE id=? AND state='running'",
                             (json.dumps(dict(progress)), time.time(), job_id))

    def _set_state(self, job_id: str, state: str, now: float, **extra: Any) -> None:
        sets, values = ["state=?", "updated=?"], [state, now]
        for key, value in extra.items():
            sets.append(f"{key}=?")
            values.append(json.dumps(value) if key in ("result", "progress") and value is not None else value)
        self._db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?", (*values, job_id))

    def finish(self, job_id: str, state: str, *, error: Optional[str] = None,
               result: Optional[Dict[str, Any]] = None, progress: Optional[Dict[str, Any]] = None) -> None:
        assert state in TERMINAL or state == "queued"
        now = time.time()
        with self._tx():
            extra: Dict[str, Any] = {"error": error}
            if state in TERMINAL:
                extra["finished"] = now
            if result is not None:
                extra["result"] = result
            if progress is not None:
                extra["progress"] = progress
            self._set_state(job_id, state, now, **extra)

    def fail_queued(self, device: str, error: str) -> List[str]:
        """Fail every queued job that asks for `device` (it does not exist here)."""
        now = time.time()
        with self._tx():
            ids = [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE state='queued' AND device=?", (device,))]
            for job_id in ids:
                self._set_state(job_id, "failed", now, finished=now, error=error)
        return ids

    def request_cancel(self, job_id: str) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        """Queued -> cancelled now; running -> flagged (the worker stops it). Returns (previous state, job)."""
        with self._tx():
            row = self._row(job_id)
            if row is None:
                return None, None
            now = time.time()
            if row["state"] == "queued":
                progress = json.loads(row["progress"])
                progress.update(stage="cancelled", eta_seconds=None)
                self._set_state(job_id, "cancelled", now, finished=now, progress=progress, cancel_requested=1)
            elif row["state"] == "running":
                self._db.execute("UPDATE jobs SET cancel_requested=1, updated=? WHERE id=?", (now, job_id))
            return row["state"], self.to_dict(self._row(job_id))


class _Transaction:
    def __init__(self, db: sqlite3.Connection, lock: threading.RLock):
        self.db, self.lock = db, lock

    def __enter__(self):
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self.lock.release()
        return False


# --------------------------------------------------------------------------- running jobs

@dataclass
class _FallbackRenderRequest:
    """Same fields as toon_ofx.core.render.RenderRequest (used only if the renderer cannot be imported)."""

    source: Path
    output: Path
    params: Dict[str, Any] = field(default_factory=dict)
    frames: Optional[Tuple[int, int]] = None
    warmup: int = 0
    work_dir: Optional[Path] = None
    keep_frames: bool = False
    bits: int = 8


def _default_render(request, progress=None, cancel=None):
    from ..core.render import render

    return render(request, progress=progress, cancel=cancel)


def _request_class():
    try:
        from ..core.render import RenderRequest
        return RenderRequest
    except ImportError:
        return _FallbackRenderRequest


def _event_dict(event: Any) -> Dict[str, Any]:
    if isinstance(event, Mapping):
        return dict(event)
    return {k: getattr(event, k, None) for k in ("stage", "frames_done", "frames_total", "faces", "eta_seconds")}


class JobQueue:
    """Runs queued jobs: one worker thread per device, one job at a time on each, oldest first.

    Jobs keep the device they asked for ("auto", "cpu", "cuda:0", ...); `device_resolver` maps that to the
    real device (it may import torch, so it runs in a background thread, never in a request), and the
    worker of a real device takes jobs for every name that resolves to it.
    """

    def __init__(self, store: JobStore, render_fn: Optional[Callable] = None, progress_interval: float = 0.1,
                 device_resolver: Callable[[str], str] = resolve_device):
        self.store = store
        self.render_fn = render_fn or _default_render
        self.progress_interval = progress_interval
        self.device_resolver = device_resolver
        self._cond = threading.Condition()
        self._workers: Dict[str, threading.Thread] = {}
        self._serves: Dict[str, set] = {}       # real device -> requested device names
        self._resolved: Dict[str, str] = {}     # requested device name -> real device
        self._resolving: set = set()
        self._cancel: Dict[str, threading.Event] = {}
        self._shutdown_cancel: set = set()
        self._stopping = False

    # -- lifecycle
    def start(self) -> List[str]:
        resumed = self.store.recover()
        if resumed:
            log.info("resuming %d interrupted job(s): %s", len(resumed), ", ".join(resumed))
        for device in self.store.devices_with_queued():
            self._ensure_worker(device)
        return resumed

    def stop(self, timeout: float = 10.0) -> None:
        """Stop workers; a running job is interrupted between frames and left queued (it resumes next start)."""
        with self._cond:
            self._stopping = True
            for job_id, event in self._cancel.items():
                self._shutdown_cancel.add(job_id)
                event.set()
            self._cond.notify_all()
            workers = list(self._workers.values())
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    # -- API
    def submit(self, spec: JobSpec) -> Dict[str, Any]:
        job = self.store.add(spec)
        self._ensure_worker(spec.device)
        with self._cond:
            self._cond.notify_all()
        return job

    def cancel(self, job_id: str, wait: float = 2.0) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        previous, job = self.store.request_cancel(job_id)
        if previous == "running":
            with self._cond:
                event = self._cancel.get(job_id)
                if event is not None:
                    event.set()
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                job = self.store.get(job_id)
                if job is None or job["state"] != "running":
                    break
                time.sleep(0.05)
        return previous, job

    def running(self) -> List[str]:
        with self._cond:
            return list(self._cancel)

    # -- workers
    def _ensure_worker(self, requested: str) -> None:
        with self._cond:
            if self._stopping:
                return
            device = self._resolved.get(requested)
            if device is None:
                if requested not in self._resolving:
                    self._resolving.add(requested)
                    threading.Thread(target=self._resolve, args=(requested,), name=f"toon-ofx-resolve-{requested}",
                                     daemon=True).start()
                return
            worker = self._workers.get(device)
            if worker is None or not worker.is_alive():
                worker = threading.Thread(target=self._work, args=(device,), name=f"toon-ofx-worker-{device}",
                                          daemon=True)
                self._workers[device] = worker
                worker.start()

    def _resolve(self, requested: str) -> None:
        try:
            device = self.device_resolver(requested)
        except UserError as exc:
            with self._cond:
                self._resolving.discard(requested)
            failed = self.store.fail_queued(requested, exc.message)
            log.warning("device %s is not available: %s (%d job(s) failed)", requested, exc.message, len(failed))
            return
        except Exception as exc:  # pragma: no cover - torch trouble
            log.exception("cannot resolve device %s", requested)
            with self._cond:
                self._resolving.discard(requested)
            self.store.fail_queued(requested, f"cannot use device {requested}: {exc}")
            return
        with self._cond:
            self._resolving.discard(requested)
            self._resolved[requested] = device
            self._serves.setdefault(device, set()).add(requested)
        self._ensure_worker(requested)
        with self._cond:
            self._cond.notify_all()

    def _work(self, device: str) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                names = set(self._serves.get(device, ()))
            try:
                row = self.store.claim_next(names)
            except Exception:  # pragma: no cover - database trouble: keep the worker alive
                log.exception("cannot read the job queue")
                row = None
                time.sleep(1.0)
            if row is None:
                with self._cond:
                    if self._stopping:
                        return
                    self._cond.wait(timeout=1.0)
                continue
            event = threading.Event()
            with self._cond:
                self._cancel[row["id"]] = event
                if self._stopping:
                    self._shutdown_cancel.add(row["id"])
                    event.set()
            try:
                self._run(row, event)
            except Exception:  # pragma: no cover - never let one job kill the worker
                log.exception("job %s: unexpected error in the worker", row["id"])
            finally:
                with self._cond:
                    self._cancel.pop(row["id"], None)
                    self._shutdown_cancel.discard(row["id"])

    def _run(self, row: sqlite3.Row, cancel: threading.Event) -> None:
        job_id = row["id"]
        output = json.loads(row["output"])
        params = json.loads(row["params"])
        first, last = row["first_frame"], row["last_frame"]
        total = last - first + 1
        progress = json.loads(row["progress"])
        progress.update(frames_total=total)

        movie = output["kind"] == "movie"
        partial = _partial_movie(output["path"]) if movie else None
        if movie and os.path.exists(output["path"]):
            if row["attempts"] > 1 and not os.path.exists(partial):
                # killed after the movie was moved into place but before the job was marked done
                log.info("job %s: %s was finished before the restart", job_id, output["path"])
                progress.update(stage="done", frames_done=total, eta_seconds=0.0)
                self.store.finish(job_id, "done", result=self._result(output, first, last, row["fps"]),
                                  progress=progress)
                self._drop_work_dir(output)
            else:
                progress.update(stage="failed", eta_seconds=None)
                self.store.finish(job_id, "failed", error=f"{output['path']} appeared after the job was queued; "
                                  "existing files are never overwritten", progress=progress)
            return

        started = time.monotonic()
        state = {"last": 0.0, "first_done": None}

        def on_progress(event: Any) -> None:
            e = _event_dict(event)
            p = dict(progress)
            for key in ("stage", "frames_done", "faces"):
                if e.get(key) is not None:
                    p[key] = e[key]
            if e.get("frames_total"):
                p["frames_total"] = e["frames_total"]
            eta = e.get("eta_seconds")
            done = p.get("frames_done") or 0
            if state["first_done"] is None:
                state["first_done"] = done
            if eta is None and p.get("stage") == "rendering" and done > state["first_done"]:
                rate = (done - state["first_done"]) / max(time.monotonic() - started, 1e-6)
                eta = (p["frames_total"] - done) / rate
            p["eta_seconds"] = None if eta is None else round(float(eta), 1)
            progress.update(p)
            now = time.monotonic()
            if now - state["last"] >= self.progress_interval or p.get("stage") != "rendering" \
                    or done >= p["frames_total"]:
                state["last"] = now
                try:
                    self.store.set_progress(job_id, progress)
                except Exception:  # pragma: no cover
                    log.exception("job %s: cannot store progress", job_id)

        request_cls = _request_class()
        work_dir = Path(output["work_dir"]) if output.get("work_dir") else None
        # a movie is encoded under a hidden name and moved into place when complete, so its final name
        # exists only for a finished movie; its frames are kept until then so a restart never re-renders
        target = partial if movie else output["pattern"]
        request = request_cls(source=Path(row["source"]), output=Path(target), params=params, frames=(first, last),
                              warmup=0, work_dir=work_dir, keep_frames=movie)
        if output["kind"] == "sequence":
            Path(output["folder"]).mkdir(parents=True, exist_ok=True)
        log.info("job %s: rendering %s frames %d-%d -> %s (attempt %d)", job_id, row["source"], first, last,
                 target, row["attempts"])
        try:
            result = self.render_fn(request, progress=on_progress, cancel=cancel)
        except Cancelled:
            self._stopped(job_id, progress, output)
            return
        except Exception as exc:
            if cancel.is_set():
                self._stopped(job_id, progress, output)
                return
            if isinstance(exc, UserError):
                error = exc.message
                log.info("job %s failed: %s", job_id, error)
            else:
                error = f"internal error: {type(exc).__name__}: {exc}"
                log.error("job %s: render raised\n%s", job_id, traceback.format_exc())
            self._fail(job_id, progress, output, error)
            return
        fps = getattr(result, "fps", None) or row["fps"]
        first_done = getattr(result, "first_frame", first)
        last_done = getattr(result, "last_frame", last)
        pattern = getattr(result, "pattern", None)
        if movie:
            try:
                _move_no_clobber(partial, output["path"])
            except FileExistsError:
                self._fail(job_id, progress, output, f"{output['path']} appeared while the job ran; existing files "
                           f"are never overwritten (the render is kept as {partial})", keep_frames=True)
                return
            except OSError as exc:
                self._fail(job_id, progress, output, f"cannot move the movie into place: {exc}", keep_frames=True)
                return
        progress.update(stage="done", frames_done=total, eta_seconds=0.0)
        self.store.finish(job_id, "done", progress=progress,
                          result=self._result(output, first_done, last_done, fps, pattern))
        self._drop_work_dir(output)
        log.info("job %s done", job_id)

    def _fail(self, job_id: str, progress: Dict[str, Any], output: Dict[str, Any], error: str,
              keep_frames: bool = False) -> None:
        progress.update(stage="failed", eta_seconds=None)
        self.store.finish(job_id, "failed", error=error, progress=progress)
        if not keep_frames:
            self._drop_work_dir(output)

    def _drop_work_dir(self, output: Dict[str, Any]) -> None:
        work_dir = output.get("work_dir")
        if work_dir and os.path.isdir(work_dir) and _inside(work_dir, str(self.store.work_root)) \
                and _norm(work_dir) != _norm(str(self.store.work_root)):
            shutil.rmtree(work_dir, ignore_errors=True)

    def _stopped(self, job_id: str, progress: Dict[str, Any], output: Dict[str, Any]) -> None:
        with self._cond:
            shutdown = job_id in self._shutdown_cancel
        row = self.store.row(job_id)
        if shutdown and not (row is not None and row["cancel_requested"]):
            progress.update(stage="queued", eta_seconds=None)
            self.store.finish(job_id, "queued", progress=progress)  # resumes at the next start
            log.info("job %s interrupted by shutdown; it resumes at the next start", job_id)
        else:
            progress.update(stage="cancelled", eta_seconds=None)
            self.store.finish(job_id, "cancelled", progress=progress)
            self._drop_work_dir(output)
            if output["kind"] == "movie":
                try:
                    os.unlink(_partial_movie(output["path"]))
                except OSError:
                    pass
            log.info("job %s cancelled", job_id)

    @staticmethod
    def _result(output: Dict[str, Any], first: int, last: int, fps: Optional[float],
                pattern: Optional[str] = None) -> Dict[str, Any]:
        if output["kind"] == "sequence":
            return {"kind": "sequence", "path": output["folder"], "pattern": str(pattern or output["pattern"]),
                    "first_frame": first, "last_frame": last, "fps": fps}
        return {"kind": "movie", "path": output["path"], "pattern": None,
                "first_frame": first, "last_frame": last, "fps": fps}


def _partial_movie(path: str) -> str:
    folder, name = os.path.split(path)
    stem, suffix = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.partial{suffix}")


def _move_no_clobber(src: str, dst: str) -> None:
    """Rename `src` to `dst`, failing with FileExistsError instead of replacing an existing `dst`."""
    if os.name == "nt":  # pragma: no cover - os.rename never replaces on Windows
        os.rename(src, dst)
        return
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # no hard links on this file system
        if os.path.exists(dst):
            raise FileExistsError(dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)
