"""Where frames come from: a webcam, any iterable, a movie or image sequence on disk.

A source has `read()` (an RGB uint8 frame, None when it stops) and `close()`; `FrameGrabber` reads one in
its own thread for the Live preview. `read_frame` / `frame_count` serve the scrubber.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from PySide6 import QtCore

from ..core.errors import UserError
from .backends import error_text


class CameraSource:
    """A webcam through OpenCV: `read()` gives RGB frames, None when it stops."""

    def __init__(self, index: int = 0):
        import cv2

        self._cv2 = cv2
        self._cap = cv2.VideoCapture(index)
        if not self._cap.isOpened():
            self._cap.release()
            raise RuntimeError(f"No camera found (camera {index} could not be opened). Connect a webcam, or "
                               "check that no other program is using it.")

    def read(self):
        ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        return self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        self._cap.release()


class IterSource:
    """Frames from any iterable (tests, files): `read()` returns the next one, None at the end."""

    def __init__(self, frames: Iterable[Any]):
        self._it = iter(frames)

    def read(self):
        return next(self._it, None)

    def close(self) -> None:
        pass


def read_frame(source: str, index: int):
    """Frame `index` of a movie or image sequence as RGB uint8 (toon_ofx.core.media, else OpenCV)."""
    try:
        from ..core import media
    except ImportError:
        media = None
    if media is not None:
        for _, image in media.read_frames(source, index, index, bits=8):
            return image
    import cv2

    cap = cv2.VideoCapture(str(source))
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, frame = cap.read()
    finally:
        cap.release()
    if not ok:
        raise UserError(f"cannot read frame {index} of {source}", field="source")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def frame_count(source: str) -> int:
    """How many frames a movie or image sequence has (toon_ofx.core.media, else OpenCV)."""
    try:
        from ..core import media
        return int(media.probe(source).frame_count)
    except ImportError:
        pass
    import cv2

    cap = cv2.VideoCapture(str(source))
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()
    if n <= 0:
        raise UserError(f"{source} is not a readable video", field="source")
    return n


class FrameGrabber(QtCore.QThread):
    """Reads a frame source in its own thread and posts each frame to the UI."""

    frame = QtCore.Signal(object)
    failed = QtCore.Signal(str)

    def __init__(self, open_source: Callable[[], Any], interval_ms: int = 33, parent=None):
        super().__init__(parent)
        self._open, self._interval = open_source, interval_ms

    def run(self) -> None:
        try:
            source = self._open()
        except Exception as exc:  # noqa: BLE001
            self.failed.emit(error_text(exc))
            return
        try:
            while not self.isInterruptionRequested():
                image = source.read()
                if image is None:
                    self.failed.emit("The camera stopped sending frames.")
                    return
                self.frame.emit(image)
                self.msleep(self._interval)
        finally:
            source.close()
