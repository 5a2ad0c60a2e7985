"""Locating ffmpeg and ffprobe, and the small conventions of calling them."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import UserError


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


def file_url(path: Path) -> str:
    """`path` as an ffmpeg input/output URL."""
    # "file:" keeps names such as "concat:x" or "-y.mp4" from being read as protocols or options.
    return "file:" + str(Path(path).absolute())


def last_lines(text: str, n: int = 3) -> str:
    """The last `n` non-empty lines of ffmpeg's stderr, joined for a one-line message."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "; ".join(lines[-n:])
