"""The `toon-ofx` command line.

Every sub-command turns bad input into one line on stderr and exit code 2;
no traceback reaches the user.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, List, Optional

from . import __version__
from .core.errors import Cancelled, UserError
from .core.options import add_codec_option, add_param_options, frame_range, params_from_args


# -- render ---------------------------------------------------------------
def add_render_parser(sub) -> None:
    p = sub.add_parser("render", help="toonify the faces of a clip",
                       description="Toonify every face in a clip; everything else is left untouched.")
    p.add_argument("source", type=Path, help="movie file, image sequence (pattern or folder) or still image")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="movie (.mp4/.mov/.mkv/.mxf), folder (an image sequence comes back in its own format), "
                        "pattern like out/shot.%%06d.png or .exr, or an image file for a still")
    p.add_argument("--frames", type=frame_range, metavar="A-B",
                   help="inclusive frame range, 0-based (for an image sequence too: 0 is its first file)")
    p.add_argument("--warmup", type=int, default=0, metavar="N",
                   help="process N extra frames before A without writing them")
    p.add_argument("--chunk-of", type=frame_range, metavar="F-L",
                   help="farm tasks: the whole job's range; --frames is moved onto the keyframe grid "
                        "so no two tasks project the same frames")
    p.add_argument("--models-dir", type=Path, help="folder of model files (sets TOON_OFX_MODELS for this render)")
    p.add_argument("--work-dir", type=Path, help="where frames of a movie output are kept until encoded")
    p.add_argument("--keep-frames", action="store_true", help="keep the frame folder of a movie output")
    p.add_argument("--16bit", dest="bits", action="store_const", const=16, default=None,
                   help="decode, stylise and write frames at 16 bits per channel even for an 8-bit source "
                        "(deeper sources always are)")
    add_codec_option(p)
    p.add_argument("--ocio-config", type=Path, metavar="FILE",
                   help="OpenColorIO config for --input-colorspace (default: $OCIO, else the ACES studio config "
                        "built into OpenColorIO)")
    p.add_argument("--ray", nargs="?", const="auto", metavar="ADDRESS",
                   help="run frame chunks on a Ray cluster (default: start a local one)")
    p.add_argument("--chunk-size", type=int, default=None, help="frames per Ray chunk")
    p.add_argument("--workers", type=int, default=None, help="Ray workers (default: one per GPU, else per CPU)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    out.add_argument("--json", action="store_true", help="progress as JSON lines on stdout")
    out.add_argument("--openjd", action="store_true",
                     help="progress as Open Job Description openjd_progress:/openjd_status: lines (farm tasks)")
    add_param_options(p)
    p.set_defaults(run=run_render)


def progress_printer(args) -> Optional[Callable]:
    """A progress callback for the CLI: a tqdm bar (models being loaded and projection steps in its
    text), JSON lines (`--json`, every field of the event), OpenJD lines (`--openjd`), or (quiet) only
    the render's one-line notices and warnings on stderr. Notices and warnings always reach stderr."""
    from .core.progress import describe

    def say_notice(event):
        if event.notice:
            print(f"toon-ofx: {event.notice}", file=sys.stderr, flush=True)
        if getattr(event, "warning", None):
            print(f"toon-ofx: warning: {event.warning}", file=sys.stderr, flush=True)

    if args.quiet:
        return say_notice
    if args.json:
        def emit(event):
            say_notice(event)
            print(json.dumps(event.to_dict()), flush=True)
        return emit
    if args.openjd:
        def openjd(event):
            say_notice(event)
            if event.stage != "projecting" and event.frames_total:
                print(f"openjd_progress: {100.0 * event.frames_done / event.frames_total:.1f}", flush=True)
            print(f"openjd_status: {describe(event.to_dict())}", flush=True)
        return openjd
    from tqdm import tqdm

    bar = {"bar": None}

    def show(event):
        for line in (event.notice, getattr(event, "warning", None) and f"warning: {event.warning}"):
            if line:  # above the bar once it is drawn
                (bar["bar"].write if bar["bar"] is not None else print)(f"toon-ofx: {line}", file=sys.stderr)
        if event.stage == "loading":
            if event.model:
                print(f"toon-ofx: {describe(event.to_dict())}", file=sys.stderr, flush=True)
            return
        if bar["bar"] is None:
            bar["bar"] = tqdm(total=event.frames_total, initial=event.frames_done, unit="frame",
                              dynamic_ncols=True, file=sys.stderr)
        b = bar["bar"]
        b.set_postfix_str(f"{describe(event.to_dict()) if event.stage == 'projecting' else event.stage}, "
                          f"faces {event.faces}")
        b.update(event.frames_done - b.n)
        if event.stage == "done":
            b.close()
    return show


def run_render(args) -> int:
    from .core.render import RenderRequest, render

    params = params_from_args(args)
    frames = args.frames
    if args.chunk_of:
        from .farm.plan import snap_chunk, temporal_plan

        if frames is None:
            raise UserError("--chunk-of needs --frames (this task's chunk)", field="frames")
        frames = snap_chunk(frames, args.chunk_of, temporal_plan(params))
        if frames is None:
            if not args.quiet:
                print("toon-ofx: this chunk lies inside another task's segment of the keyframe grid; nothing to do",
                      file=sys.stderr)
            return 0
    if args.ocio_config:
        os.environ["OCIO"] = str(args.ocio_config)   # core.colour reads the config from $OCIO
    if args.models_dir:
        if not args.models_dir.is_dir():
            raise UserError(f"--models-dir {args.models_dir} is not a folder", field="models_dir")
        os.environ["TOON_OFX_MODELS"] = str(args.models_dir)
    request = RenderRequest(source=args.source, output=args.output, params=params, frames=frames,
                            warmup=args.warmup, work_dir=args.work_dir, keep_frames=args.keep_frames,
                            bits=args.bits, codec=args.codec)
    progress = progress_printer(args)
    if args.ray:
        from .farm.ray_backend import render_with_ray

        result = render_with_ray(request, address=None if args.ray == "auto" else args.ray,
                                 chunk_size=args.chunk_size, workers=args.workers, progress=progress)
    else:
        result = render(request, progress=progress)
    if not args.quiet and not args.json:
        codec = f", {result.codec}" if result.codec else ""
        print(f"toon-ofx: wrote {result.output} (frames {result.first_frame}-{result.last_frame}, "
              f"{result.written} rendered, {result.skipped} already done{codec})", file=sys.stderr)
    for note in result.notes:
        if note not in getattr(result, "warnings", ()):  # the others were said as warnings
            print(f"toon-ofx: note: {note}", file=sys.stderr)
    return 0


# -- blend ----------------------------------------------------------------
def add_blend_parser(sub) -> None:
    p = sub.add_parser("blend", help="blend a base and a toon generator into one checkpoint")
    p.add_argument("base", help="real-face (FFHQ) generator: manifest name or path")
    p.add_argument("toon", help="fine-tuned toon generator: manifest name or path")
    p.add_argument("-o", "--output", type=Path, required=True, help="blended rosinality .pt file")
    p.add_argument("--swap-res", type=int, default=64, help="layers up to this resolution come from the toon model")
    p.add_argument("--width", type=float, default=0.0, help="smooth blend width in octaves (0 = hard swap)")
    p.add_argument("--mapping-from", choices=("base", "toon"), default="base",
                   help="model that supplies the mapping network and latent_avg")
    p.add_argument("--const-from", choices=("base", "toon"), default="toon",
                   help="model that supplies the 4x4 constant input")
    p.set_defaults(run=run_blend)


def run_blend(args) -> int:
    from engine.generator.blend import blend_checkpoints
    from engine.generator.checkpoints import CheckpointError

    from .core import model_store

    if args.output.exists():
        raise UserError(f"{args.output} exists; choose another name (existing files are never overwritten)",
                        field="output")
    try:
        blend_checkpoints(model_store.resolve(args.base), model_store.resolve(args.toon), args.output,
                          args.swap_res, width=args.width, mapping_from=args.mapping_from,
                          const_from=args.const_from)
    except (CheckpointError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(f"toon-ofx: wrote {args.output}", file=sys.stderr)
    return 0


# -- jobs -----------------------------------------------------------------
JOB_STATES = ("queued", "running", "cancelling", "done", "failed", "cancelled")


def add_jobs_parser(sub) -> None:
    p = sub.add_parser("jobs", help="list, show, cancel or retry the running engine's jobs",
                       description="Talk to the running engine (`toon-ofx serve`, or the one an editor add-on "
                                   "started) through its client. A retry resumes a failed or cancelled job from "
                                   "its frames on disk, into the same output.")
    actions = p.add_subparsers(dest="jobs_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every job, oldest first")
    listing.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    listing.add_argument("--json", action="store_true", help="the jobs as JSON")
    for action, text in (("show", "one job in full"), ("cancel", "cancel a queued or running job"),
                         ("retry", "queue a failed or cancelled job again (resumes from its frames)")):
        a = actions.add_parser(action, help=text)
        a.add_argument("id", help="the job id (see `toon-ofx jobs list`)")
        a.add_argument("--json", action="store_true", help="the job as JSON")
    p.set_defaults(run=run_jobs)


def _job_line(job: Dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    done = f"{progress.get('frames_done', 0)}/{progress.get('frames_total', '?')}"
    where = (job.get("result") or {}).get("path") or (job.get("output") or {}).get("path") or ""
    line = f"{job['id']}  {job['state']:<10}  {done:>9}  {where}"
    return line + (f"  ({job['error']})" if job.get("error") else "")


def run_jobs(args) -> int:
    from .client import EngineClient, EngineError

    try:
        client = EngineClient()
        if args.jobs_command == "list":
            jobs = client.jobs(args.state)
            print(json.dumps(jobs, indent=1) if args.json else "\n".join(_job_line(j) for j in jobs) or "(no jobs)")
            return 0
        job = {"show": client.job, "cancel": client.cancel, "retry": client.retry}[args.jobs_command](args.id)
    except EngineError as exc:
        raise UserError(exc.message) from None
    if args.json:
        print(json.dumps(job, indent=1))
    elif args.jobs_command == "show":
        for key in ("id", "state", "source", "frames", "output", "progress", "error", "result", "device", "attempts"):
            print(f"{key}: {json.dumps(job.get(key)) if isinstance(job.get(key), (dict, list)) else job.get(key)}")
    else:
        print(_job_line(job))
    return 0


# -- wiring ---------------------------------------------------------------
# (command, module, parser adder, runner). Modules are imported when the parser is built;
# one whose optional dependency is missing (PySide6, Ray) still gets its command, which
# then says what to install.
SUBCOMMANDS = (
    ("models", "core.model_commands", "add_models_parser", "run_models"),
    ("serve", "service.server", "add_serve_parser", "run_serve"),
    ("farm", "farm.commands", "add_farm_parser", "run_farm"),
    ("assemble", "farm.commands", "add_assemble_parser", "run_assemble"),
    ("panel", "panel.app", "add_panel_parser", "run_panel"),
    ("install-resolve-script", "hosts.resolve", "add_install_parser", "run_install"),
    ("dataset", "training.dataset", "add_dataset_parser", "run_dataset"),
    ("train", "training.train", "add_train_parser", "run_train"),
    ("distill", "training.distill", "add_distill_parser", "run_distill"),
)


def _missing_dependency(command: str, package: str):
    def run(args):
        raise UserError(f"`toon-ofx {command}` needs the {package} package, which is not installed; "
                        "run `bash scripts/install.sh` (or pip install it)")
    return run


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="toon-ofx", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"toon-ofx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_render_parser(sub)
    add_blend_parser(sub)
    add_jobs_parser(sub)
    for command, module, adder, runner in SUBCOMMANDS:
        try:
            mod = importlib.import_module(f".{module}", __package__)
        except ModuleNotFoundError as exc:
            if not exc.name or exc.name.split(".")[0] in ("toon_ofx", "engine"):
                raise
            p = sub.add_parser(command, help=f"(needs {exc.name})", add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
            p.set_defaults(run=_missing_dependency(command, exc.name))
            continue
        getattr(mod, adder)(sub)
        sub.choices[command].set_defaults(run=getattr(mod, runner))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"toon-ofx: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except Cancelled as exc:
        print(f"toon-ofx: {exc}; finished frames are kept, run again to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("toon-ofx: interrupted; finished frames are kept, run again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
