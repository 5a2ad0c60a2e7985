"""The Live preview (the paper's RGB-camera input): camera frames in, the newest one stylised whenever the
engine is free. Live frames always take the encoder path (one feed-forward pass per face, whatever the
form's `inversion` says for renders): a projection takes minutes a frame. No widgets here; the preview pane
shows what the signals carry.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Optional

from PySide6 import QtCore

from ..core.errors import UserError
from .backends import Preview
from .sources import FrameGrabber
from .workers import TaskRunner


class LivePreview(QtCore.QObject):
    """Runs a `FrameGrabber` on `frame_source` and previews frames through the backend, one at a time.

    `params()` gives the current parameters, or None while they are not valid (that frame is skipped).
    """

    frame = QtCore.Signal(object)       # every camera frame, as it arrives
    stylised = QtCore.Signal(object)    # a Preview of the newest frame the engine was free for
    stopped = QtCore.Signal(str)        # the camera could not start or stopped sending: live is over
    problem = QtCore.Signal(str)        # one frame could not be previewed

    def __init__(self, backend, tasks: TaskRunner, params: Callable[[], Optional[Dict[str, Any]]],
                 frame_source: Callable[[], Any], parent=None):
        super().__init__(parent)
        self.backend, self.tasks, self.params, self.frame_source = backend, tasks, params, frame_source
        self._grabber: Optional[FrameGrabber] = None
        self._busy = False
        self._dir: Optional[str] = None   # where camera frames go to the engine: made on start, removed by close

    @property
    def folder(self) -> Optional[str]:
        return self._dir

    @property
    def running(self) -> bool:
        return self._grabber is not None

    def start(self) -> None:
        if self._grabber is not None:
            return
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="toon_ofx_live_")
        self._grabber = FrameGrabber(self.frame_source, parent=self)
        self._grabber.frame.connect(self._frame_arrived)
        self._grabber.failed.connect(self.stopped)
        self._grabber.start()

    def stop(self) -> None:
        grabber, self._grabber = self._grabber, None
        if grabber is not None:
            grabber.requestInterruption()
            grabber.wait(3000)

    def close(self) -> None:
        """Stop and remove the frame folder (once no preview of a frame in it is running)."""
        self.stop()
        folder, self._dir = self._dir, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _frame_arrived(self, image) -> None:
        self.frame.emit(image)
        if self._busy or self.backend is None or self._dir is None:   # busy, no engine, or closed
            return
        params = self.params()
        if params is None:
            return
        params = dict(params, inversion="encoder")  # without an installed encoder: one clear message
        self._busy = True
        path = os.path.join(self._dir, "live.png")
        self.tasks.run(self._stylise, image, path, params, done=self._done, failed=self._failed)

    def _stylise(self, image, path: str, params: Dict[str, Any]) -> Preview:
        """On the pool: the frame goes to the engine as a one-frame PNG "clip"."""
        import cv2

        tmp = path + ".tmp.png"
        channels = image.shape[2] if image.ndim == 3 else 1
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if channels == 3 else image
        if not cv2.imwrite(tmp, bgr):
            raise UserError(f"cannot write the camera frame to {tmp}")
        os.replace(tmp, path)
        return self.backend.preview(path, 0, params)

    def _done(self, result: Preview) -> None:
        self._busy = False
        if self._grabber is not None:
            self.stylised.emit(result)

    def _failed(self, message: str) -> None:
        self._busy = False
        self.problem.emit(f"Live preview failed: {message}")
