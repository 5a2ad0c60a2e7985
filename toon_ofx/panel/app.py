"""Starting the panel: `toon-ofx panel [video]`, `python -m toon_ofx.panel` (what the Resolve script runs,
with `--clips`/`--result`), and `--report` (the script's placement report as a message box).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

from PySide6 import QtCore, QtWidgets

from ..core import params as schema
from ..core.errors import UserError
from .backends import error_text, make_backend
from .sources import CameraSource
from .window import ToonPanel


def add_panel_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("panel", help="the PySide6 panel: parameters, preview, webcam, render",
                              description="Open the toon-ofx panel on a video file (or a webcam with --live).")
    add_panel_options(p)
    p.set_defaults(run=run_panel)
    return p


def add_panel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="video file or image-sequence pattern to open")
    p.add_argument("--output-dir", help="where renders go (default: a toon_ofx folder beside the source)")
    p.add_argument("--backend", choices=("auto", "engine", "inprocess"), default="auto",
                   help="engine process (started on demand) or this process (default auto: the engine process)")
    p.add_argument("--python", help="Python that starts the engine process (default: this one)")
    p.add_argument("--live", action="store_true", help="start with the webcam live preview")
    p.add_argument("--camera", type=int, default=0, help="webcam index for --live (default 0)")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="initial value of an effect parameter")
    p.add_argument("--clips", help=argparse.SUPPRESS)        # from the Resolve script
    p.add_argument("--result", help=argparse.SUPPRESS)       # written for the Resolve script
    p.add_argument("--report", help=argparse.SUPPRESS)       # show the Resolve script's placement report
    p.add_argument("--screenshot", help=argparse.SUPPRESS)   # save a screenshot and exit (docs, tests)
    p.add_argument("--autorun", action="store_true", help=argparse.SUPPRESS)  # press Render at once (tests)


def _initial_params(pairs: Sequence[str]) -> Dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set expects NAME=VALUE, got {pair!r}")
        name, value = pair.split("=", 1)
        try:
            out[name.strip()] = json.loads(value)
        except ValueError:
            out[name.strip()] = value
    return schema.validate(out)


def show_report(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the report {path}: {exc}") from None
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    box = QtWidgets.QMessageBox()
    box.setWindowTitle("Toon Faces")
    box.setIcon(QtWidgets.QMessageBox.Warning if report.get("failed") else QtWidgets.QMessageBox.Information)
    box.setText(report.get("text") or "Done.")
    box.show()
    return app.exec()


def run_panel(args: argparse.Namespace) -> int:
    if getattr(args, "report", None):
        return show_report(args.report)
    clips_doc = None
    if args.clips:
        try:
            with open(args.clips, encoding="utf-8") as f:
                clips_doc = json.load(f)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {args.clips}: {exc}") from None
    if args.source and not clips_doc and not (os.path.exists(args.source) or "%" in args.source):
        raise UserError(f"{args.source} does not exist", field="source")
    initial = _initial_params(args.params)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    backend = None
    message = ""
    try:
        backend = make_backend(args.backend, args.python)
    except Exception as exc:  # noqa: BLE001 - the window still opens and says why
        message = f"The engine could not be started: {error_text(exc)}"
    window = ToonPanel(backend, clips_doc=clips_doc, source=args.source, result_path=args.result,
                       output_dir=args.output_dir, frame_source=lambda: CameraSource(args.camera))
    if args.params:
        window.set_params(initial)
    if message:
        window.set_status(message, error=True)
    window.show()
    if args.live:
        window.start_live()
    if args.autorun:
        QtCore.QTimer.singleShot(0, window.render)
    if args.screenshot:
        deadline = time.monotonic() + 5

        def shoot():  # once the frame under the scrubber is shown (or after 5 s)
            if (args.source or clips_doc) and window.viewer.original_view.image is None and time.monotonic() < deadline:
                QtCore.QTimer.singleShot(100, shoot)
                return
            window.save_screenshot(args.screenshot)
            window.close()

        QtCore.QTimer.singleShot(300, shoot)
    return app.exec()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m toon_ofx.panel` (what the Resolve script runs)."""
    parser = argparse.ArgumentParser(prog="python -m toon_ofx.panel", description="The toon-ofx panel.")
    add_panel_options(parser)
    args = parser.parse_args(argv)
    try:
        return int(run_panel(args) or 0)
    except UserError as exc:
        print(f"toon-ofx: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
