"""A farm job (what renders, where, in which chunks, on what hardware) and the command lines its tasks run.

Render tasks run `toon-ofx render SRC -o SEQ.%06d.EXT --frames A-B --warmup N
[--chunk-of F-L] [--models-dir DIR] [--ocio-config FILE] --json|--openjd [effect parameters]`
(EXT: the source sequence's own format, .png for a movie source); the assemble task runs
`toon-ofx assemble SEQ.%06d.EXT --source SRC -o OUT.mp4 --frames F-L [--input-colorspace NAME]
[--ocio-config FILE]`. Every export builds its tasks from `render_command`/`assemble_command`,
with the farm's own placeholders where a value is filled in per task or at submission.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..core.errors import UserError
from ..core.options import option_flag
from ..core.params import PARAMS, validate
from .plan import Chunk, frame_exact, plan_chunks, snap_chunk, task_chunk_size, temporal_plan

MODEL_PARAMS = ("model", "base_model")   # parameters that may name a checkpoint file
GRID_PARAMS = ("keyframe_interval", "keyframe_overlap")   # the chunk grid depends on them


def explicit_params(params: Dict[str, Any]) -> Dict[str, Any]:
    """The validated parameters a task command spells out: those that differ from their default.

    `keyframe_interval` and `keyframe_overlap` are always included when the style has keyframe chains:
    the chunk grid depends on them (a VToonify style's chunks do not).
    """
    values = validate(params)
    grid = () if frame_exact(temporal_plan(values)) else GRID_PARAMS
    return {p.name: values[p.name] for p in PARAMS
            if values[p.name] != p.default or p.name in grid}


def param_args(params: Dict[str, Any], placeholders: Optional[Dict[str, str]] = None) -> List[str]:
    """Command-line flags for every effect parameter that differs from its default (and the grid's).

    `placeholders` replaces a parameter's value by a farm placeholder (e.g. an OpenJD PATH parameter).
    """
    out: List[str] = []
    explicit = explicit_params(params)
    for p in PARAMS:
        if p.name not in explicit:
            continue
        value, flag = explicit[p.name], option_flag(p.name)
        if placeholders and p.name in placeholders:
            out.extend([flag, placeholders[p.name]])
        elif p.type is bool:
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out.extend([flag, repr(value) if isinstance(value, float) else str(value)])
    return out


def render_command(source: str, sequence: str, frames: str, warmup: str, chunk_of: Optional[str],
                   params: Dict[str, Any], *, models_dir: Optional[str] = None, ocio_config: Optional[str] = None,
                   progress: str = "--json", placeholders: Optional[Dict[str, str]] = None) -> List[str]:
    """`toon-ofx render` arguments (without the executable) for one chunk; chunk_of: the job's range.

    progress: "--json" (JSON lines) or "--openjd" (openjd_progress:/openjd_status: lines).
    """
    args = ["render", source, "-o", sequence, "--frames", frames, "--warmup", warmup]
    if chunk_of is not None:
        args += ["--chunk-of", chunk_of]
    if models_dir is not None:
        args += ["--models-dir", models_dir]
    if ocio_config is not None:
        args += ["--ocio-config", ocio_config]
    return args + [progress] + param_args(params, placeholders)


def assemble_command(sequence: str, source: str, movie: str, frames: str, codec: Optional[str] = None, *,
                     input_colorspace: str = "auto", ocio_config: Optional[str] = None) -> List[str]:
    """`toon-ofx assemble` arguments (without the executable). The colour space and OCIO config are the
    render's: a float plate's frames are turned into the movie's display-referred pictures with them."""
    args = ["assemble", sequence, "--source", source, "-o", movie, "--frames", frames]
    if codec:
        args += ["--codec", codec]
    if input_colorspace.strip().lower() != "auto":
        args += ["--input-colorspace", input_colorspace]
    if ocio_config is not None:
        args += ["--ocio-config", ocio_config]
    return args


def split_pattern(pattern: str) -> Tuple[str, str]:
    """'/a/b/clip.%06d.png' -> ('/a/b', 'clip.%06d.png') (either separator)."""
    cut = max(pattern.rfind("/"), pattern.rfind("\\"))
    if cut < 0:
        return ".", pattern
    return pattern[:cut] or "/", pattern[cut + 1:]


def model_files(params: Dict[str, Any]) -> Dict[str, str]:
    """The model parameters whose value is a checkpoint file rather than a model-store name.

    Files are paths on the farm (an export maps them like any other path); names are resolved
    by each worker's model store.
    """
    try:
        from ..core.model_store import load_manifest
        names = set(load_manifest()["models"])
    except Exception:  # noqa: BLE001 - no manifest here: anything that looks like a path is a file
        names = set()
    values = validate(params)
    return {name: values[name] for name in MODEL_PARAMS
            if values[name] not in names and any(c in values[name] for c in "/\\.")}


@dataclass(frozen=True)
class Resources:
    """What one render task asks of its worker (the assemble task needs no GPU).

    The defaults suit 1024-px models at batch size 1 with room to spare: the engine holds two
    generators and VGG16 in memory and projects one face at a time. gpus=0 asks for CPU workers.
    `worker_tag` selects workers by tag: OpenCue host tags (e.g. "gpu"), Flamenco a worker tag's ID.
    `service` is the OpenCue service of the render layers (its defaults apply to what is not set).
    """

    gpus: int = 1
    gpu_memory_gib: float = 8.0
    memory_gib: float = 8.0
    cpus: int = 2
    worker_tag: Optional[str] = None
    service: Optional[str] = None

    def __post_init__(self):
        for name in ("gpus", "gpu_memory_gib", "memory_gib", "cpus"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must be 0 or more, got {getattr(self, name)}", field=name)
        if self.cpus < 1:
            raise UserError("a render task needs at least 1 CPU", field="cpus")


@dataclass
class FarmJob:
    """What a farm job renders, with paths as the farm's workers see them."""

    source: str
    sequence: str                       # printf pattern of the frames, source frame numbers
    movie: Optional[str]                # movie assembled at the end (None: the sequence is the result)
    frames: Tuple[int, int]             # inclusive frame range, 0-based (also for image sequences)
    chunk_size: int
    params: Dict[str, Any] = field(default_factory=dict)
    warmup: int = 0
    executable: str = "toon-ofx"
    name: str = "toon-ofx"
    chunk_of: bool = True               # pass --chunk-of: each task snaps its chunk onto the segment grid
    resources: Resources = field(default_factory=Resources)
    models_dir: Optional[str] = None    # the workers' model folder (--models-dir), None: their default
    codec: Optional[str] = None         # movie codec for the assemble step (None: follow the source)
    ocio_config: Optional[str] = None   # the OCIO config file every task uses (None: each worker's $OCIO or
    #                                     OpenColorIO's built-in ACES studio config)
    warnings: List[str] = field(default_factory=list)   # what the outputs cannot keep of the source (said at
    #                                                     export, and by the tasks)

    @property
    def input_colorspace(self) -> str:
        return str(validate(self.params)["input_colorspace"])

    @property
    def keyframe_interval(self) -> int:
        return int(validate(self.params)["keyframe_interval"])

    @property
    def frame_range(self) -> str:
        """The job's frames as 'F-L'."""
        return f"{self.frames[0]}-{self.frames[1]}"

    @property
    def temporal_plan(self):
        """The renderer's plan for this job's parameters: keyframes, cross-fade and tracking reach, or a
        VToonify style's style window and tracking reach (`plan.temporal_plan`)."""
        return temporal_plan(self.params)

    @property
    def frame_exact(self) -> bool:
        """True for a VToonify style: no keyframe grid, chunks of any size start anywhere."""
        return frame_exact(self.temporal_plan)

    @property
    def task_chunk_size(self) -> int:
        """Frames per task: the asked chunk size, moved onto the keyframe grid unless frame-exact."""
        return task_chunk_size(self.chunk_size, self.temporal_plan)

    def chunk_note(self) -> Optional[str]:
        """How the tasks' chunks follow from the one asked for: why their size differs, or that they are
        frame-exact (a VToonify style); None when there is nothing to say."""
        size, k = self.task_chunk_size, self.keyframe_interval
        if self.frame_exact:
            reach = max(c.warmup for c in self.chunks())
            return (f"chunks are frame-exact for a VToonify style (no keyframe chains): a task writes exactly the "
                    f"frames it is given ({size} per task), after decoding up to {reach} frames before them that "
                    f"it does not write (face tracking and the style codes' window)")
        if size == self.chunk_size:
            return None
        if self.chunk_size < k:
            return (f"chunk size {self.chunk_size} became {size}, the keyframe interval: a task renders whole "
                    f"keyframe segments (each starts with a cold projection of its faces), so smaller chunks "
                    f"would only repeat that work; for smaller tasks lower keyframe_interval (more keyframes "
                    f"change the result)")
        return (f"chunk size {self.chunk_size} became {size}, the nearest multiple of the keyframe interval "
                f"({k}): a chunk that starts between keyframes would re-project frames another task writes")

    def written(self, chunk: Tuple[int, int], plan=None) -> Optional[Tuple[int, int]]:
        """The frames a render task given `chunk` writes: with `chunk_of`, its chunk snapped onto the
        segment grid (`plan.snap_chunk`; None: nothing to do). `plan`: the job's `temporal_plan` when the
        caller has it already (working it out validates the parameters and looks up the style's kind)."""
        if not self.chunk_of:
            return chunk
        return snap_chunk(chunk, self.frames, plan if plan is not None else self.temporal_plan)

    def idle_note(self, chunks: List[Tuple[int, int]], cut: str) -> Optional[str]:
        """How many of the render tasks cut as `chunks` will have nothing to write, and why; None when
        every task writes frames. `cut`: how the farm manager cuts the range, for the reason."""
        plan = self.temporal_plan   # once, not once per chunk
        idle = sum(self.written(c, plan) is None for c in chunks)
        if not idle:
            return None
        return (f"{idle} of the {len(chunks)} render tasks will have nothing to do: {cut}, and the frames "
                f"of {'that one' if idle == 1 else 'those'} lie inside a keyframe segment (keyframes every "
                f"{self.keyframe_interval} frames) that another task renders from its keyframe")

    def chunks(self) -> List[Chunk]:
        return plan_chunks(self.frames[0], self.frames[1], self.chunk_size, self.warmup, plan=self.temporal_plan)

    def render_args(self, frames: str, progress: str = "--json") -> List[str]:
        """`toon-ofx render` arguments (without the executable) for one chunk."""
        return render_command(self.source, self.sequence, frames, str(self.warmup),
                              self.frame_range if self.chunk_of else None, self.params,
                              models_dir=self.models_dir, ocio_config=self.ocio_config, progress=progress)

    def assemble_args(self) -> List[str]:
        assert self.movie is not None
        return assemble_command(self.sequence, self.source, self.movie, self.frame_range, self.codec,
                                input_colorspace=self.input_colorspace, ocio_config=self.ocio_config)
