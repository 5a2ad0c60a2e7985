"""Previews: one computing at a time, on its own thread, polled or waited for; and the answer (one frame
before and after, as PNG).

A preview is started (`PreviewSlot.start`, POST /v1/previews) and polled for its progress (the render's
"loading" and "projecting" events, with an ETA) until it is done, failed or cancelled; or it is waited for
in one request (`PreviewSlot.run`, POST /v1/preview). A preview nobody waits for stops: a newer one
replaces it, a cancel stops it, and so does a client that closed its connection (waited for) or stopped
polling for `lease` seconds; each within one projection step. The preview itself
(toon_ofx.core.render.preview) is imported when the first preview is asked for.
"""
from __future__ import annotations

import base64
import inspect
import itertools
import logging
import secrets
import struct
import threading
import time
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from ..core.errors import Cancelled, UserError
from ..core.params import BY_NAME
from .errors import Conflict, RequestError

log = logging.getLogger("toon_ofx.service.preview")

LEASE = 30.0   # seconds a started preview keeps computing without being polled
KEPT = 4       # previews remembered (the newest), so a late poll still finds how one ended


def encode_png(image: Any) -> bytes:
    """PNG bytes of an H x W (x 1|3|4) uint8 array (numpy or anything with .shape and .tobytes())."""
    shape = tuple(image.shape)
    if len(shape) == 2:
        shape = shape + (1,)
    height, width, channels = shape
    if str(getattr(image, "dtype", "uint8")) != "uint8":
        raise ValueError(f"encode_png needs uint8 pixels, got {image.dtype}")
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    data = image.tobytes() if hasattr(image, "tobytes") else bytes(image)
    stride = width * channels
    raw = b"".join(b"\x00" + data[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def default_preview(source, frame, params, cancel=None, progress=None):
    """toon_ofx.core.render.preview: (original, stylised, faces) of one frame; `cancel` stops it, `progress`
    hears its ProgressEvents."""
    from ..core.render import preview

    return preview(Path(source), frame, params, cancel=cancel, progress=progress)


class PreviewRun:
    """One preview as its client sees it (`to_dict`): state "running", "done", "failed" or "cancelled"."""

    def __init__(self, frame: int, lease: Optional[float]):
        self.id = secrets.token_hex(8)
        self.frame, self.lease = frame, lease
        self.state = "running"
        self.progress: Dict[str, Any] = {"stage": "queued", "step": 0, "steps": 0, "eta_seconds": None}
        self.error: Optional[str] = None
        self.field: Optional[str] = None
        self.error_status: Optional[int] = None   # the HTTP status a waited-for preview answers with
        self.answer: Optional[Dict[str, Any]] = None
        self.cancel, self.finished = threading.Event(), threading.Event()
        self.polled = time.monotonic()

    def stop(self, why: str, status: int) -> None:
        """Ask it to stop (within one projection step); `why` becomes its error once it has."""
        if not self.cancel.is_set():
            self.error, self.error_status = why, status
            self.cancel.set()

    def report(self, event: Any) -> None:
        """A ProgressEvent of the computing preview; a preview nobody polls for `lease` s is stopped."""
        self.progress = {k: getattr(event, k, None) for k in ("stage", "step", "steps", "eta_seconds", "model")}
        if self.lease is not None and time.monotonic() - self.polled > self.lease:
            log.info("preview %s abandoned (not polled for %g s): stopping it", self.id, self.lease)
            self.stop(f"the preview was stopped: nobody asked for it for {self.lease:g} s", 503)

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "state": self.state, "frame": self.frame, "progress": dict(self.progress),
                "error": self.error, "field": self.field, "error_status": self.error_status,
                "result": self.answer}


class PreviewSlot:
    """Runs `preview_fn(source, frame, params, cancel=, progress=)` one at a time; the newest preview wins.

    A stand-in `preview_fn` without a `cancel` or `progress` parameter (tests) runs to the end unreported.
    """

    def __init__(self, preview_fn: Callable, poll: float = 0.1, lease: float = LEASE):
        self.preview_fn = preview_fn
        self.poll, self.lease = poll, lease
        try:
            accepted = set(inspect.signature(preview_fn).parameters)
        except (TypeError, ValueError):
            accepted = set()
        self._takes = {name for name in ("cancel", "progress") if name in accepted}
        self._busy = threading.Lock()      # held by the preview computing
        self._mutex = threading.Lock()
        self._runs: "OrderedDict[str, PreviewRun]" = OrderedDict()
        self._current: Optional[PreviewRun] = None
        self._closed = False
        self._names = itertools.count(1)

    def busy(self) -> bool:
        """True while a preview computes or waits to."""
        with self._mutex:
            return self._current is not None

    def close(self) -> None:
        """Stop the preview computing, refuse new ones (the engine is stopping)."""
        with self._mutex:
            self._closed = True
            if self._current is not None:
                self._current.stop("the preview was stopped: the engine is stopping", 503)

    def start(self, source: str, frame: int, params: Dict[str, Any], waited: bool = False) -> PreviewRun:
        """Start a preview on its own thread (replacing the one computing); poll it with `get`. Unless a
        request is `waited` on it, it stops when nobody polled it for the slot's `lease` seconds."""
        run = PreviewRun(frame, None if waited else self.lease)
        with self._mutex:
            if self._closed:
                raise RequestError("the engine is stopping", status=503)
            if self._current is not None:
                self._current.stop("a newer preview replaced this one before it finished", 409)
            self._current = run
            self._runs[run.id] = run
            while len(self._runs) > KEPT:
                self._runs.popitem(last=False)
        threading.Thread(target=self._compute, args=(run, source, frame, params), daemon=True,
                         name=f"toon-ofx-preview-{next(self._names)}").start()
        return run

    def get(self, preview_id: str) -> Optional[PreviewRun]:
        """The preview `preview_id` (None when unknown or forgotten); asking renews its lease."""
        with self._mutex:
            run = self._runs.get(preview_id)
        if run is not None:
            run.polled = time.monotonic()
        return run

    def cancel(self, preview_id: str, wait: float = 1.0) -> Optional[PreviewRun]:
        """Stop a preview (it stops within one projection step; waited for up to `wait` s)."""
        run = self.get(preview_id)
        if run is not None:
            run.stop("the preview was cancelled", 409)
            run.finished.wait(wait)
        return run

    def run(self, source: str, frame: int, params: Dict[str, Any],
            client_gone: Callable[[], bool] = lambda: False) -> Dict[str, Any]:
        """Compute a preview and wait for it: its answer; Conflict (409) when a newer preview replaced it,
        503 when it was stopped, the preview's own error when it failed."""
        run = self.start(source, frame, params, waited=True)
        while not run.finished.wait(self.poll):
            if client_gone():
                log.info("preview %s abandoned by its client: stopping it", run.id)
                run.stop("the preview was stopped: its client went away", 503)
        if run.state == "done":
            assert run.answer is not None
            return run.answer
        if run.error_status == 409 and run.state == "cancelled":
            raise Conflict(run.error or "a newer preview replaced this one")
        raise RequestError(run.error or "the preview failed", field=run.field, status=run.error_status or 400)

    def _compute(self, run: PreviewRun, source: str, frame: int, params: Dict[str, Any]) -> None:
        try:
            while not self._busy.acquire(timeout=self.poll):   # the one before stops within one step
                if run.cancel.is_set():
                    break
            else:
                try:
                    if not run.cancel.is_set():
                        kwargs = {"cancel": run.cancel, "progress": run.report}
                        result = self.preview_fn(source, frame, params,
                                                 **{k: v for k, v in kwargs.items() if k in self._takes})
                        run.answer = preview_answer(frame, *result)
                        run.state, run.error, run.error_status = "done", None, None
                        run.progress.update(stage="done", eta_seconds=0.0)
                except Cancelled:
                    pass
                except UserError as exc:   # a parameter's problem names "params.<name>"
                    run.field = f"params.{exc.field}" if exc.field in BY_NAME else exc.field
                    run.error, run.error_status = exc.message, getattr(exc, "http_status", 400)
                    run.state = "failed"
                except Exception as exc:  # noqa: BLE001 - the client gets one line, the log the traceback
                    log.exception("preview of %s frame %d failed", source, frame)
                    run.error, run.error_status = f"internal error: {type(exc).__name__}: {exc}", 500
                    run.state = "failed"
                finally:
                    self._busy.release()
            if run.state == "running":
                run.state = "cancelled"
                run.error = run.error or "the preview was cancelled"
                run.error_status = run.error_status or 409
        finally:
            run.finished.set()
            with self._mutex:
                if self._current is run:
                    self._current = None


def _faces_json(faces: Any) -> Any:
    if faces is None:
        return 0
    if isinstance(faces, (int, float)) and not isinstance(faces, bool):
        return int(faces)
    try:
        return len(faces)
    except TypeError:
        return int(faces)


def preview_answer(frame: int, original: Any, stylised: Any, faces: Any) -> Dict[str, Any]:
    """The POST /v1/preview answer: the frame, the face count and both images as base64 PNG."""
    return {"frame": frame, "faces": _faces_json(faces),
            "original_png": base64.b64encode(encode_png(original)).decode("ascii"),
            "stylised_png": base64.b64encode(encode_png(stylised)).decode("ascii")}
