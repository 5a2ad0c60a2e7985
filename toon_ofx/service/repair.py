"""Opening the job database safely: check it first, and never start on a damaged one.

At every start the file gets SQLite's `PRAGMA quick_check`. An empty file (0 bytes, the trace of a
truncation), a file that is not a database, or one with damaged pages is moved aside (with its -wal
and -shm files) to `jobs.sqlite3.damaged-<time>`, the rows that can still be read are copied into a
fresh database, and one clear warning says how many jobs were recovered. Standard library only.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

log = logging.getLogger("toon_ofx.service.repair")


def private_files(path: Path) -> None:
    """Make the database file 0600 (created so when missing) and close an existing -wal/-shm to 0600;
    SQLite creates its -wal and -shm with the database file's mode."""
    os.close(os.open(str(path), os.O_RDWR | os.O_CREAT, 0o600))
    for name in (str(path), f"{path}-wal", f"{path}-shm"):
        try:
            os.chmod(name, 0o600)
        except FileNotFoundError:
            pass


def connect(path: Path) -> sqlite3.Connection:
    private_files(path)
    db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    return db


def problem_of(path: Path) -> Optional[str]:
    """What is wrong with the database file at `path` (None when it is fine or does not exist)."""
    if not path.exists():
        return None
    wal = Path(f"{path}-wal")
    if path.stat().st_size == 0 and not (wal.exists() and wal.stat().st_size > 0):
        return "it is empty (0 bytes)"
    try:
        db = connect(path)
        try:
            result = [row[0] for row in db.execute("PRAGMA quick_check").fetchall()]
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if result != ["ok"]:
        return f"quick_check: {result[0]}" + (f" (and {len(result) - 1} more)" if len(result) > 1 else "")
    return None


def salvage(path: Path, table: str = "jobs") -> List[Dict[str, Any]]:
    """Every row of `table` that can still be read, walking the table from both ends past damaged pages."""
    rows: Dict[Any, Dict[str, Any]] = {}
    try:
        db = connect(path)
    except sqlite3.DatabaseError:
        return []
    try:
        for order in ("ASC", "DESC"):
            try:
                for row in db.execute(f"SELECT * FROM {table} ORDER BY rowid {order}"):
                    rows[row[0]] = dict(row)
            except sqlite3.DatabaseError:
                continue
    finally:
        db.close()
    return [rows[key] for key in sorted(rows)]


def move_aside(path: Path) -> Path:
    """Rename `path` (and its -wal/-shm) to `<path>.damaged-<time>`; returns the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 2
    while target.exists():
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        extra = Path(f"{path}{suffix}")
        if extra.exists():
            os.replace(extra, Path(f"{target}{suffix}"))
    return target


def restore(db: sqlite3.Connection, rows: List[Dict[str, Any]], table: str = "jobs") -> None:
    """Insert salvaged `rows` (inside the caller's transaction); a row damaged beyond its page is left out."""
    columns = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
    for row in rows:
        keys = [k for k in row if k in columns]
        try:
            db.execute(f"INSERT OR IGNORE INTO {table} ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                       [row[k] for k in keys])
        except sqlite3.DatabaseError:
            continue


def open_checked(path: Path) -> Tuple[sqlite3.Connection, List[Dict[str, Any]], Optional[str]]:
    """(connection, rows to restore, notice): a damaged file is moved aside and its readable rows returned.

    The caller creates its schema and `restore`s the rows; `notice` is the one line that was logged.
    """
    problem = problem_of(path)
    rows: List[Dict[str, Any]] = []
    notice = None
    if problem is not None:
        rows = salvage(path)
        aside = move_aside(path)
        notice = (f"the job database {path} was damaged ({problem}); it was moved aside to {aside.name} and "
                  f"a new one started with the {len(rows)} job(s) that could still be read")
        log.warning(notice)
    return connect(path), rows, notice
