"""`ToonPanel`: the effect's window, put together from its parts.

    left:  source box (a video file, or the Resolve script's clips)   source_box.py
           parameter form (generated from the schema)                 param_form.py
    right: original | toon, scrubber, Preview frame, Live (webcam)   preview_pane.py, live.py
           progress, Render, Cancel                                   render_bar.py
           status line                                                widgets.py

The data path: the form's parameters and the source box's clips go to the backend (backends.py) on the
worker pool (workers.py); the render bar polls the jobs until they end; the window then writes the result
document the Resolve script imports (`--result`) and, for the script, closes.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional

from PySide6 import QtCore, QtWidgets

from ..core.errors import UserError
from .backends import error_text
from .param_form import ParamForm, model_choices
from .preview_pane import PreviewPane
from .render_bar import RenderBar
from .source_box import ClipsBox, FileBox
from .sources import CameraSource, frame_count
from .widgets import StatusLine
from .workers import TaskRunner


class ToonPanel(QtWidgets.QMainWindow):
    """The effect's window. `backend` does the work; `clips_doc` comes from the Resolve script."""

    jobs_finished = QtCore.Signal(str)   # "done", "cancelled", "failed"
    preview_ready = QtCore.Signal(object)

    def __init__(self, backend=None, *, clips_doc: Optional[Dict[str, Any]] = None, source: Optional[str] = None,
                 result_path: Optional[str] = None, output_dir: Optional[str] = None,
                 frame_source: Optional[Callable[[], Any]] = None, models: Optional[List[Dict[str, Any]]] = None,
                 close_when_done: Optional[bool] = None, poll_ms: int = 400, parent=None):
        super().__init__(parent)
        self.backend = backend
        self.clips_doc = clips_doc
        self.result_path = result_path
        self.close_when_done = bool(clips_doc) if close_when_done is None else close_when_done
        self.tasks = TaskRunner(self)
        self._result_written = False
        self.setWindowTitle("Toon Faces — toon-ofx")
        self.resize(1100, 720)

        self.status = StatusLine()
        if clips_doc:
            self.source_box = ClipsBox(clips_doc, output_dir)
            self.source_box.clip_selected.connect(self._show_clip)
        else:
            self.source_box = FileBox(output_dir)
            self.source_box.source_chosen.connect(self.set_source)
        self.form = ParamForm(models if models is not None else model_choices(), tasks=self.tasks)
        self.viewer = PreviewPane(backend, self.tasks, source=self.source_box.source, params=self._checked_params,
                                  set_status=self.set_status, frame_source=frame_source or (lambda: CameraSource(0)))
        self.viewer.preview_ready.connect(self.preview_ready)
        self.render_bar = RenderBar(backend, self.tasks, set_status=self.set_status, poll_ms=poll_ms,
                                    label="Render and place" if clips_doc else "Render clip")
        self.render_bar.render_button.clicked.connect(self.render)
        self.render_bar.states_changed.connect(self.source_box.show_states)
        self.render_bar.finished.connect(self._jobs_ended)
        self._lay_out()

        if clips_doc:
            self.set_params(clips_doc.get("params") or {})
            self._show_clip(self.source_box.current_clip())
        elif source:
            self.set_source(source)
        if backend is None:
            self.set_status("No engine: start `toon-ofx serve` or install the engine extras.", error=True)

    def _lay_out(self) -> None:
        central = QtWidgets.QWidget(self)
        self.setCentralWidget(central)
        outer = QtWidgets.QHBoxLayout(central)
        left_widget = QtWidgets.QWidget()
        left_widget.setMinimumWidth(380)
        left_widget.setMaximumWidth(460)
        left = QtWidgets.QVBoxLayout(left_widget)
        left.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(left_widget, 0)
        right = QtWidgets.QVBoxLayout()
        outer.addLayout(right, 1)
        left.addWidget(self.source_box)
        left.addWidget(self.form)
        left.addStretch(1)
        right.addWidget(self.viewer, 1)
        right.addWidget(self.render_bar)
        right.addWidget(self.status)

    # ------------------------------------------------------------- state
    def set_status(self, text: str, error: bool = False) -> None:
        self.status.set_message(text, error)

    def params(self) -> Dict[str, Any]:
        """The widgets' values, validated by the schema (a complete parameter dict)."""
        return self.form.params()

    def set_params(self, values: Dict[str, Any]) -> None:
        self.form.set_params(values)

    def _checked_params(self) -> Optional[Dict[str, Any]]:
        """The parameters, or None once the status line says what is wrong with them."""
        try:
            return self.params()
        except UserError as exc:
            self.set_status(exc.message, error=True)
            return None

    def busy(self) -> bool:
        return self.render_bar.busy()

    # ------------------------------------------------------------- source
    def set_source(self, path: str) -> bool:
        """Open a video file or image sequence (standalone): scrub its frames, show the middle one."""
        path = str(path or "").strip()
        self.source_box.show_source(path)
        if not path:
            return False
        try:
            n = frame_count(path)
        except Exception as exc:  # noqa: BLE001
            self.set_status(f"Cannot open {path}: {error_text(exc)}", error=True)
            return False
        self.source_box.show_source(path, n)
        self.viewer.set_frame_range(0, n - 1, n // 2)
        self.set_status(f"{os.path.basename(path)}: {n} frames")
        return True

    def _show_clip(self, clip: Optional[Dict[str, Any]]) -> None:
        if clip is not None:
            first, last = int(clip["first"]), int(clip["last"])
            self.viewer.set_frame_range(first, last, (first + last) // 2)

    # ----------------------------------------------------- preview, live
    def preview(self) -> None:
        self.viewer.preview()

    def start_live(self) -> None:
        self.viewer.start_live()

    def stop_live(self) -> None:
        self.viewer.stop_live()

    # ------------------------------------------------------------- render
    def render(self) -> None:
        """Submit the ticked clips (or the chosen video) with the current parameters."""
        if self.busy():
            return
        if self.backend is None:
            self.set_status("No engine to render with.", error=True)
            return
        items = self.source_box.work_items()
        if not items:
            self.set_status("Tick at least one clip." if self.clips_doc else "Choose a video first.", error=True)
            return
        params = self._checked_params()
        if params is None:
            return
        kind = self.source_box.write_kind(params)
        plan = [(item, self.source_box.output_folder(item, params)) for item in items]
        self.render_bar.start(plan, params, kind)

    def cancel(self) -> None:
        self.render_bar.cancel()

    def _jobs_ended(self, outcome: str) -> None:
        self.write_result(outcome)
        self.jobs_finished.emit(outcome)
        if self.close_when_done and outcome == "done":
            QtCore.QTimer.singleShot(0, self.close)

    # ------------------------------------------------------------- result
    def result_document(self, status: str) -> Dict[str, Any]:
        """What the Resolve script reads back: the jobs, their parameters and the track to place them on."""
        return {"version": 1, "status": status, "target_track": self.source_box.target_track(),
                "params": self.render_bar.params_used,
                "results": [{"clip": e["clip"], "job": e["job"]} for e in self.render_bar.entries]}

    def write_result(self, status: str) -> None:
        if not self.result_path:
            return
        doc = self.result_document(status)
        tmp = f"{self.result_path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, default=str)
        os.replace(tmp, self.result_path)
        self._result_written = True

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self.stop_live()
        if self.busy():
            self.render_bar.cancel_now()  # closing mid-render: stop the engine's work, keep what finished
            self.write_result("closed")
        elif self.render_bar.entries and not self._result_written:
            self.write_result("closed")
        self.render_bar.stop_polling()
        self.tasks.wait(5000)
        self.viewer.live.close()   # after the pool: no preview still reads a camera frame from its folder
        super().closeEvent(event)

    def save_screenshot(self, path: str) -> str:
        self.grab().save(str(path))
        return str(path)
