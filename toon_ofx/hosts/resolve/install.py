"""Installing the "Toon Faces" script into Resolve's Workspace > Scripts > Utility menu.

`install()` copies the stdlib-only files the script needs to a folder outside
Resolve's Scripts folder (libdir.py: a fresh copy, swapped in whole), then
writes the script (`render_script()`: the template, with that folder and the
engine's Python filled in) into Resolve's Scripts/Utility folder for this OS
(`scripts_dir()`) with one atomic replace, and removes the copies earlier
installs left. `uninstall()` removes the script and those copies.
`add_install_parser`/`add_install_options` and `run_install` are the command
line (`toon-ofx install-resolve-script`, resolve_scripts/install.py).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

from .api import Log
from .engine import package_dir
from .libdir import build_lib, remove_old_libs

SCRIPT_NAME = "Toon Faces.py"


def scripts_dir(system: Optional[str] = None, *, all_users: bool = False, env: Optional[Dict[str, str]] = None,
                home: Optional[str] = None) -> str:
    """Resolve's Fusion/Scripts/Utility folder for this OS (README.txt, "Using a script")."""
    env = os.environ if env is None else env
    system = system or sys.platform
    home = home or os.path.expanduser("~")
    if system.startswith("win"):
        if all_users:
            base = env.get("PROGRAMDATA", r"C:\ProgramData") + r"\Blackmagic Design\DaVinci Resolve\Fusion\Scripts"
        else:
            appdata = env.get("APPDATA") or (home + r"\AppData\Roaming")
            base = appdata + r"\Blackmagic Design\DaVinci Resolve\Support\Fusion\Scripts"
        return base + r"\Utility"
    if system == "darwin":
        root = "/Library" if all_users else os.path.join(home, "Library")
        return os.path.join(root, "Application Support", "Blackmagic Design", "DaVinci Resolve", "Fusion",
                            "Scripts", "Utility")
    if all_users:
        return "/opt/resolve/Fusion/Scripts/Utility"
    return os.path.join(home, ".local", "share", "DaVinciResolve", "Fusion", "Scripts", "Utility")


SCRIPT_TEMPLATE = '''"""Toon Faces: toonify the faces of the clips on a DaVinci Resolve video track.

Workspace > Scripts > Utility > Toon Faces reads the clips on the track under the
playhead, opens the toon-ofx panel (parameters, preview, render, cancel), then
imports the results into a "Toon" Media Pool bin and places them on a new video
track above the source, at the same record frames.

Installed by `toon-ofx install-resolve-script` (or `python resolve_scripts/install.py`).
From a terminal (external scripting): python "Toon Faces.py" [--direct --set steps=200 ...]
"""
import os
import sys

TOON_OFX_LIB = {lib!r}  # folder holding the toon_ofx client package
TOON_OFX_PYTHON = {python!r}  # the Python with toon-ofx, torch and PySide6 (the engine)


def _find_lib():
    here = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
    for folder in (os.environ.get("TOON_OFX_LIB"), TOON_OFX_LIB, os.path.dirname(here)):
        if folder and os.path.isfile(os.path.join(folder, "toon_ofx", "hosts", "resolve", "script.py")):
            return folder
    return None


_lib = _find_lib()
if _lib is None:
    print("Toon Faces: the toon-ofx client files are missing; run `toon-ofx install-resolve-script` again.")
else:
    if _lib not in sys.path:
        sys.path.insert(0, _lib)
    from toon_ofx.hosts import resolve as resolve_bridge

    _code = resolve_bridge.script_main(globals(), engine_python=TOON_OFX_PYTHON)
    if __name__ == "__main__" and not any(globals().get(k) for k in resolve_bridge.IN_APP_NAMES):
        sys.exit(_code)
'''


def render_script(lib: Optional[str] = None, python: Optional[str] = None) -> str:
    return SCRIPT_TEMPLATE.format(lib=lib, python=python)


def default_lib_root() -> str:
    """<user data dir>/resolve-lib: where the client files go unless --lib-dir says otherwise."""
    try:
        from ...core.dirs import user_data_dir
        return os.path.join(user_data_dir(), "resolve-lib")
    except Exception:
        return os.path.join(os.path.expanduser("~"), ".toon-ofx", "resolve-lib")


def vendored_names() -> List[str]:
    """The bridge and what it imports (relative to the toon_ofx folder)."""
    from ... import vendor

    return vendor.closure(vendor.RESOLVE_ROOTS)


def install(dest: Optional[str] = None, *, all_users: bool = False, python: Optional[str] = None,
            lib_dir: Optional[str] = None, link: bool = False, dry_run: bool = False,
            log: Optional[Log] = None) -> List[str]:
    """Install the script into Resolve's Scripts/Utility folder; returns the paths written.

    The client files are copied under `lib_dir` (default: <user data dir>/resolve-lib), outside Resolve's
    Scripts folder, where Resolve would list every .py as a menu entry. With `link`, the script uses this
    package's own folder instead (a development checkout) and nothing is copied.
    """
    log = log or print
    dest = dest or scripts_dir(all_users=all_users)
    python = python or sys.executable
    script = os.path.join(dest, SCRIPT_NAME)
    lib_root = lib_dir or default_lib_root()
    names = [] if link else vendored_names()
    if link:
        lib = os.path.dirname(package_dir())
    else:
        lib = os.path.join(lib_root, "toon_ofx-<stamp>") if dry_run else build_lib(lib_root, package_dir(), names)
    if dry_run:
        log(f"would write {script}")
    else:
        os.makedirs(dest, exist_ok=True)
        tmp = script + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(render_script(lib, python))
        os.replace(tmp, script)  # Resolve sees the old script (and its copy) or the new one, never a mix
        log(f"wrote {script}")
        for old in remove_old_libs(lib_root, vendored_names(), keep=None if link else lib, log=log):
            log(f"  removed the old copy {old}")
    log(f"  engine Python: {python}")
    log(f"  client files:  {lib}")
    log("Restart Resolve (it lists scripts at start-up), then: Workspace > Scripts > Utility > Toon Faces.")
    return [os.path.join(lib, "toon_ofx", *name.split("/")) for name in names] + [script]


def uninstall(dest: Optional[str] = None, *, all_users: bool = False, lib_dir: Optional[str] = None,
              log: Optional[Log] = None) -> List[str]:
    """Remove the script and the client copies this installer wrote under `lib_dir`; returns what went."""
    log = log or print
    dest = dest or scripts_dir(all_users=all_users)
    script = os.path.join(dest, SCRIPT_NAME)
    removed = []
    if os.path.exists(script):
        os.remove(script)
        removed.append(script)
        log(f"removed {script}")
    else:
        log(f"nothing to remove at {script}")
    for old in remove_old_libs(lib_dir or default_lib_root(), vendored_names(), log=log):
        removed.append(old)
        log(f"removed {old}")
    return removed


def add_install_parser(sub) -> None:
    """`toon-ofx install-resolve-script` (wired into cli.py by the lead)."""
    p = sub.add_parser("install-resolve-script", help="install the DaVinci Resolve script (Workspace > Scripts)",
                       description="Copy 'Toon Faces.py' into Resolve's Fusion/Scripts/Utility folder.")
    add_install_options(p)


def add_install_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dest", help="Scripts/Utility folder (default: the per-user one for this OS)")
    p.add_argument("--all-users", action="store_true", help="the all-users Scripts folder (needs admin rights)")
    p.add_argument("--python", help="the engine Python the script starts (default: this Python)")
    p.add_argument("--lib-dir", help="where the client files are copied (default: <user data dir>/resolve-lib)")
    p.add_argument("--link", action="store_true", help="point at this checkout instead of copying the client")
    p.add_argument("--dry-run", action="store_true", help="say what would be written")
    p.add_argument("--uninstall", action="store_true", help="remove the script and the copied client files")


def run_install(args: argparse.Namespace) -> int:
    try:
        if args.uninstall:
            uninstall(args.dest, all_users=args.all_users, lib_dir=args.lib_dir)
        else:
            install(args.dest, all_users=args.all_users, python=args.python, lib_dir=args.lib_dir, link=args.link,
                    dry_run=args.dry_run)
    except OSError as exc:
        action = "uninstall" if args.uninstall else "install"
        print(f"toon-ofx: error: could not {action} the Resolve script: {exc}", file=sys.stderr)
        return 2
    return 0
