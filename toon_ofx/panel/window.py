"""The toon-ofx panel: a PySide6 window to choose the effect's parameters, preview and render.

Free DaVinci Resolve 19.1+ has no UIManager for scripts, so the panel is a
plain PySide6 window run by the engine's Python. It serves three callers:

* the Resolve script (`toon_ofx.hosts.resolve`) starts it with
  `--clips clips.json --result result.json`: the clips of a timeline track,
  to tick, preview and render; on close it writes what was rendered and the
  script imports and places it;
* `toon-ofx panel [video]` runs it standalone on a chosen video file;
* its Live button previews a webcam (the paper's RGB-camera input).

The controls are the paper's — a slider for the projection iterations and a
combo box for the swap resolution — plus model, warm-start steps, output kind
and the rest of `toon_ofx.core.params` (generated from the schema, validated by it).
Preview shows one frame as original | stylised side by side before the whole
clip is committed. Rendering never blocks the UI thread: submits, polls,
previews and cancels run on a thread pool and come back as Qt signals.

The engine is behind a small backend interface (`preview`, `submit`, `job`,
`cancel`): `EngineBackend` talks to the local engine process through the
stdlib client, `InProcessBackend` runs `toon_ofx.core.render` in this process; tests
inject their own. The camera is a frame source factory, injectable too.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence

from PySide6 import QtCore, QtGui, QtWidgets
from PySide6.QtCore import Qt

from ..core import params as schema
from ..core.errors import UserError

TERMINAL = ("done", "failed", "cancelled")
DEFAULT_MODEL_SIZE = 1024
PLACEHOLDER = "Preview a frame to see it toonified"


# ===================================================================== backends
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


def error_text(exc: BaseException) -> str:
    """One line for the user: the message of our own errors, else the exception's text."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return str(message).strip().splitlines()[0] if str(message).strip() else type(exc).__name__


class EngineBackend:
    """The local engine process (`toon-ofx serve`) through the stdlib client."""

    name = "engine"

    def __init__(self, client):
        self.client = client

    @classmethod
    def connect(cls, python: Optional[str] = None) -> "EngineBackend":
        from ..client import EngineClient

        return cls(EngineClient.connect(python=python or sys.executable, start=True))

    def preview(self, source: str, frame: int, params: Dict[str, Any]) -> Preview:
        answer = self.client.preview(str(source), int(frame), params)

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

    def cancel(self, job_id: str) -> Dict[str, Any]:
        return self.client.cancel(job_id)


class InProcessBackend:
    """`toon_ofx.core.render` in this process: one thread per job, job dicts shaped like the server's."""

    name = "in-process"

    def __init__(self, render_module=None):
        self._render = render_module
        self._jobs: Dict[str, Dict[str, Any]] = {}
        self._cancel: Dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._count = 0

    def _module(self):
        if self._render is None:
            from ..core import render
            self._render = render
        return self._render

    def preview(self, source: str, frame: int, params: Dict[str, Any]) -> Preview:
        original, stylised, faces = self._module().preview(Path(source), int(frame), schema.validate(params))
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
            job = {"id": job_id, "state": "queued", "source": str(source), "frames": [first, last],
                   "params": params, "output": {"folder": str(folder), "kind": output_kind, "name": name},
                   "progress": {"frames_done": 0, "frames_total": last - first + 1, "stage": "queued",
                                "eta_seconds": None, "faces": 0},
                   "error": None, "result": None, "created": time.time(), "updated": time.time()}
            self._jobs[job_id] = job
            self._cancel[job_id] = threading.Event()
        request = render.RenderRequest(source=Path(source), output=output, params=params,
                                       frames=tuple(frames) if frames else None)

        def progress(event) -> None:
            with self._lock:
                job["state"] = "running"
                job["progress"] = {"frames_done": event.frames_done, "frames_total": event.frames_total,
                                   "stage": event.stage, "eta_seconds": event.eta_seconds, "faces": event.faces}
                job["updated"] = time.time()

        def work() -> None:
            try:
                result = render.render(request, progress=progress, cancel=self._cancel[job_id])
            except BaseException as exc:  # noqa: BLE001 - every failure becomes the job's state
                from ..core.errors import Cancelled
                with self._lock:
                    if isinstance(exc, Cancelled) or self._cancel[job_id].is_set():
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
        return self.job(job_id)

    def job(self, job_id: str) -> Dict[str, Any]:
        with self._lock:
            return json.loads(json.dumps(self._jobs[job_id], default=str))

    def cancel(self, job_id: str) -> Dict[str, Any]:
        self._cancel[job_id].set()
        with self._lock:
            if self._jobs[job_id]["state"] == "queued":
                self._jobs[job_id]["state"] = "cancelled"
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


# ================================================================ frame sources
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


# =================================================================== Qt helpers
def to_qimage(image: Any) -> QtGui.QImage:
    """A QImage from PNG bytes or an HxWx3/4 uint8 RGB(A) array (copied)."""
    if isinstance(image, (bytes, bytearray)):
        qimage = QtGui.QImage.fromData(bytes(image))
        if qimage.isNull():
            raise ValueError("not a readable image")
        return qimage
    import numpy as np

    array = np.ascontiguousarray(image)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.dtype != np.uint8:
        array = (array / 257).astype(np.uint8) if array.dtype == np.uint16 else array.astype(np.uint8)
    h, w, c = array.shape
    fmt = QtGui.QImage.Format_RGBA8888 if c == 4 else QtGui.QImage.Format_RGB888
    return QtGui.QImage(array.data, w, h, c * w, fmt).copy()


class _Signals(QtCore.QObject):
    done = QtCore.Signal(object)
    failed = QtCore.Signal(str)


class _Task(QtCore.QRunnable):
    """Run `fn(*args)` on the pool; the answer comes back on the UI thread as a signal."""

    def __init__(self, fn: Callable, *args: Any):
        super().__init__()
        self.fn, self.args = fn, args
        self.signals = _Signals()
        self.setAutoDelete(False)

    def run(self) -> None:
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - reported in the window, never a traceback
            self.signals.failed.emit(error_text(exc))
        else:
            self.signals.done.emit(result)


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


class ImageView(QtWidgets.QLabel):
    """A label that keeps an image scaled to its size."""

    def __init__(self, title: str, parent=None):
        super().__init__(parent)
        self.title = title
        self.image: Optional[QtGui.QImage] = None
        self.setAlignment(Qt.AlignCenter)
        self.setMinimumSize(240, 180)
        self.setSizePolicy(QtWidgets.QSizePolicy.Expanding, QtWidgets.QSizePolicy.Expanding)
        self.setStyleSheet("QLabel { background: #1e1e1e; color: #9a9a9a; border: 1px solid #333; }")
        self.setText(title)

    def set_image(self, image: Optional[QtGui.QImage], text: str = "") -> None:
        self.image = image
        if image is None:
            self.setPixmap(QtGui.QPixmap())
            self.setText(text or self.title)
        else:
            self._rescale()

    def _rescale(self) -> None:
        if self.image is not None:
            pix = QtGui.QPixmap.fromImage(self.image)
            self.setPixmap(pix.scaled(self.size() - QtCore.QSize(4, 4), Qt.KeepAspectRatio, Qt.SmoothTransformation))

    def resizeEvent(self, event) -> None:  # noqa: N802 (Qt name)
        super().resizeEvent(event)
        self._rescale()


# ================================================================== model list
def model_choices() -> List[Dict[str, Any]]:
    """[{"name", "label", "tooltip", "size", "kind", "installed"}] from the model manifest (toon_ofx.core.model_store).

    Base models (kind "base") are returned too: the panel offers them for `base_model`; perceptual and
    landmark weights are left out.
    """
    try:
        from ..core import model_store
        rows = model_store.list_models()
    except Exception:  # noqa: BLE001 - no store, or a broken manifest: the panel still opens
        return []
    out = []
    for row in rows or []:
        kind = str(row.get("kind") or "")
        if kind not in ("toon", "blended", "base"):
            continue
        installed = bool(row.get("installed", True))
        label = row["name"] if installed else f"{row['name']} (not downloaded)"
        tip = str(row.get("title") or row["name"])
        if not installed:
            tip += f"\nGet it with: toon-ofx models pull {row['name']}"
        if row.get("licence"):
            tip += f"\nLicence: {row['licence']}"
        out.append({"name": row["name"], "label": label, "tooltip": tip, "size": row.get("resolution"),
                    "kind": kind, "installed": installed})
    return out


# ===================================================================== the panel
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
        self.output_dir = output_dir
        self.frame_source = frame_source or (lambda: CameraSource(0))
        self.models = models if models is not None else model_choices()
        self.close_when_done = bool(clips_doc) if close_when_done is None else close_when_done
        self.pool = QtCore.QThreadPool(self)
        self._tasks: set = set()
        self._jobs: List[Dict[str, Any]] = []        # {"clip": id, "name", "job": dict}
        self._polling = False
        self._cancelling = False
        self._grabber: Optional[FrameGrabber] = None
        self._live_busy = False
        self._live_frame = None
        self._live_dir = tempfile.mkdtemp(prefix="toon_ofx_live_")
        self._source_frames = 0
        self._result_written = False
        self.last_preview: Optional[Preview] = None
        self.param_widgets: Dict[str, Dict[str, Any]] = {}

        self.setWindowTitle("Toon Faces — toon-ofx")
        self.resize(1100, 720)
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

        left.addWidget(self._build_source_box())
        left.addWidget(self._build_params_box())
        left.addWidget(self._build_advanced_box())
        left.addStretch(1)

        views = QtWidgets.QHBoxLayout()
        self.original_view = ImageView("Original")
        self.stylised_view = ImageView(PLACEHOLDER)
        views.addWidget(self.original_view, 1)
        views.addWidget(self.stylised_view, 1)
        captions = QtWidgets.QHBoxLayout()
        captions.addWidget(QtWidgets.QLabel("Original"), 1, Qt.AlignCenter)
        captions.addWidget(QtWidgets.QLabel("Toon"), 1, Qt.AlignCenter)
        right.addLayout(captions)
        right.addLayout(views, 1)

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
        right.addLayout(scrub)

        self.faces_label = QtWidgets.QLabel("")
        right.addWidget(self.faces_label)

        run = QtWidgets.QHBoxLayout()
        self.progress = QtWidgets.QProgressBar()
        self.progress.setObjectName("progress")
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.render_button = QtWidgets.QPushButton("Render and place" if clips_doc else "Render clip")
        self.render_button.setObjectName("render_button")
        self.render_button.setDefault(True)
        self.render_button.clicked.connect(self.render)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setObjectName("cancel_button")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        run.addWidget(self.progress, 1)
        run.addWidget(self.render_button)
        run.addWidget(self.cancel_button)
        right.addLayout(run)
        self.status = QtWidgets.QLabel("")
        self.status.setObjectName("status")
        self.status.setWordWrap(True)
        right.addWidget(self.status)

        self._frame_timer = QtCore.QTimer(self)
        self._frame_timer.setSingleShot(True)
        self._frame_timer.setInterval(150)
        self._frame_timer.timeout.connect(self._load_original)
        self._poll_timer = QtCore.QTimer(self)
        self._poll_timer.setInterval(poll_ms)
        self._poll_timer.timeout.connect(self._poll)

        if clips_doc:
            self.set_params(clips_doc.get("params") or {})
            self._clip_selected()
        elif source:
            self.set_source(source)
        if backend is None:
            self.set_status("No engine: start `toon-ofx serve` or install the engine extras.", error=True)

    # ------------------------------------------------------------ building
    def _build_source_box(self) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox("Clips" if self.clips_doc else "Source")
        layout = QtWidgets.QVBoxLayout(box)
        if self.clips_doc:
            doc = self.clips_doc
            layout.addWidget(QtWidgets.QLabel(f"{doc.get('timeline', '')}, V{doc.get('source_track', 1)}"))
            self.clip_list = QtWidgets.QListWidget()
            self.clip_list.setObjectName("clip_list")
            for clip in doc.get("clips", []):
                text = f"{clip['name']}  [{clip['first']}-{clip['last']}]"
                item = QtWidgets.QListWidgetItem(text)
                item.setFlags(item.flags() | Qt.ItemIsUserCheckable)
                item.setCheckState(Qt.Checked)
                item.setData(Qt.UserRole, clip)
                self.clip_list.addItem(item)
            current = next((i for i, c in enumerate(doc.get("clips", [])) if c.get("current")), 0)
            self.clip_list.setCurrentRow(current)
            self.clip_list.currentRowChanged.connect(lambda _: self._clip_selected())
            self.clip_list.setMaximumHeight(140)
            layout.addWidget(self.clip_list)
            form = QtWidgets.QFormLayout()
            self.target_combo = QtWidgets.QComboBox()
            self.target_combo.setObjectName("target_combo")
            self.target_combo.addItem("New track above", "new")
            src = int(doc.get("source_track", 1))
            for index in range(src + 1, int(doc.get("video_tracks", src)) + 1):
                self.target_combo.addItem(f"V{index}", index)
            form.addRow("Place on", self.target_combo)
            layout.addLayout(form)
            self.source_edit = None
        else:
            row = QtWidgets.QHBoxLayout()
            self.source_edit = QtWidgets.QLineEdit()
            self.source_edit.setObjectName("source_edit")
            self.source_edit.setPlaceholderText("a video file or image sequence")
            self.source_edit.editingFinished.connect(lambda: self.set_source(self.source_edit.text()))
            browse = QtWidgets.QPushButton("Browse…")
            browse.clicked.connect(self._browse_source)
            row.addWidget(self.source_edit, 1)
            row.addWidget(browse)
            layout.addLayout(row)
            out = QtWidgets.QHBoxLayout()
            self.output_edit = QtWidgets.QLineEdit(self.output_dir or "")
            self.output_edit.setObjectName("output_edit")
            self.output_edit.setPlaceholderText("output folder (default: toon_ofx/ beside the source)")
            browse_out = QtWidgets.QPushButton("…")
            browse_out.clicked.connect(self._browse_output)
            out.addWidget(self.output_edit, 1)
            out.addWidget(browse_out)
            layout.addLayout(out)
            self.clip_list = None
            self.target_combo = None
        form = QtWidgets.QFormLayout()
        self.write_combo = QtWidgets.QComboBox()
        self.write_combo.setObjectName("write_combo")
        self.write_combo.addItem("Image sequence (PNG)", "sequence")
        self.write_combo.addItem("Movie", "movie")
        form.addRow("Write as", self.write_combo)
        layout.addLayout(form)
        return box

    def _build_params_box(self) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox("Toonify")
        form = QtWidgets.QFormLayout(box)
        # model: the manifest's toon models, plus Browse…
        p = schema.BY_NAME["model"]
        self.model_combo = QtWidgets.QComboBox()
        self.model_combo.setObjectName("model_combo")
        self.model_combo.setToolTip(p.help)
        toons = [m for m in self.models if m.get("kind", "toon") != "base"]
        if p.default not in [m["name"] for m in toons]:
            self.model_combo.addItem(p.default, p.default)
        for m in toons:
            self.model_combo.addItem(str(m.get("label") or m["name"]), m["name"])
            if m.get("tooltip"):
                self.model_combo.setItemData(self.model_combo.count() - 1, m["tooltip"], Qt.ToolTipRole)
        self.model_combo.addItem("Browse…", None)
        self._model_index = 0
        self.model_combo.activated.connect(self._model_activated)
        self.model_combo.currentIndexChanged.connect(lambda _: self._update_swap_choices())
        form.addRow(p.label, self.model_combo)
        self._register("model", self.model_combo, self._combo_value(self.model_combo), self._set_model)

        p = schema.BY_NAME["swap_res"]
        self.swap_combo = QtWidgets.QComboBox()
        self.swap_combo.setObjectName("swap_combo")
        self.swap_combo.setToolTip(p.help)
        form.addRow(p.label, self.swap_combo)
        self._register("swap_res", self.swap_combo, self._combo_value(self.swap_combo),
                       lambda v: self._set_combo(self.swap_combo, int(v)))
        self._update_swap_choices()

        p = schema.BY_NAME["steps"]
        row = QtWidgets.QHBoxLayout()
        self.steps_slider = QtWidgets.QSlider(Qt.Horizontal)
        self.steps_slider.setObjectName("steps_slider")
        self.steps_slider.setRange(int(p.minimum), int(p.maximum))
        self.steps_slider.setSingleStep(10)
        self.steps_slider.setPageStep(100)
        self.steps_slider.setToolTip(p.help)
        self.steps_spin = QtWidgets.QSpinBox()
        self.steps_spin.setObjectName("steps_spin")
        self.steps_spin.setRange(int(p.minimum), int(p.maximum))
        self.steps_slider.valueChanged.connect(self.steps_spin.setValue)
        self.steps_spin.valueChanged.connect(self.steps_slider.setValue)
        self.steps_slider.setValue(int(p.default))
        row.addWidget(self.steps_slider, 1)
        row.addWidget(self.steps_spin)
        form.addRow("Projection iterations", row)
        self._register("steps", self.steps_slider, self.steps_slider.value, lambda v: self.steps_slider.setValue(int(v)))

        self._add_generic(form, schema.BY_NAME["warm_steps"])
        p = schema.BY_NAME["output_kind"]
        self.output_kind_combo = QtWidgets.QComboBox()
        self.output_kind_combo.setObjectName("output_kind_combo")
        self.output_kind_combo.setToolTip(p.help)
        self.output_kind_combo.addItem("Full frame", "frame")
        self.output_kind_combo.addItem("Face overlay (RGBA)", "overlay")
        form.addRow(p.label, self.output_kind_combo)
        self._register("output_kind", self.output_kind_combo, self._combo_value(self.output_kind_combo),
                       lambda v: self._set_combo(self.output_kind_combo, v))
        return box

    def _build_advanced_box(self) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox("More settings")
        box.setCheckable(True)
        box.setChecked(False)
        inner = QtWidgets.QWidget()
        form = QtWidgets.QFormLayout(inner)
        for p in schema.PARAMS:
            if p.name not in self.param_widgets:
                self._add_generic(form, p)
        layout = QtWidgets.QVBoxLayout(box)
        layout.addWidget(inner)
        inner.setVisible(False)
        box.toggled.connect(inner.setVisible)
        self.advanced_box = box
        return box

    def _add_generic(self, form: QtWidgets.QFormLayout, p) -> None:
        """A widget for any schema parameter, from its type, range and choices."""
        bases = [m for m in self.models if m.get("kind") == "base"]
        if p.name == "base_model" and bases:
            w = QtWidgets.QComboBox()
            w.setEditable(True)
            for m in bases:
                w.addItem(m["name"])
                w.setItemData(w.count() - 1, m.get("tooltip") or m["name"], Qt.ToolTipRole)
            getter, setter = w.currentText, (lambda v, w=w: w.setCurrentText(str(v)))
        elif p.choices is not None:
            w = QtWidgets.QComboBox()
            for choice in p.choices:
                w.addItem(str(choice), choice)
            getter, setter = self._combo_value(w), (lambda v, w=w: self._set_combo(w, v))
        elif p.type is bool:
            w = QtWidgets.QCheckBox()
            getter, setter = w.isChecked, (lambda v, w=w: w.setChecked(bool(v)))
        elif p.type is int:
            w = QtWidgets.QSpinBox()
            w.setRange(int(p.minimum if p.minimum is not None else -2**31),
                       int(min(p.maximum, 2**31 - 1) if p.maximum is not None else 2**31 - 1))
            getter, setter = w.value, (lambda v, w=w: w.setValue(int(v)))
        elif p.type is float:
            w = QtWidgets.QDoubleSpinBox()
            w.setDecimals(3)
            w.setSingleStep(0.01)
            w.setRange(p.minimum if p.minimum is not None else -1e9, p.maximum if p.maximum is not None else 1e9)
            getter, setter = w.value, (lambda v, w=w: w.setValue(float(v)))
        else:
            w = QtWidgets.QLineEdit()
            getter, setter = w.text, (lambda v, w=w: w.setText(str(v)))
        w.setObjectName(f"param_{p.name}")
        w.setToolTip(p.help)
        setter(p.default)
        form.addRow(p.label, w)
        self._register(p.name, w, getter, setter)

    def _register(self, name: str, widget, getter: Callable[[], Any], setter: Callable[[Any], None]) -> None:
        self.param_widgets[name] = {"widget": widget, "get": getter, "set": setter}

    @staticmethod
    def _combo_value(combo: QtWidgets.QComboBox) -> Callable[[], Any]:
        return lambda: combo.currentData()

    @staticmethod
    def _set_combo(combo: QtWidgets.QComboBox, value: Any) -> None:
        index = combo.findData(value)
        if index < 0:
            raise UserError(f"{value!r} is not offered here", field=combo.objectName())
        combo.setCurrentIndex(index)

    # ------------------------------------------------------------- models
    def _set_model(self, value: str) -> None:
        index = self.model_combo.findData(value)
        if index < 0:
            index = self.model_combo.count() - 1
            self.model_combo.insertItem(index, os.path.basename(str(value)), value)
        self.model_combo.setCurrentIndex(index)
        self._model_index = index

    def _model_activated(self, index: int) -> None:
        if self.model_combo.itemData(index) is not None:
            self._model_index = index
            return
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Toon model", "",
                                                        "Generators (*.pt *.pkl *.pth);;All files (*)")
        if path:
            self._set_model(path)
        else:
            self.model_combo.setCurrentIndex(self._model_index)

    def model_size(self) -> int:
        name = self.model_combo.currentData()
        for m in self.models:
            if m["name"] == name and m.get("size"):
                return int(m["size"])
        return DEFAULT_MODEL_SIZE

    def model_kind(self) -> str:
        name = self.model_combo.currentData()
        return next((str(m.get("kind") or "") for m in self.models if m["name"] == name), "")

    def _update_swap_choices(self) -> None:
        keep = self.swap_combo.currentData() or schema.BY_NAME["swap_res"].default
        size = self.model_size()
        blended = self.model_kind() == "blended"
        self.swap_combo.setEnabled(not blended)
        self.swap_combo.setToolTip("This published model is already blended: its swap resolution is baked in."
                                   if blended else schema.BY_NAME["swap_res"].help)
        self.swap_combo.blockSignals(True)
        self.swap_combo.clear()
        for r in schema.SWAP_RESOLUTIONS:
            if r <= size:
                self.swap_combo.addItem(f"{r} × {r}", r)
        self.swap_combo.blockSignals(False)
        index = self.swap_combo.findData(keep)
        self.swap_combo.setCurrentIndex(index if index >= 0 else self.swap_combo.count() - 1)

    # ------------------------------------------------------------- params
    def params(self) -> Dict[str, Any]:
        """The widgets' values, validated by the schema (a complete parameter dict)."""
        values = {name: entry["get"]() for name, entry in self.param_widgets.items()}
        return schema.validate(values)

    def set_params(self, values: Dict[str, Any]) -> None:
        for name, value in schema.validate(values).items():
            if name in self.param_widgets:
                self.param_widgets[name]["set"](value)

    # ------------------------------------------------------------- source
    def current_clip(self) -> Optional[Dict[str, Any]]:
        if self.clip_list is None or self.clip_list.currentItem() is None:
            return None
        return self.clip_list.currentItem().data(Qt.UserRole)

    def checked_clips(self) -> List[Dict[str, Any]]:
        if self.clip_list is None:
            return []
        out = []
        for i in range(self.clip_list.count()):
            item = self.clip_list.item(i)
            if item.checkState() == Qt.Checked:
                out.append(item.data(Qt.UserRole))
        return out

    def source(self) -> Optional[str]:
        clip = self.current_clip()
        if clip is not None:
            return clip["source"]
        return (self.source_edit.text().strip() or None) if self.source_edit is not None else None

    def _clip_selected(self) -> None:
        clip = self.current_clip()
        if clip is None:
            return
        self.frame_slider.setRange(int(clip["first"]), int(clip["last"]))
        self.frame_spin.setRange(int(clip["first"]), int(clip["last"]))
        self.frame_slider.setValue((int(clip["first"]) + int(clip["last"])) // 2)
        self._frame_timer.start()

    def set_source(self, path: str) -> bool:
        path = str(path or "").strip()
        if self.source_edit is not None and self.source_edit.text() != path:
            self.source_edit.setText(path)
        if not path:
            return False
        try:
            n = frame_count(path)
        except Exception as exc:  # noqa: BLE001
            self.set_status(f"Cannot open {path}: {error_text(exc)}", error=True)
            return False
        self._source_frames = n
        self.frame_slider.setRange(0, n - 1)
        self.frame_spin.setRange(0, n - 1)
        self.frame_slider.setValue(n // 2)
        self.set_status(f"{os.path.basename(path)}: {n} frames")
        self._frame_timer.start()
        return True

    def _browse_source(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Video", "", "Video (*.mp4 *.mov *.mkv *.m4v *.avi);;"
                                                        "All files (*)")
        if path:
            self.set_source(path)

    def _browse_output(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(self, "Output folder")
        if path:
            self.output_edit.setText(path)

    def _frame_changed(self, _value: int) -> None:
        if not self.live_button.isChecked():
            self._frame_timer.start()

    def _load_original(self) -> None:
        source = self.source()
        if not source:
            return
        frame = self.frame_slider.value()
        self._run(read_frame, source, frame, done=lambda image, f=frame: self._show_original(image, f),
                  failed=lambda msg: self.set_status(msg, error=True))

    def _show_original(self, image, frame: int) -> None:
        if frame == self.frame_slider.value() and not self.live_button.isChecked():
            self.original_view.set_image(to_qimage(image))
            if self.last_preview is None or self.last_preview.frame != frame:
                self.stylised_view.set_image(None, PLACEHOLDER)

    # ------------------------------------------------------------ running
    def _run(self, fn: Callable, *args: Any, done: Callable[[Any], None], failed: Callable[[str], None]) -> _Task:
        task = _Task(fn, *args)
        self._tasks.add(task)

        def finish(callback, value):
            self._tasks.discard(task)
            callback(value)

        # queued: the callbacks run on the UI thread (where the signals object lives), never on the worker
        task.signals.done.connect(lambda value: finish(done, value), Qt.QueuedConnection)
        task.signals.failed.connect(lambda message: finish(failed, message), Qt.QueuedConnection)
        self.pool.start(task)
        return task

    def set_status(self, text: str, error: bool = False) -> None:
        self.status.setText(text)
        self.status.setStyleSheet("color: #d04040;" if error else "")

    def busy(self) -> bool:
        return any(j["job"].get("state") not in TERMINAL for j in self._jobs)

    # ------------------------------------------------------------ preview
    def preview(self) -> None:
        source = self.source()
        if not source:
            self.set_status("Choose a video first.", error=True)
            return
        if self.backend is None:
            self.set_status("No engine to preview with.", error=True)
            return
        try:
            params = self.params()
        except UserError as exc:
            self.set_status(exc.message, error=True)
            return
        frame = self.frame_slider.value()
        self.preview_button.setEnabled(False)
        self.set_status(f"Previewing frame {frame}…")
        self._run(self.backend.preview, source, frame, params, done=self._preview_done, failed=self._preview_failed)

    def _preview_done(self, result: Preview) -> None:
        self.preview_button.setEnabled(True)
        self.last_preview = result
        self.original_view.set_image(to_qimage(result.original))
        self.stylised_view.set_image(to_qimage(result.stylised))
        self.faces_label.setText(f"Frame {result.frame}: {result.faces} face(s)")
        self.set_status("No face found in this frame." if result.faces == 0 else f"Preview of frame {result.frame}.")
        self.preview_ready.emit(result)

    def _preview_failed(self, message: str) -> None:
        self.preview_button.setEnabled(True)
        self.set_status(f"Preview failed: {message}", error=True)

    # --------------------------------------------------------------- live
    def _live_toggled(self, on: bool) -> None:
        if on:
            self.start_live()
        else:
            self.stop_live()

    def start_live(self) -> None:
        if self._grabber is not None:
            return
        if not self.live_button.isChecked():
            self.live_button.setChecked(True)  # re-enters through the toggled signal
            return
        self._grabber = FrameGrabber(self.frame_source, parent=self)
        self._grabber.frame.connect(self._live_frame_arrived)
        self._grabber.failed.connect(self._live_failed)
        self._grabber.start()
        self.set_status("Live: stylising the newest camera frame whenever the engine is free.")

    def stop_live(self) -> None:
        grabber, self._grabber = self._grabber, None
        if grabber is not None:
            grabber.requestInterruption()
            grabber.wait(3000)
        if self.live_button.isChecked():
            self.live_button.blockSignals(True)
            self.live_button.setChecked(False)
            self.live_button.blockSignals(False)

    def _live_failed(self, message: str) -> None:
        self.stop_live()
        self.set_status(message, error=True)

    def _live_frame_arrived(self, image) -> None:
        self._live_frame = image
        self.original_view.set_image(to_qimage(image))
        if self._live_busy or self.backend is None:
            return
        try:
            params = self.params()
        except UserError as exc:
            self.set_status(exc.message, error=True)
            return
        self._live_busy = True
        path = os.path.join(self._live_dir, "live.png")
        self._run(self._live_preview, image, path, params, done=self._live_done, failed=self._live_error)

    def _live_preview(self, image, path: str, params: Dict[str, Any]) -> Preview:
        import cv2

        tmp = path + ".tmp.png"
        channels = image.shape[2] if image.ndim == 3 else 1
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if channels == 3 else image
        if not cv2.imwrite(tmp, bgr):
            raise UserError(f"cannot write the camera frame to {tmp}")
        os.replace(tmp, path)
        return self.backend.preview(path, 0, params)

    def _live_done(self, result: Preview) -> None:
        self._live_busy = False
        if self._grabber is None:
            return
        self.last_preview = result
        self.stylised_view.set_image(to_qimage(result.stylised))
        self.faces_label.setText(f"Live: {result.faces} face(s)")
        self.preview_ready.emit(result)

    def _live_error(self, message: str) -> None:
        self._live_busy = False
        self.set_status(f"Live preview failed: {message}", error=True)

    # ------------------------------------------------------------- render
    def _work_items(self) -> List[Dict[str, Any]]:
        if self.clips_doc:
            return [{"clip": c["id"], "name": c["name"], "source": c["source"],
                     "frames": [int(c["first"]), int(c["last"])], "clip_data": c} for c in self.checked_clips()]
        source = self.source()
        if not source:
            return []
        return [{"clip": source, "name": os.path.basename(source), "source": source, "frames": None,
                 "clip_data": None}]

    def _output_folder(self, item: Dict[str, Any], params: Dict[str, Any]) -> str:
        from ..hosts.resolve import Clip, output_folder_for

        root = self.output_dir
        if self.clips_doc is None and self.output_edit.text().strip():
            root = self.output_edit.text().strip()
        clip = item["clip_data"]
        if clip is None:
            clip = {"id": item["clip"], "name": item["name"], "source": item["source"], "kind": "movie", "first": 0,
                    "last": 0, "clip_fps": 0, "timeline_fps": 0, "record_start": 0, "record_end": 0, "track": 0}
        return output_folder_for(Clip.from_json(clip), params, root)

    def render(self) -> None:
        if self.busy():
            return
        if self.backend is None:
            self.set_status("No engine to render with.", error=True)
            return
        items = self._work_items()
        if not items:
            self.set_status("Tick at least one clip." if self.clips_doc else "Choose a video first.", error=True)
            return
        try:
            params = self.params()
        except UserError as exc:
            self.set_status(exc.message, error=True)
            return
        kind = self.write_combo.currentData()
        if params["output_kind"] == "overlay" and kind == "movie" and self.clips_doc:
            kind = "sequence"  # RGBA for Resolve: PNG frames carry alpha everywhere
        plan = [(item, self._output_folder(item, params)) for item in items]
        self.render_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._cancelling = False
        self.progress.setValue(0)
        self.set_status(f"Submitting {len(items)} clip(s)…")

        def submit_all():
            out = []
            for item, folder in plan:
                job = self.backend.submit(item["source"], item["frames"], params, folder, kind)
                out.append({"clip": item["clip"], "name": item["name"], "job": job})
            return out

        self._params_used = params
        self._run(submit_all, done=self._submitted, failed=self._submit_failed)

    def _submitted(self, jobs: List[Dict[str, Any]]) -> None:
        self._jobs = jobs
        self.set_status(f"Rendering {len(jobs)} clip(s)…")
        if self._cancelling:
            self.cancel()
        self._update_progress()
        self._poll_timer.start()

    def _submit_failed(self, message: str) -> None:
        self.render_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.set_status(f"Could not start the render: {message}", error=True)

    def _poll(self) -> None:
        if self._polling or not self._jobs:
            return
        active = [j["job"]["id"] for j in self._jobs if j["job"].get("state") not in TERMINAL]
        if not active:
            self._finish()
            return
        self._polling = True
        self._run(lambda ids: {i: self.backend.job(i) for i in ids}, active, done=self._polled,
                  failed=self._poll_failed)

    def _polled(self, answers: Dict[str, Dict[str, Any]]) -> None:
        self._polling = False
        for entry in self._jobs:
            if entry["job"]["id"] in answers:
                entry["job"] = answers[entry["job"]["id"]]
        self._update_progress()
        if not self.busy():
            self._finish()

    def _poll_failed(self, message: str) -> None:
        self._polling = False
        self.set_status(f"Lost the engine: {message}", error=True)

    def _update_progress(self) -> None:
        done = total = 0
        stage, eta = "", None
        for entry in self._jobs:
            pr = entry["job"].get("progress") or {}
            total += int(pr.get("frames_total") or 0)
            done += int(pr.get("frames_done") or 0)
            if entry["job"].get("state") == "running":
                stage, eta = pr.get("stage") or "rendering", pr.get("eta_seconds")
        self.progress.setValue(int(100 * done / total) if total else 0)
        if self.busy() and not self._cancelling:
            text = f"{stage or 'queued'}: {done}/{total} frames"
            if eta:
                text += f", about {int(eta) // 60}:{int(eta) % 60:02d} left"
            self.set_status(text)
        if self.clip_list is not None:
            states = {e["clip"]: e["job"].get("state") for e in self._jobs}
            for i in range(self.clip_list.count()):
                item = self.clip_list.item(i)
                clip = item.data(Qt.UserRole)
                state = states.get(clip["id"])
                base = f"{clip['name']}  [{clip['first']}-{clip['last']}]"
                item.setText(f"{base}  — {state}" if state else base)

    def cancel(self) -> None:
        self._cancelling = True
        self.cancel_button.setEnabled(False)
        self.set_status("Cancelling… finished frames are kept.")
        ids = [j["job"]["id"] for j in self._jobs if j["job"].get("state") not in TERMINAL]
        if not ids:
            return  # still submitting: _submitted() cancels what it gets

        def cancel_all(job_ids):
            out = {}
            for job_id in job_ids:
                try:
                    out[job_id] = self.backend.cancel(job_id)
                except Exception:  # noqa: BLE001 - finished meanwhile: the next poll tells
                    pass
            return out

        self._run(cancel_all, ids, done=self._polled, failed=lambda m: self.set_status(m, error=True))

    def _finish(self) -> None:
        self._poll_timer.stop()
        states = [e["job"].get("state") for e in self._jobs]
        outcome = "done" if all(s == "done" for s in states) else ("cancelled" if "cancelled" in states
                                                                   else "failed")
        done = states.count("done")
        errors = [f"{e['name']}: {e['job'].get('error')}" for e in self._jobs if e["job"].get("state") == "failed"]
        self.render_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if outcome == "done":
            self.progress.setValue(100)
            where = self._jobs[0]["job"].get("result") or {}
            self.set_status(f"Done: {done} clip(s) rendered" + (f" to {where.get('path')}." if where else "."))
        elif outcome == "cancelled":
            self.set_status(f"Cancelled; {done} clip(s) finished. Finished frames are kept: render again to resume.")
        else:
            self.set_status("Failed: " + "; ".join(errors), error=True)
        self.write_result(outcome)
        self.jobs_finished.emit(outcome)
        if self.close_when_done and outcome == "done":
            QtCore.QTimer.singleShot(0, self.close)

    # ------------------------------------------------------------- result
    def result_document(self, status: str) -> Dict[str, Any]:
        target = self.target_combo.currentData() if self.target_combo is not None else "new"
        return {"version": 1, "status": status, "target_track": target,
                "params": getattr(self, "_params_used", None),
                "results": [{"clip": e["clip"], "job": e["job"]} for e in self._jobs]}

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
            # closing mid-render: stop the engine's work, keep what finished
            for entry in self._jobs:
                if entry["job"].get("state") not in TERMINAL:
                    try:
                        entry["job"] = self.backend.cancel(entry["job"]["id"])
                    except Exception:  # noqa: BLE001
                        pass
            self.write_result("closed")
        elif self._jobs and not self._result_written:
            self.write_result("closed")
        self._poll_timer.stop()
        self.pool.waitForDone(5000)
        super().closeEvent(event)

    def save_screenshot(self, path: str) -> str:
        self.grab().save(str(path))
        return str(path)


# ============================================================= command line
def add_panel_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("panel", help="the PySide6 panel: parameters, preview, webcam, render",
                              description="Open the toon-ofx panel on a video file (or a webcam with --live).")
    add_panel_options(p)
    p.set_defaults(run=run_panel)
    return p


def add_panel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", nargs="?", help="video file or image-sequence pattern to open")
    p.add_argument("--output-dir", help="where renders go (default: a toon_ofx folder beside the source)")
    p.add_argument("--backend", choices=("auto", "engine", "inprocess"), default="auto",
                   help="engine process (started on demand) or this process (default auto: the engine process)")
    p.add_argument("--python", help="Python that starts the engine process (default: this one)")
    p.add_argument("--live", action="store_true", help="start with the webcam live preview")
    p.add_argument("--camera", type=int, default=0, help="webcam index for --live (default 0)")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="NAME=VALUE",
                   help="initial value of an effect parameter")
    p.add_argument("--clips", help=argparse.SUPPRESS)        # from the Resolve script
    p.add_argument("--result", help=argparse.SUPPRESS)       # written for the Resolve script
    p.add_argument("--report", help=argparse.SUPPRESS)       # show the Resolve script's placement report
    p.add_argument("--screenshot", help=argparse.SUPPRESS)   # save a screenshot and exit (docs, tests)
    p.add_argument("--autorun", action="store_true", help=argparse.SUPPRESS)  # press Render at once (tests)


def _initial_params(pairs: Sequence[str]) -> Dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set expects NAME=VALUE, got {pair!r}")
        name, value = pair.split("=", 1)
        try:
            out[name.strip()] = json.loads(value)
        except ValueError:
            out[name.strip()] = value
    return schema.validate(out)


def show_report(path: str) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the report {path}: {exc}") from None
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    box = QtWidgets.QMessageBox()
    box.setWindowTitle("Toon Faces")
    box.setIcon(QtWidgets.QMessageBox.Warning if report.get("failed") else QtWidgets.QMessageBox.Information)
    box.setText(report.get("text") or "Done.")
    box.show()
    return app.exec()


def run_panel(args: argparse.Namespace) -> int:
    if getattr(args, "report", None):
        return show_report(args.report)
    clips_doc = None
    if args.clips:
        try:
            with open(args.clips, encoding="utf-8") as f:
                clips_doc = json.load(f)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {args.clips}: {exc}") from None
    if args.source and not clips_doc and not (os.path.exists(args.source) or "%" in args.source):
        raise UserError(f"{args.source} does not exist", field="source")
    initial = _initial_params(args.params)
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    backend = None
    message = ""
    try:
        backend = make_backend(args.backend, args.python)
    except Exception as exc:  # noqa: BLE001 - the window still opens and says why
        message = f"The engine could not be started: {error_text(exc)}"
    window = ToonPanel(backend, clips_doc=clips_doc, source=args.source, result_path=args.result,
                       output_dir=args.output_dir, frame_source=lambda: CameraSource(args.camera))
    if args.params:
        window.set_params(initial)
    if message:
        window.set_status(message, error=True)
    window.show()
    if args.live:
        window.start_live()
    if args.autorun:
        QtCore.QTimer.singleShot(0, window.render)
    if args.screenshot:
        deadline = time.monotonic() + 5

        def shoot():  # once the frame under the scrubber is shown (or after 5 s)
            if (args.source or clips_doc) and window.original_view.image is None and time.monotonic() < deadline:
                QtCore.QTimer.singleShot(100, shoot)
                return
            window.save_screenshot(args.screenshot)
            window.close()

        QtCore.QTimer.singleShot(300, shoot)
    return app.exec()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m toon_ofx.panel` (what the Resolve script runs)."""
    parser = argparse.ArgumentParser(prog="python -m toon_ofx.panel", description="The toon-ofx panel.")
    add_panel_options(parser)
    args = parser.parse_args(argv)
    try:
        return int(run_panel(args) or 0)
    except UserError as exc:
        print(f"toon-ofx: error: {exc.message}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
