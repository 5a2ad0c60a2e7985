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

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from . import media, model_store
from .colour import Colour, plan_colour
from .errors import Cancelled, UserError
from .inversion import Inversion, InversionModels, load_one_pass_toon, plan_inversion, required_models
from .outputs import OutputPlan, frame_bits, plan_output, resolve_range
from .params import validate
from .pictures import Pictures, Weaver
from .progress import ProgressEvent, Reporter, StepReporter
from .vtoonify import VToonifyModels

log = logging.getLogger("toon_ofx")


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
    warnings: List[str] = field(default_factory=list)   # all that the output could not keep (also sent as events)


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
    inversion: Optional[Inversion] = None
    colour: Optional[Colour] = None            # the source's colour path to the engine's working space

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
    output = plan_output(info, request.output, overlay, request.work_dir, request.codec)  # codec checked too
    bits = frame_bits(output, info, request.bits)
    colour = plan_colour(info, params["input_colorspace"])  # an unknown colour space fails here
    inversion = plan_inversion(params)
    model_files(params, inversion=inversion)  # unknown or missing models fail here, before anything is loaded
    return Plan(params, info, first, last, output, bits, inversion, colour)


def model_files(params: Dict[str, Any], download: bool = True,
                inversion: Optional[Inversion] = None) -> Dict[str, Path]:
    """Paths of every file the parameters need (core.inversion.required_models); known models missing
    locally are downloaded first (encoders never), and whatever is still missing is named in one error
    (model_store.require)."""
    return model_store.require(required_models(params, inversion), download=download)


def _model_label(name: str) -> str:
    """A model as progress names it: its manifest name, or the file name of a path."""
    return str(name).replace("\\", "/").rsplit("/", 1)[-1]


MODEL_PARAMS = ("model", "base_model", "swap_res", "blend_width", "mapping_from", "landmarker", "device")


class Renderer:
    """Loaded models for one parameter set; render many requests without reloading.

    The local engine process and the Ray workers keep one of these alive. What the
    inversion needs (LPIPS, the face encoder) is loaded on first use and kept, so
    a live encoder preview and an encoder+projection render share one renderer.
    """

    def __init__(self, params: Dict[str, Any], on_load: Optional[Callable[[str, int, int], None]] = None):
        """Load the models; `on_load(model, number, count)` is called before each of them is loaded."""
        from engine.generator.blend import blend_generators
        from engine.generator.checkpoints import CheckpointError, load_generator
        from engine.faces.landmarks import make_landmarker

        self.params = validate(params)
        p = self.params
        self.device = pick_device(p["device"])
        t = time.perf_counter()
        inversion = plan_inversion(p)
        files = model_files(p, inversion=inversion)
        self.files, self.stamps = files, model_store.file_stamps(files.values())
        self.vtoonify = None   # a VToonify style's networks (core.vtoonify); then no base, toon or LPIPS
        vt_labels = ({role: _model_label(name) for role, name in required_models(p, inversion).items()}
                     if inversion.vtoonify else {})
        order = ([vt_labels[r] for r in ("toon", "parser", "style_encoder")] if inversion.vtoonify else
                 [_model_label(p["model"])] if inversion.one_pass_toon else
                 [_model_label(p["base_model"]), _model_label(p["model"])])
        if inversion.encoder is not None and not inversion.one_pass_toon:
            order.append(_model_label(inversion.encoder))
        if inversion.mode not in ("encoder", "vtoonify"):
            order.append("lpips")
        order.append(p["landmarker"])

        def loading(label: str) -> None:
            if on_load is not None:
                on_load(label, order.index(label) + 1, len(order))

        one_pass = None
        try:
            if inversion.vtoonify:
                self.vtoonify = VToonifyModels(files, self.device, loading, vt_labels, inversion.vtoonify.backbone)
                self.base = self.blended = self.inversion_models = None
            elif inversion.one_pass_toon:
                # no base W+ here: the encoder targets the toon generator directly
                loading(order[0])
                one_pass, decoder = load_one_pass_toon(files["toon"], self.device)
                self.base = self.blended = decoder
            else:
                loading(order[0])
                self.base = load_generator(files["base"], device=self.device)
                loading(order[1])
                toon = load_generator(files["toon"], device=self.device, expect_size=self.base.size)
                if p["swap_res"] > self.base.size:
                    raise UserError(f"swap_res {p['swap_res']} is above the model's resolution {self.base.size}",
                                    field="swap_res")
                if model_store.is_blended(p["model"]):
                    self.blended = toon  # a published pre-blended model: its swap resolution is baked in
                else:
                    self.blended = blend_generators(self.base, toon, p["swap_res"], width=p["blend_width"],
                                                    mapping_from=p["mapping_from"])
            if not inversion.vtoonify:
                self.inversion_models = InversionModels(self.base, self.device, one_pass)
                # what these parameters need now (others on first use)
                self.inversion_models.get(inversion, loading=loading if on_load is not None else None)
            loading(p["landmarker"])
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
        for module in (self.base, self.blended):
            if module is not None:
                module.eval().requires_grad_(False)
        self.load_seconds = time.perf_counter() - t

    def matches(self, params: Dict[str, Any]) -> bool:
        """True when `params` need the same loaded models as this renderer, and its files are unchanged."""
        params = validate(params)
        return (all(params[k] == self.params[k] for k in MODEL_PARAMS)
                and model_store.file_stamps(self.files.values()) == self.stamps)

    def config(self, params: Dict[str, Any], inversion: Optional[Inversion] = None):
        """The engine's PipelineConfig for a parameter set (and the inversion it runs)."""
        from engine.pipeline import PipelineConfig

        p = validate(params)
        mode = (inversion or plan_inversion(p)).mode
        return PipelineConfig(steps=p["steps"], warm_steps=p["warm_steps"], latent_space=p["latent_space"],
                              pixel_weight=p["pixel_weight"], feather=p["feather"],
                              color_match=p["color_match"], overlay=p["output_kind"] == "overlay",
                              smoothing=p["smoothing"], smoothing_mode=p["smoothing_mode"],
                              keyframe_interval=p["keyframe_interval"], keyframe_overlap=p["keyframe_overlap"],
                              batch_size=self.batch_size(p, mode), seed=p["seed"],
                              inversion=mode, refine_steps=p["refine_steps"])

    def batch_size(self, params: Dict[str, Any], mode: str) -> int:
        """Faces per batch: the parameter, or (0) what is fastest for this device and inversion mode."""
        from engine.pipeline import default_batch_size

        return params["batch_size"] or default_batch_size(self.device, mode)

    def pipeline(self, params: Dict[str, Any], cancel: Optional[threading.Event] = None,
                 on_step: Optional[Callable[[int, int], None]] = None, inversion: Optional[Inversion] = None):
        """A pipeline for `params`; with `cancel`, setting the event stops it within one projection step;
        `on_step(step, steps)` hears of every projection step."""
        from engine.pipeline import ToonPipeline

        inversion = inversion or plan_inversion(validate(params))
        if inversion.vtoonify:
            from engine.vtoonify.video import default_batch_size

            p = validate(params)
            return self.vtoonify.pipeline(self.landmarker, p, p["batch_size"] or default_batch_size(self.device),
                                          cancel)
        perceptual, encoder = self.inversion_models.get(inversion)
        pipeline = ToonPipeline(self.landmarker, self.base, self.blended, perceptual,
                                self.config(params, inversion), encoder=encoder)
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
        inversion = plan.inversion or plan_inversion(params)
        if inversion.notice:
            log.warning("toon-ofx: %s", inversion.notice)
        report = Reporter(progress, total, skipped, notice=inversion.notice)  # sent once, first event
        for warning in out.warnings:
            report.warn(warning)
        timings: Dict[str, float] = {}
        pictures = Pictures(info, plan.bits, plan.colour, out)
        writer = _FrameWriter(plan, pictures, report, timings)
        wanted = pictures.of_frames(todo)  # the engine works on pictures: frames, or fields when interlaced
        pictures.expect(wanted)
        warmup = request.warmup * pictures.per_frame

        if wanted and params["frame_batch"] > 1 and not inversion.vtoonify:   # one VToonify pass needs no lockstep
            self._render_segments(plan, pictures, wanted, warmup, writer, cancel)
        elif wanted:
            pipeline = self.pipeline(params, cancel, report.projecting, inversion)
            first_picture, last_picture = wanted[0], wanted[-1]
            start = max(0, min(pipeline.warmup_start(first_picture), first_picture - warmup))
            end = pipeline.plan.decode_end(last_picture, info.frame_count * pictures.per_frame)
            pending = set(wanted)
            decoded = _decoded(pictures.read(start, end), timings, cancel, report)
            for index, result in pipeline.run(decoded, first_picture, last_picture):
                for stage, seconds in result.timings.items():
                    _add(timings, stage, seconds)
                if index in pending:
                    writer.put(index, result)

        encoded = None
        if out.kind == "movie":
            report.stage("encoding")
            t = time.perf_counter()
            encoded = media.encode_frames(out.pattern, out.movie, info, first_frame=first, last_frame=last,
                                          first_number=out.first_number, audio_from=info, codec=request.codec,
                                          alpha=out.alpha, cancel=cancel)
            timings["encode"] = time.perf_counter() - t
            for note in encoded.notes:
                report.warn(note)
            if not request.keep_frames:
                shutil.rmtree(out.folder, ignore_errors=True)
        if info.is_still and todo and report.faces == 0:
            report.warn(f"no face found in {info.path.name}: it was written unchanged")
        report.stage("done")
        return RenderResult(output=out.movie or (Path(out.pattern) if out.kind == "image" else out.folder),
                            kind=out.kind, pattern=out.pattern, first_frame=first, last_frame=last,
                            written=len(todo), skipped=skipped, fps=float(info.fps), timings=timings,
                            first_number=out.first_number, codec=encoded.codec.label if encoded else None,
                            notes=encoded.notes if encoded else [], warnings=list(report.warnings))

    def _render_segments(self, plan: "Plan", pictures: Pictures, todo: List[int], warmup: int,
                         writer: "_FrameWriter", cancel: Optional[threading.Event]) -> None:
        """frame_batch > 1: keyframe segments in lockstep, their faces projected together.

        Each segment of pending pictures (on the grid of TemporalPlan.segment_start: keyframes
        plus the cross-fade overlap) is rendered like a farm chunk: its own pipeline
        (tracker, chains; shared models), its own decoder stream, warm-up and look-ahead.
        Up to `frame_batch` segments advance one projected picture per step; when one ends
        the next starts, so at most `frame_batch` pictures are in flight. Frames are written
        as they finish (not in order).
        """
        params, timings, report = plan.params, writer.timings, writer.report
        n_pictures = plan.info.frame_count * pictures.per_frame
        queue = self.config(params, plan.inversion).plan().segments(todo)
        active: List[_Segment] = []
        try:
            while queue or active:
                while queue and len(active) < params["frame_batch"]:
                    frames = queue.pop(0)
                    pipeline = self.pipeline(params, cancel, report.projecting, plan.inversion)
                    start = pipeline.warmup_start(frames[0])
                    if frames[0] == todo[0]:
                        start = max(0, min(start, todo[0] - warmup))
                    end = pipeline.plan.decode_end(frames[-1], n_pictures)
                    decoded = _decoded(pictures.read(start, end), timings, cancel, report)
                    active.append(_Segment(pipeline, pipeline.track(decoded, frames[0], frames[-1]), frames))
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"cancelled after {report.done} of {report.total} frames")
                step = []
                for segment in list(active):
                    tracked = next(segment.tracked, None)
                    if tracked is None:  # the stream ended early (as the single-pass loop allows)
                        segment.close()
                        active.remove(segment)
                    else:
                        step.append((segment, segment.pipeline.prepare(tracked)))
                if step:  # one projection pass for the faces of every segment's current picture
                    step[0][0].pipeline.project_faces([prepared for _, prepared in step])
                for segment, prepared in step:
                    result = segment.pipeline.finish(prepared)
                    for stage, seconds in result.timings.items():
                        _add(timings, stage, seconds)
                    if prepared.index in segment.pending:
                        writer.put(prepared.index, result)
                    if prepared.index == segment.last:
                        segment.close()
                        active.remove(segment)
        finally:
            for segment in active:
                segment.close()

    def preview(self, source: Path, frame: int, params: Dict[str, Any], cancel: Optional[threading.Event] = None,
                on_step: Optional[Callable[[int, int], None]] = None) -> Tuple[np.ndarray, np.ndarray, int]:
        """One frame (its first field when interlaced), 8-bit, cold-started: (original RGB, stylised RGB or
        RGBA, faces found).

        Setting `cancel` stops it within one projection step (Cancelled); `on_step(step, steps)` hears of
        every projection step."""
        info = media.probe(source)
        media.check_renderable(info)
        index, _ = resolve_range((frame, frame), info.frame_count)
        pictures = Pictures(info, 8, plan_colour(info, validate(params)["input_colorspace"]))
        picture = pictures.of_frames([index])[0]
        original = next(iter(pictures.read(picture, picture)))[1]
        if cancel is not None and cancel.is_set():
            raise Cancelled("preview cancelled")
        result = self.pipeline(params, cancel, on_step).process(original, picture)
        return original, result.image, result.faces


class _FrameWriter:
    """Writes stylised pictures as frame files (fields woven back into frames), timing and reporting them."""

    def __init__(self, plan: "Plan", pictures: Pictures, report: Reporter, timings: Dict[str, float]):
        self.plan, self.weaver, self.report, self.timings = plan, Weaver(pictures), report, timings

    def put(self, picture: int, result) -> None:
        done = self.weaver.add(picture, result.image, result.faces)
        if done is None:
            return
        frame, image, faces = done
        t = time.perf_counter()
        media.write_frame(self.plan.output.frame_path(frame), image, bits=self.plan.bits,
                          like=self.plan.output.like(frame))
        _add(self.timings, "write", time.perf_counter() - t)
        self.report.frame(faces)


class _Segment:
    """One segment of a frame-batched render: its pipeline, tracked-picture stream and pictures to write."""

    def __init__(self, pipeline, tracked, pending: List[int]):
        self.pipeline, self.tracked, self.pending = pipeline, tracked, set(pending)
        self.first, self.last = pending[0], pending[-1]

    def close(self) -> None:
        self.tracked.close()  # closes the decoder it reads from


class _Serialised:
    """One detect() at a time: a preview and a job may share a renderer across threads."""

    def __init__(self, landmarker):
        self._landmarker, self._lock = landmarker, threading.Lock()

    def detect(self, image, *args, **kwargs):
        with self._lock:
            return self._landmarker.detect(image, *args, **kwargs)


def _decoded(pictures, timings: Dict[str, float], cancel: Optional[threading.Event], report: Reporter):
    """Decoded (index, picture) pairs, timing the decoder and honouring `cancel` between pictures."""
    try:
        while True:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"cancelled after {report.done} of {report.total} frames")
            t = time.perf_counter()
            item = next(pictures, None)
            _add(timings, "decode", time.perf_counter() - t)
            if item is None:
                return
            yield item
    finally:
        pictures.close()


def _add(timings: Dict[str, float], stage: str, seconds: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + seconds


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


def preview(source: Path, frame: int, params: Dict[str, Any], cancel: Optional[threading.Event] = None,
            progress: Optional[Callable[[ProgressEvent], None]] = None):
    """One stylised frame for a side-by-side preview: (original, stylised, faces); `cancel` stops it;
    `progress` hears "loading" (per model) and "projecting" events with an ETA (StepReporter)."""
    if progress is None:
        return get_renderer(params).preview(Path(source), frame, params, cancel)
    report = StepReporter(progress)
    return get_renderer(params, report.loading).preview(Path(source), frame, params, cancel, report.projecting)
