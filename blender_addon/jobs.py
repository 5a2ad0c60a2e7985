"""Toonify jobs as plain functions: plan (`plan_strips`), submit (`submit_plans`), poll (`poll`),
place (`place_result`), and `Run`, which strings them together for one button press.

The modal operator (UI) and `execute()` (scripts, headless Blender, tests) both
drive these; nothing here waits on Blender's event loop or timers, which never
run headless. Strip objects are looked up by name whenever they are needed,
because a Python reference to a strip does not survive undo or file reloads.
"""
from __future__ import annotations

import inspect
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import bpy

from . import compat
from .engine_link import errors as toon_errors
from .engine_link import params as schema
from .timeline import StripTiming, TimelineError, first_free_channel, image_sequence_source

SUPPORTED_TYPES = ("MOVIE", "IMAGE")
#: A job is given up after this many polls in a row that could not reach the engine.
MAX_POLL_ERRORS = 3


class ToonifyError(Exception):
    """One clear message for a Blender report (never a traceback)."""


# ----------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class MediaMapping:
    """What maps a strip's content to source frame numbers, beyond the strip's own fields."""
    base: int = 0                        # source frame of the strip's first file (image sequences)
    rate: float = 1.0                    # source frames per timeline frame
    source_length: Optional[int] = None  # source frames the content uses (None: content length x rate)


@dataclass
class StripPlan:
    """What one strip asks of the engine (plain data: safe to hand to a thread)."""
    strip_name: str
    scene_name: str
    source: str          # absolute path of the media file (a printf pattern for an image sequence)
    mapping: MediaMapping
    first: int           # first source frame to render (inclusive)
    last: int            # last source frame to render (inclusive)
    fps: float           # the scene's frame rate


def strip_timing(strip, mapping: MediaMapping = MediaMapping()) -> StripTiming:
    """The strip's frame layout (see timeline.py for how Blender maps it to source frames)."""
    return StripTiming(
        content_start=int(round(strip.frame_start)),
        content_length=compat.content_length(strip),
        final_start=int(strip.frame_final_start),
        final_end=int(strip.frame_final_end),
        source_offset=mapping.base + int(getattr(strip, "animation_offset_start", 0)),
        reverse=bool(getattr(strip, "use_reverse_frames", False)),
        rate=mapping.rate,
        source_length=mapping.source_length,
        strobe=float(getattr(strip, "strobe", 1.0) or 1.0),
    )


def scene_fps(scene) -> float:
    return scene.render.fps / (scene.render.fps_base or 1.0)


def _abspath(path: str, strip) -> str:
    library = getattr(strip.id_data, "library", None)
    return os.path.normpath(bpy.path.abspath(path, library=library))


def strip_source(strip) -> Tuple[str, int]:
    """The engine source of a movie or image strip, and the source frame of its first file.

    A movie is its file; an image strip is its one still, or the printf pattern of
    its numbered files (see `timeline.image_sequence_source`).
    """
    if strip.type == "MOVIE":
        return _abspath(strip.filepath, strip), 0
    if strip.type == "IMAGE":
        directory = _abspath(strip.directory, strip)
        files = [e.filename for e in strip.elements]
        if not files:
            raise ToonifyError(f"strip {strip.name!r} has no image files")
        try:
            return image_sequence_source(directory, files, _listdir)
        except TimelineError as exc:
            raise ToonifyError(f"strip {strip.name!r}: {exc}") from None
    raise ToonifyError(f"strip {strip.name!r} is a {strip.type.lower()} strip; only movie and image strips "
                       "can be toonified")


def _first_file(strip) -> str:
    return _abspath(os.path.join(strip.directory, strip.elements[0].filename), strip)


def _listdir(directory: str):
    try:
        return os.listdir(directory)
    except OSError:
        return []


def movie_frame_count(path: str) -> Optional[int]:
    """The movie's frame count as Blender reads it (through a temporary MovieClip), or None."""
    before = set(bpy.data.movieclips)
    try:
        clip = bpy.data.movieclips.load(path, check_existing=True)
    except (RuntimeError, OSError):
        return None
    try:
        return int(clip.frame_duration)
    finally:
        if clip not in before:
            bpy.data.movieclips.remove(clip)


def media_mapping(scene, strip) -> MediaMapping:
    """How the strip's content maps to source frames (file numbering, playback rate)."""
    source, base = strip_source(strip)
    if strip.type != "MOVIE":
        return MediaMapping(base=base)
    movie_fps = float(getattr(strip, "fps", 0.0) or 0.0)
    rate = movie_fps / scene_fps(scene) if movie_fps > 0 else 1.0
    if abs(rate - 1.0) < 1e-6:
        return MediaMapping()
    # A movie whose rate differs from the scene's plays 1:1, or in real time when it was added
    # with "Adjust Playback Rate" (Blender's default); no property says which, the length does.
    total = movie_frame_count(source)
    if total is None:
        return MediaMapping()
    used = total - int(strip.animation_offset_start) - int(strip.animation_offset_end)
    length = compat.content_length(strip)
    if length == used:
        return MediaMapping(source_length=used)
    if abs(used / rate - length) <= 1.0:
        return MediaMapping(rate=rate, source_length=used)
    raise ToonifyError(f"strip {strip.name!r} spans {length} frames but its movie has {used} "
                       f"frames at {movie_fps:g} fps in a {scene_fps(scene):g} fps scene; toonify cannot tell "
                       "which movie frame shows where")


def plan_strip(scene, strip) -> StripPlan:
    """What to render for one strip: its source and the source frames visible on the timeline."""
    source, _ = strip_source(strip)
    if compat.is_retimed(strip):
        raise ToonifyError(f"strip {strip.name!r} has retiming (speed) keys, which toonify cannot follow; "
                           "reset its retiming first (Strip > Retiming > Reset)")
    first_file = _first_file(strip) if strip.type == "IMAGE" else source
    if not os.path.isfile(first_file):
        raise ToonifyError(f"strip {strip.name!r}: source file not found: {first_file}")
    mapping = media_mapping(scene, strip)
    try:
        first, last = strip_timing(strip, mapping).visible_source_range()
    except TimelineError as exc:
        raise ToonifyError(f"strip {strip.name!r}: {exc}") from None
    return StripPlan(strip.name, scene.name, source, mapping, first, last, scene_fps(scene))


def plan_strips(scene, strips: Sequence) -> List[StripPlan]:
    """Plans for the movie and image strips among `strips` (sound, effect strips etc. are ignored)."""
    usable = [s for s in strips if s.type in SUPPORTED_TYPES]
    if not usable:
        raise ToonifyError("select one or more movie or image strips to toonify")
    return [plan_strip(scene, s) for s in usable]


def engine_params(values: Dict[str, Any]) -> Dict[str, Any]:
    """The panel's values checked against the schema (a bad value becomes a ToonifyError)."""
    try:
        return schema.validate(values)
    except toon_errors.UserError as exc:
        raise ToonifyError(exc.message) from None


# ----------------------------------------------------------------------------- submitting

@dataclass
class PendingJob:
    """One submitted strip, tracked by the poller."""
    job_id: str
    plan: StripPlan
    output_kind: str                 # the "output_kind" parameter: "frame" or "overlay"
    folder: str
    state: str = "queued"
    frames_done: int = 0
    frames_total: int = 0
    stage: str = ""
    finished: bool = False
    errors_in_a_row: int = 0
    result: Optional[Dict[str, Any]] = None
    error: Optional[str] = None

    @property
    def strip_name(self) -> str:
        return self.plan.strip_name


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


_MEDIA_SUFFIX = re.compile(r"\.(mp4|mov|mkv|m4v|avi|webm|mxf|mpe?g|png|jpe?g|tiff?|exr|dpx|bmp|webp)$", re.I)


def safe_name(name: str) -> str:
    """A file-name-safe stem from a strip name ("shot 1.mp4" -> "shot_1")."""
    return _SAFE.sub("_", _MEDIA_SUFFIX.sub("", name)).strip("._") or "strip"


def job_folder(root: str, strip_name: str) -> str:
    """Create a new folder for one job's frames, so a render never overwrites frames a strip uses."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(root, f"{safe_name(strip_name)}_{stamp}")
    folder, n = base, 1
    while True:
        try:
            os.makedirs(folder)
            return folder
        except FileExistsError:
            n += 1
            folder = f"{base}_{n}"
        except OSError as exc:
            raise ToonifyError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None


def default_output_root() -> str:
    """``<blend file folder>/toon_ofx`` for a saved file, else a folder in Blender's temp dir."""
    if bpy.data.filepath:
        return os.path.join(os.path.dirname(bpy.data.filepath), "toon_ofx")
    return os.path.join(bpy.app.tempdir or os.path.join(os.path.expanduser("~"), ".cache"), "toon_ofx")


def _accepts(func: Callable, name: str) -> bool:
    """True when `func` has a parameter called `name` (not merely **kwargs: the server rejects unknown fields)."""
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def submit_plans(plans: Sequence[StripPlan], client, params: Dict[str, Any], output_root: str) -> List[PendingJob]:
    """Submit one engine job per plan. Raises the client's EngineError on refusal.

    Jobs already submitted when a later one is refused are cancelled, so a
    failed Toonify leaves nothing running.
    """
    pending: List[PendingJob] = []
    try:
        for plan in plans:
            folder = job_folder(output_root, plan.strip_name)
            kwargs = dict(frames=[plan.first, plan.last], params=params, output_folder=folder,
                          output_kind="sequence", name=f"{safe_name(plan.strip_name)}_toon")
            if _accepts(client.submit, "fps"):
                kwargs["fps"] = plan.fps
            job = client.submit(plan.source, **kwargs)
            pending.append(PendingJob(job_id=str(job["id"]), plan=plan, output_kind=params["output_kind"],
                                      folder=folder, state=job.get("state", "queued")))
    except BaseException:
        cancel(pending, client)
        raise
    return pending


# ----------------------------------------------------------------------------- polling

@dataclass
class Message:
    job: PendingJob

    @property
    def final(self) -> bool:
        return False


@dataclass
class Progress(Message):
    frames_done: int = 0
    frames_total: int = 0
    stage: str = ""


@dataclass
class Finished(Message):
    result: Dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return True


@dataclass
class Failed(Message):
    error: str = ""

    @property
    def final(self) -> bool:
        return True


@dataclass
class Cancelled(Message):
    @property
    def final(self) -> bool:
        return True


def _engine_error_types():
    from .engine_link import client_module
    return (client_module().EngineError, OSError)


def poll(pending: Sequence[PendingJob], client) -> List[Message]:
    """Ask the engine about every unfinished job once; one message per job asked about.

    A job is final (Finished, Failed or Cancelled) exactly once; later polls skip it.
    """
    engine_errors = _engine_error_types()
    messages: List[Message] = []
    for job in pending:
        if job.finished:
            continue
        try:
            answer = client.job(job.job_id)
        except engine_errors as exc:
            job.errors_in_a_row += 1
            status = getattr(exc, "status", None)
            if job.errors_in_a_row >= MAX_POLL_ERRORS or status == 404:
                job.finished, job.state, job.error = True, "failed", _message(exc)
                messages.append(Failed(job, error=job.error))
            continue
        job.errors_in_a_row = 0
        job.state = answer.get("state", job.state)
        progress = answer.get("progress") or {}
        job.frames_done = int(progress.get("frames_done") or 0)
        job.frames_total = int(progress.get("frames_total") or 0) or (job.plan.last - job.plan.first + 1)
        job.stage = progress.get("stage") or job.state
        if job.state == "done":
            job.finished, job.result = True, answer.get("result") or {}
            messages.append(Finished(job, result=job.result))
        elif job.state == "failed":
            job.finished, job.error = True, answer.get("error") or "the engine failed without a message"
            messages.append(Failed(job, error=job.error))
        elif job.state == "cancelled":
            job.finished = True
            messages.append(Cancelled(job))
        else:
            messages.append(Progress(job, frames_done=job.frames_done, frames_total=job.frames_total,
                                     stage=job.stage))
    return messages


def _message(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def overall_progress(pending: Sequence[PendingJob]) -> float:
    """Fraction 0..1 of all frames of all jobs (finished jobs count as complete)."""
    total = done = 0
    for job in pending:
        n = job.frames_total or (job.plan.last - job.plan.first + 1)
        total += n
        done += n if job.finished else min(job.frames_done, n)
    return done / total if total else 0.0


def status_text(pending: Sequence[PendingJob]) -> str:
    """One line for the status bar."""
    running = [j for j in pending if not j.finished]
    frames_done = sum(min(j.frames_done, j.frames_total) for j in pending if j.frames_total)
    frames_total = sum(j.frames_total or (j.plan.last - j.plan.first + 1) for j in pending)
    stage = running[0].stage if running else "done"
    return (f"Toonify: {len(pending) - len(running)}/{len(pending)} strips, "
            f"frame {frames_done}/{frames_total} ({stage}) - Esc to cancel")


def cancel(pending: Sequence[PendingJob], client) -> List[str]:
    """Ask the engine to cancel every unfinished job; returns the messages of refusals."""
    problems = []
    for job in pending:
        if job.finished:
            continue
        try:
            client.cancel(job.job_id)
        except Exception as exc:  # the engine may already be gone: nothing left to stop
            problems.append(f"{job.strip_name}: {_message(exc)}")
        job.finished, job.state = True, "cancelled"
    return problems


# ----------------------------------------------------------------------------- placing

def place_result(scene, source_strip, result: Dict[str, Any], output_kind: str = "frame",
                 mapping: Optional[MediaMapping] = None):
    """Add the engine's result as a new image strip above `source_strip`, on the same timeline frames.

    The new strip goes into the first channel above the source that is free over
    the source's frames (inside the same meta strip, if any). For each timeline
    frame where the source shows source frame ``s``, it shows the result's frame
    ``s``, and it gets the source's handles (trim, hold frames), transform, crop
    and flips. An overlay result blends with Alpha Over over the original. The
    source strip is not changed.
    """
    if not result.get("pattern"):
        raise ToonifyError("the engine's result has no image-sequence pattern")
    pattern = result["pattern"]
    first, last = int(result["first_frame"]), int(result["last_frame"])
    if mapping is None:
        mapping = media_mapping(scene, source_strip)
    timing = strip_timing(source_strip, mapping)
    try:
        start, _ = timing.visible_timeline_range()
    except TimelineError as exc:
        raise ToonifyError(f"strip {source_strip.name!r}: {exc}") from None
    shown = timing.shown_frames()
    outside = [f for f in shown if not first <= f <= last]
    if outside:
        raise ToonifyError(f"the result holds frames {first}-{last}, but the strip now shows frame {outside[0]}; "
                           "toonify it again")
    files = [pattern % f for f in shown]
    missing = sorted({f for f in files if not os.path.isfile(f)})
    if missing:
        raise ToonifyError(f"{len(missing)} result frames are missing, e.g. {missing[0]}")
    sed = compat.sequence_editor(scene)
    collection = compat.parent_collection(sed, source_strip)
    span_start, span_end = min(timing.final_start, start), max(timing.final_end, start + len(files))
    occupied = [(s.channel, s.frame_final_start, s.frame_final_end) for s in collection]
    try:
        channel = first_free_channel(occupied, source_strip.channel, span_start, span_end)
    except TimelineError as exc:
        raise ToonifyError(str(exc)) from None

    strip = compat.new_image(collection, f"{source_strip.name} toon", files[0], channel, start)
    for path in files[1:]:
        strip.elements.append(os.path.basename(path))
    # Same visible range as the source: trims, and hold frames beyond the content.
    strip.frame_final_start = timing.final_start
    strip.frame_final_end = timing.final_end
    _copy_look(source_strip, strip)
    if output_kind == "overlay":
        strip.blend_type = "ALPHA_OVER"
        strip.blend_alpha = 1.0
    else:
        strip.blend_type = source_strip.blend_type
        strip.blend_alpha = source_strip.blend_alpha
    strip.select = False
    return strip


def _copy_look(source, target) -> None:
    """Copy placement (transform, crop, flips) so the result sits exactly over the source."""
    for group, names in (("transform", ("offset_x", "offset_y", "scale_x", "scale_y", "rotation", "origin",
                                        "filter")),
                         ("crop", ("min_x", "max_x", "min_y", "max_y"))):
        src, dst = getattr(source, group, None), getattr(target, group, None)
        if src is None or dst is None:
            continue
        for name in names:
            if hasattr(src, name):
                try:
                    setattr(dst, name, getattr(src, name))
                except (AttributeError, TypeError, ValueError):
                    pass
    for name in ("use_flip_x", "use_flip_y"):
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))


def place_finished(message: Finished) -> Any:
    """Place a Finished job's result next to its source strip (looked up by name)."""
    plan = message.job.plan
    scene = bpy.data.scenes.get(plan.scene_name)
    source = compat.find_strip(scene, plan.strip_name) if scene is not None else None
    if source is None:
        raise ToonifyError(f"strip {plan.strip_name!r} is gone; its result is in {message.job.folder}")
    return place_result(scene, source, message.result, message.job.output_kind, plan.mapping)


# ----------------------------------------------------------------------------- one Toonify run

class Run:
    """One Toonify press: connect (starting the engine if needed), submit, poll, finish.

    Plain Python driven by whoever owns it: the modal operator calls `tick()` on
    each timer event, `execute()` calls it in a loop. With ``background=True``
    connecting and submitting happen on a worker thread, because starting the
    engine can take many seconds; the thread never touches bpy.
    """

    def __init__(self, plans: Sequence[StripPlan], params: Dict[str, Any], output_root: str,
                 connect: Callable[[], Any]):
        self.plans = list(plans)
        self.params = params
        self.output_root = output_root
        self._connect = connect
        self.client = None
        self.pending: List[PendingJob] = []
        self.error: Optional[str] = None
        self.cancel_requested = False
        self.cancelled = False
        self.finals: List[Message] = []
        self._thread = None
        self._submitted = False

    # the worker: no bpy in here
    def _connect_and_submit(self) -> None:
        try:
            client = self._connect()
            self.client = client
            if self.cancel_requested:
                return
            pending = submit_plans(self.plans, client, self.params, self.output_root)
            self.pending = pending
            if self.cancel_requested:  # Esc while submitting: stop what was just queued
                cancel(pending, client)
        except Exception as exc:
            self.error = _message(exc)
        finally:
            self._submitted = True

    def start(self, background: bool = True) -> "Run":
        if background:
            import threading
            self._thread = threading.Thread(target=self._connect_and_submit, name="toon-ofx submit", daemon=True)
            self._thread.start()
        else:
            self._connect_and_submit()
        return self

    @property
    def starting(self) -> bool:
        return not self._submitted

    @property
    def done(self) -> bool:
        if not self._submitted:
            return False
        return self.error is not None or self.cancelled or all(j.finished for j in self.pending)

    def tick(self) -> List[Message]:
        """Poll once (nothing while the engine is still starting); returns this tick's messages."""
        if not self._submitted or self.done:
            return []
        if self.cancel_requested:
            self.cancel()
            return []
        messages = poll(self.pending, self.client)
        self.finals.extend(m for m in messages if m.final)
        return messages

    def request_cancel(self) -> None:
        """Ask for cancellation from anywhere (a panel button, Esc); acted on at the next tick."""
        self.cancel_requested = True
        if self._submitted:
            self.cancel()

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancel_requested = True
        if self.client is not None:
            unfinished = [j for j in self.pending if not j.finished]
            cancel(unfinished, self.client)
            self.finals.extend(Cancelled(j) for j in unfinished)
        self.cancelled = True

    @property
    def progress(self) -> float:
        return overall_progress(self.pending) if self.pending else 0.0

    @property
    def status(self) -> str:
        if not self._submitted:
            return "Toonify: connecting to the engine (starting it if needed) - Esc to cancel"
        if not self.pending:
            return "Toonify"
        return status_text(self.pending)


def finish_message(message: Message):
    """Handle one final message: place a finished result. Returns (level, text) for a report."""
    job = message.job
    if isinstance(message, Finished):
        try:
            strip = place_finished(message)
        except ToonifyError as exc:
            return "ERROR", f"Toonify {job.strip_name!r}: {exc}"
        return "INFO", (f"Toonify {job.strip_name!r}: added {strip.name!r} in channel {strip.channel}, "
                        f"frames {strip.frame_final_start}-{strip.frame_final_end - 1}")
    if isinstance(message, Failed):
        return "ERROR", f"Toonify {job.strip_name!r} failed: {message.error}"
    if isinstance(message, Cancelled):
        return "WARNING", f"Toonify {job.strip_name!r} cancelled"
    return "INFO", ""
