"""The panel's engine: one small interface (`preview`, `submit`, `job`, `jobs`, `cancel`, `retry`), two
implementations. `preview(source, frame, params, progress=None, cancel=None)`: `progress(dict)` hears the
preview's progress ("stage", "step", "steps", "eta_seconds", "model"), setting the `cancel` event stops it
within one projection step (it then raises).

`EngineBackend` talks to the local engine process through the stdlib client; `InProcessBackend` runs
`toon_ofx.core.render` in this process with job dicts shaped like the server's. Tests inject their own.
No Qt here: the window calls these from its worker pool.
"""
from __future__ import annotations

import base64
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..core import params as schema
from ..core.errors import UserError

TERMINAL = ("done", "failed", "cancelled")   # job states that no longer change


@dataclass
class Preview:
    """One previewed frame: `original` and `stylised` are RGB(A) uint8 arrays or PNG bytes."""

    original: Any
    stylised: Any
    faces: int
    frame: int


def _count_faces(faces: Any) -> int:
    if isinstance(faces, (list, tuple)):
        return len(faces)
    try:
        return int(faces)
    except (TypeError, ValueError):
        return 0


def _progress_dict(event: Any) -> Dict[str, Any]:
    """A render's progress event as the engine process keeps it (model/step/steps only while they apply)."""
    out = {k: getattr(event, k, None) for k in ("stage", "frames_done", "frames_total", "faces", "eta_seconds")}
    out.update({k: getattr(event, k) for k in ("model", "step", "steps") if getattr(event, k, None)})
    return out


def error_text(exc: BaseException) -> str:
    """The message for the user, whole (the status line wraps it): our own errors' message, else the
    exception's text, else its type."""
    message = str(getattr(exc, "message", None) or exc).strip()
    return message or type(exc).__name__


class EngineBackend:
    """The local engine process (`toon-ofx serve`) through the stdlib client."""

    name = "engine"

    def __init__(self, client):
        self.client = client

    @classmethod
    def connect(cls, python: Optional[str] = None) -> "EngineBackend":
        from ..client import EngineClient

        return cls(EngineClient.connect(python=python or sys.executable, start=True))

    def preview(self, source: str, frame: int, params: Dict[str, Any], progress=None, cancel=None) -> Preview:
        answer = self.client.preview(str(source), int(frame), params, progress=progress, cancel=cancel)

        def png(value):  # the client hands back bytes; a raw answer has base64 text
            return base64.b64decode(value) if isinstance(value, str) else bytes(value)

        return Preview(png(answer["original_png"]), png(answer["stylised_png"]),
                       _count_faces(answer.get("faces")), int(answer.get("frame", frame)))

    def submit(self, source: str, frames: Optional[Sequence[int]], params: Dict[str, Any], output_folder: str,
               output_kind: str = "sequence", name: Optional[str] = None) -> Dict[str, Any]:
        return self.client.submit(str(source), frames=list(frames) if frames else None, params=params,
                                  output_folder=str(output_folder), output_kind=output_kind, name=name)

    def job(self, job_id: str) -> Dict[str, Any]:
        return self.client.job(job_id)

    def jobs(self) -> List[Dict[str, Any]]:
        return self.client.jobs()

    def cancel(self, job_id: str) -> Dict[str, Any]:
        return self.client.cancel(job_id)

    def retry(self, job_id: str) -> Dict[str, Any]:
        """Queue a failed or cancelled job again: it resumes from its frames into the same output."""
        return self.client.retry(job_id)


class InProcessBackend:
    """`toon_ofx.core.render` in this process: one thread per job, job dicts shaped like the server's."""

    name = "in-process"

    def __init__(self, render_module=None):
        self._render = render_module
        self._jobs: Dict[str, Dict[str, Any]] = {}
        self._requests: Dict[str, Any] = {}
        self._cancel: Dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._count = 0

    def _module(self):
        if self._render is None:
            from ..core import render
            self._render = render
        return self._render

    def preview(self, source: str, frame: int, params: Dict[str, Any], progress=None, cancel=None) -> Preview:
        report = (lambda event: progress(_progress_dict(event))) if progress is not None else None
        original, stylised, faces = self._module().preview(Path(source), int(frame), schema.validate(params),
                                                           cancel=cancel, progress=report)
        return Preview(original, stylised, _count_faces(faces), int(frame))

    def submit(self, source, frames, params, output_folder, output_kind="sequence", name=None) -> Dict[str, Any]:
        render = self._module()
        params = schema.validate(params)
        folder = Path(output_folder)
        stem = name or Path(str(source).split("%")[0].rstrip("._-") or "clip").stem
        output = folder / (f"{stem}.mov" if params["output_kind"] == "overlay" else f"{stem}.mp4") \
            if output_kind == "movie" else folder / f"{stem}_toon.%06d.png"
        with self._lock:
            self._count += 1
            job_id = f"local-{self._count}"
            first, last = (list(frames) if frames else [0, 0])
            self._jobs[job_id] = {
                "id": job_id, "state": "queued", "source": str(source), "frames": [first, last], "params": params,
                "output": {"folder": str(folder), "kind": output_kind, "name": name},
                "progress": {"frames_done": 0, "frames_total": last - first + 1, "stage": "queued",
                             "eta_seconds": None, "faces": 0},
                "error": None, "result": None, "created": time.time(), "updated": time.time()}
            self._requests[job_id] = render.RenderRequest(source=Path(source), output=output, params=params,
                                                          frames=tuple(frames) if frames else None)
        self._start(job_id)
        return self.job(job_id)

    def _start(self, job_id: str) -> None:
        """Render the job's request on its own thread; the render skips the frames already on disk."""
        render, job, request = self._module(), self._jobs[job_id], self._requests[job_id]
        cancel = self._cancel[job_id] = threading.Event()

        def progress(event) -> None:
            with self._lock:
                job["state"] = "running"
                notice = getattr(event, "notice", None) or job["progress"].get("notice")
                job["progress"] = _progress_dict(event)
                if notice:   # a render's one-line notice (e.g. a fallback) stays on its job
                    job["progress"]["notice"] = notice
                job["updated"] = time.time()

        def work() -> None:
            try:
                result = render.render(request, progress=progress, cancel=cancel)
            except BaseException as exc:  # noqa: BLE001 - every failure becomes the job's state
                from ..core.errors import Cancelled
                with self._lock:
                    if isinstance(exc, Cancelled) or cancel.is_set():
                        job["state"] = "cancelled"
                    else:
                        job["state"], job["error"] = "failed", error_text(exc)
                return
            with self._lock:
                job["state"] = "done"
                job["result"] = {"kind": result.kind, "path": str(result.output), "pattern": result.pattern,
                                 "first_frame": result.first_frame, "last_frame": result.last_frame,
                                 "fps": result.fps}
                job["progress"]["stage"] = "done"

        threading.Thread(target=work, name=f"toon-ofx {job_id}", daemon=True).start()

    def job(self, job_id: str) -> Dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._jobs[job_id], default=str))

    def jobs(self) -> List[Dict[str, Any]]:
        with self._lock:
            return json.loads(json.dumps(list(self._jobs.values()), default=str))

    def cancel(self, job_id: str) -> Dict[str, Any]:
        self._cancel[job_id].set()
        with self._lock:
            if self._jobs[job_id]["state"] == "queued":
                self._jobs[job_id]["state"] = "cancelled"
        return self.job(job_id)

    def retry(self, job_id: str) -> Dict[str, Any]:
        """Run a failed or cancelled job again into the same output; its finished frames are kept."""
        with self._lock:
            job = self._jobs[job_id]
            if job["state"] not in ("failed", "cancelled"):
                return json.loads(json.dumps(job, default=str))
            job.update(state="queued", error=None, result=None, updated=time.time())
            job["progress"].update(stage="queued", eta_seconds=None)
        self._start(job_id)
        return self.job(job_id)


def make_backend(kind: str = "auto", python: Optional[str] = None):
    """The engine process (started on demand) or, with kind="inprocess", this process."""
    if kind == "inprocess":
        return InProcessBackend()
    try:
        return EngineBackend.connect(python)
    except ImportError:
        if kind == "engine":
            raise UserError("the engine client (toon_ofx.client) is not installed") from None
        return InProcessBackend()
