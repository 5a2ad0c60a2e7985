"""`toon-ofx render --ray [ADDRESS]`: render a clip's frame chunks on a Ray cluster.

For teams without a farm manager. One persistent actor per GPU (or per CPU worker)
loads the models once and renders chunk after chunk; chunks are the same
frame ranges a farm manager would run (toon_ofx.farm.plan.plan_chunks: on the segment grid,
or frame-exact for a VToonify style), all written into one image sequence, so the result is
identical to a single-process render. A chunk that fails is retried (on a fresh actor when
its actor died); progress of all workers is aggregated into the usual ProgressEvents; a
movie output is encoded once every chunk is done.

The workers write frames to the paths of the request: on a multi-machine cluster the
source clip and the output folder must be on storage every node sees at the same path.
"""
from __future__ import annotations

import math
import os
import shutil
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Tuple

from ..core.errors import Cancelled, UserError
from .assemble import assemble, sequence_frames
from .plan import Chunk, chunk_size_for_workers, frame_exact, plan_chunks, temporal_plan

DEFAULT_MAX_RETRIES = 2
POLL_SECONDS = 0.25
LOCAL_OBJECT_STORE = 256 * 1024 ** 2   # chunks pass paths, not pixels: a small store is plenty


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class ChunkOutcome:
    """What a worker reports for one finished chunk."""

    chunk: Chunk
    written: int
    skipped: int
    faces: int
    seconds: float
    load_seconds: float      # model loading done for this chunk (0 for a persistent worker's later chunks)
    worker: str
    warnings: List[str] = field(default_factory=list)   # what the chunk's frames could not keep (RenderResult)


class ChunkWorker:
    """A Ray actor body: one loaded renderer, many chunks.

    `factory(params)` builds the renderer (default toon_ofx.core.render.Renderer, which loads the
    models in its constructor); with persistent=False it is rebuilt for every chunk, which is
    what a farm task that starts a new process pays (for benchmarks). `status()` tells the
    chunk being rendered and how many of its frames are on disk (None between chunks).
    """

    def __init__(self, params: Dict[str, Any], factory: Optional[Callable] = None, threads: int = 0,
                 persistent: bool = True):
        self.params = params
        self.factory = factory
        self.threads = threads
        self.persistent = persistent
        self.renderer = None
        self.load_seconds = 0.0
        self._cancel = threading.Event()
        self._status: Dict[str, Any] = {"chunk": None, "done": 0, "faces": 0}
        self._lock = threading.Lock()

    def _build(self):
        factory = self.factory
        if factory is None:
            from ..core.render import Renderer as factory
        t = time.perf_counter()
        renderer = factory(self.params)
        return renderer, time.perf_counter() - t

    def _set_status(self, chunk: Optional[Chunk], done: int = 0, faces: int = 0) -> None:
        with self._lock:
            self._status = {"chunk": (chunk.first, chunk.last) if chunk else None, "done": done, "faces": faces}

    def load(self) -> Dict[str, Any]:
        """Load the models (once); returns where and how long."""
        if self.renderer is None and self.persistent:
            self.renderer, self.load_seconds = self._build()
        torch = sys.modules.get("torch")   # loaded by the renderer when it needs it
        if torch is not None and self.threads > 0:
            torch.set_num_threads(self.threads)
        return {"worker": _worker_name(), "load_seconds": self.load_seconds}

    def render_chunk(self, request, chunk: Chunk) -> ChunkOutcome:
        self._cancel.clear()
        load_seconds = 0.0
        if self.renderer is None or not self.persistent:
            self.renderer, load_seconds = self._build()
        self._set_status(chunk)

        def progress(event) -> None:
            # frames_done counts the chunk's frames on disk, including those skipped as already done
            if event.stage == "rendering":
                self._set_status(chunk, event.frames_done, event.faces)

        t = time.perf_counter()
        try:
            result = self.renderer.render(replace(request, frames=(chunk.first, chunk.last)), progress,
                                          self._cancel)
            faces = self.status()["faces"]
        finally:
            self._set_status(None)
        return ChunkOutcome(chunk, result.written, result.skipped, faces, time.perf_counter() - t, load_seconds,
                            _worker_name(), list(getattr(result, "warnings", None) or []))

    def status(self) -> Dict[str, Any]:
        with self._lock:
            return dict(self._status)

    def cancel(self) -> None:
        self._cancel.set()


class RayProgress:
    """All workers' progress as one stream of ProgressEvents whose frame count never goes back.

    Counts are kept per chunk: a worker's live status can only raise its chunk's count (a status
    that arrives late, or a worker already between chunks while its result is still on the way,
    changes nothing), and a finished chunk counts all its frames. Warnings (`warn`) are sent as
    events like a local render's, each once, and kept in `warnings`; those in `unsaid` (what the hidden
    frames of a movie output cannot keep, not the movie) are not passed on.
    """

    def __init__(self, callback: Optional[Callable], chunks: Iterable[Chunk], present: Set[int],
                 unsaid: Iterable[str] = ()):
        from ..core.render import ProgressEvent

        self.Event = ProgressEvent
        self.callback = callback
        self.chunks = {(c.first, c.last): c for c in chunks}
        self.done = {c: sum(1 for i in range(c.first, c.last + 1) if i in present) for c in self.chunks.values()}
        self.faces: Dict[Chunk, int] = {}
        self.total = sum(c.count for c in self.chunks.values())
        self.already = self.frames_done
        self.start = time.monotonic()
        self._last: Optional[tuple] = None
        self._stage = "loading"
        self.warnings: List[str] = []
        self.unsaid = set(unsaid)

    @property
    def frames_done(self) -> int:
        return sum(self.done.values())

    def live(self, status: Dict[str, Any]) -> None:
        """A worker's status: (chunk first, last), frames of it on disk, faces found so far."""
        chunk = self.chunks.get(tuple(status["chunk"])) if status.get("chunk") else None
        if chunk is not None:
            self.done[chunk] = max(self.done[chunk], min(int(status["done"]), chunk.count))
            self.faces[chunk] = max(self.faces.get(chunk, 0), int(status["faces"]))

    def finished(self, outcome: ChunkOutcome) -> None:
        self.done[outcome.chunk] = outcome.chunk.count
        self.faces[outcome.chunk] = max(self.faces.get(outcome.chunk, 0), outcome.faces)

    def warn(self, warnings: Iterable[str]) -> None:
        """Warnings of the render, a chunk or the encoder: each new one an event of the current stage."""
        for message in warnings:
            if message in self.warnings or message in self.unsaid:
                continue
            self.warnings.append(message)
            if self.callback is not None:
                self.callback(self.Event(self._stage, self.frames_done, self.total, sum(self.faces.values()),
                                         None, warning=message))

    def emit(self, stage: str) -> None:
        self._stage = stage
        if self.callback is None:
            return
        done, faces = self.frames_done, sum(self.faces.values())
        fresh = done - self.already
        eta = None
        if stage == "done":
            eta = 0.0
        elif fresh > 0:
            eta = (self.total - done) * (time.monotonic() - self.start) / fresh
        key = (stage, done, faces)
        if key != self._last:
            self._last = key
            self.callback(self.Event(stage, done, self.total, faces, eta))


def _ray():
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'toon-ofx[farm]' (or pip install ray)") from None
    return ray


def _connect(ray, address: Optional[str], workers: Optional[int]) -> bool:
    """Connect to `address` or start a local cluster; True when this call started Ray."""
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, object_store_memory=LOCAL_OBJECT_STORE,
                     log_to_driver=False)
    except ConnectionError as exc:
        raise UserError(f"cannot reach the Ray cluster at {address}: {exc}", field="ray") from None
    return True


def _placement(ray, params: Dict[str, Any], workers: Optional[int]) -> Dict[str, Any]:
    """How many workers and what each reserves: one per GPU, else one per CPU (or as asked)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1.0, float(resources.get("CPU", 1)))
    if workers is not None and workers < 1:
        raise UserError(f"workers must be at least 1, got {workers}", field="workers")
    if gpus > 0 and params.get("device", "auto") not in ("cpu", "mps"):
        n = workers or gpus
        return {"workers": n, "options": {"num_gpus": 1 if n <= gpus else gpus / n, "num_cpus": 1},
                "threads": max(1, int(cpus // n))}
    n = workers or int(cpus)
    per = cpus / n
    return {"workers": n, "options": {"num_cpus": math.floor(per) if per >= 1 else per},
            "threads": max(1, int(per))}


class WorkerPool:
    """The actors: spawned with this process's toon-ofx settings, models loaded, replaced when lost."""

    def __init__(self, ray, place: Dict[str, Any], count: int, params: Dict[str, Any],
                 factory: Optional[Callable], persistent: bool):
        self.ray = ray
        # The workers see this process's toon-ofx settings (model folder, ffmpeg, ...).
        env = {k: v for k, v in os.environ.items() if k.startswith("TOON_OFX_")}
        remote = ray.remote(ChunkWorker).options(max_concurrency=2, runtime_env={"env_vars": env} if env else None,
                                                 **place["options"])
        self._spawn = lambda: remote.remote(params, factory, place["threads"], persistent)
        self.actors: List[Any] = [self._spawn() for _ in range(count)]

    def load(self, indices: Optional[List[int]] = None) -> List[Dict[str, Any]]:
        """Load the models on the given workers (all by default); a worker's failure is a UserError."""
        actors = [self.actors[i] for i in (indices if indices is not None else range(len(self.actors)))]
        try:
            return self.ray.get([a.load.remote() for a in actors])
        except self.ray.exceptions.RayTaskError as exc:
            raise _user_error(exc, "loading the models on a Ray worker") from None

    def replace(self, index: int) -> None:
        """A fresh actor in place of a lost one, models loaded."""
        self.actors[index] = self._spawn()
        self.load([index])

    def statuses(self, indices: Iterable[int]) -> List[Dict[str, Any]]:
        """Live progress of busy workers; a worker that just died reports nothing (its chunk's
        result tells the failure)."""
        out = []
        for ref in [self.actors[i].status.remote() for i in indices]:
            try:
                out.append(self.ray.get(ref, timeout=10))
            except Exception:
                out.append({"chunk": None})
        return out

    def cancel(self) -> None:
        for actor in self.actors:
            actor.cancel.remote()

    def kill(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception:
                pass


class ChunkScheduler:
    """Hands chunks to idle workers until every one is done; retries failures up to `max_retries`."""

    def __init__(self, ray, pool: WorkerPool, request, report: RayProgress, cancel: Optional[threading.Event],
                 max_retries: int):
        self.ray, self.pool, self.request, self.report = ray, pool, request, report
        self.cancel, self.max_retries = cancel, max_retries
        self.attempts: Dict[Chunk, int] = {}
        self.failures: List[str] = []
        self.written = 0
        self.chunk_load_seconds = 0.0

    def run(self, todo: List[Chunk]) -> None:
        pending = deque(todo)
        inflight: Dict[Any, Tuple[int, Chunk]] = {}
        idle = list(range(len(self.pool.actors)))
        while pending or inflight:
            if self.cancel is not None and self.cancel.is_set():
                self.pool.cancel()
                raise Cancelled(f"cancelled after {self.report.frames_done} of {self.report.total} frames")
            while idle and pending:
                w, chunk = idle.pop(), pending.popleft()
                inflight[self.pool.actors[w].render_chunk.remote(self.request, chunk)] = (w, chunk)
            ready, _ = self.ray.wait(list(inflight), num_returns=1, timeout=POLL_SECONDS)
            for ref in ready:
                w, chunk = inflight.pop(ref)
                if not self._collect(ref, w, chunk):
                    self._retry(chunk, pending)
                idle.append(w)
            for status in self.pool.statuses(w for w, _ in inflight.values()):
                self.report.live(status)
            self.report.emit("rendering")

    def _collect(self, ref, w: int, chunk: Chunk) -> bool:
        """Take a finished chunk's result; False when it failed and should be retried."""
        exceptions = self.ray.exceptions
        try:
            outcome: ChunkOutcome = self.ray.get(ref)
        except exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Cancelled):
                raise Cancelled(str(cause)) from None
            if isinstance(cause, UserError):
                raise UserError(f"frames {chunk}: {cause.message}", field=cause.field) from None
            self.failures.append(f"frames {chunk}: {_first_line(cause or exc)}")
            return False
        except exceptions.RayActorError as exc:
            self.failures.append(f"frames {chunk}: worker lost ({_first_line(exc)})")
            self.pool.replace(w)
            return False
        self.written += outcome.written
        self.chunk_load_seconds += outcome.load_seconds
        self.report.finished(outcome)
        self.report.warn(outcome.warnings)
        return True

    def _retry(self, chunk: Chunk, pending: deque) -> None:
        self.attempts[chunk] = self.attempts.get(chunk, 0) + 1
        if self.attempts[chunk] > self.max_retries:
            raise UserError(f"frames {chunk} failed {self.attempts[chunk]} times; last error: {self.failures[-1]}")
        pending.appendleft(chunk)


def render_with_ray(request, address: Optional[str] = None, chunk_size: Optional[int] = None,
                    workers: Optional[int] = None, progress: Optional[Callable] = None,
                    cancel: Optional[threading.Event] = None, *, max_retries: int = DEFAULT_MAX_RETRIES,
                    renderer_factory: Optional[Callable] = None, persistent: bool = True):
    """Render `request` (a toon_ofx.core.render.RenderRequest) in chunks on Ray; returns a RenderResult.

    address: a Ray cluster address ("auto", "ray://host:10001", "host:6379"); None starts a local
    cluster (or uses the one this process is already connected to). workers: how many actors
    (default: one per GPU, else one per CPU). chunk_size: frames per chunk (default two keyframe
    intervals, cut on the segment grid; a VToonify style: exactly as asked, default up to 96).
    max_retries: attempts after the first for a failing chunk. renderer_factory/persistent: for
    tests and benchmarks.
    """
    from ..core import media
    from ..core.params import validate
    from ..core.outputs import plan_output, resolve_range
    from ..core.render import RenderResult

    ray = _ray()
    params = validate(request.params)
    grid = temporal_plan(params)
    if not frame_exact(grid) and grid.keyframe_interval <= 0:
        raise UserError("rendering in chunks needs keyframe_interval > 0 (without keyframes every chunk would "
                        "re-render the clip from frame 0)", field="keyframe_interval")
    source = Path(request.source)
    info = media.probe(source)
    media.check_renderable(info)
    first, last = resolve_range(request.frames, info.frame_count)
    overlay = params["output_kind"] == "overlay"
    plan = plan_output(info, Path(request.output), overlay, request.work_dir, request.codec)
    if plan.kind == "image":
        raise UserError("a still image is one frame: render it without --ray", field="source")
    # a movie's chunks write its hidden frames: what those cannot keep is not the movie's to say
    unsaid = set(plan_output(info, Path(plan.pattern), overlay).warnings if plan.kind == "movie" else ())
    unsaid -= set(plan.warnings)
    Path(plan.pattern).parent.mkdir(parents=True, exist_ok=True)
    total = last - first + 1

    started = _connect(ray, address, workers)
    pool: Optional[WorkerPool] = None
    try:
        place = _placement(ray, params, workers)
        size = chunk_size if chunk_size is not None else chunk_size_for_workers(total, grid, place["workers"])
        chunks = plan_chunks(first, last, size, request.warmup, plan=grid)
        report = RayProgress(progress, chunks, _present(plan), unsaid)
        report.emit("loading")
        report.warn(plan.warnings)
        todo = [c for c in chunks if report.done[c] < c.count]
        timings: Dict[str, float] = {}
        written = 0
        encoded = None
        if todo:
            pool = WorkerPool(ray, place, min(place["workers"], len(todo)), params, renderer_factory, persistent)
            loads = pool.load()
            timings.update(load=max(x["load_seconds"] for x in loads),
                           load_total=sum(x["load_seconds"] for x in loads), workers=float(len(pool.actors)))
            # Each chunk writes its own frames: the sequence pattern, never the movie.
            chunk_request = replace(request, output=Path(plan.pattern), frames=None, params=params,
                                    keep_frames=True, codec=None)
            scheduler = ChunkScheduler(ray, pool, chunk_request, report, cancel, max_retries)
            report.emit("rendering")
            t = time.perf_counter()
            scheduler.run(todo)
            written = scheduler.written
            timings.update(render=time.perf_counter() - t, chunks=float(len(todo)),
                           retries=float(sum(scheduler.attempts.values())))
            if scheduler.chunk_load_seconds:
                timings["chunk_load_total"] = scheduler.chunk_load_seconds

        missing = sorted(set(range(first, last + 1)) - _present(plan))
        if missing:
            raise UserError(f"{len(missing)} frame(s) did not arrive in {Path(plan.pattern).parent} (first: "
                            f"{missing[0]}); on a multi-machine Ray cluster the output folder must be shared "
                            "storage that every node sees at the same path", field="output")
        if plan.kind == "movie":
            report.emit("encoding")
            t = time.perf_counter()
            encoded = assemble(Path(plan.pattern), source, plan.movie, (first, last), info=info, codec=request.codec,
                               input_colorspace=params["input_colorspace"])
            timings["encode"] = time.perf_counter() - t
            report.warn(encoded.notes)
            if not request.keep_frames:
                shutil.rmtree(Path(plan.pattern).parent, ignore_errors=True)
        report.emit("done")
        return RenderResult(output=plan.movie or Path(plan.pattern).parent, kind=plan.kind, pattern=plan.pattern,
                            first_frame=first, last_frame=last, written=written, skipped=total - written,
                            fps=float(info.fps), timings=timings, first_number=plan.first_number,
                            codec=encoded.codec.label if encoded else None, notes=encoded.notes if encoded else [],
                            warnings=list(report.warnings))
    finally:
        if pool is not None:
            pool.kill()
        if started:
            ray.shutdown()


def _present(plan) -> Set[int]:
    """0-based frames whose files are there (file numbers follow the source's: pattern % (first_number + i))."""
    return {n - plan.first_number for n in sequence_frames(plan.pattern)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _user_error(exc, doing: str) -> UserError:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, UserError):
        return UserError(cause.message, field=cause.field)
    return UserError(f"{doing} failed: {_first_line(cause or exc)}")
