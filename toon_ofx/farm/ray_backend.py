"""`toon-ofx render --ray [ADDRESS]`: render a clip's frame chunks on a Ray cluster.

For teams without a farm manager. One persistent actor per GPU (or per CPU worker)
loads the models once and renders chunk after chunk; chunks are the same
keyframe-aligned frame ranges a farm manager would run (toon_ofx.farm.plan.plan_chunks),
all written into one image sequence, so the result is identical to a single-process
render. A chunk that fails is retried (on a fresh actor when its actor died);
progress of all workers is aggregated into the usual ProgressEvents; a movie output
is encoded once every chunk is done.

The workers write frames to the paths of the request: on a multi-machine cluster the
source clip and the output folder must be on storage every node sees at the same path.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ..core.errors import Cancelled, UserError
from .assemble import assemble, sequence_frames
from .plan import Chunk, chunk_size_for_workers, plan_chunks, tracker_memory

DEFAULT_MAX_RETRIES = 2
POLL_SECONDS = 0.25
LOCAL_OBJECT_STORE = 256 * 1024 ** 2   # chunks pass paths, not pixels: a small store is plenty


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


class ChunkWorker:
    """A Ray actor body: one loaded renderer, many chunks.

    `factory(params)` builds the renderer (default toon_ofx.core.render.Renderer, which loads the
    models in its constructor); with persistent=False it is rebuilt for every chunk, which is
    what a farm task that starts a new process pays (for benchmarks).
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

    def load(self) -> Dict[str, Any]:
        """Load the models (once); returns where and how long."""
        import os
        import socket

        if self.renderer is None and self.persistent:
            self.renderer, self.load_seconds = self._build()
        torch = sys.modules.get("torch")   # loaded by the renderer when it needs it
        if torch is not None and self.threads > 0:
            torch.set_num_threads(self.threads)
        return {"worker": f"{socket.gethostname()}:{os.getpid()}", "load_seconds": self.load_seconds}

    def render_chunk(self, request, chunk: Chunk) -> ChunkOutcome:
        import os
        import socket

        self._cancel.clear()
        load_seconds = 0.0
        if self.renderer is None or not self.persistent:
            self.renderer, load_seconds = self._build()
        with self._lock:
            self._status = {"chunk": (chunk.first, chunk.last), "done": 0, "faces": 0}
        baseline: List[int] = []

        def progress(event) -> None:
            # frames_done starts at the chunk's frames already on disk: report only new ones.
            if event.stage != "rendering":
                return
            if not baseline:
                baseline.append(event.frames_done)
            with self._lock:
                self._status = {"chunk": (chunk.first, chunk.last), "done": event.frames_done - baseline[0],
                                "faces": event.faces}

        t = time.perf_counter()
        result = self.renderer.render(replace(request, frames=(chunk.first, chunk.last)), progress, self._cancel)
        with self._lock:
            faces = self._status["faces"]
            self._status = {"chunk": None, "done": 0, "faces": 0}
        return ChunkOutcome(chunk, result.written, result.skipped, faces, time.perf_counter() - t, load_seconds,
                            f"{socket.gethostname()}:{os.getpid()}")

    def status(self) -> Dict[str, Any]:
        with self._lock:
            return dict(self._status)

    def cancel(self) -> None:
        self._cancel.set()


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


class _Progress:
    """Aggregates finished chunks and the live status of every worker into ProgressEvents."""

    def __init__(self, callback, total: int, already: int):
        from ..core.render import ProgressEvent

        self.Event = ProgressEvent
        self.callback, self.total = callback, total
        self.finished, self.faces_finished, self.already = already, 0, already
        self.start = time.monotonic()
        self.last: Optional[tuple] = None

    def emit(self, stage: str, live_done: int = 0, live_faces: int = 0) -> None:
        if self.callback is None:
            return
        done = min(self.total, self.finished + live_done)
        faces = self.faces_finished + live_faces
        fresh = done - self.already
        eta = None
        if stage == "done":
            eta = 0.0
        elif fresh > 0:
            eta = (self.total - done) * (time.monotonic() - self.start) / fresh
        key = (stage, done, faces)
        if key != self.last:
            self.last = key
            self.callback(self.Event(stage, done, self.total, faces, eta))


def render_with_ray(request, address: Optional[str] = None, chunk_size: Optional[int] = None,
                    workers: Optional[int] = None, progress: Optional[Callable] = None,
                    cancel: Optional[threading.Event] = None, *, max_retries: int = DEFAULT_MAX_RETRIES,
                    renderer_factory: Optional[Callable] = None, persistent: bool = True):
    """Render `request` (a toon_ofx.core.render.RenderRequest) in chunks on Ray; returns a RenderResult.

    address: a Ray cluster address ("auto", "ray://host:10001", "host:6379"); None starts a local
    cluster (or uses the one this process is already connected to). workers: how many actors
    (default: one per GPU, else one per CPU). chunk_size: frames per chunk (default two keyframe
    intervals; moved onto the keyframe grid). max_retries: attempts after the first for a
    failing chunk. renderer_factory/persistent: for tests and benchmarks.
    """
    from ..core import media
    from ..core.params import validate
    from ..core.render import RenderResult, plan_output, resolve_range

    ray = _ray()
    params = validate(request.params)
    keyframes = params["keyframe_interval"]
    if keyframes <= 0:
        raise UserError("rendering in chunks needs keyframe_interval > 0 (without keyframes every chunk would "
                        "re-render the clip from frame 0)", field="keyframe_interval")
    source = Path(request.source)
    info = media.probe(source)
    first, last = resolve_range(request.frames, info.frame_count)
    overlay = params["output_kind"] == "overlay"
    plan = plan_output(source, Path(request.output), overlay, request.work_dir)
    Path(plan.pattern).parent.mkdir(parents=True, exist_ok=True)
    total = last - first + 1

    started = _connect(ray, address, workers)
    actors: List[Any] = []
    try:
        place = _placement(ray, params, workers)
        n_workers = place["workers"]
        size = chunk_size if chunk_size is not None else chunk_size_for_workers(total, keyframes, n_workers)
        overlap = max(request.warmup, tracker_memory(params))
        chunks = plan_chunks(first, last, size, overlap, keyframe_interval=keyframes)
        present = set(sequence_frames(plan.pattern))
        todo = [c for c in chunks if any(i not in present for i in range(c.first, c.last + 1))]
        already = sum(1 for i in range(first, last + 1) if i in present)
        report = _Progress(progress, total, already)
        report.emit("loading")
        timings: Dict[str, float] = {}
        written = 0

        if todo:
            n_workers = min(n_workers, len(todo))
            Remote = ray.remote(ChunkWorker)

            # The workers see this process's toon-ofx settings (model folder, ffmpeg, ...).
            env = {k: v for k, v in os.environ.items() if k.startswith("TOON_OFX_")}

            def spawn():
                return Remote.options(max_concurrency=2, runtime_env={"env_vars": env} if env else None,
                                      **place["options"]).remote(params, renderer_factory, place["threads"],
                                                                 persistent)

            def load(actor_list):
                try:
                    return ray.get([a.load.remote() for a in actor_list])
                except ray.exceptions.RayTaskError as exc:
                    raise _user_error(exc, "loading the models on a Ray worker") from None

            t = time.perf_counter()
            actors = [spawn() for _ in range(n_workers)]
            loads = load(actors)
            timings["load"] = max(x["load_seconds"] for x in loads)
            timings["load_total"] = sum(x["load_seconds"] for x in loads)
            timings["workers"] = float(n_workers)
            # Each chunk writes its own frames: the sequence pattern, never the movie.
            chunk_request = replace(request, output=Path(plan.pattern), frames=None, params=params,
                                    keep_frames=True)
            pending = deque(todo)
            attempts: Dict[Chunk, int] = {}
            inflight: Dict[Any, tuple] = {}
            idle = list(range(n_workers))
            failures: List[str] = []
            report.emit("rendering")
            t = time.perf_counter()
            while pending or inflight:
                if cancel is not None and cancel.is_set():
                    for actor in actors:
                        actor.cancel.remote()
                    raise Cancelled(f"cancelled after {report.finished} of {total} frames")
                while idle and pending:
                    w, chunk = idle.pop(), pending.popleft()
                    inflight[actors[w].render_chunk.remote(chunk_request, chunk)] = (w, chunk)
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    w, chunk = inflight.pop(ref)
                    try:
                        outcome: ChunkOutcome = ray.get(ref)
                    except ray.exceptions.RayTaskError as exc:
                        cause = getattr(exc, "cause", None)
                        if isinstance(cause, Cancelled):
                            raise Cancelled(str(cause)) from None
                        if isinstance(cause, UserError):
                            raise UserError(f"frames {chunk}: {cause.message}", field=cause.field) from None
                        failures.append(f"frames {chunk}: {_first_line(cause or exc)}")
                        _retry(chunk, attempts, max_retries, failures, pending)
                        idle.append(w)
                        continue
                    except ray.exceptions.RayActorError as exc:
                        failures.append(f"frames {chunk}: worker lost ({_first_line(exc)})")
                        _retry(chunk, attempts, max_retries, failures, pending)
                        actors[w] = spawn()
                        load([actors[w]])
                        idle.append(w)
                        continue
                    written += outcome.written
                    report.finished += outcome.written
                    report.faces_finished += outcome.faces
                    timings["chunk_load_total"] = timings.get("chunk_load_total", 0.0) + outcome.load_seconds
                    idle.append(w)
                live = _statuses(ray, [actors[w] for w, _ in inflight.values()])
                report.emit("rendering", sum(s["done"] for s in live), sum(s["faces"] for s in live))
            timings["render"] = time.perf_counter() - t
            timings["chunks"] = float(len(todo))
            timings["retries"] = float(sum(attempts.values()))

        missing = sorted(set(range(first, last + 1)) - set(sequence_frames(plan.pattern)))
        if missing:
            raise UserError(f"{len(missing)} frame(s) did not arrive in {Path(plan.pattern).parent} (first: "
                            f"{missing[0]}); on a multi-machine Ray cluster the output folder must be shared "
                            "storage that every node sees at the same path", field="output")
        if plan.kind == "movie":
            report.emit("encoding", 0, 0)
            t = time.perf_counter()
            assemble(Path(plan.pattern), source, plan.movie, (first, last), info=info)
            timings["encode"] = time.perf_counter() - t
            if not request.keep_frames:
                shutil.rmtree(Path(plan.pattern).parent, ignore_errors=True)
        report.finished = total
        report.emit("done")
        return RenderResult(output=plan.movie or Path(plan.pattern).parent, kind=plan.kind, pattern=plan.pattern,
                            first_frame=first, last_frame=last, written=written, skipped=total - written,
                            fps=float(info.fps), timings=timings)
    finally:
        for actor in actors:
            try:
                ray.kill(actor)
            except Exception:
                pass
        if started:
            ray.shutdown()


def _statuses(ray, actors) -> List[Dict[str, Any]]:
    """Live progress of busy workers; a worker that just died counts as no progress (its chunk's
    result reports the failure)."""
    out = []
    for ref in [a.status.remote() for a in actors]:
        try:
            out.append(ray.get(ref, timeout=10))
        except Exception:
            out.append({"done": 0, "faces": 0})
    return out


def _retry(chunk: Chunk, attempts: Dict[Chunk, int], max_retries: int, failures: List[str], pending) -> None:
    attempts[chunk] = attempts.get(chunk, 0) + 1
    if attempts[chunk] > max_retries:
        raise UserError(f"frames {chunk} failed {attempts[chunk]} times; last error: {failures[-1]}")
    pending.appendleft(chunk)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def _user_error(exc, doing: str) -> UserError:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, UserError):
        return UserError(cause.message, field=cause.field)
    return UserError(f"{doing} failed: {_first_line(cause or exc)}")
