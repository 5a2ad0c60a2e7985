"""Per-user folders for toon-ofx: config, data and cache.

Standard library only (Python 3.9+): the stdlib client imports this inside
Resolve's and Blender's own Python, where platformdirs is not installed.
The answers are the same as ``platformdirs`` gives for
``appname="toon-ofx", appauthor=False`` (no version, not roaming):

=========  ====================================  ======================================  ==========================================
           Linux (and other Unix)                macOS                                   Windows
=========  ====================================  ======================================  ==========================================
config     ``$XDG_CONFIG_HOME/toon-ofx``          ``~/Library/Application Support/``      ``%LOCALAPPDATA%\\toon-ofx``
           or ``~/.config/toon-ofx``              ``toon-ofx`` (or ``$XDG_CONFIG_HOME``)
data       ``$XDG_DATA_HOME/toon-ofx``            same as config (or ``$XDG_DATA_HOME``)  ``%LOCALAPPDATA%\\toon-ofx``
           or ``~/.local/share/toon-ofx``
cache      ``$XDG_CACHE_HOME/toon-ofx``           ``~/Library/Caches/toon-ofx``           ``%LOCALAPPDATA%\\toon-ofx\\Cache``
           or ``~/.cache/toon-ofx``               (or ``$XDG_CACHE_HOME``)
=========  ====================================  ======================================  ==========================================

XDG variables count only when they hold an absolute path (as in platformdirs).
On Windows the folder comes from ``WIN_PD_OVERRIDE_LOCAL_APPDATA`` (if a fully
qualified path), else the shell (SHGetKnownFolderPath), else the registry, else
``%LOCALAPPDATA%``.

Overrides win over everything: ``TOON_OFX_CONFIG_DIR``, ``TOON_OFX_DATA_DIR``,
``TOON_OFX_CACHE_DIR`` (used verbatim, ``~`` expanded).
"""
from __future__ import annotations

import ntpath
import os
import posixpath
import string
import sys
from pathlib import Path

APPNAME = "toon-ofx"

ENV_CONFIG = "TOON_OFX_CONFIG_DIR"
ENV_DATA = "TOON_OFX_DATA_DIR"
ENV_CACHE = "TOON_OFX_CACHE_DIR"

__all__ = [
    "APPNAME",
    "ENV_CONFIG",
    "ENV_DATA",
    "ENV_CACHE",
    "user_config_dir",
    "user_data_dir",
    "user_cache_dir",
    "user_config_path",
    "user_data_path",
    "user_cache_path",
]


# --------------------------------------------------------------------------- helpers

def _override(env_var: str) -> str | None:
    value = os.environ.get(env_var, "").strip()
    if not value:
        return None
    return os.path.expanduser(value)


def _is_absolute(path: str) -> bool:
    return posixpath.isabs(path) or Path(path).is_absolute()


def _expand_user(path: str) -> str:
    """``~`` expansion like platformdirs: a relative HOME counts as unset on POSIX."""
    if sys.platform != "win32" and "HOME" in os.environ and not _is_absolute(os.environ["HOME"]):
        expanded = path
        try:
            import pwd

            expanded = pwd.getpwuid(os.getuid()).pw_dir.rstrip("/") + path[1:] or "/"
        except (ImportError, KeyError):
            pass
    else:
        expanded = os.path.expanduser(path)
    if not _is_absolute(expanded):
        raise RuntimeError(
            "could not determine the home directory for %r, set an absolute HOME or XDG variable" % path
        )
    return expanded


def _xdg_dir(env_var: str) -> str | None:
    path = os.environ.get(env_var, "")
    return path if posixpath.isabs(path) else None


# --------------------------------------------------------------------------- Windows

_LOCAL_APPDATA_GUID = "{F1B32785-6FBA-4FCF-9D55-7B8E7F157091}"
_KF_FLAG_DONT_VERIFY = 0x00004000


def _win_fully_qualified(path: str) -> bool:
    drive, tail = ntpath.splitdrive(path.replace("/", "\\"))
    if drive[:4] in {"\\\\?\\", "\\\\.\\"} and drive[5:6] == ":":
        return tail.startswith("\\")
    if not drive.startswith("\\"):
        return bool(drive) and tail.startswith("\\")
    rest = drive[8:] if drive[:8].upper() == "\\\\?\\UNC\\" else drive[2:]
    server, _, share = rest.partition("\\")
    return bool(server and share)


def _win_local_appdata_ctypes() -> str:  # pragma: no cover - Windows only
    from ctypes import HRESULT, POINTER, Structure, WinDLL, byref, wintypes

    class _GUID(Structure):
        _fields_ = [
            ("Data1", wintypes.DWORD),
            ("Data2", wintypes.WORD),
            ("Data3", wintypes.WORD),
            ("Data4", wintypes.BYTE * 8),
        ]

    ole32 = WinDLL("ole32")
    ole32.CLSIDFromString.restype = HRESULT
    ole32.CLSIDFromString.argtypes = [wintypes.LPCOLESTR, POINTER(_GUID)]
    ole32.CoTaskMemFree.restype = None
    ole32.CoTaskMemFree.argtypes = [wintypes.LPVOID]
    shell32 = WinDLL("shell32")
    shell32.SHGetKnownFolderPath.restype = HRESULT
    shell32.SHGetKnownFolderPath.argtypes = [
        POINTER(_GUID), wintypes.DWORD, wintypes.HANDLE, POINTER(wintypes.LPWSTR)]
    guid = _GUID()
    ole32.CLSIDFromString(_LOCAL_APPDATA_GUID, byref(guid))
    ptr = wintypes.LPWSTR()
    try:
        shell32.SHGetKnownFolderPath(byref(guid), _KF_FLAG_DONT_VERIFY, None, byref(ptr))
        result = ptr.value
    finally:
        ole32.CoTaskMemFree(ptr)
    if result is None:
        raise ValueError("SHGetKnownFolderPath returned NULL for LOCAL_APPDATA")
    return result


def _win_local_appdata() -> str:  # pragma: no cover - Windows only
    override = os.environ.get("WIN_PD_OVERRIDE_LOCAL_APPDATA", "").lstrip().rstrip(string.whitespace)
    if _win_fully_qualified(override):
        return override
    try:
        import ctypes  # noqa: F401
    except ImportError:
        pass
    else:
        return _win_local_appdata_ctypes()
    try:
        import winreg
    except ImportError:
        value = os.environ.get("LOCALAPPDATA")
        if not value:
            raise ValueError("Unset environment variable: LOCALAPPDATA")
        return value
    with winreg.OpenKey(winreg.HKEY_CURRENT_USER,
                        r"Software\Microsoft\Windows\CurrentVersion\Explorer\Shell Folders") as key:
        directory, _ = winreg.QueryValueEx(key, "Local AppData")
    return str(directory)


# --------------------------------------------------------------------------- platform defaults

def _default(kind: str) -> str:
    if sys.platform == "win32":  # pragma: no cover - Windows only
        base = os.path.join(os.path.normpath(_win_local_appdata()), APPNAME)
        return os.path.join(base, "Cache") if kind == "cache" else base
    xdg_var = {"config": "XDG_CONFIG_HOME", "data": "XDG_DATA_HOME", "cache": "XDG_CACHE_HOME"}[kind]
    xdg = _xdg_dir(xdg_var)
    if xdg:
        return os.path.join(xdg, APPNAME)
    if sys.platform == "darwin":  # pragma: no cover - macOS only
        if kind == "cache":
            return os.path.join(_expand_user("~/Library/Caches"), APPNAME)
        return os.path.join(_expand_user("~/Library/Application Support"), APPNAME)
    home_rel = {"config": "~/.config", "data": "~/.local/share", "cache": "~/.cache"}[kind]
    return os.path.join(_expand_user(home_rel), APPNAME)


def _dir(kind: str, env_var: str, ensure: bool) -> str:
    path = _override(env_var) or _default(kind)
    if ensure:
        os.makedirs(path, mode=0o700, exist_ok=True)
    return path


# --------------------------------------------------------------------------- public API

def user_config_dir(ensure: bool = False) -> str:
    """Per-user config folder (token, server.json); ``TOON_OFX_CONFIG_DIR`` overrides."""
    return _dir("config", ENV_CONFIG, ensure)


def user_data_dir(ensure: bool = False) -> str:
    """Per-user data folder (job database); ``TOON_OFX_DATA_DIR`` overrides."""
    return _dir("data", ENV_DATA, ensure)


def user_cache_dir(ensure: bool = False) -> str:
    """Per-user cache folder (downloaded models); ``TOON_OFX_CACHE_DIR`` overrides."""
    return _dir("cache", ENV_CACHE, ensure)


def user_config_path(ensure: bool = False) -> Path:
    """`user_config_dir` as a Path."""
    return Path(user_config_dir(ensure))


def user_data_path(ensure: bool = False) -> Path:
    """`user_data_dir` as a Path."""
    return Path(user_data_dir(ensure))


def user_cache_path(ensure: bool = False) -> Path:
    """`user_cache_dir` as a Path."""
    return Path(user_cache_dir(ensure))
