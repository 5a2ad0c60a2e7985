"""What the user looks at before committing a render: original | toon side by side, a frame scrubber, the
Preview frame button and the Live (webcam) toggle. Previews run on the worker pool, never on the UI thread;
one in progress shows its stage, projection step and ETA, and Cancel stops it (within one projection step).
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional

from PySide6 import QtCore, QtWidgets
from PySide6.QtCore import Qt

from ..core.progress import describe
from .backends import Preview
from .live import LivePreview
from .sources import read_frame
from .widgets import ImageView, to_qimage
from .workers import TaskRunner

PLACEHOLDER = "Preview a frame to see it toonified"


class PreviewPane(QtWidgets.QWidget):
    """The right-hand views. `source()` and `params()` ask the window (`params()` is None when they are not
    valid; the window has said why); `set_status` reports to it."""

    preview_ready = QtCore.Signal(object)
    _preview_progress = QtCore.Signal(object)   # from the pool: the running preview's progress dict

    def __init__(self, backend, tasks: TaskRunner, *, source: Callable[[], Optional[str]],
                 params: Callable[[], Optional[Dict[str, Any]]], set_status: Callable[..., None],
                 frame_source: Callable[[], Any], parent=None):
        super().__init__(parent)
        self.backend, self.tasks = backend, tasks
        self.source, self.params, self.set_status = source, params, set_status
        self.last_preview: Optional[Preview] = None
        self._cancel: Optional[threading.Event] = None   # the running preview's
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)

        views = QtWidgets.QHBoxLayout()
        self.original_view = ImageView("Original")
        self.stylised_view = ImageView(PLACEHOLDER)
        views.addWidget(self.original_view, 1)
        views.addWidget(self.stylised_view, 1)
        captions = QtWidgets.QHBoxLayout()
        captions.addWidget(QtWidgets.QLabel("Original"), 1, Qt.AlignCenter)
        captions.addWidget(QtWidgets.QLabel("Toon"), 1, Qt.AlignCenter)
        layout.addLayout(captions)
        layout.addLayout(views, 1)

        scrub = QtWidgets.QHBoxLayout()
        scrub.addWidget(QtWidgets.QLabel("Frame"))
        self.frame_slider = QtWidgets.QSlider(Qt.Horizontal)
        self.frame_slider.setObjectName("frame_slider")
        self.frame_spin = QtWidgets.QSpinBox()
        self.frame_slider.valueChanged.connect(self.frame_spin.setValue)
        self.frame_spin.valueChanged.connect(self.frame_slider.setValue)
        self.frame_slider.valueChanged.connect(self._frame_changed)
        self.preview_button = QtWidgets.QPushButton("Preview frame")
        self.preview_button.setObjectName("preview_button")
        self.preview_button.clicked.connect(self.preview)
        self.live_button = QtWidgets.QPushButton("Live (webcam)")
        self.live_button.setObjectName("live_button")
        self.live_button.setCheckable(True)
        self.live_button.toggled.connect(self._live_toggled)
        scrub.addWidget(self.frame_slider, 1)
        scrub.addWidget(self.frame_spin)
        scrub.addWidget(self.preview_button)
        scrub.addWidget(self.live_button)
        layout.addLayout(scrub)

        running = QtWidgets.QHBoxLayout()
        self.preview_progress = QtWidgets.QProgressBar()
        self.preview_progress.setObjectName("preview_progress")
        self.preview_progress.setTextVisible(True)
        self.preview_progress.setVisible(False)
        self.preview_cancel = QtWidgets.QPushButton("Cancel preview")
        self.preview_cancel.setObjectName("preview_cancel")
        self.preview_cancel.setEnabled(False)
        self.preview_cancel.clicked.connect(self.cancel_preview)
        running.addWidget(self.preview_progress, 1)
        running.addWidget(self.preview_cancel)
        layout.addLayout(running)
        self._preview_progress.connect(self._show_progress)

        self.faces_label = QtWidgets.QLabel("")
        layout.addWidget(self.faces_label)

        self._frame_timer = QtCore.QTimer(self)   # load the frame under the scrubber once it rests
        self._frame_timer.setSingleShot(True)
        self._frame_timer.setInterval(150)
        self._frame_timer.timeout.connect(self._load_original)

        self.live = LivePreview(backend, tasks, params, frame_source, parent=self)
        self.live.frame.connect(lambda image: self.original_view.set_image(to_qimage(image)))
        self.live.stylised.connect(self._live_stylised)
        self.live.stopped.connect(self._live_stopped)
        self.live.problem.connect(lambda message: self.set_status(message, error=True))

    # ------------------------------------------------------------ scrubber
    def set_frame_range(self, first: int, last: int, current: int) -> None:
        """Scrub `first`..`last`, stand on `current` and show that frame."""
        self.frame_slider.setRange(first, last)
        self.frame_spin.setRange(first, last)
        self.frame_slider.setValue(current)
        self._frame_timer.start()

    def _frame_changed(self, _value: int) -> None:
        if not self.live_button.isChecked():
            self._frame_timer.start()

    def _load_original(self) -> None:
        source = self.source()
        if not source:
            return
        frame = self.frame_slider.value()
        self.tasks.run(read_frame, source, frame, done=lambda image, f=frame: self._show_original(image, f),
                       failed=lambda msg: self.set_status(msg, error=True))

    def _show_original(self, image, frame: int) -> None:
        if frame == self.frame_slider.value() and not self.live_button.isChecked():
            self.original_view.set_image(to_qimage(image))
            if self.last_preview is None or self.last_preview.frame != frame:
                self.stylised_view.set_image(None, PLACEHOLDER)

    # ------------------------------------------------------------ preview
    def preview(self) -> None:
        """Stylise the frame under the scrubber (on the pool)."""
        source = self.source()
        if not source:
            self.set_status("Choose a video first.", error=True)
            return
        if self.backend is None:
            self.set_status("No engine to preview with.", error=True)
            return
        params = self.params()
        if params is None:
            return
        frame = self.frame_slider.value()
        self.preview_button.setEnabled(False)
        self._cancel = threading.Event()
        self.preview_cancel.setEnabled(True)
        self.preview_progress.setRange(0, 0)   # busy until the first progress arrives
        self.preview_progress.setFormat("Starting…")
        self.preview_progress.setVisible(True)
        self.set_status(f"Previewing frame {frame}…")
        self.tasks.run(self._run_preview, source, frame, params, self._cancel, done=self._preview_done,
                       failed=self._preview_failed)

    def _run_preview(self, source: str, frame: int, params: Dict[str, Any], cancel: threading.Event) -> Preview:
        """On the pool: the backend's preview, its progress sent to the UI thread."""
        return self.backend.preview(source, frame, params, progress=self._preview_progress.emit, cancel=cancel)

    def cancel_preview(self) -> None:
        """Stop the running preview (the engine stops within one projection step)."""
        if self._cancel is not None:
            self._cancel.set()
            self.preview_cancel.setEnabled(False)
            self.preview_progress.setFormat("Cancelling…")
            self.set_status("Cancelling the preview…")

    def _show_progress(self, progress: Dict[str, Any]) -> None:
        if self._cancel is None or self._cancel.is_set():
            return
        step, steps = int(progress.get("step") or 0), int(progress.get("steps") or 0)
        if progress.get("stage") == "projecting" and steps:
            self.preview_progress.setRange(0, steps)
            self.preview_progress.setValue(step)
        else:
            self.preview_progress.setRange(0, 0)
        eta = progress.get("eta_seconds")
        text = describe(progress) or "Starting"
        if eta:
            text += f" · ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        self.preview_progress.setFormat(text[:1].upper() + text[1:])

    def _preview_ended(self) -> bool:
        """Back to idle; whether the preview that ended had been cancelled."""
        cancelled = self._cancel is not None and self._cancel.is_set()
        self._cancel = None
        self.preview_button.setEnabled(True)
        self.preview_cancel.setEnabled(False)
        self.preview_progress.setVisible(False)
        return cancelled

    def _preview_done(self, result: Preview) -> None:
        self._preview_ended()
        self.last_preview = result
        self.original_view.set_image(to_qimage(result.original))
        self.stylised_view.set_image(to_qimage(result.stylised))
        self.faces_label.setText(f"Frame {result.frame}: {result.faces} face(s)")
        self.set_status("No face found in this frame." if result.faces == 0 else f"Preview of frame {result.frame}.")
        self.preview_ready.emit(result)

    def _preview_failed(self, message: str) -> None:
        """No toon image stays beside the message: the one shown belonged to another preview."""
        cancelled = self._preview_ended()
        self.last_preview = None
        self.faces_label.setText("")
        self.stylised_view.set_image(None, "Preview cancelled" if cancelled else "Preview failed")
        if cancelled:
            self.set_status("Preview cancelled.")
        else:
            self.set_status(f"Preview failed: {message}", error=True)

    # --------------------------------------------------------------- live
    def _live_toggled(self, on: bool) -> None:
        if on:
            self.start_live()
        else:
            self.stop_live()

    def start_live(self) -> None:
        if self.live.running:
            return
        if not self.live_button.isChecked():
            self.live_button.setChecked(True)  # re-enters through the toggled signal
            return
        self.live.start()
        self.set_status("Live: stylising the newest camera frame whenever the engine is free.")

    def stop_live(self) -> None:
        self.live.stop()
        if self.live_button.isChecked():
            self.live_button.blockSignals(True)
            self.live_button.setChecked(False)
            self.live_button.blockSignals(False)

    def _live_stopped(self, message: str) -> None:
        self.stop_live()
        self.set_status(message, error=True)

    def _live_stylised(self, result: Preview) -> None:
        self.last_preview = result
        self.stylised_view.set_image(to_qimage(result.stylised))
        self.faces_label.setText(f"Live: {result.faces} face(s)")
        self.preview_ready.emit(result)
