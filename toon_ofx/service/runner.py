"""Running one claimed job: call the renderer, keep its progress, and record how the job ended.

A movie is encoded under a hidden partial name and moved into place only when complete, so its
final name exists only for a finished movie; its frames are kept until then, so a restart never
re-renders them. A job stopped by a shutdown goes back to the queue; one stopped by a cancel ends.
The frames of a failed or cancelled job stay on disk so a retry resumes from them. Every state is
recorded only after the file work it describes (movie moved, frames removed): a crash in between
leaves the job running, and the restart finishes it. A storage error (full disk, no permission)
fails the job with a message naming the path. The renderer (and torch) is imported when the first
job runs.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from ..core.errors import Cancelled, UserError
from .outputs import is_inside, move_no_clobber, norm_path, partial_movie
from .store import JobStore

log = logging.getLogger("toon_ofx.service.runner")


def _default_render(request, progress=None, cancel=None):
    from ..core.render import render

    return render(request, progress=progress, cancel=cancel)


def storage_message(exc: OSError, where: Optional[str] = None) -> str:
    """One line for a failed file operation, naming the path (`where` when the error names none)."""
    where = exc.filename if exc.filename is not None else (where or "a file")
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"no space left on the disk of {where} ({exc.strerror}); free some space and retry the job"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write {where}: {exc.strerror}"
    return f"cannot use {where}: {exc.strerror or exc}"


def _file_id(path: str) -> Optional[list]:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino]


def _event_dict(event: Any) -> Dict[str, Any]:
    if isinstance(event, Mapping):
        return dict(event)
    return {k: getattr(event, k, None) for k in ("stage", "frames_done", "frames_total", "faces", "eta_seconds",
                                                 "model", "step", "steps", "notice", "warning")}


class JobRunner:
    """Runs claimed jobs with `render_fn(request, progress=, cancel=)` (default: toon_ofx.core.render.render).

    `stopped_by_shutdown(job_id)` tells a job interrupted by a shutdown (it stays queued) from a
    cancelled one; progress is stored at most every `progress_interval` seconds while rendering.
    """

    def __init__(self, store: JobStore, render_fn: Optional[Callable] = None, progress_interval: float = 0.1,
                 stopped_by_shutdown: Callable[[str], bool] = lambda job_id: False):
        self.store = store
        self.render_fn = render_fn or _default_render
        self.progress_interval = progress_interval
        self.stopped_by_shutdown = stopped_by_shutdown

    def run(self, row: sqlite3.Row, cancel: threading.Event) -> None:
        """Render the claimed job `row` and record how it ended; `cancel` stops it between frames."""
        job_id = row["id"]
        output = json.loads(row["output"])
        params = json.loads(row["params"])
        first, last = row["first_frame"], row["last_frame"]
        total = last - first + 1
        progress = json.loads(row["progress"])
        progress.update(frames_total=total)

        movie = output["kind"] == "movie"
        partial = partial_movie(output["path"]) if movie else None
        if movie and os.path.exists(output["path"]):
            if _file_id(output["path"]) == output.get("moved"):
                # stopped after the movie was moved into place but before the job was marked done
                log.info("job %s: %s was finished before the restart", job_id, output["path"])
                progress.update(stage="done", frames_done=total, eta_seconds=0.0)
                self.drop_work_dir(output)
                self.store.finish(job_id, "done", result=self._result(output, first, last, row["fps"]),
                                  progress=progress)
            else:
                self._fail(job_id, progress, f"{output['path']} appeared after the job was queued; "
                           "existing files are never overwritten")
            return

        started = time.monotonic()
        state = {"last": 0.0, "first_done": None}

        def on_progress(event: Any) -> None:
            e = _event_dict(event)
            p = dict(progress)
            for key in ("stage", "frames_done", "faces", "notice"):
                if e.get(key) is not None:
                    p[key] = e[key]
            if e.get("warning"):   # every warning of the render, in order
                p["warnings"] = list(p.get("warnings") or []) + [e["warning"]]
            for key in ("model", "step", "steps"):   # only while a model loads or a projection runs
                if e.get(key):
                    p[key] = e[key]
                else:
                    p.pop(key, None)
                    progress.pop(key, None)
            if e.get("frames_total"):
                p["frames_total"] = e["frames_total"]
            eta = e.get("eta_seconds")
            done = p.get("frames_done") or 0
            if state["first_done"] is None:
                state["first_done"] = done
            if eta is None and p.get("stage") == "rendering" and done > state["first_done"]:
                rate = (done - state["first_done"]) / max(time.monotonic() - started, 1e-6)
                eta = (p["frames_total"] - done) / rate
            p["eta_seconds"] = None if eta is None else round(float(eta), 1)
            progress.update(p)
            now = time.monotonic()
            # stored at most every progress_interval while frames and projection steps stream in; every
            # other event, and the first of a new stage, at once
            if now - state["last"] >= self.progress_interval or p.get("stage") not in ("rendering", "projecting") \
                    or p.get("stage") != state.get("stage") or done >= p["frames_total"]:
                state["last"], state["stage"] = now, p.get("stage")
                try:
                    self.store.set_progress(job_id, progress)
                except Exception as exc:  # a full disk: progress is not worth failing the job for
                    if not state.get("warned"):
                        state["warned"] = True
                        log.warning("job %s: cannot store progress: %s", job_id, exc)

        from ..core.render import RenderRequest

        work_dir = Path(output["work_dir"]) if output.get("work_dir") else None
        # a movie is encoded under a hidden name and moved into place when complete, so its final name
        # exists only for a finished movie; its frames are kept until then so a restart never re-renders
        target = partial if movie else output["pattern"]
        request = RenderRequest(source=Path(row["source"]), output=Path(target), params=params, frames=(first, last),
                              warmup=0, work_dir=work_dir, keep_frames=movie, codec=output.get("codec"))
        log.info("job %s: rendering %s frames %d-%d -> %s (attempt %d)", job_id, row["source"], first, last,
                 target, row["attempts"])
        try:
            if output["kind"] == "sequence":
                Path(output["folder"]).mkdir(parents=True, exist_ok=True)
            result = self.render_fn(request, progress=on_progress, cancel=cancel)
        except Cancelled:
            self._stopped(job_id, progress, output)
            return
        except Exception as exc:
            if cancel.is_set():
                self._stopped(job_id, progress, output)
                return
            if isinstance(exc, UserError):
                error = exc.message
                log.info("job %s failed: %s", job_id, error)
            elif isinstance(exc, OSError):
                error = storage_message(exc, output.get("work_dir") or output["folder"])
                log.error("job %s failed: %s", job_id, error)
            else:
                error = f"internal error: {type(exc).__name__}: {exc}"
                log.error("job %s: render raised\n%s", job_id, traceback.format_exc())
            self._fail(job_id, progress, error)
            return
        if cancel.is_set():   # asked while the render finished (its movie is still the partial file): cancelled
            self._stopped(job_id, progress, output)
            return
        fps = getattr(result, "fps", None) or row["fps"]
        first_done = getattr(result, "first_frame", first)
        last_done = getattr(result, "last_frame", last)
        pattern = getattr(result, "pattern", None)
        if movie:
            try:
                move_no_clobber(partial, output["path"])
            except FileExistsError:
                self._fail(job_id, progress, f"{output['path']} appeared while the job ran; existing files "
                           f"are never overwritten (the render is kept as {partial})")
                return
            except OSError as exc:
                self._fail(job_id, progress, f"cannot move the movie into place: {storage_message(exc)}")
                return
            try:
                self.store.note_output(job_id, moved=_file_id(output["path"]))
            except Exception as exc:  # a full data disk: the end below is kept in memory all the same
                log.warning("job %s: cannot note the finished movie: %s", job_id, exc)
        progress.update(stage="done", frames_done=total, eta_seconds=0.0)
        self.drop_work_dir(output)
        self.store.finish(job_id, "done", progress=progress,
                          result=self._result(output, first_done, last_done, fps, pattern))
        log.info("job %s done", job_id)

    def _fail(self, job_id: str, progress: Dict[str, Any], error: str) -> None:
        progress.update(stage="failed", eta_seconds=None)
        self.store.finish(job_id, "failed", error=error, progress=progress)

    def drop_work_dir(self, output: Dict[str, Any]) -> None:
        """Remove a job's frame folder (only ever one inside the engine's work folder)."""
        work_dir = output.get("work_dir")
        if work_dir and os.path.isdir(work_dir) and is_inside(work_dir, str(self.store.work_root)) \
                and norm_path(work_dir) != norm_path(str(self.store.work_root)):
            shutil.rmtree(work_dir, ignore_errors=True)

    @staticmethod
    def drop_partial(output: Dict[str, Any]) -> None:
        """Remove a movie job's half-encoded file (its frames stay for a retry)."""
        if output.get("kind") == "movie":
            try:
                os.unlink(partial_movie(output["path"]))
            except FileNotFoundError:
                pass

    def _stopped(self, job_id: str, progress: Dict[str, Any], output: Dict[str, Any]) -> None:
        shutdown = self.stopped_by_shutdown(job_id)
        row = self.store.row(job_id)
        if shutdown and not (row is not None and row["cancel_requested"]):
            progress.update(stage="queued", eta_seconds=None)
            self.store.finish(job_id, "queued", progress=progress)  # resumes at the next start
            log.info("job %s interrupted by shutdown; it resumes at the next start", job_id)
        else:
            progress.update(stage="cancelled", eta_seconds=None)
            try:
                self.drop_partial(output)
            except OSError as exc:
                log.warning("job %s: cannot remove the partial movie: %s", job_id, storage_message(exc))
            self.store.finish(job_id, "cancelled", progress=progress)
            log.info("job %s cancelled (its frames are kept: retry resumes from them)", job_id)

    @staticmethod
    def _result(output: Dict[str, Any], first: int, last: int, fps: Optional[float],
                pattern: Optional[str] = None) -> Dict[str, Any]:
        # frames are 0-based; the file of frame i is pattern % (first_number + i)
        numbers = {"first_number": output.get("first_number", 0)}
        if output["kind"] == "sequence":
            return {"kind": "sequence", "path": output["folder"], "pattern": str(pattern or output["pattern"]),
                    "first_frame": first, "last_frame": last, "fps": fps, **numbers}
        return {"kind": "movie", "path": output["path"], "pattern": None,
                "first_frame": first, "last_frame": last, "fps": fps, **numbers}
