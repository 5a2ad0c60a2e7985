"""Reaching DaVinci Resolve's scripting API, and the bridge's shared vocabulary.

`get_resolve()` finds the API: in-app (`resolve`, `app.GetResolve()`,
`bmd.scriptapp("Resolve")`) or the external `DaVinciResolveScript` module. When
none answers, `ResolveUnavailable` carries one clear message saying which
edition and settings are needed. `resolve_version()`/`end_frame_exclusive()`
cover what changed between Resolve versions; `as_list()`/`same_object()` read
the API's answers (Lua-table lists, remote proxies). `BridgeError` is the
one error the user sees from every part of the bridge. Standard library only.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

Log = Callable[[str], None]


# ----------------------------------------------------------------- errors
class BridgeError(Exception):
    """Something the user can fix (no project, empty track, engine missing); one clear message."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ResolveUnavailable(BridgeError):
    """The scripting API could not be reached."""


EDITION_HELP = (
    "What is needed:\n"
    "  * DaVinci Resolve must be running, with a project and a timeline open.\n"
    "  * Run from inside Resolve (Workspace > Scripts > Utility > Toon Faces): DaVinci Resolve Studio, or\n"
    "    the free DaVinci Resolve up to 21.0. The free edition from 21.1 on has no Python scripting:\n"
    "    use the standalone panel instead (`toon-ofx panel clip.mp4`) and import its output yourself.\n"
    "  * Run from outside Resolve (external scripting): Studio, or free up to 21.0, with\n"
    "    Preferences > System > General > 'External scripting using' set to Local, and Resolve's\n"
    "    scripting module on the path: PYTHONPATH=$RESOLVE_SCRIPT_API/Modules and RESOLVE_SCRIPT_LIB\n"
    "    pointing at fusionscript (see Resolve's Developer/Scripting/README.txt)."
)


def _unavailable(reason: str) -> ResolveUnavailable:
    return ResolveUnavailable(f"Toon Faces cannot reach DaVinci Resolve's scripting API: {reason}\n{EDITION_HELP}")


# -------------------------------------------------------- reaching Resolve
def default_api_dirs(system: Optional[str] = None, env: Optional[Dict[str, str]] = None) -> List[str]:
    """Where Resolve installs DaVinciResolveScript.py (Developer/Scripting/Modules), per OS."""
    env = os.environ if env is None else env
    system = system or sys.platform
    dirs = []
    if env.get("RESOLVE_SCRIPT_API"):
        dirs.append(os.path.join(env["RESOLVE_SCRIPT_API"], "Modules"))
    if system.startswith("win"):
        program_data = env.get("PROGRAMDATA", r"C:\ProgramData")
        dirs.append(program_data + r"\Blackmagic Design\DaVinci Resolve\Support\Developer\Scripting\Modules")
    elif system == "darwin":
        dirs.append("/Library/Application Support/Blackmagic Design/DaVinci Resolve/Developer/Scripting/Modules")
    else:
        dirs += ["/opt/resolve/Developer/Scripting/Modules", "/home/resolve/Developer/Scripting/Modules"]
    return dirs


def _import_script_module(importer: Callable[[str], Any]):
    try:
        return importer("DaVinciResolveScript")
    except ImportError:
        pass
    added = [d for d in default_api_dirs() if os.path.isdir(d) and d not in sys.path]
    sys.path.extend(added)
    try:
        return importer("DaVinciResolveScript")
    except ImportError:
        return None


def get_resolve(namespace: Optional[Dict[str, Any]] = None, *, external: bool = True,
                importer: Optional[Callable[[str], Any]] = None):
    """The `Resolve` object, or ResolveUnavailable with a message that says what is needed.

    `namespace` is the script's globals when Resolve runs it from Workspace > Scripts: Resolve
    provides `resolve` (and Fusion's `app`/`bmd`). Outside Resolve the external module is tried.
    """
    ns = namespace or {}
    candidates: List[Callable[[], Any]] = []
    if ns.get("resolve") is not None:
        candidates.append(lambda: ns["resolve"])
    for name in ("app", "fusion", "fu"):  # Fusion's application object inside Resolve
        if ns.get(name) is not None and hasattr(ns[name], "GetResolve"):
            candidates.append(lambda obj=ns[name]: obj.GetResolve())
    if ns.get("bmd") is not None and hasattr(ns["bmd"], "scriptapp"):
        candidates.append(lambda: ns["bmd"].scriptapp("Resolve"))
    for get in candidates:
        try:
            resolve = get()
        except Exception:  # the in-app objects are remote proxies: any failure means "not there"
            resolve = None
        if resolve is not None:
            return resolve
    if not external:
        raise _unavailable("the script was not started by Resolve.")
    if importer is None:
        import importlib
        importer = importlib.import_module
    module = _import_script_module(importer)
    if module is None:
        raise _unavailable("the DaVinciResolveScript module was not found (this Python is not Resolve's, "
                           "and RESOLVE_SCRIPT_API is not set).")
    try:
        resolve = module.scriptapp("Resolve")
    except Exception as exc:  # fusionscript missing or refused
        raise _unavailable(f"DaVinciResolveScript.scriptapp failed ({exc}).") from None
    if resolve is None:
        raise _unavailable("Resolve did not answer: it is not running, external scripting is off in its "
                           "preferences, or this edition has no Python scripting.")
    return resolve


def resolve_version(resolve) -> Tuple[int, ...]:
    try:
        version = resolve.GetVersion()
        if isinstance(version, dict):  # Lua-table style answers from old bridges
            version = [version[k] for k in sorted(version)]
        return tuple(int(v) for v in list(version)[:3] if str(v).isdigit())
    except Exception:
        return ()


def end_frame_exclusive(resolve) -> bool:
    """clipInfo "endFrame" is exclusive from Resolve 19 on (inclusive in 18)."""
    version = resolve_version(resolve)
    return not version or version[0] >= 19


# ------------------------------------------------------ reading its answers
def as_list(value) -> List[Any]:
    """A Resolve list answer as a Python list (old bridges hand back Lua tables as {1: a, 2: b})."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [v for _, v in sorted(value.items())]
    return list(value)


def same_object(a, b) -> bool:
    """Two Resolve objects are the same one (proxies are not identical Python objects)."""
    if a is None or b is None:
        return False
    if a is b:
        return True
    for getter in ("GetUniqueId", "GetMediaId"):
        try:
            ia, ib = getattr(a, getter)(), getattr(b, getter)()
        except Exception:
            continue
        if ia and ib:
            return ia == ib
    return False
