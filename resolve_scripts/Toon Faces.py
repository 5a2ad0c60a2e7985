"""Toon Faces: toonify the faces of the clips on a DaVinci Resolve video track.

Workspace > Scripts > Utility > Toon Faces reads the clips on the track under the
playhead, opens the toon-ofx panel (parameters, preview, render, cancel), then
imports the results into a "Toon" Media Pool bin and places them on a new video
track above the source, at the same record frames.

Installed by `toon-ofx install-resolve-script` (or `python resolve_scripts/install.py`).
From a terminal (external scripting): python "Toon Faces.py" [--direct --set steps=200 ...]
"""
import os
import sys

TOON_OFX_LIB = None  # folder holding the toon_ofx client package
TOON_OFX_PYTHON = None  # the Python with toon-ofx, torch and PySide6 (the engine)


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
