"""The durable job queue: jobs in SQLite (WAL) in the user's data folder.

The queue survives a crash: on start, `recover` puts jobs left "running" back to "queued" (they are
run again, and the renderer skips frames already on disk), unless the engine died during them
MAX_CRASHES times; a stop that requeues its job (`requeue`) does not count as a crash. A damaged
database is moved aside and rebuilt from its readable rows (toon_ofx.service.repair). A new job gets
a unique output name: one not used by a file on disk or by any earlier job (or 409 when the caller
chose the name). Every change is one transaction.

When the database cannot be written (a full disk), a write raises StorageError (507, naming the
file), except how a job ended: that is kept in memory, shown by every read, and written as soon as
the database takes writes again, so a job never stays "running" because its end could not be saved.
A running job whose cancel was asked for reads as "cancelling" until its worker has stopped.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Tuple

from ..core.errors import UserError
from .errors import Conflict, RequestError
from .outputs import norm_path
from .repair import open_checked, restore

if TYPE_CHECKING:
    from .requests import JobSpec

log = logging.getLogger("toon_ofx.service.store")

STATES = ("queued", "running", "cancelling", "done", "failed", "cancelled")   # as clients see them
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


def _name_taken(db: sqlite3.Connection, folder: str, stem: str) -> bool:
    """True when an earlier job or a file in `folder` uses the output name `stem`."""
    if db.execute("SELECT 1 FROM jobs WHERE out_key=? LIMIT 1", (_out_key(folder, stem),)).fetchone():
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


def job_dict(row: sqlite3.Row, unsaved: Mapping[str, Any]) -> Dict[str, Any]:
    """The job in `row` as the API shows it, with the columns of an end not yet written (`unsaved`) on top."""
    output = json.loads(row["output"])
    state = unsaved.get("state", row["state"])
    if state == "running" and row["cancel_requested"]:
        state = "cancelling"
    job = {
        "id": row["id"],
        "state": state,
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
    for key in ("error", "finished", "updated"):
        if key in unsaved:
            job[key] = unsaved[key]
    for key in ("progress", "result"):
        if unsaved.get(key) is not None:
            job[key] = unsaved[key]
    return job


class StorageError(RequestError):
    """The job database cannot be written (full disk, I/O error): 507, naming the file."""

    def __init__(self, path: Path, exc: Exception):
        super().__init__(f"cannot write the job database {path}: {exc} (is its disk full?)", status=507)


class JobStore:
    """Jobs in SQLite (WAL). One connection, serialised by a lock; every change is one transaction.

    `notice` is the one line said at opening when a damaged database was moved aside (else None).
    """

    def __init__(self, path: Path, work_root: Optional[Path] = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.work_root = Path(work_root) if work_root is not None else self.path.parent / "work"
        self._lock = threading.RLock()
        self._unsaved: Dict[str, Dict[str, Any]] = {}   # job id -> columns of how it ended, not yet written
        try:
            self._db, salvaged, self.notice = open_checked(self.path)
        except sqlite3.DatabaseError as exc:  # pragma: no cover - moved aside, and the fresh file fails too
            raise UserError(f"cannot open the job database {self.path}: {exc}") from None
        try:
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise UserError(f"{self.path} was written by a newer toon-ofx (schema {version}); "
                                    "upgrade toon-ofx or use another data folder")
                self._db.executescript(_SCHEMA)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                if salvaged:
                    with self._tx():
                        restore(self._db, salvaged)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise UserError(f"cannot use the job database {self.path}: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- helpers
    def _tx(self):
        return _Transaction(self._db, self._lock, self.path)

    def to_dict(self, row: sqlite3.Row) -> Dict[str, Any]:
        """The job as the API shows it (an end not yet written to disk included)."""
        return job_dict(row, self._unsaved.get(row["id"], {}))

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
        """Every job, oldest first; only those a client would see in `state` when given."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY seq").fetchall()
            jobs = [self.to_dict(r) for r in rows]
        return [j for j in jobs if state is None or j["state"] == state]

    def devices_with_queued(self) -> List[str]:
        """The (requested) devices that have queued jobs."""
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT DISTINCT device FROM jobs WHERE state='queued'")]

    def count_active(self) -> int:
        """Jobs queued or running (work that keeps the engine up)."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running')").fetchall()
            return sum(1 for r in rows if self._unsaved.get(r[0], {}).get("state") not in TERMINAL)

    def finished_before(self, when: float) -> List[Dict[str, Any]]:
        """Failed or cancelled jobs that ended before `when` (epoch seconds): their kept frames may go."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state IN ('failed', 'cancelled') AND finished < ?",
                                    (when,)).fetchall()
        return [{**self.to_dict(r), "work_dir": json.loads(r["output"]).get("work_dir")} for r in rows]

    # -- changes
    def add(self, spec: JobSpec) -> Dict[str, Any]:
        """Queue `spec` under a fresh id; its output name is made unique (or 409 when chosen by the caller)."""
        with self._tx():
            stem = spec.stem
            if _name_taken(self._db, spec.folder, stem):
                if spec.explicit_name:
                    raise Conflict(f"output name {stem!r} is already used in {spec.folder} (by a file or "
                                   "another job); finished outputs are never overwritten: choose another name",
                                   field="output.name")
                n = 2
                while _name_taken(self._db, spec.folder, f"{stem}_{n}"):
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

    def recover(self, drop_partial: Callable[[Dict[str, Any]], None] = lambda output: None) -> List[str]:
        """After a restart: jobs left running go back to the queue (or end, if cancelled or crashed too often).

        A job that was being cancelled ends "cancelled" once `drop_partial(output)` has removed its
        half-encoded movie; its frames stay for a retry.
        """
        resumed = []
        now = time.time()
        with self._tx():
            for row in self._db.execute("SELECT * FROM jobs WHERE state='running'").fetchall():
                progress = json.loads(row["progress"])
                if row["cancel_requested"]:
                    drop_partial(json.loads(row["output"]))
                    progress.update(stage="cancelled", eta_seconds=None)
                    self._set_state(row["id"], "cancelled", now, error=None, finished=now, progress=progress)
                elif row["crashes"] + 1 >= MAX_CRASHES:
                    progress.update(stage="failed", eta_seconds=None)
                    self._set_state(row["id"], "failed", now, finished=now, crashes=row["crashes"] + 1,
                                    progress=progress,
                                    error=f"the engine died during this job {row['crashes'] + 1} times; giving up "
                                          "(see the engine's log); finished frames are kept: retry resumes from them")
                else:
                    progress.update(stage="queued", eta_seconds=None)
                    self._db.execute("UPDATE jobs SET state='queued', progress=?, crashes=crashes+1, updated=? "
                                     "WHERE id=?", (json.dumps(progress), now, row["id"]))
                    resumed.append(row["id"])
        return resumed

    def claim_next(self, devices: Any) -> Optional[sqlite3.Row]:
        """The oldest queued job asking for one of `devices`, now marked running (attempts + 1).

        None while an ended job could not be written yet: no job starts before every earlier end is on disk.
        """
        devices = [devices] if isinstance(devices, str) else sorted(devices)
        if not devices or not self.flush():
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
        with self._tx():
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
        """Record how a running job ended ("queued" = back to the queue); never raises for a full disk."""
        assert state in TERMINAL or state == "queued"
        now = time.time()
        extra: Dict[str, Any] = {"error": error, "updated": now}
        if state in TERMINAL:
            extra["finished"] = now
        if result is not None:
            extra["result"] = result
        if progress is not None:
            extra["progress"] = progress
        with self._lock:
            self._unsaved[job_id] = {"state": state, **extra}
        if not self.flush():
            log.error("job %s ended %s, but %s cannot be written; the engine keeps it in memory and writes it "
                      "as soon as it can", job_id, state, self.path)

    def flush(self) -> bool:
        """Write the ends kept in memory; True when none is left."""
        with self._lock:
            if not self._unsaved:
                return True
            try:
                with self._tx():
                    for job_id, columns in self._unsaved.items():
                        extra = {k: v for k, v in columns.items() if k not in ("state", "updated")}
                        self._set_state(job_id, columns["state"], columns["updated"], **extra)
            except StorageError:
                return False
            self._unsaved.clear()
            return True

    def note_output(self, job_id: str, **facts: Any) -> None:
        """Add `facts` to the job's (internal) output record, e.g. which file its finished movie is."""
        with self._tx():
            row = self._row(job_id)
            if row is not None:
                output = {**json.loads(row["output"]), **facts}
                self._db.execute("UPDATE jobs SET output=? WHERE id=?", (json.dumps(output), job_id))

    def requeue(self, job_id: str) -> bool:
        """Put a job interrupted by a stop back in the queue without counting a crash (if still running)."""
        with self._tx():
            row = self._row(job_id)
            if row is None or row["state"] != "running" or job_id in self._unsaved:
                return False
            progress = json.loads(row["progress"])
            progress.update(stage="queued", eta_seconds=None)
            self._set_state(job_id, "queued", time.time(), progress=progress)
            return True

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
            previous = self.to_dict(row)["state"]
            now = time.time()
            if previous == "queued":
                progress = json.loads(row["progress"])
                progress.update(stage="cancelled", eta_seconds=None)
                self._set_state(job_id, "cancelled", now, finished=now, progress=progress, cancel_requested=1)
            elif previous == "running":
                self._db.execute("UPDATE jobs SET cancel_requested=1, updated=? WHERE id=?", (now, job_id))
            return previous, self.to_dict(self._row(job_id))

    def retry(self, job_id: str) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        """Failed or cancelled -> queued again (same output; the renderer skips the frames on disk).

        Returns (previous state, job); the job is unchanged unless it was failed or cancelled.
        """
        with self._tx():
            row = self._row(job_id)
            if row is None:
                return None, None
            previous = self.to_dict(row)["state"]
            if previous in ("failed", "cancelled"):
                progress = json.loads(row["progress"])
                progress.update(stage="queued", eta_seconds=None)
                self._set_state(job_id, "queued", time.time(), error=None, result=None, finished=None,
                                cancel_requested=0, crashes=0, progress=progress)
            return previous, self.to_dict(self._row(job_id))


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT under the store's lock; a failed write is a StorageError naming the file."""

    def __init__(self, db: sqlite3.Connection, lock: threading.RLock, path: Path):
        self.db, self.lock, self.path = db, lock, path

    def __enter__(self):
        self.lock.acquire()
        try:
            self.db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            self.lock.release()
            raise StorageError(self.path, exc) from None
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                try:
                    self.db.execute("COMMIT")
                except sqlite3.OperationalError as error:
                    self._rollback()
                    raise StorageError(self.path, error) from None
            else:
                self._rollback()
                if issubclass(exc_type, sqlite3.OperationalError):
                    raise StorageError(self.path, exc) from None
        finally:
            self.lock.release()
        return False

    def _rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass
