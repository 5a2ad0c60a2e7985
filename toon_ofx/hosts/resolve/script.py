"""The Resolve script itself: options, one run (read, render, place), and its command line.

`run()` reads the clips of a track (timeline.py), has them rendered through
the PySide6 panel or directly by the engine (engine.py), then imports and
places the results (placement.py); renders that failed or were cancelled are
kept for `--retry` (retry.py), which resumes them. In direct mode the script
holds an engine session while it works and says goodbye when done, so an
engine started on demand stops once idle. `script_main()` is what the
installed "Toon Faces.py" calls: options from the command line, or from
$TOON_OFX_RESOLVE_ARGS when Resolve runs it; it never raises for user errors.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ...core.errors import UserError
from .api import BridgeError, Log, get_resolve
from .engine import (ENV_OUTPUT, ENV_PYTHON, clips_document, find_engine_python, launch_panel,
                     placements_from_result_doc, resume_jobs, run_engine_direct, show_report, write_json_atomic)
from .placement import BIN_NAME, Report, place_results
from .retry import recall, remember
from .timeline import collect_clips

ENV_ARGS = "TOON_OFX_RESOLVE_ARGS"
IN_APP_NAMES = ("resolve", "app", "bmd", "fusion", "fu")  # globals Resolve gives a script it runs


@dataclass
class Options:
    mode: str = "panel"                 # "panel" or "direct"
    track: Optional[int] = None         # source track; None = track under the playhead
    only_current: bool = False
    target: Any = "new"                 # "new" or a track index
    params: Dict[str, Any] = field(default_factory=dict)
    output_root: Optional[str] = None
    output_kind: str = "sequence"
    engine_python: Optional[str] = None
    engine_python_origin: str = "--python"  # where engine_python came from, for error messages
    workdir: Optional[str] = None
    bin_name: str = BIN_NAME
    show_report: bool = True
    panel_args: List[str] = field(default_factory=list)
    retry: bool = False                 # resume the renders the last run could not finish

    def find_engine_python(self) -> str:
        return find_engine_python(self.engine_python, self.engine_python_origin)


def run(resolve, options: Options, *, client=None, panel: Optional[Callable[..., int]] = None,
        log: Optional[Log] = None) -> Report:
    """Read the timeline, render through the panel or the engine directly (or resume), import and place."""
    log = log or print
    project, timeline = open_timeline(resolve)
    if options.retry:
        pending = recall(project.GetName(), timeline.GetName())
        source_track, target, skipped = pending.source_track, pending.target, []
        log(f"Toon Faces: resuming {len(pending.jobs)} render(s) for V{source_track} of {timeline.GetName()!r}")
        with engine_session(client, options) as engine:
            placements = resume_jobs(engine, pending.jobs, log=log)
    else:
        clips, skipped, source_track = collect_clips(timeline, track=options.track,
                                                     only_current=options.only_current, project=project)
        if not clips:
            report = Report(skipped=skipped)
            raise BridgeError(f"no clip with source media on V{source_track}.\n{report.text()}")
        log(f"Toon Faces: {len(clips)} clip(s) on V{source_track} of {timeline.GetName()!r}")
        target = options.target
        if options.mode == "panel":
            doc = render_with_panel(options, clips, skipped, project, timeline, source_track, panel)
            placements = placements_from_result_doc(clips, doc) if doc is not None else []
            if not placements:
                log("Toon Faces: nothing was rendered; nothing placed.")
                return Report(skipped=skipped)
            target = doc.get("target_track", target)
        else:
            from ...core import params as schema

            params = schema.validate(options.params)
            with engine_session(client, options) as engine:
                placements = run_engine_direct(engine, clips, params, output_root=options.output_root,
                                               output_kind=options.output_kind, log=log)
    report = place_results(resolve, project, timeline, placements, source_track=source_track, target=target,
                           bin_name=options.bin_name, log=log)
    report.skipped = list(skipped)
    log(report.text())
    left = remember(placements, project=project.GetName(), timeline=timeline.GetName(), source_track=source_track,
                    target=report.track or target)
    if left:
        log(f"Toon Faces: {left} render(s) failed or were cancelled; run Toon Faces with --retry to resume them.")
    if options.mode == "panel" and options.show_report and (report.failed or report.skipped or report.placed):
        path = os.path.join(options.workdir or tempfile.gettempdir(), f"toon_ofx_report_{os.getpid()}.json")
        write_json_atomic(path, report.to_json())
        show_report(options.find_engine_python(), path)
    return report


def open_timeline(resolve):
    """(project, timeline) Resolve has open, or BridgeError saying which is missing."""
    pm = resolve.GetProjectManager()
    project = pm.GetCurrentProject() if pm is not None else None
    if project is None:
        raise BridgeError("no project is open in Resolve.")
    timeline = project.GetCurrentTimeline()
    if timeline is None:
        raise BridgeError("no timeline is open: open the timeline with the clips to toonify.")
    return project, timeline


@contextmanager
def engine_session(client, options: Options):
    """The engine client to render with: the one given, or a connection (started on demand) holding a session
    until the work is done, so an engine started for this run stops once idle."""
    if client is not None:
        yield client
        return
    from ...client import EngineClient, EngineError

    engine = EngineClient.connect(python=options.find_engine_python(), start=True)
    try:
        engine.hello(name="DaVinci Resolve")
    except EngineError:  # an engine without sessions
        pass
    try:
        yield engine
    finally:
        engine.goodbye()


def render_with_panel(options: Options, clips, skipped, project, timeline, source_track: int,
                      panel: Optional[Callable[..., int]]) -> Optional[Dict[str, Any]]:
    """Hand the clips to the PySide6 panel and wait for it; its result document, or None if it wrote none."""
    python = options.find_engine_python()
    workdir = options.workdir or tempfile.mkdtemp(prefix="toon_ofx_resolve_")
    clips_json, result_json = os.path.join(workdir, "clips.json"), os.path.join(workdir, "result.json")
    write_json_atomic(clips_json, clips_document(
        clips, project=project.GetName(), timeline=timeline.GetName(), source_track=source_track,
        video_tracks=timeline.GetTrackCount("video") or 0, skipped=skipped, params=options.params))
    if panel is not None:
        panel(python, clips_json, result_json)
    else:
        launch_panel(python, clips_json, result_json, extra_args=options.panel_args)
    try:
        with open(result_json, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------- command line
def _param_value(text: str) -> Tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    try:
        return name.strip(), json.loads(value)
    except ValueError:
        return name.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="Toon Faces", description="Toonify the faces of the clips on a Resolve "
                                "video track and place the result on a track above.")
    p.add_argument("--direct", action="store_true", help="no panel: submit with --set parameters and wait")
    p.add_argument("--retry", action="store_true",
                   help="resume the renders of the last run that failed or were cancelled, and place them")
    p.add_argument("--track", type=int, help="source video track (default: the track under the playhead)")
    p.add_argument("--current", action="store_true", help="only the item under the playhead")
    p.add_argument("--target", default="new", help="'new' (a new track on top) or a track index above the source")
    p.add_argument("--set", dest="params", action="append", type=_param_value, default=[], metavar="NAME=VALUE",
                   help="an effect parameter (see `toon-ofx render --help`)")
    p.add_argument("--output-dir", help=f"where results go (default: a toon_ofx folder beside each source; "
                   f"${ENV_OUTPUT})")
    p.add_argument("--output-kind", choices=("sequence", "movie"), default="sequence")
    p.add_argument("--python", help=f"the engine Python (default ${ENV_PYTHON} or the installer's choice)")
    p.add_argument("--bin", default=BIN_NAME, help="Media Pool bin for the results")
    p.add_argument("--no-report", action="store_true", help="do not show the placement report window")
    p.add_argument("--panel-arg", dest="panel_args", action="append", default=[], help=argparse.SUPPRESS)
    return p


def options_from_args(args: argparse.Namespace, engine_python: Optional[str] = None) -> Options:
    target: Any = args.target
    if target not in ("new", "auto"):
        try:
            target = int(target)
        except ValueError:
            raise BridgeError(f"--target must be 'new' or a track number, got {target!r}") from None
    return Options(mode="direct" if args.direct else "panel", track=args.track, only_current=args.current,
                   target=target, params=dict(args.params), output_root=args.output_dir,
                   output_kind=args.output_kind, engine_python=args.python or engine_python,
                   engine_python_origin="--python" if args.python else "the installed script",
                   bin_name=args.bin, show_report=not args.no_report, panel_args=list(args.panel_args),
                   retry=args.retry)


def script_main(namespace: Optional[Dict[str, Any]] = None, *, engine_python: Optional[str] = None,
                argv: Optional[Sequence[str]] = None, log: Optional[Log] = None, client=None,
                panel: Optional[Callable[..., int]] = None) -> int:
    """Entry point of the Resolve script; returns an exit code and never raises for user errors."""
    log = log or print
    in_app = bool(namespace) and any(namespace.get(k) is not None for k in IN_APP_NAMES)
    if argv is None:
        argv = shlex.split(os.environ.get(ENV_ARGS, "")) if in_app else list(sys.argv[1:])
    try:
        args, unknown = build_parser().parse_known_args(list(argv))
    except SystemExit as exc:  # --help, or a bad option
        return int(exc.code or 0)
    try:
        options = options_from_args(args, engine_python)
        resolve = get_resolve(namespace, external=True)
        report = run(resolve, options, client=client, panel=panel, log=log)
    except (BridgeError, UserError) as exc:  # UserError: a parameter out of range, a bad path
        log(f"Toon Faces: {exc.message}")
        return 2
    except Exception as exc:  # the engine client's errors, mostly: one line, not a traceback
        name = type(exc).__name__
        log(f"Toon Faces: {name}: {exc}")
        return 1
    return 0 if report.ok else 3
