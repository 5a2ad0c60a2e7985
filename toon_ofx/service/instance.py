"""This engine's footprint in the user's folders: the token, server.json and the instance lock.

- `<user_config_dir>/token`: the per-user access token (mode 0600), created once;
- `<user_config_dir>/server.json`: {"url", "pid", "version", ...} of the running engine, for clients;
- `<user_data_dir>/server.lock`: one engine per data folder, so two never run the same queue.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Dict, Optional

from ..core.errors import UserError

log = logging.getLogger("toon_ofx.service.instance")

TOKEN_FILE = "token"
INFO_FILE = "server.json"
LOCK_FILE = "server.lock"


def config_dir() -> Path:
    """`<user_config_dir>` (TOON_OFX_CONFIG_DIR overrides)."""
    from ..core import dirs

    return Path(dirs.user_config_dir())


def data_dir() -> Path:
    """`<user_data_dir>` (TOON_OFX_DATA_DIR overrides)."""
    from ..core import dirs

    return Path(dirs.user_data_dir())


def private_dir(path: Path) -> Path:
    """`path`, created (mode 0700) if missing."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def ensure_token(folder: Path) -> str:
    """The per-user token in `folder`/token, created (mode 0600) if missing or unusable."""
    private_dir(folder)
    path = folder / TOKEN_FILE
    for _ in range(5):
        try:
            token = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            token = ""
        except (OSError, UnicodeDecodeError):
            token = ""
        if len(token) >= 32 and token.isascii() and token.replace("-", "").replace("_", "").isalnum():
            if os.name == "posix" and os.stat(path).st_mode & 0o077:
                os.chmod(path, 0o600)
                log.warning("%s was readable by others; its mode is now 0600", path)
            return token
        if path.exists():  # empty or damaged: replace it
            log.warning("%s is not a usable token; writing a new one", path)
            path.unlink()
        token = secrets.token_urlsafe(32)
        tmp = folder / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(token + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(str(tmp), str(path))  # atomic and never replaces a token another process just wrote
            except FileExistsError:
                continue  # someone else won: use theirs
            except OSError:
                if not path.exists():
                    os.replace(str(tmp), str(path))
                continue
        finally:
            try:
                os.unlink(str(tmp))
            except OSError:
                pass
    raise UserError(f"cannot create a token in {folder}")


def write_json_atomic(path: Path, data: Dict[str, Any]) -> None:
    """Write `data` to `path` (mode 0600) so a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(str(tmp), str(path))


def read_server_info(folder: Optional[Path] = None) -> Optional[Dict[str, Any]]:
    """The server.json in `folder` (default: the config folder), or None if missing or damaged."""
    try:
        return json.loads((Path(folder) if folder else config_dir()).joinpath(INFO_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None


class InstanceLock:
    """An exclusive lock on a file in the data folder, released by the OS when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self._fh = None

    def acquire(self) -> bool:
        fh = open(self.path, "a+b")
        try:
            if os.name == "nt":  # pragma: no cover - Windows only
                import msvcrt

                fh.seek(0)
                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        self._fh = fh
        return True

    def release(self) -> None:
        if self._fh is not None:
            try:
                if os.name == "nt":  # pragma: no cover
                    import msvcrt

                    self._fh.seek(0)
                    msvcrt.locking(self._fh.fileno(), msvcrt.LK_UNLCK, 1)
                else:
                    import fcntl

                    fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            except OSError:
                pass
            self._fh.close()
            self._fh = None


class AlreadyRunning(UserError):
    exit_code = 3
