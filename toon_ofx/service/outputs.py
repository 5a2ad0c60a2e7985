"""Path rules, and where a job may write and under what name: output-folder rules, names, never overwriting.

Every path field follows `check_path` (absolute, no `~`, no NUL, normalised). A job writes only
into a non-system folder that cannot hold or overwrite its source (symlinks are resolved for these
checks); a movie is encoded under a hidden partial name and moved into place without replacing
anything. Source media is only ever read.
"""
from __future__ import annotations

import os
import sys
from typing import Any, List, Optional, Tuple

from .errors import RequestError


def norm_path(path: str) -> str:
    """`path` normalised for comparison (case-folded where the file system is)."""
    return os.path.normcase(os.path.normpath(path))


def is_inside(path: str, folder: str) -> bool:
    """True when `path` is `folder` or below it (both normalised)."""
    path, folder = norm_path(path), norm_path(folder)
    if path == folder:
        return True
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def check_path(value: Any, field_name: str) -> str:
    """The path rules every path field follows: a string, no NUL, absolute (no `~`), normalised."""
    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{field_name} must be a path", field=field_name)
    if "\x00" in value:
        raise RequestError(f"{field_name} contains a NUL character", field=field_name)
    if not os.path.isabs(value):
        raise RequestError(f"{field_name} must be an absolute path (the engine's working folder and home are not "
                           f"yours), got {value!r}", field=field_name)
    return os.path.normpath(value)


# --------------------------------------------------------------------------- folders

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
        if any(is_inside(candidate, s) for s in inside):
            return True
        if any(norm_path(candidate) == norm_path(s) for s in exact):
            return True
    return False


# folders in the engine user's home that hold keys, credentials and settings programs act on (an autostart
# entry, a shell's or a tool's configuration): no place for renders
SECRET_FOLDERS = (".ssh", ".gnupg", ".config", ".aws", ".azure", ".kube", ".docker", ".password-store",
                  ".pki", ".mozilla", ".local/share/keyrings", "Library/Keychains")


def secret_folder_of(folder: str) -> Optional[str]:
    """The private folder of the engine user's home (SECRET_FOLDERS) that `folder` is in, or None; symlinks
    are resolved on both sides."""
    homes = {os.path.expanduser("~")}
    try:
        import pwd

        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except (ImportError, KeyError):  # pragma: no cover - Windows, or a uid without a passwd entry
        pass
    for home in sorted(h for h in homes if h and os.path.dirname(h) != h):
        for name in SECRET_FOLDERS:
            secret = os.path.join(home, *name.split("/"))
            for candidate in {os.path.abspath(folder), os.path.realpath(folder)}:
                if is_inside(candidate, secret) or is_inside(candidate, os.path.realpath(secret)):
                    return secret
    return None


def _is_sequence_source(source: str) -> bool:
    return os.path.isdir(source) or "%" in os.path.basename(source) or "#" in os.path.basename(source) or \
        source.lower().endswith((".png", ".jpg", ".jpeg", ".tif", ".tiff", ".exr", ".dpx"))


def check_output_folder(folder: Any, source: str) -> str:
    """An absolute, writable, non-system folder that cannot hold or overwrite the source."""
    folder = check_path(folder, "output.folder")
    real = os.path.realpath(folder)
    real_source = os.path.realpath(source)
    if norm_path(real) == norm_path(real_source):
        raise RequestError("output.folder is the source itself; the source is never written to",
                           field="output.folder")
    if is_system_folder(folder):
        raise RequestError(f"output.folder {folder} is a system folder; choose a folder of your own",
                           field="output.folder")
    secret = secret_folder_of(folder)
    if secret is not None:
        raise RequestError(f"output.folder {folder} is inside {secret}, one of your private folders (keys, "
                           "credentials, settings); choose another folder for renders", field="output.folder",
                           status=422)
    if os.path.isdir(real_source) and is_inside(real, real_source):
        raise RequestError("output.folder is inside the source image-sequence folder; "
                           "the source is never written to", field="output.folder")
    if _is_sequence_source(source) and not os.path.isdir(real_source) and \
            norm_path(real) == norm_path(os.path.dirname(real_source)):
        raise RequestError("output.folder is the folder of the source image sequence; "
                           "choose another folder so source frames cannot be touched", field="output.folder")
    if os.path.exists(real) and not os.path.isdir(real):
        raise RequestError(f"output.folder {folder} exists and is not a folder", field="output.folder")
    return folder


def ensure_folder(folder: str) -> None:
    """Create `folder` if needed (with the engine user's umask, like any program of theirs); RequestError
    when it cannot be created or written."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise RequestError(f"cannot create output.folder {folder}: {exc.strerror or exc}",
                           field="output.folder") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RequestError(f"output.folder {folder} is not writable", field="output.folder")


# --------------------------------------------------------------------------- names

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


def default_stem(source: str) -> str:
    """The output stem when the caller chose none: the source's name + "_toon"."""
    base = os.path.basename(source.rstrip("/\\")) or "clip"
    stem = base.split("%")[0].split("#")[0].rstrip("._-") if ("%" in base or "#" in base) else os.path.splitext(base)[0]
    stem = "".join("_" if c in _BAD_NAME_CHARS else c for c in stem).strip(" .") or "clip"
    return (stem[:120] + "_toon")


# --------------------------------------------------------------------------- finished movies

def partial_movie(path: str) -> str:
    """The hidden name a movie is encoded under until it is complete."""
    folder, name = os.path.split(path)
    stem, suffix = os.path.splitext(name)
    return os.path.join(folder, f".{stem}.partial{suffix}")


def move_no_clobber(src: str, dst: str) -> None:
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
