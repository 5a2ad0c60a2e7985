"""DaVinci Resolve side of toon-ofx: read the timeline, send work to the engine, place the result.

Standard library only (Python 3.7+): this package runs inside Resolve's own
Python, which has no torch and usually no PySide6. It imports nothing heavier
than `toon_ofx.client` (the engine's HTTP client) and `toon_ofx.core.params`;
the installer copies it, with what it imports, beside nothing in Resolve's
Scripts folder (`toon_ofx.vendor.RESOLVE_ROOTS`).

Every call into Resolve is one documented in Resolve's Developer/Scripting
README.txt, with its documented arguments. The flow, one module per step:

1. api.py       finds the scripting API (in-app or external) and says what is
                needed when there is none; Resolve version differences.
2. timeline.py  reads the items of one video track as `Clip`s (frames.py:
                timeline frames <-> the clip's own frames).
3. engine.py    finds the engine's Python and runs the PySide6 panel with the
                clips (or, in direct mode, submits with the stdlib client and
                waits); the answers become `Placement`s.
4. placement.py imports each result into a "Toon" Media Pool bin, cuts it in
                above the source at the same record frames, re-reads the track
                and reports what could not be placed.
5. script.py    `run()` strings these together; `script_main()` is what the
                installed "Toon Faces.py" calls. install.py installs that script.

This module re-exports what the installed script, the panel and the command
line use.
"""
from .engine import output_folder_for
from .install import add_install_options, add_install_parser, run_install
from .script import IN_APP_NAMES, script_main
from .timeline import Clip

__all__ = ["Clip", "IN_APP_NAMES", "add_install_options", "add_install_parser", "output_folder_for", "run_install",
           "script_main"]
