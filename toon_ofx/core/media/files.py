"""Files: sources must be regular files; outputs appear whole or not at all, and never over a source.

A source that is a pipe, device or socket is refused before anything opens
it (opening a FIFO with no writer blocks forever). Outputs are written under
a hidden temp name in the same folder and renamed into place (atomic on one
file system), so readers never see a partial file.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Iterator

from ..errors import UserError


def check_regular(path: Path, field: str = "source") -> None:
    """UserError unless `path` (through links) is a regular file; never opens it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UserError(f"{path} does not exist", field=field) from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}", field=field) from None
    if not stat.S_ISREG(mode):
        kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")
        raise UserError(f"{path} is {kind}, not a media file; give a movie or image file "
                        "(reading a pipe could wait forever)", field=field)


def temp_sibling(path: Path, suffix: str = ".tmp") -> Path:
    """A fresh hidden name next to `path` (same folder, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def into_place(tmp: Path, path: Path) -> Iterator[Path]:
    """The block writes `tmp`; when it ends `tmp` is renamed to `path`, and when it fails `tmp` is removed."""
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write `data` to a temp sibling, then rename it to `path`; nothing is left behind on failure."""
    while True:
        tmp = temp_sibling(path)
        try:  # O_EXCL: never clobber; mode 0o666 minus umask like any normal file
            fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
    with into_place(tmp, path), os.fdopen(fd, "wb") as fh:
        fh.write(data)
        if fsync:
            fh.flush()
            os.fsync(fh.fileno())


def same_file(a: Path, b: Path) -> bool:
    """Whether `a` and `b` name the same file (also through links, or before `a` exists)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))
