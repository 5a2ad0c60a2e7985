"""The farm's sub-commands: `toon-ofx farm export` and `toon-ofx assemble`."""
from __future__ import annotations

import argparse
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Tuple

from ..core.errors import UserError
from ..core.options import add_codec_option, add_param_options, checked_frame_range, params_from_args
from .assemble import MOVIE_SUFFIXES, assemble
from .export import FORMATS, render_tasks, write_export
from .job import FarmJob, Resources, model_files, split_pattern
from .plan import FRAME_EXACT_CHUNK, default_chunk_size, frame_exact, temporal_plan


# -- farm export ------------------------------------------------------------------------------------------
def _abs(path: str) -> str:
    """Absolute form of a farm path; Windows/UNC and already-absolute paths are kept."""
    if re.match(r"^([A-Za-z]:[\\/]|\\\\|/)", path):
        return path
    return str(Path.cwd() / path)


def _default_outputs(source: str, overlay: bool, info=None) -> Tuple[str, str]:
    """Default frame pattern and movie, beside the source. Frames are named as a render into a folder names
    them (`core.outputs.sequence_name`: the source's numbering, an image sequence's own format, PNG for a
    movie); the movie takes the container of the codec that follows the source. When the source cannot be
    read here: its pattern's format (PNG for a movie), .mp4 (.mov for an overlay)."""
    from ..core.outputs import own_suffix, sequence_name

    src = Path(source)
    if info is not None:
        from ..core import media

        stem, name, suffix = info.stem, sequence_name(info, overlay), media.movie_suffix(info, overlay)
    else:
        pattern = re.search(r"[%#]", src.name)
        stem = re.split(r"[%#]", src.name)[0].rstrip("._-") if pattern else src.stem
        own = own_suffix(src.suffix.lower() if pattern else ".png", overlay)
        name = f"{stem or 'clip'}_toon.%06d{own}"
        suffix = ".mov" if overlay else ".mp4"
    stem = f"{stem or 'clip'}_toon"
    return str(src.with_name(stem + "_frames") / name), str(src.with_name(stem + suffix))


def _check_sequence(sequence: str, overlay: bool, info=None) -> List[str]:
    """Refuse a frame pattern the render tasks would refuse (checked as a render checks its output when the
    source is readable here); returns the warnings the tasks will give about what the frames cannot keep."""
    from ..core.outputs import ALPHA_IMAGE_SUFFIXES, SEQUENCE_SUFFIXES, plan_output

    name = split_pattern(sequence)[1]
    suffix = Path(name).suffix.lower()
    if not re.search(r"%0?\d*d", name) or suffix not in SEQUENCE_SUFFIXES:
        raise UserError(f"frame pattern {sequence!r} must look like folder/name.%06d.png, with one of "
                        f"{', '.join(SEQUENCE_SUFFIXES)}", field="sequence")
    if info is not None:
        return plan_output(info, Path(sequence), overlay).warnings
    if overlay and suffix not in ALPHA_IMAGE_SUFFIXES:
        raise UserError(f"an RGBA overlay needs frames with alpha ({', '.join(ALPHA_IMAGE_SUFFIXES)}), not "
                        f"{suffix}", field="sequence")
    return []


def _ocio_config(given: Optional[str]) -> Optional[str]:
    """The OCIO config file every task uses: the one given, else this shell's $OCIO (a file, not a built-in
    ocio:// config), else None (each worker's own $OCIO or the built-in config)."""
    if given:
        return _abs(given)
    env = os.environ.get("OCIO", "")
    return _abs(env) if env and not env.startswith("ocio://") else None


@contextmanager
def _ocio_env(config: Optional[str]):
    """$OCIO set to `config` while the colour space is checked here (core.colour reads the config from it)."""
    old = os.environ.get("OCIO")
    if config:
        os.environ["OCIO"] = config
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("OCIO", None)
        else:
            os.environ["OCIO"] = old


def _check_colour(info, input_colorspace: str, config: Optional[str]) -> None:
    """An unknown colour space fails here, not on the farm (when the config can be read here)."""
    if info is None or (config and not Path(config).is_file()):
        return
    from ..core.colour import plan_colour

    with _ocio_env(config):
        plan_colour(info, input_colorspace)


def _probe_local(path: Path):
    """The source's MediaInfo when it is readable here (None when it is not, or media is unavailable); an
    image-sequence pattern is probed when its folder is here."""
    try:
        from ..core import media
        from ..core.media.sequences import is_pattern
    except ImportError:
        return None
    if not (path.parent.is_dir() if is_pattern(path.name) else path.exists()):
        return None
    return media.probe(path)


def job_from_args(args: argparse.Namespace) -> FarmJob:
    """Validate `farm export` arguments into a FarmJob (probing the source when it is readable)."""
    params = params_from_args(args)
    grid = temporal_plan(params)
    k = params["keyframe_interval"]
    if not frame_exact(grid) and k <= 0:
        raise UserError("farm chunks need keyframe_interval > 0: without keyframes every chunk would have to "
                        "re-render the clip from frame 0 to reproduce a single-pass render",
                        field="keyframe_interval")
    source = _abs(str(args.source))
    overlay = params["output_kind"] == "overlay"
    info = _probe_local(Path(args.source))
    seq_default, movie_default = _default_outputs(source, overlay, info)
    sequence = _abs(str(args.sequence)) if args.sequence else seq_default
    if "%" not in split_pattern(sequence)[1]:
        sequence = sequence.rstrip("/\\") + "/" + split_pattern(seq_default)[1]
    warnings = _check_sequence(sequence, overlay, info)
    ocio_config = _ocio_config(args.ocio_config)
    _check_colour(info, params["input_colorspace"], ocio_config)
    movie: Optional[str] = None
    if not args.no_movie:
        movie = _abs(str(args.movie)) if args.movie else movie_default
        if Path(movie).suffix.lower() not in MOVIE_SUFFIXES:
            raise UserError(f"output movie {movie} must end in {', '.join(MOVIE_SUFFIXES)}", field="movie")
        if overlay and Path(movie).suffix.lower() != ".mov":
            raise UserError("an RGBA overlay needs a .mov output movie (or --no-movie)", field="movie")
        if movie == source:
            raise UserError(f"output movie {movie} is the source clip; the source is never written to",
                            field="movie")
        if info is not None:
            from ..core import media
            from ..core.outputs import plan_output

            media.check_renderable(info)
            movie_plan = plan_output(info, Path(movie), overlay, codec=args.codec)  # fails here, not on the farm
            warnings += [w for w in movie_plan.warnings if w not in warnings]
    frames = args.frames
    if info is not None:
        count = info.frame_count
        if frames is None:
            frames = (0, count - 1)
        elif frames[1] >= count:
            raise UserError(f"frame range {frames[0]}-{frames[1]} is outside the clip (frames 0-{count - 1})",
                            field="frames")
    if frames is None:
        raise UserError(f"cannot read {args.source} here to count its frames; give --frames A-B", field="frames")
    chunk_size = (args.chunk_size if args.chunk_size is not None else
                  FRAME_EXACT_CHUNK if frame_exact(grid) else default_chunk_size(k))
    if args.warmup < 0:
        raise UserError("--warmup must be 0 or more", field="warmup")
    name = args.name or f"toon-ofx {Path(source).stem} {frames[0]}-{frames[1]}"
    params = dict(params, **{p: _abs(path) for p, path in model_files(params).items()})
    return FarmJob(source=source, sequence=sequence, movie=movie, frames=tuple(frames), chunk_size=chunk_size,
                   params=params, warmup=args.warmup, executable=args.toon_ofx, name=name,
                   resources=resources_from_args(args, params),
                   models_dir=_abs(str(args.models_dir)) if args.models_dir else None, codec=args.codec,
                   ocio_config=ocio_config, warnings=warnings)


def resources_from_args(args: argparse.Namespace, params) -> Resources:
    """What each render task asks for; without --gpus, one GPU unless the device is the CPU (or Apple's)."""
    gpus = args.gpus if args.gpus is not None else (0 if params["device"] in ("cpu", "mps") else 1)
    defaults = Resources()
    return Resources(gpus=gpus, cpus=args.cpus if args.cpus is not None else defaults.cpus,
                     memory_gib=args.memory if args.memory is not None else defaults.memory_gib,
                     gpu_memory_gib=args.gpu_memory if args.gpu_memory is not None else defaults.gpu_memory_gib,
                     worker_tag=args.worker_tag, service=args.service)


def add_farm_parser(sub) -> None:
    """`toon-ofx farm export --format openjd|opencue|flamenco SRC -o DIR`."""
    farm = sub.add_parser("farm", help="render-farm job descriptions (Deadline/OpenJD, OpenCue, Flamenco)",
                          description="Write ready-to-submit render-farm jobs that render a clip in frame-range "
                                      "chunks into one image sequence and assemble the movie at the end.")
    farm_sub = farm.add_subparsers(dest="farm_command", metavar="ACTION", required=True)
    p = farm_sub.add_parser("export", help="write a job for a farm manager",
                            description="Write a job for a farm manager. Paths are as the farm's workers see "
                                        "them; the source is probed when it is readable here.")
    p.add_argument("source", help="the clip (as the farm sees it)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder to write the job files into")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="openjd: Deadline Cloud job bundle (template.json); opencue: PyOutline script; "
                        "flamenco: job type toon_ofx.js + job.json")
    p.add_argument("--frames", type=checked_frame_range, metavar="A-B",
                   help="inclusive source frame range (0-based); default: the whole clip")
    p.add_argument("--chunk-size", type=int, help="frames per task (default: two keyframe intervals; moved to "
                   "a multiple of the keyframe interval, one interval at least; a VToonify style: exactly as "
                   f"given, default {FRAME_EXACT_CHUNK})")
    p.add_argument("--warmup", type=int, default=0, metavar="N",
                   help="extra frames each task processes before its chunk, not written")
    p.add_argument("--sequence", help="frame pattern or folder (default: <clip>_toon_frames/<clip>_toon.%%06d.png; "
                                      "an image sequence's own numbering and format, e.g. shot_toon.%%04d.exr)")
    p.add_argument("--movie", help="movie assembled at the end (default: <clip>_toon.mp4, .mov for overlays)")
    p.add_argument("--no-movie", action="store_true", help="no assemble step: the frames are the result")
    add_codec_option(p)
    p.add_argument("--name", help="job name")
    p.add_argument("--toon-ofx", default="toon-ofx", metavar="COMMAND", help="the toon-ofx command on the workers")
    p.add_argument("--models-dir", help="the workers' model folder (default: each worker's own model store)")
    p.add_argument("--ocio-config", metavar="FILE",
                   help="OpenColorIO config file every task uses for --input-colorspace (default: $OCIO when it "
                        "names a file, else each worker's $OCIO or the built-in ACES studio config)")
    need = p.add_argument_group("what each render task asks for (OpenJD hostRequirements, OpenCue layers, "
                                "Flamenco worker tag)")
    defaults = Resources()
    need.add_argument("--gpus", type=int, metavar="N", help="GPUs (default 1, or 0 with --device cpu)")
    need.add_argument("--gpu-memory", type=float, metavar="GIB",
                      help=f"GPU memory in GiB (default {defaults.gpu_memory_gib:g})")
    need.add_argument("--memory", type=float, metavar="GIB", help=f"host memory in GiB (default {defaults.memory_gib:g})")
    need.add_argument("--cpus", type=int, metavar="N", help=f"CPU cores (default {defaults.cpus})")
    need.add_argument("--worker-tag", metavar="TAG", help="OpenCue: host tag of the render layers (e.g. gpu); "
                      "Flamenco: the ID of the worker tag whose Workers run the job")
    need.add_argument("--service", help="OpenCue: the service of the render layers")
    add_param_options(p)


def run_farm(args) -> int:
    if args.farm_command != "export":  # pragma: no cover - argparse allows only export
        raise UserError(f"unknown farm action {args.farm_command!r}")
    job = job_from_args(args)
    written = write_export(args.format, job, args.output)
    chunks, idle = render_tasks(args.format, job)
    frames = [b - a + 1 for a, b in filter(None, map(job.written, chunks))]
    print(f"toon-ofx: wrote {', '.join(str(p) for p in written)}: frames {job.frames[0]}-{job.frames[1]} in "
          f"{len(chunks)} render task(s) of up to {max(frames)} frames", file=sys.stderr)
    for note in (job.chunk_note(), idle):
        if note:
            print(f"toon-ofx: note: {note}", file=sys.stderr)
    for warning in job.warnings:
        print(f"toon-ofx: warning: {warning}", file=sys.stderr)
    return 0


# -- assemble ---------------------------------------------------------------------------------------------
def add_assemble_parser(sub) -> None:
    p = sub.add_parser("assemble", help="encode a rendered frame sequence into a movie with the source's audio",
                       description="The last step of a farm render: check that every frame is there and encode "
                                   "the movie with the source clip's frame timing and audio.")
    p.add_argument("sequence", type=Path,
                   help="frame folder or pattern like frames/clip_toon.%%06d.png (any image format toon-ofx reads: "
                        "PNG, TIFF, DPX, OpenEXR...)")
    p.add_argument("--source", type=Path, required=True, help="the source clip (timing and audio)")
    p.add_argument("-o", "--output", type=Path, required=True, help="movie to write (.mp4/.mov/.mkv/.mxf)")
    p.add_argument("--frames", type=checked_frame_range, metavar="A-B",
                   help="0-based frames of the source to assemble (default: the frames found); all must be present")
    add_codec_option(p)
    p.add_argument("--input-colorspace", default="auto", metavar="NAME",
                   help="the render's input colour space: float frames (a linear EXR plate's) become the movie's "
                        "display-referred pictures through it (default: auto, as the render)")
    p.add_argument("--ocio-config", type=Path, metavar="FILE",
                   help="the render's OpenColorIO config (default: $OCIO, else the built-in ACES studio config)")


def run_assemble(args) -> int:
    if args.ocio_config:
        os.environ["OCIO"] = str(args.ocio_config)   # core.colour reads the config from $OCIO
    encoded = assemble(args.sequence, args.source, args.output, args.frames, codec=args.codec,
                       input_colorspace=args.input_colorspace)
    print(f"toon-ofx: wrote {encoded.path} ({encoded.codec.label})", file=sys.stderr)
    for warning in encoded.notes:
        print(f"toon-ofx: warning: {warning}", file=sys.stderr)
    return 0
