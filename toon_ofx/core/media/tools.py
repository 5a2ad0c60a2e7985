"""Locating ffmpeg and ffprobe, and the small conventions of calling them.

Every call has a deadline: a source that never answers (a network share that
hangs, a file swapped for a pipe) ends in one clear UserError, never in a
thread blocked forever. `run` bounds a whole command; `Watchdog` bounds each
wait of a streaming decoder, so a consumer may take as long as it likes
between frames. ``TOON_OFX_MEDIA_TIMEOUT`` (seconds) sets both limits.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import List, Optional

from ..errors import UserError

DEFAULT_TIMEOUT = 300.0  # seconds: a whole probe, or one frame of a decode


def ffmpeg_exe() -> str:
    """Path of ffmpeg (``TOON_OFX_FFMPEG`` overrides); UserError when missing."""
    return _tool("ffmpeg", "TOON_OFX_FFMPEG")


def ffprobe_exe() -> str:
    """Path of ffprobe (``TOON_OFX_FFPROBE`` overrides); UserError when missing."""
    return _tool("ffprobe", "TOON_OFX_FFPROBE")


def _tool(name: str, env: str) -> str:
    exe = os.environ.get(env) or shutil.which(name)
    if not exe:
        raise UserError(f"{name} was not found: install ffmpeg (Debian/Ubuntu: apt-get install ffmpeg; "
                        f"macOS: brew install ffmpeg; Windows: winget install ffmpeg) or set {env}")
    return exe


def media_timeout() -> float:
    """Seconds a probe, or one frame of a decode, may take (``TOON_OFX_MEDIA_TIMEOUT``, default 300)."""
    try:
        value = float(os.environ.get("TOON_OFX_MEDIA_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        return DEFAULT_TIMEOUT
    return value if value > 0 else DEFAULT_TIMEOUT


def run(cmd: List[str], what: str, field: str = "source") -> subprocess.CompletedProcess:
    """Run a probe-like command to the end; UserError (naming `what`) when it exceeds the media timeout."""
    limit = media_timeout()
    try:
        return subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=limit)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        raise UserError(f"reading {what} took longer than {limit:g} s and was stopped; is it on a storage "
                        "that stopped answering? (TOON_OFX_MEDIA_TIMEOUT sets the limit)", field=field) from None


class Watchdog:
    """Kills `proc` when one wait between `arm()` and `disarm()` lasts longer than `limit` seconds."""

    def __init__(self, proc: subprocess.Popen, limit: Optional[float] = None):
        self.proc, self.limit = proc, media_timeout() if limit is None else limit
        self.fired = False
        self._deadline: Optional[float] = None
        self._wake = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._watch, name="media-watchdog", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        with self._wake:
            self._deadline = time.monotonic() + self.limit
            self._wake.notify()

    def disarm(self) -> None:
        with self._wake:
            self._deadline = None

    def stop(self) -> None:
        with self._wake:
            self._done = True
            self._wake.notify()
        self._thread.join()

    def _watch(self) -> None:
        with self._wake:
            while not self._done:
                if self._deadline is None:
                    self._wake.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                self.fired = True
                self._deadline = None
                try:
                    self.proc.kill()
                except OSError:
                    pass


def file_url(path: Path) -> str:
    """`path` as an ffmpeg input/output URL."""
    # "file:" keeps names such as "concat:x" or "-y.mp4" from being read as protocols or options.
    return "file:" + str(Path(path).absolute())


def last_lines(text: str, n: int = 3) -> str:
    """The last `n` non-empty lines of ffmpeg's stderr, joined for a one-line message."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[-n:])
