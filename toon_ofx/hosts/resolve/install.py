"""Installing the "Toon Faces" script into Resolve's Workspace > Scripts > Utility menu.

`install()` writes the script (`render_script()`: the template, with the
folder of the client files and the engine's Python filled in) into Resolve's
Scripts/Utility folder for this OS (`scripts_dir()`), and copies the
stdlib-only files it needs (`toon_ofx.vendor.closure(RESOLVE_ROOTS)`) to a
folder outside it. `add_install_parser`/`add_install_options` and
`run_install` are the command line (`toon-ofx install-resolve-script`,
resolve_scripts/install.py).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Dict, List, Optional

from .api import Log
from .engine import package_dir

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


def install(dest: Optional[str] = None, *, all_users: bool = False, python: Optional[str] = None,
            lib_dir: Optional[str] = None, link: bool = False, dry_run: bool = False,
            log: Optional[Log] = None) -> List[str]:
    """Copy the script into Resolve's Scripts/Utility folder, with the client vendored beside nothing visible.

    The client files go to `lib_dir` (default: <user data dir>/resolve-lib), outside Resolve's Scripts
    folder (Resolve lists every .py there as a menu entry). With `link`, the script points at this
    package's own folder instead (a development checkout).
    """
    log = log or print
    dest = dest or scripts_dir(all_users=all_users)
    python = python or sys.executable
    written: List[str] = []
    if link:
        lib = os.path.dirname(package_dir())
    else:
        if lib_dir is None:
            try:
                from ...core.dirs import user_data_dir
                lib_dir = os.path.join(user_data_dir(), "resolve-lib")
            except Exception:
                lib_dir = os.path.join(os.path.expanduser("~"), ".toon-ofx", "resolve-lib")
        lib = lib_dir
        target_pkg = os.path.join(lib, "toon_ofx")
        from ... import vendor

        for name in vendor.closure(vendor.RESOLVE_ROOTS):
            src = os.path.join(package_dir(), *name.split("/"))
            dst = os.path.join(target_pkg, *name.split("/"))
            if not dry_run:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                shutil.copyfile(src, dst)
            written.append(dst)
    script = os.path.join(dest, SCRIPT_NAME)
    if not dry_run:
        os.makedirs(dest, exist_ok=True)
        tmp = script + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(render_script(lib, python))
        os.replace(tmp, script)
    written.append(script)
    log(("would write " if dry_run else "wrote ") + script)
    log(f"  engine Python: {python}")
    log(f"  client files:  {lib}")
    log("Restart Resolve (it lists scripts at start-up), then: Workspace > Scripts > Utility > Toon Faces.")
    return written


def uninstall(dest: Optional[str] = None, *, all_users: bool = False, log: Optional[Log] = None) -> List[str]:
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
    p.add_argument("--uninstall", action="store_true", help="remove the script")


def run_install(args: argparse.Namespace) -> int:
    if args.uninstall:
        uninstall(args.dest, all_users=args.all_users)
        return 0
    try:
        install(args.dest, all_users=args.all_users, python=args.python, lib_dir=args.lib_dir, link=args.link,
                dry_run=args.dry_run)
    except OSError as exc:
        print(f"toon-ofx: error: could not install the Resolve script: {exc}", file=sys.stderr)
        return 2
    return 0
