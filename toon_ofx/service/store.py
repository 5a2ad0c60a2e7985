"""The durable job queue: jobs in SQLite (WAL) in the user's data folder.

The queue survives a crash: on start, `recover` puts jobs left "running" back to "queued" (they are
run again, and the renderer skips frames already on disk), unless the engine died during them
MAX_CRASHES times. A new job gets a unique output name: one not used by a file on disk or by any
earlier job (or 409 when the caller chose the name). Every change is one transaction.
"""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

from ..core.errors import UserError
from .errors import Conflict
from .outputs import norm_path

if TYPE_CHECKING:
    from .requests import JobSpec

STATES = ("queued", "running", "done", "failed", "cancelled")
TERMINAL = frozenset(("done", "failed", "cancelled"))
MAX_CRASHES = 3           # a job the engine died during this many times is failed, not retried forever
SCHEMA_VERSION = 1

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
    return norm_path(os.path.realpath(folder)) + "\x00" + os.path.normcase(stem)


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
            "output": {k: output.get(k) for k in ("folder", "kind", "name", "path", "pattern", "codec")},
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
