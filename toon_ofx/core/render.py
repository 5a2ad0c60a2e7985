"""Render a clip: media in, engine per picture, media out.

Every render writes an image sequence named by SOURCE frame numbers, one
atomic file per frame (`outputs`); a movie output is encoded from that
sequence at the end, with the codec that follows the source (or `codec`).
So a crashed or cancelled render resumes by running the same request again
(finished frames are skipped), a farm chunk is just a frame range, and the
local engine process, the CLI and Ray all share this one path.

Precision follows the source: a deep source (10-bit ProRes, HEVC Main 10,
16-bit PNG) is decoded, stylised and written at 16 bits per channel, and its
movie encoded from those 16-bit frames. An interlaced source is stylised
field by field (`pictures`). An HDR source is refused (the models are SDR).
"""
from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import media, model_store
from .errors import Cancelled, UserError
from .outputs import OutputPlan, frame_bits, plan_output, resolve_range
from .params import validate
from .pictures import Pictures, Weaver
from .progress import ProgressEvent


@dataclass
class RenderRequest:
    source: Path
    output: Path
    params: Dict[str, Any] = field(default_factory=dict)
    frames: Optional[Tuple[int, int]] = None   # inclusive frame range, 0-based (also for image sequences)
    warmup: int = 0                            # extra frames processed before frames[0], not written
    work_dir: Optional[Path] = None            # frame folder for movie outputs (resume)
    keep_frames: bool = False
    bits: Optional[int] = None                 # bits per channel of the frames: 8, 16 or None (the source's)
    codec: Optional[str] = None                # movie codec (media.codec_names()); None follows the source


@dataclass
class RenderResult:
    output: Path
    kind: str             # "movie", "sequence" or "image"
    pattern: str          # printf pattern of the frame files (source frame numbers); an image: its path
    first_frame: int      # 0-based frame range rendered
    last_frame: int
    written: int
    skipped: int
    fps: float
    timings: Dict[str, float] = field(default_factory=dict)
    first_number: int = 0             # the number frame 0 carries in `pattern` (a sequence's first file number)
    codec: Optional[str] = None       # the movie's codec (a media.CODECS label)
    notes: List[str] = field(default_factory=list)   # streams converted or left out, and why


def pick_device(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this machine has no CUDA GPU", field="device")
    return torch.device(name)


@dataclass
class Plan:
    """A checked request: parameters, source facts, frame range, output layout and depth."""

    params: Dict[str, Any]
    info: "media.MediaInfo"
    first: int
    last: int
    output: OutputPlan
    bits: int = 8

    def pending(self) -> List[int]:
        """Frames of the range not yet on disk."""
        return [i for i in range(self.first, self.last + 1) if not self.output.frame_path(i).exists()]


def check_request(request: RenderRequest) -> Plan:
    """Everything about a request that can be wrong, checked before any model is loaded."""
    params = validate(request.params)
    info = media.probe(request.source)
    media.check_renderable(info)
    first, last = resolve_range(request.frames, info.frame_count)
    if request.warmup < 0:
        raise UserError("warmup must be 0 or more frames", field="warmup")
    overlay = params["output_kind"] == "overlay"
    output = plan_output(info, request.output, overlay, request.work_dir)
    bits = frame_bits(output, info, request.bits)
    if output.kind == "movie":
        media.choose_codec(output.movie, request.codec, info, overlay)  # a codec that cannot hold it fails here
    elif request.codec is not None:
        raise UserError(f"a codec is for movie outputs; {request.output} is an image {output.kind}", field="codec")
    model_files(params)  # unknown or missing models fail here, before anything is loaded
    return Plan(params, info, first, last, output, bits)


def model_files(params: Dict[str, Any], download: bool = True) -> Dict[str, Path]:
    """Paths of every file the parameters need; known models missing locally are downloaded first,
    and whatever is still missing is named in one error (model_store.require)."""
    return model_store.require(model_store.required(params), download=download)


def _model_label(name: str) -> str:
    """A model as progress names it: its manifest name, or the file name of a path."""
    return name.replace("\\", "/").rsplit("/", 1)[-1]


MODEL_PARAMS = ("model", "base_model", "swap_res", "blend_width", "mapping_from", "landmarker", "device")


class Renderer:
    """Loaded models for one parameter set; render many requests without reloading.

    The local engine process and the Ray workers keep one of these alive.
    """

    def __init__(self, params: Dict[str, Any], on_load: Optional[Callable[[str, int, int], None]] = None):
        """Load the models; `on_load(model, number, count)` is called before each of them is loaded."""
        from engine.generator.blend import blend_generators
        from engine.generator.checkpoints import CheckpointError, load_generator
        from engine.faces.landmarks import make_landmarker
        from engine.inversion.lpips import load_lpips

        self.params = validate(params)
        p = self.params
        self.device = pick_device(p["device"])
        t = time.perf_counter()
        files = model_files(p)
        order = [_model_label(p["base_model"]), _model_label(p["model"]), "lpips", p["landmarker"]]

        def loading(number: int) -> None:
            if on_load is not None:
                on_load(order[number - 1], number, len(order))

        try:
            loading(1)
            self.base = load_generator(files["base"], device=self.device)
            loading(2)
            toon = load_generator(files["toon"], device=self.device, expect_size=self.base.size)
            if p["swap_res"] > self.base.size:
                raise UserError(f"swap_res {p['swap_res']} is above the model's resolution {self.base.size}",
                                field="swap_res")
            if model_store.is_blended(p["model"]):
                self.blended = toon  # a published pre-blended model: its swap resolution is baked in
            else:
                self.blended = blend_generators(self.base, toon, p["swap_res"], width=p["blend_width"],
                                                mapping_from=p["mapping_from"])
            loading(3)
            self.perceptual = load_lpips(files["vgg16"], files["lpips"], device=self.device)
            loading(4)
            if p["landmarker"] == "face-alignment":
                self.landmarker = make_landmarker("face-alignment", device=str(self.device),
                                                  fan_path=files["fan"], s3fd_path=files["s3fd"])
            else:
                self.landmarker = make_landmarker(p["landmarker"])
            self.landmarker = _Serialised(self.landmarker)
        except CheckpointError as exc:
            raise UserError(str(exc), field="model") from None
        except FileNotFoundError as exc:
            raise UserError(str(exc)) from None
        for module in (self.base, self.blended, self.perceptual):
            module.eval().requires_grad_(False)
        self.load_seconds = time.perf_counter() - t

    def matches(self, params: Dict[str, Any]) -> bool:
        """True when `params` need the same loaded models as this renderer."""
        params = validate(params)
        return all(params[k] == self.params[k] for k in MODEL_PARAMS)

    def pipeline(self, params: Dict[str, Any], cancel: Optional[threading.Event] = None,
                 on_step: Optional[Callable[[int, int], None]] = None):
        """A pipeline for `params`; with `cancel`, setting the event stops it within one projection step;
        `on_step(step, steps)` hears of every projection step."""
        from engine.pipeline import PipelineConfig, ToonPipeline

        p = validate(params)
        config = PipelineConfig(steps=p["steps"], warm_steps=p["warm_steps"], latent_space=p["latent_space"],
                                pixel_weight=p["pixel_weight"], feather=p["feather"],
                                color_match=p["color_match"], overlay=p["output_kind"] == "overlay",
                                smoothing=p["smoothing"], keyframe_interval=p["keyframe_interval"],
                                batch_size=p["batch_size"], seed=p["seed"])
        pipeline = ToonPipeline(self.landmarker, self.base, self.blended, self.perceptual, config)
        if cancel is not None or on_step is not None:
            def after_step(step: int, steps: int) -> None:
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"cancelled during a projection (step {step} of {steps})")
                if on_step is not None:
                    on_step(step, steps)
            pipeline.on_step = after_step
        return pipeline

    def render(self, request: RenderRequest, progress: Optional[Callable[[ProgressEvent], None]] = None,
               cancel: Optional[threading.Event] = None, plan: Optional["Plan"] = None) -> RenderResult:
        """Render `request`; frames already on disk are kept and skipped."""
        plan = plan or check_request(request)
        params, info, out = plan.params, plan.info, plan.output
        first, last = plan.first, plan.last
        out.folder.mkdir(parents=True, exist_ok=True)
        todo = plan.pending()
        total = last - first + 1
        skipped = total - len(todo)
        report = _Reporter(progress, total, skipped)
        timings: Dict[str, float] = {}
        pictures = Pictures(info, plan.bits)
        writer = _FrameWriter(plan, pictures, report, timings)
        wanted = pictures.of_frames(todo)  # the engine works on pictures: frames, or fields when interlaced
        warmup = request.warmup * pictures.per_frame

        if wanted and params["frame_batch"] > 1:
            self._render_segments(plan, pictures, wanted, warmup, writer, cancel)
        elif wanted:
            pipeline = self.pipeline(params, cancel, report.projecting)
            start = max(0, min(pipeline.warmup_start(wanted[0]), wanted[0] - warmup))
            pending = set(wanted)
            t_read = time.perf_counter()
            for index, frame in pictures.read(start, wanted[-1]):
                _add(timings, "decode", time.perf_counter() - t_read)
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"cancelled after {report.done} of {total} frames")
                result = pipeline.process(frame, index, stylise=pipeline.needs_projection(index, wanted[0]))
                for stage, seconds in result.timings.items():
                    _add(timings, stage, seconds)
                if index in pending:
                    writer.put(index, result)
                t_read = time.perf_counter()

        encoded = None
        if out.kind == "movie":
            report.stage("encoding")
            t = time.perf_counter()
            encoded = media.encode_frames(out.pattern, out.movie, info, first_frame=first, last_frame=last,
                                          first_number=out.first_number, audio_from=info, codec=request.codec,
                                          alpha=params["output_kind"] == "overlay")
            timings["encode"] = time.perf_counter() - t
            if not request.keep_frames:
                shutil.rmtree(out.folder, ignore_errors=True)
        report.stage("done")
        return RenderResult(output=out.movie or (Path(out.pattern) if out.kind == "image" else out.folder),
                            kind=out.kind, pattern=out.pattern, first_frame=first, last_frame=last,
                            written=len(todo), skipped=skipped, fps=float(info.fps), timings=timings,
                            first_number=out.first_number, codec=encoded.codec.label if encoded else None,
                            notes=encoded.notes if encoded else [])

    def _render_segments(self, plan: "Plan", pictures: Pictures, todo: List[int], warmup: int,
                         writer: "_FrameWriter", cancel: Optional[threading.Event]) -> None:
        """frame_batch > 1: keyframe segments in lockstep, their faces projected together.

        The warm-start chain restarts at every keyframe, so each segment of pending
        pictures is an independent chain: it gets its own pipeline (tracker, face
        states; shared models), its own decoder stream and its own warm-up, exactly
        as a farm chunk would. Up to `frame_batch` segments advance one projected
        picture per step (tracker-only warm-up pictures are run through in between);
        when one ends the next starts, so at most `frame_batch` pictures are in
        flight. Frames are written as they finish (not in order).
        """
        params, timings, report = plan.params, writer.timings, writer.report
        k = params["keyframe_interval"]
        segments: Dict[int, List[int]] = {}
        for index in todo:
            segments.setdefault(index // k, []).append(index)
        queue = list(segments.values())
        active: List[_Segment] = []
        try:
            while queue or active:
                while queue and len(active) < params["frame_batch"]:
                    frames = queue.pop(0)
                    pipeline = self.pipeline(params, cancel, report.projecting)
                    start = pipeline.warmup_start(frames[0])
                    if frames[0] == todo[0]:
                        start = max(0, min(start, todo[0] - warmup))
                    active.append(_Segment(pipeline, pictures.read(start, frames[-1]), frames))
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"cancelled after {report.done} of {report.total} frames")
                step = []
                for segment in list(active):
                    prepared = self._next_projected(segment, timings)
                    if prepared is None:  # the stream ended early (as the single-pass loop allows)
                        segment.frames.close()
                        active.remove(segment)
                    else:
                        step.append((segment, prepared))
                if step:  # one projection pass for the faces of every segment's current picture
                    step[0][0].pipeline.project_faces([prepared for _, prepared in step])
                for segment, prepared in step:
                    result = segment.pipeline.finish(prepared)
                    for stage, seconds in result.timings.items():
                        _add(timings, stage, seconds)
                    if prepared.index in segment.pending:
                        writer.put(prepared.index, result)
                    if prepared.index == segment.last:
                        segment.frames.close()
                        active.remove(segment)
        finally:
            for segment in active:
                segment.frames.close()

    @staticmethod
    def _next_projected(segment: "_Segment", timings: Dict[str, float]):
        """The segment's next picture that needs projection, prepared; pictures before its keyframe only
        feed the tracker and are run through at once, so the segments' keyframes line up in one step."""
        pipe = segment.pipeline
        while True:
            t = time.perf_counter()
            item = next(segment.frames, None)
            _add(timings, "decode", time.perf_counter() - t)
            if item is None:
                return None
            index, frame = item
            stylise = pipe.needs_projection(index, segment.first)
            prepared = pipe.prepare(frame, index, stylise=stylise)
            if stylise:
                return prepared
            for stage, seconds in pipe.finish(prepared).timings.items():
                _add(timings, stage, seconds)

    def preview(self, source: Path, frame: int, params: Dict[str, Any],
                cancel: Optional[threading.Event] = None) -> Tuple[np.ndarray, np.ndarray, int]:
        """One frame (its first field when interlaced), 8-bit, cold-started: (original RGB, stylised RGB or
        RGBA, faces found).

        Setting `cancel` stops it within one projection step (Cancelled)."""
        info = media.probe(source)
        media.check_renderable(info)
        index, _ = resolve_range((frame, frame), info.frame_count)
        pictures = Pictures(info, 8)
        picture = pictures.of_frames([index])[0]
        original = next(iter(pictures.read(picture, picture)))[1]
        if cancel is not None and cancel.is_set():
            raise Cancelled("preview cancelled")
        result = self.pipeline(params, cancel).process(original, picture)
        return original, result.image, result.faces


class _FrameWriter:
    """Writes stylised pictures as frame files (fields woven back into frames), timing and reporting them."""

    def __init__(self, plan: "Plan", pictures: Pictures, report: "_Reporter", timings: Dict[str, float]):
        self.plan, self.weaver, self.report, self.timings = plan, Weaver(pictures), report, timings

    def put(self, picture: int, result) -> None:
        done = self.weaver.add(picture, result.image, result.faces)
        if done is None:
            return
        frame, image, faces = done
        t = time.perf_counter()
        media.write_frame(self.plan.output.frame_path(frame), image, bits=self.plan.bits)
        _add(self.timings, "write", time.perf_counter() - t)
        self.report.frame(faces)


class _Segment:
    """One keyframe segment of a frame-batched render: its pipeline, decoder stream and pictures to write."""

    def __init__(self, pipeline, frames, pending: List[int]):
        self.pipeline, self.frames, self.pending = pipeline, frames, set(pending)
        self.first, self.last = pending[0], pending[-1]


class _Serialised:
    """One detect() at a time: a preview and a job may share a renderer across threads."""

    def __init__(self, landmarker):
        self._landmarker, self._lock = landmarker, threading.Lock()

    def detect(self, image, *args, **kwargs):
        with self._lock:
            return self._landmarker.detect(image, *args, **kwargs)


def _add(timings: Dict[str, float], stage: str, seconds: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + seconds


class _Reporter:
    """Turns frame completions and projection steps into ProgressEvents with an ETA.

    Projection steps are reported at most every PROJECTING_INTERVAL seconds (and always the
    first and the last step): a slow projection shows every step, a fast one does not flood.
    """

    PROJECTING_INTERVAL = 0.2

    def __init__(self, callback, total: int, skipped: int):
        self.callback, self.total, self.done, self.faces = callback, total, skipped, 0
        self._start, self._fresh, self._eta, self._step_time = time.monotonic(), 0, None, 0.0
        self.stage("rendering")

    def frame(self, faces: int) -> None:
        self.done += 1
        self._fresh += 1
        self.faces += faces
        rate = self._fresh / max(time.monotonic() - self._start, 1e-9)
        self._eta = (self.total - self.done) / rate
        self._emit("rendering", self._eta)

    def projecting(self, step: int, steps: int) -> None:
        now = time.monotonic()
        if step in (1, steps) or now - self._step_time >= self.PROJECTING_INTERVAL:
            self._step_time = now
            self._emit("projecting", self._eta, step=step, steps=steps)

    def stage(self, name: str) -> None:
        self._emit(name, 0.0 if name == "done" else None)

    def _emit(self, stage: str, eta: Optional[float], **extra) -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(stage, self.done, self.total, self.faces, eta, **extra))


_CACHE: Dict[str, Renderer] = {}
_CACHE_LOCK = threading.Lock()


def get_renderer(params: Dict[str, Any], on_load: Optional[Callable[[str, int, int], None]] = None) -> Renderer:
    """The process-wide Renderer for these parameters (one loaded model set is kept); `on_load` hears of
    each model loaded (see Renderer)."""
    with _CACHE_LOCK:
        current = _CACHE.get("current")
        if current is None or not current.matches(params):
            _CACHE.clear()
            _CACHE["current"] = Renderer(params, on_load)
        return _CACHE["current"]


def render(request: RenderRequest, progress: Optional[Callable[[ProgressEvent], None]] = None,
           cancel: Optional[threading.Event] = None) -> RenderResult:
    """Render `request` with the process-wide renderer (models loaded once per process).

    Progress: "loading" first, then one "loading" event per model when the models are loaded,
    then "rendering"/"projecting" events (see toon_ofx.core.progress).
    """
    plan = check_request(request)
    on_load = None
    if progress is not None:
        total = plan.last - plan.first + 1
        done = total - len(plan.pending())
        progress(ProgressEvent("loading", done, total, 0, None))

        def on_load(model: str, number: int, count: int) -> None:
            progress(ProgressEvent("loading", done, total, 0, None, model=model, step=number, steps=count))
    return get_renderer(plan.params, on_load).render(request, progress, cancel, plan)


def preview(source: Path, frame: int, params: Dict[str, Any], cancel: Optional[threading.Event] = None):
    """One stylised frame for a side-by-side preview: (original, stylised, faces); `cancel` stops it."""
    return get_renderer(params).preview(Path(source), frame, params, cancel)
