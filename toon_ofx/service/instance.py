"""This engine's footprint in the user's folders: the token, server.json and the instance lock.

- `<user_config_dir>/token`: the per-user access token (mode 0600), created once;
- `<user_config_dir>/server.json`: {"url", "pid", "version", ...} of the running engine, for clients;
- `<user_data_dir>/server.lock`: one engine per data folder, so two never run the same queue.

Both folders are private: created 0700, and at every start a folder open to others is closed again
(0700) and one owned by another user is refused. A token others could read is replaced (they may
have copied it). Files are written through a fresh O_EXCL temp name and renamed into place.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

from ..core.errors import UserError
from ..core.media.files import into_place

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
    """`path` as a private folder: created 0700 if missing, closed to others (0700) if it was open.

    UserError when it is not a folder or belongs to another user.
    """
    missing = []
    walk = Path(path)
    while not walk.exists() and walk != walk.parent:
        missing.append(walk)
        walk = walk.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise UserError(f"cannot create {folder}: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise UserError(f"{path} is not a folder")
    if os.name == "posix":
        st = os.stat(path)
        if st.st_uid != os.getuid():
            raise UserError(f"{path} belongs to another user (uid {st.st_uid}); the engine keeps its token and "
                            "jobs only in folders of your own")
        if st.st_mode & 0o077:
            os.chmod(path, 0o700)
            log.warning("%s was open to other users (mode %o); it is now 0700", path, st.st_mode & 0o777)
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
        exposed = os.name == "posix" and path.exists() and os.lstat(path).st_mode & 0o077
        usable = len(token) >= 32 and token.isascii() and token.replace("-", "").replace("_", "").isalnum()
        if usable and not exposed:
            return token
        if path.exists() or path.is_symlink():  # damaged, or others could read it: a new one
            log.warning("%s %s; writing a new token", path,
                        "was readable by other users" if usable else "is not a usable token")
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
    """Write `data` to `path` (mode 0600) so a reader sees the old file or the new one, never half.

    The temp file has a fresh random name opened with O_EXCL (mkstemp), so nothing planted at a
    predictable name (a symlink) is ever followed or truncated.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    with into_place(Path(tmp), path), os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


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
        fd = os.open(str(self.path), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
        fh = os.fdopen(fd, "r+b")
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
