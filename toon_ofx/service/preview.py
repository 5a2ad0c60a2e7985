"""The preview endpoint: one preview computing at a time, and its answer (one frame before and after, as PNG).

A preview nobody waits for stops: a newer request replaces the one computing (which answers 409),
and one whose client closed the connection is cancelled; both stop within one projection step. The
preview itself (toon_ofx.core.render.preview) is imported when the first preview is asked for.
"""
from __future__ import annotations

import base64
import inspect
import logging
import struct
import threading
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from ..core.errors import Cancelled
from .errors import Conflict, RequestError

log = logging.getLogger("toon_ofx.service.preview")


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


def default_preview(source, frame, params, cancel=None):
    """toon_ofx.core.render.preview: (original, stylised, faces) of one frame; `cancel` stops it."""
    from ..core.render import preview

    return preview(Path(source), frame, params, cancel=cancel)


class PreviewSlot:
    """Runs `preview_fn(source, frame, params, cancel=)` one at a time; the newest request wins.

    A stand-in `preview_fn` without a `cancel` parameter (tests) simply runs to the end.
    """

    def __init__(self, preview_fn: Callable, poll: float = 0.1):
        self.preview_fn = preview_fn
        self.poll = poll
        try:
            self._takes_cancel = "cancel" in inspect.signature(preview_fn).parameters
        except (TypeError, ValueError):
            self._takes_cancel = False
        self._busy = threading.Lock()      # held by the preview computing
        self._mutex = threading.Lock()
        self._current: Optional[Tuple[threading.Event, threading.Event]] = None   # (cancel, superseded)
        self._closed = False

    def busy(self) -> bool:
        """True while a preview computes or waits to."""
        with self._mutex:
            return self._current is not None

    def close(self) -> None:
        """Stop the preview computing, refuse new ones (the engine is stopping)."""
        with self._mutex:
            self._closed = True
            if self._current is not None:
                self._current[0].set()

    def run(self, source: str, frame: int, params: Dict[str, Any],
            client_gone: Callable[[], bool] = lambda: False):
        """(original, stylised, faces); Conflict (409) when a newer preview replaced this one."""
        cancel = threading.Event()
        superseded = threading.Event()
        with self._mutex:
            if self._closed:
                raise RequestError("the engine is stopping", status=503)
            if self._current is not None:
                self._current[1].set()
                self._current[0].set()
            mine = self._current = (cancel, superseded)
        done = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(cancel, done, client_gone), daemon=True,
                                   name="toon-ofx-preview-watch")
        watcher.start()
        try:
            while not self._busy.acquire(timeout=self.poll):  # the one before stops within one step
                if cancel.is_set():
                    break
            else:
                try:
                    if not cancel.is_set():
                        kwargs = {"cancel": cancel} if self._takes_cancel else {}
                        return self.preview_fn(source, frame, params, **kwargs)
                except Cancelled:
                    pass
                finally:
                    self._busy.release()
            if superseded.is_set():
                raise Conflict("a newer preview replaced this one before it finished")
            raise RequestError("the preview was stopped (its client went away or the engine is stopping)",
                               status=503)
        finally:
            done.set()
            with self._mutex:
                if self._current is mine:
                    self._current = None

    def _watch(self, cancel: threading.Event, done: threading.Event, client_gone: Callable[[], bool]) -> None:
        while not done.wait(self.poll):
            if client_gone():
                log.info("preview abandoned by its client: stopping it")
                cancel.set()
                return


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
