"""The PySide6 panel, offscreen: widgets driven by hand, a fake engine backend, injected camera frames."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

QtWidgets = pytest.importorskip("PySide6.QtWidgets")
from PySide6.QtCore import Qt  # noqa: E402

from toon_ofx.core import params as schema  # noqa: E402
from toon_ofx.client import EngineError  # noqa: E402
from toon_ofx.core.errors import UserError  # noqa: E402
from toon_ofx.panel.backends import EngineBackend, InProcessBackend, Preview  # noqa: E402
from toon_ofx.panel.param_form import model_choices  # noqa: E402
from toon_ofx.panel.sources import CameraSource, IterSource, read_frame  # noqa: E402
from toon_ofx.panel.window import ToonPanel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT_COPY = Path(os.environ.get("TOON_OFX_SCREENSHOT", "/tmp/toon_ofx_panel.png"))


@pytest.fixture(scope="module")
def app():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def wait_until(app, predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        app.processEvents()
        if predicate():
            return True
        time.sleep(0.01)
    app.processEvents()
    return predicate()


def face_image(w=160, h=120, shift=0):
    """A synthetic frame: a gradient with a skin-coloured disc (a stand-in face)."""
    y, x = np.mgrid[0:h, 0:w]
    image = np.stack([(x * 255 // w + shift) % 256, y * 255 // h, np.full_like(x, 90)], axis=2).astype(np.uint8)
    mask = (x - w // 2) ** 2 + (y - h // 2) ** 2 < (h // 3) ** 2
    image[mask] = (230, 180, 150)
    return image


class FakeBackend:
    """preview/submit/job/cancel like the engine: jobs advance a few frames per poll."""

    name = "fake"

    def __init__(self, step=2, preview_delay=0.05):
        self.step, self.preview_delay = step, preview_delay
        self.table, self.previews, self.cancelled, self.retried = {}, [], [], []
        self.lock = threading.Lock()
        self.threads = set()

    def preview(self, source, frame, params, progress=None, cancel=None):
        self.threads.add(threading.current_thread().name)
        schema.validate(params)
        time.sleep(self.preview_delay)
        self.previews.append((source, frame, params))
        original = face_image(shift=frame)
        return Preview(original, 255 - original, 1, frame)

    def submit(self, source, frames, params, output_folder, output_kind="sequence", name=None):
        first, last = frames or (0, 9)
        with self.lock:
            job = {"id": f"j{len(self.table) + 1}", "state": "queued", "source": source, "frames": [first, last],
                   "params": schema.validate(params), "output": {"folder": output_folder, "kind": output_kind},
                   "progress": {"frames_done": 0, "frames_total": last - first + 1, "stage": "queued",
                                "eta_seconds": None, "faces": 0}, "error": None, "result": None}
            self.table[job["id"]] = job
            return json.loads(json.dumps(job))

    def job(self, job_id):
        self.threads.add(threading.current_thread().name)
        with self.lock:
            job = self.table[job_id]
            if job["state"] in ("queued", "running"):
                pr = job["progress"]
                pr["frames_done"] = min(pr["frames_total"], pr["frames_done"] + self.step)
                job["state"], pr["stage"], pr["eta_seconds"] = "running", "rendering", 3.0
                if pr["frames_done"] == pr["frames_total"]:
                    first, last = job["frames"]
                    job["state"], pr["stage"] = "done", "done"
                    job["result"] = {"kind": "sequence", "path": job["output"]["folder"],
                                     "pattern": job["output"]["folder"] + "/x_toon.%06d.png",
                                     "first_frame": first, "last_frame": last, "fps": 24.0}
            return json.loads(json.dumps(job))

    def cancel(self, job_id):
        with self.lock:
            self.cancelled.append(job_id)
            if self.table[job_id]["state"] not in ("done", "failed"):
                self.table[job_id]["state"] = "cancelled"
            return json.loads(json.dumps(self.table[job_id]))

    def jobs(self):
        with self.lock:
            return json.loads(json.dumps(list(self.table.values())))

    def retry(self, job_id):
        """Like the engine: a cancelled or failed job is queued again, its frames done are kept."""
        with self.lock:
            self.retried.append(job_id)
            job = self.table[job_id]
            if job["state"] in ("cancelled", "failed"):
                job.update(state="queued", error=None)
            return json.loads(json.dumps(job))


def clips_doc(tmp_path):
    movie = tmp_path / "a.mp4"
    _write_movie(movie, 30)
    clip = {"id": "ti-1", "name": "a.mp4", "source": str(movie), "kind": "movie", "first": 4, "last": 23,
            "clip_fps": 24.0, "timeline_fps": 24.0, "record_start": 86400, "record_end": 86420, "track": 1,
            "current": False}
    second = dict(clip, id="ti-2", name="b.mp4", first=0, last=9, record_start=86430, record_end=86440,
                  current=True)
    return {"version": 1, "host": "resolve", "project": "P", "timeline": "Edit 1", "source_track": 1,
            "video_tracks": 3, "clips": [clip, second], "skipped": [], "params": {"steps": 250}}


def _write_movie(path, frames, size=(96, 72), fps=24):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(cv2.cvtColor(face_image(*size, shift=i * 3), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture
def movie(tmp_path):
    return _write_movie(tmp_path / "clip.mp4", 20)


# ------------------------------------------------------------------ params
def test_widgets_produce_schema_parameters(app, movie):
    models = [{"name": "toonify", "label": "Toonify (1024)", "size": 1024},
              {"name": "tiny-toon", "label": "Tiny toon", "size": 64}]
    w = ToonPanel(FakeBackend(), source=str(movie), models=models)
    try:
        assert w.params() == schema.defaults()
        w.form.steps_slider.setValue(300)                       # the paper's projection-iterations slider
        assert w.form.steps_spin.value() == 300
        w.form.swap_combo.setCurrentIndex(w.form.swap_combo.findData(32))   # the paper's swap-resolution combo
        w.form.param_widgets["warm_steps"]["widget"].setValue(40)
        w.form.output_kind_combo.setCurrentIndex(w.form.output_kind_combo.findData("overlay"))
        w.form.advanced_box.setChecked(True)
        w.findChild(QtWidgets.QDoubleSpinBox, "param_feather").setValue(0.2)
        w.findChild(QtWidgets.QCheckBox, "param_color_match").setChecked(False)
        w.findChild(QtWidgets.QComboBox, "param_latent_space").setCurrentIndex(0)
        params = w.params()
        assert params == schema.validate({"steps": 300, "swap_res": 32, "warm_steps": 40, "output_kind": "overlay",
                                          "feather": 0.2, "color_match": False, "latent_space": "w"})
        assert set(params) == set(schema.BY_NAME)
        # every schema parameter has a widget, and set_params round-trips
        w.set_params({"steps": 77, "swap_res": 16, "seed": 5})
        assert (w.form.steps_slider.value(), w.params()["swap_res"], w.params()["seed"]) == (77, 16, 5)
        # swap resolutions are limited by the model's size
        w.form.model_combo.setCurrentIndex(w.form.model_combo.findData("tiny-toon"))
        assert [w.form.swap_combo.itemData(i) for i in range(w.form.swap_combo.count())] == [4, 8, 16, 32, 64]
        assert w.params()["model"] == "tiny-toon" and w.params()["swap_res"] == 16
        w.set_params({"model": "/models/mine.pt"})          # a browsed path becomes an entry
        assert w.params()["model"] == "/models/mine.pt"
        assert w.form.model_combo.itemText(w.form.model_combo.count() - 1) == "Browse…"
    finally:
        w.close()


def test_models_come_from_the_manifest(app):
    pytest.importorskip("toon_ofx.core.model_store")
    models = model_choices()
    kinds = {m["name"]: m["kind"] for m in models}
    assert kinds.get("toonify") == "blended" and "vgg16" not in kinds
    assert any(k == "base" for k in kinds.values())
    w = ToonPanel(FakeBackend(), models=models)
    try:
        w.set_params({"model": "toonify"})
        assert not w.form.swap_combo.isEnabled()                 # a published blended model: swap baked in
        toon = next((m["name"] for m in models if m["kind"] == "toon"), None)
        if toon:
            w.set_params({"model": toon})
            assert w.form.swap_combo.isEnabled()
        base = w.findChild(QtWidgets.QComboBox, "param_base_model")
        assert base.isEditable() and w.params()["base_model"] == schema.defaults()["base_model"]
        base.setCurrentText("/models/base.pt")
        assert w.params()["base_model"] == "/models/base.pt"
    finally:
        w.close()


def test_inversion_encoder_and_one_pass_toon_styles(app):
    models = [{"name": "toonify", "kind": "blended", "size": 1024},
              {"name": "psp-toonify", "kind": "one-pass toon", "size": 1024},
              {"name": "e4e-encode", "kind": "encoder", "size": 1024},
              {"name": "psp-encode", "kind": "encoder", "size": 1024}]
    w = ToonPanel(FakeBackend(), models=models)
    try:
        inversion = w.form.inversion_combo
        assert [inversion.itemData(i) for i in range(inversion.count())] == list(schema.INVERSIONS)
        assert w.params()["inversion"] == "encoder+projection"
        inversion.setCurrentIndex(inversion.findData("encoder"))
        w.form.param_widgets["refine_steps"]["widget"].setValue(20)
        encoder = w.findChild(QtWidgets.QComboBox, "param_encoder")
        assert encoder.isEditable() and [encoder.itemText(i) for i in range(encoder.count())] == \
            ["e4e-encode", "psp-encode"]                       # encoders are offered for `encoder`, not as styles
        encoder.setCurrentText("psp-encode")
        assert (w.params()["inversion"], w.params()["refine_steps"], w.params()["encoder"]) == \
            ("encoder", 20, "psp-encode")
        styles = [w.form.model_combo.itemData(i) for i in range(w.form.model_combo.count())]
        assert "psp-toonify" in styles and "e4e-encode" not in styles
        w.set_params({"model": "psp-toonify"})                   # a one-pass toon: no swap, no inversion choice
        assert not w.form.swap_combo.isEnabled() and not inversion.isEnabled()
        assert "one-pass toon" in w.form.swap_combo.toolTip() and "do not apply" in inversion.toolTip()
        w.set_params({"model": "toonify"})
        assert inversion.isEnabled() and not w.form.swap_combo.isEnabled()
    finally:
        w.close()


def test_a_pre_blended_model_says_its_swap_resolution_is_baked_in(app):
    models = [{"name": "toonify", "label": "Toonify", "size": 1024, "kind": "blended", "swap_res": 64},
              {"name": "cartoon", "label": "Cartoon", "size": 1024, "kind": "toon"}]
    w = ToonPanel(FakeBackend(), models=models)
    w.show()
    try:
        w.set_params({"model": "cartoon", "swap_res": 32})
        assert w.form.swap_combo.isEnabled() and not w.form.swap_note.isVisible()
        w.form.model_combo.setCurrentIndex(w.form.model_combo.findData("toonify"))
        assert not w.form.swap_combo.isEnabled() and w.form.swap_note.isVisible()   # said in the window
        assert "baked in" in w.form.swap_note.text() and "64 × 64" in w.form.swap_note.text()
        assert w.form.swap_combo.currentData() == 64 and w.params()["swap_res"] == 64
        w.form.model_combo.setCurrentIndex(w.form.model_combo.findData("cartoon"))
        assert w.form.swap_combo.isEnabled() and not w.form.swap_note.isVisible()
        assert w.params()["swap_res"] == 32                                      # the user's choice is back
    finally:
        w.close()


def test_swap_choices_stop_at_a_checkpoint_files_resolution(app, tiny_model_paths):
    """A browsed 32 px checkpoint offers swap resolutions up to 32 (read from the file off the UI thread)."""
    w = ToonPanel(FakeBackend(), models=[{"name": "toonify", "size": 1024, "kind": "blended", "swap_res": 64}])
    try:
        offered = lambda: [w.form.swap_combo.itemData(i) for i in range(w.form.swap_combo.count())]  # noqa: E731
        assert offered()[-1] == 1024
        w.set_params({"model": str(tiny_model_paths["toon"]), "swap_res": 16})
        assert wait_until(app, lambda: offered() == [4, 8, 16, 32])
        assert w.params()["swap_res"] == 16 and w.form.swap_combo.isEnabled()
    finally:
        w.close()


def test_swap_choices_wait_for_the_models_resolution_and_a_pick_that_does_not_fit_is_said(app, tiny_model_paths,
                                                                                       monkeypatch):
    """Issue 22 item 7: while a browsed checkpoint's resolution is being read, the swap list holds only the
    user's pick, disabled, and says so; once known, a pick above the model's size shows the largest that fits
    and the form says it was changed; the pick itself is kept for a model it fits."""
    from toon_ofx.panel import param_form

    release, real = threading.Event(), param_form.checkpoint_facts
    monkeypatch.setattr(param_form, "checkpoint_facts", lambda path: (release.wait(30), real(path))[1])
    w = ToonPanel(FakeBackend(), models=[{"name": "toonify", "size": 1024, "kind": "toon"}])
    form = w.form
    offered = lambda: [form.swap_combo.itemData(i) for i in range(form.swap_combo.count())]  # noqa: E731
    try:
        w.set_params({"model": str(tiny_model_paths["toon"]), "swap_res": 64})
        app.processEvents()
        assert offered() == [64] and not form.swap_combo.isEnabled()
        assert form.swap_note.isVisibleTo(w) and "reading" in form.swap_note.text().lower()
        release.set()
        assert wait_until(app, lambda: offered() == [4, 8, 16, 32])
        assert form.swap_combo.isEnabled() and w.params()["swap_res"] == 32
        assert "64 × 64" in form.swap_note.text() and "32" in form.swap_note.text() and form.swap_note.isVisibleTo(w)
        form.model_combo.setCurrentIndex(form.model_combo.findData("toonify"))
        assert w.params()["swap_res"] == 64 and not form.swap_note.isVisibleTo(w)
    finally:
        w.close()


# ----------------------------------------------------------------- preview
def test_preview_shows_original_and_stylised_side_by_side(app, movie):
    backend = FakeBackend()
    w = ToonPanel(backend, source=str(movie), models=[])
    w.show()
    try:
        assert w.viewer.frame_slider.maximum() == 19
        assert wait_until(app, lambda: w.viewer.original_view.image is not None)   # the frame under the scrubber
        w.viewer.frame_slider.setValue(7)
        w.viewer.preview_button.click()
        assert not w.viewer.preview_button.isEnabled()            # running on the pool, the UI stays live
        assert wait_until(app, lambda: w.viewer.last_preview is not None)
        assert backend.previews[0][:2] == (str(movie), 7)
        assert "MainThread" not in backend.threads
        assert w.viewer.original_view.image.size().toTuple() == (160, 120)
        assert w.viewer.stylised_view.image.size().toTuple() == (160, 120)
        assert not w.viewer.stylised_view.pixmap().isNull() and not w.viewer.original_view.pixmap().isNull()
        assert w.viewer.original_view.geometry().right() < w.viewer.stylised_view.geometry().left()   # side by side
        assert "1 face" in w.viewer.faces_label.text()
        assert w.viewer.preview_button.isEnabled()
    finally:
        w.close()


def test_preview_accepts_png_bytes_from_the_engine_and_reports_errors(app, movie):
    import cv2

    ok, png = cv2.imencode(".png", face_image())

    class PngBackend(FakeBackend):
        def preview(self, source, frame, params, progress=None, cancel=None):
            if frame == 3:
                raise UserError("frame 3 is outside the clip")
            return Preview(png.tobytes(), png.tobytes(), [{"box": [0, 0, 1, 1]}] and 2, frame)

    w = ToonPanel(PngBackend(), source=str(movie), models=[])
    try:
        w.viewer.frame_slider.setValue(2)
        w.preview()
        assert wait_until(app, lambda: w.viewer.last_preview is not None)
        assert w.viewer.stylised_view.image.width() == 160 and "2 face" in w.viewer.faces_label.text()
        w.viewer.frame_slider.setValue(3)
        w.preview()
        assert wait_until(app, lambda: "Preview failed" in w.status.text())
        assert "outside the clip" in w.status.text()
    finally:
        w.close()


class SteppedBackend(FakeBackend):
    """A preview of `steps` projection steps that reports each one (with an ETA) and stops at the first step
    after its cancel event is set, as the engine's does."""

    def __init__(self, steps=3000):
        super().__init__()
        self.steps, self.stopped_at = steps, None

    def preview(self, source, frame, params, progress=None, cancel=None):
        for step in range(1, self.steps + 1):
            if cancel is not None and cancel.is_set():
                self.stopped_at = step
                raise EngineError("the preview was cancelled", status=409)
            time.sleep(0.005)
            if progress is not None:
                progress({"stage": "projecting", "step": step, "steps": self.steps,
                          "eta_seconds": (self.steps - step) * 0.005})
        return super().preview(source, frame, params)


def test_preview_shows_progress_and_an_eta_and_cancel_stops_it(app, movie):
    """Issue 22 item 7: a preview shows its projection step and ETA, and Cancel stops it (the backend stops at
    the next projection step); the toon view then shows no stale image."""
    backend = SteppedBackend()
    w = ToonPanel(backend, source=str(movie), models=[])
    w.show()
    try:
        pane = w.viewer
        assert not pane.preview_cancel.isEnabled() and not pane.preview_progress.isVisible()
        pane.preview_button.click()
        assert wait_until(app, lambda: pane.preview_progress.value() > 10 and "ETA" in pane.preview_progress.format())
        assert pane.preview_progress.isVisible() and pane.preview_progress.maximum() == backend.steps
        assert pane.preview_cancel.isEnabled() and not pane.preview_button.isEnabled()
        pane.preview_cancel.click()
        assert wait_until(app, lambda: pane.preview_button.isEnabled())
        assert backend.stopped_at is not None and backend.stopped_at < backend.steps
        assert "cancelled" in w.status.text().lower()
        assert not pane.preview_cancel.isEnabled() and not pane.preview_progress.isVisible()
        assert pane.stylised_view.image is None and pane.last_preview is None
        backend.steps = 5                                     # and the next preview runs to the end
        pane.preview_button.click()
        assert wait_until(app, lambda: pane.last_preview is not None)
    finally:
        w.close()


def test_a_failed_preview_clears_the_previous_toon_image(app, movie):
    class FailingBackend(FakeBackend):
        fail = False

        def preview(self, source, frame, params, progress=None, cancel=None):
            if self.fail:
                raise UserError("no face encoder installed")
            return super().preview(source, frame, params)

    backend = FailingBackend()
    w = ToonPanel(backend, source=str(movie), models=[])
    try:
        w.preview()
        assert wait_until(app, lambda: w.viewer.last_preview is not None)
        assert w.viewer.stylised_view.image is not None
        backend.fail = True
        w.preview()
        assert wait_until(app, lambda: "Preview failed" in w.status.text())
        assert w.viewer.stylised_view.image is None and w.viewer.last_preview is None
        assert "failed" in w.viewer.stylised_view.text().lower()
    finally:
        w.close()


# ------------------------------------------------------------------ render
def test_render_progress_then_cancel(app, tmp_path):
    backend = FakeBackend(step=1)
    doc = clips_doc(tmp_path)
    result = tmp_path / "result.json"
    w = ToonPanel(backend, clips_doc=doc, result_path=str(result), models=[], poll_ms=20)
    w.show()
    try:
        assert w.params()["steps"] == 250                    # initial params from the script
        assert w.source_box.clip_list.count() == 2 and w.source_box.current_clip()["id"] == "ti-2"
        assert (w.viewer.frame_slider.minimum(), w.viewer.frame_slider.maximum()) == (0, 9)
        w.source_box.target_combo.setCurrentIndex(w.source_box.target_combo.findData(3))
        w.render_bar.render_button.click()
        assert not w.render_bar.render_button.isEnabled() and w.render_bar.cancel_button.isEnabled()
        assert wait_until(app, lambda: w.render_bar.progress.value() > 0)
        assert "frames" in w.status.text()
        w.render_bar.cancel_button.click()
        assert wait_until(app, lambda: not w.busy() and w.render_bar.render_button.isEnabled())
        assert sorted(backend.cancelled) == ["j1", "j2"]
        assert "Cancelled" in w.status.text()
        doc_out = json.loads(result.read_text())
        assert doc_out["status"] == "cancelled" and doc_out["target_track"] == 3
        assert [r["job"]["state"] for r in doc_out["results"]] == ["cancelled", "cancelled"]
        assert w.isVisible()                                   # stays open after a cancel
    finally:
        w.close()


def test_render_to_completion_writes_the_result_and_closes(app, tmp_path):
    backend = FakeBackend(step=5)
    doc = clips_doc(tmp_path)
    result = tmp_path / "result.json"
    w = ToonPanel(backend, clips_doc=doc, result_path=str(result), models=[], poll_ms=20)
    w.show()
    finished = []
    w.jobs_finished.connect(finished.append)
    w.source_box.clip_list.item(1).setCheckState(Qt.Unchecked)           # only the first clip
    w.form.steps_slider.setValue(120)
    w.render()
    assert wait_until(app, lambda: finished == ["done"])
    assert wait_until(app, lambda: not w.isVisible())          # back to the Resolve script
    out = json.loads(result.read_text())
    assert out["status"] == "done" and out["target_track"] == "new"
    (entry,) = out["results"]
    assert entry["clip"] == "ti-1" and entry["job"]["frames"] == [4, 23]
    assert entry["job"]["params"]["steps"] == 120
    assert w.render_bar.progress.value() == 100


def test_render_needs_a_source_and_reports_failures(app, tmp_path, movie):
    class Failing(FakeBackend):
        def job(self, job_id):
            job = super().job(job_id)
            job.update(state="failed", error="no face found anywhere in the clip")
            return job

    w = ToonPanel(Failing(), models=[], poll_ms=20)
    try:
        w.render()
        assert "Choose a video" in w.status.text()
        w.set_source(str(tmp_path / "missing.mp4"))
        assert "Cannot open" in w.status.text()
        w.set_source(str(movie))
        w.source_box.output_edit.setText(str(tmp_path / "out"))
        w.render()
        assert wait_until(app, lambda: w.status.text().startswith("Failed"))
        assert "no face found" in w.status.text() and w.render_bar.render_button.isEnabled()
        assert w.render_bar.entries[0]["job"]["output"]["folder"].startswith(str(tmp_path / "out"))
    finally:
        w.close()


def test_render_again_after_cancel_resumes_the_same_jobs(app, tmp_path):
    """Cancel, then Render with the same settings: the stopped jobs are retried (same job, same output,
    finished frames kept), not submitted anew (a `clip_toon_2` from frame 0)."""
    backend = FakeBackend(step=1)
    doc = clips_doc(tmp_path)
    w = ToonPanel(backend, clips_doc=doc, models=[], poll_ms=20)
    w.show()
    try:
        w.render()
        assert wait_until(app, lambda: w.render_bar.progress.value() > 0)
        w.cancel()
        assert wait_until(app, lambda: not w.busy() and w.render_bar.render_button.isEnabled())
        done_before = {e["job"]["id"]: e["job"]["progress"]["frames_done"] for e in w.render_bar.entries}
        assert w.render_bar.retry_button.isEnabled() and "Retry" in w.status.text()
        backend.step = 50
        w.render()
        assert wait_until(app, lambda: not w.busy() and w.render_bar.entries and
                          all(e["job"]["state"] == "done" for e in w.render_bar.entries))
        assert sorted(backend.retried) == ["j1", "j2"] and sorted(backend.table) == ["j1", "j2"]
        assert all(backend.table[j]["progress"]["frames_done"] >= done_before[j] for j in done_before)
        assert not w.render_bar.retry_button.isEnabled()
        # other settings are another render: a new job
        w.form.steps_slider.setValue(90)
        w.render()
        assert wait_until(app, lambda: sorted(backend.table) == ["j1", "j2", "j3", "j4"])
    finally:
        w.close()


def test_a_new_session_resumes_a_cancelled_job_the_engine_still_lists(app, tmp_path, movie):
    backend = FakeBackend(step=1)
    first = ToonPanel(backend, source=str(movie), models=[], poll_ms=20)
    first.source_box.output_edit.setText(str(tmp_path / "out"))
    first.render()
    assert wait_until(app, lambda: first.render_bar.progress.value() > 0)
    first.close()                                  # closing mid-render cancels the job
    assert backend.table["j1"]["state"] == "cancelled" and backend.table["j1"]["frames"] == [0, 19]
    second = ToonPanel(backend, source=str(movie), models=[], poll_ms=20)
    try:
        second.source_box.output_edit.setText(str(tmp_path / "out"))
        second.render()
        assert wait_until(app, lambda: backend.retried == ["j1"])
        assert list(backend.table) == ["j1"]
    finally:
        second.close()


def test_retry_button_runs_failed_jobs_again(app, tmp_path, movie):
    class FailsOnce(FakeBackend):
        def job(self, job_id):
            job = super().job(job_id)
            if not self.retried:
                with self.lock:
                    self.table[job_id].update(state="failed", error="CUDA out of memory")
                job.update(state="failed", error="CUDA out of memory")
            return job

    backend = FailsOnce(step=5)
    w = ToonPanel(backend, source=str(movie), models=[], poll_ms=20)
    try:
        w.source_box.output_edit.setText(str(tmp_path / "out"))
        w.render()
        assert wait_until(app, lambda: w.status.text().startswith("Failed"))
        assert "CUDA out of memory" in w.status.text() and w.render_bar.retry_button.isEnabled()
        w.render_bar.retry_button.click()
        assert wait_until(app, lambda: w.status.text().startswith("Done"))
        assert backend.retried == ["j1"] and list(backend.table) == ["j1"]
    finally:
        w.close()


def test_progress_says_which_model_loads_and_which_projection_step_runs(app, tmp_path, movie):
    class Slow(FakeBackend):
        def job(self, job_id):
            job = super().job(job_id)
            job["state"] = "running"
            job["progress"].update(stage="projecting", frames_done=0, step=120, steps=500, eta_seconds=None)
            return job

    w = ToonPanel(Slow(), source=str(movie), models=[], poll_ms=20)
    try:
        w.render()
        assert wait_until(app, lambda: "projecting faces: step 120 of 500" in w.status.text())
        assert "0/20 frames" in w.status.text()
    finally:
        w.cancel()
        w.close()


def test_long_errors_wrap_whole_and_selectable(app, tmp_path, movie):
    """A first run's missing-models message (long lines, long URLs) is shown whole: wrapped, no line cut
    off, the box as tall as the text, and selectable for copying."""
    message = ("4 model files are missing (this machine looks offline):\n" + "\n".join(
        f"  - file{i}.pkl (model m{i}, size not published, licence: Nvidia Source Code License-NC) from "
        f"https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/stylegan2-{i}.pkl"
        for i in range(4)) + f"\nPut them in {tmp_path / ('deep' * 20)} (or a folder named by TOON_OFX_MODELS).")

    class Refuses(FakeBackend):
        def submit(self, *args, **kwargs):
            raise UserError(message)

    w = ToonPanel(Refuses(), source=str(movie), models=[], poll_ms=20)
    w.resize(1100, 720)
    w.show()
    try:
        w.render()
        assert wait_until(app, lambda: "model files are missing" in w.status.text())
        app.processEvents()
        status = w.status
        assert status.text() == f"Could not start the render: {message}"
        assert status.textInteractionFlags() & Qt.TextSelectableByMouse
        doc = status.document()
        assert doc.idealWidth() <= status.viewport().width() + 1                   # wrapped, nothing to the right
        assert doc.size().height() <= status.viewport().height() + 1               # every line in view
        assert doc.size().height() > 6 * status.fontMetrics().lineSpacing()        # it grew with the message
        assert status.geometry().bottom() <= w.centralWidget().geometry().bottom()
        # a message longer than the box can grow scrolls instead of pushing the window apart
        w.set_status("\n".join(f"line {i}" for i in range(60)), error=True)
        app.processEvents()
        assert status.height() < 20 * status.fontMetrics().lineSpacing()
        assert status.verticalScrollBar().maximum() > 0 and status.text().endswith("line 59")
    finally:
        w.close()


# -------------------------------------------------------------------- live
def test_webcam_live_preview_with_injected_frames(app, movie):
    backend = FakeBackend(preview_delay=0.02)
    frames = [face_image(shift=i) for i in range(400)]
    w = ToonPanel(backend, source=str(movie), models=[], frame_source=lambda: IterSource(frames))
    w.show()
    try:
        w.viewer.live_button.click()
        assert wait_until(app, lambda: len(backend.previews) >= 2 and w.viewer.stylised_view.image is not None)
        source, frame, params = backend.previews[-1]
        assert frame == 0 and source.endswith("live.png") and os.path.exists(source)
        assert params["inversion"] == "encoder"                   # live frames take the encoder path
        assert w.params()["inversion"] == "encoder+projection"   # the form (renders) is unchanged
        assert "Live" in w.viewer.faces_label.text()
        w.viewer.live_button.click()
        assert wait_until(app, lambda: not w.viewer.live.running)
    finally:
        w.close()


def test_live_frame_folder_exists_only_while_it_is_needed(app, movie):
    import tempfile

    before = {p.name for p in Path(tempfile.gettempdir()).glob("toon_ofx_live_*")}
    w = ToonPanel(FakeBackend(), source=str(movie), models=[], frame_source=lambda: IterSource(
        [face_image(shift=i) for i in range(50)]))
    assert w.viewer.live.folder is None                      # a window that never goes live makes none
    assert {p.name for p in Path(tempfile.gettempdir()).glob("toon_ofx_live_*")} == before
    w.start_live()
    folder = w.viewer.live.folder
    assert folder and os.path.isdir(folder)
    w.close()
    assert not os.path.exists(folder) and w.viewer.live.folder is None


def test_no_camera_is_a_clear_message(app, movie):
    def no_camera():
        raise RuntimeError("No camera found (camera 0 could not be opened).")

    w = ToonPanel(FakeBackend(), source=str(movie), models=[], frame_source=no_camera)
    try:
        w.start_live()
        assert wait_until(app, lambda: "No camera found" in w.status.text())
        assert not w.viewer.live_button.isChecked() and not w.viewer.live.running
    finally:
        w.close()


def test_real_camera_source_without_a_camera():
    cv2 = pytest.importorskip("cv2")
    if cv2.VideoCapture(0).isOpened():  # pragma: no cover - a machine with a webcam
        pytest.skip("a camera is attached")
    with pytest.raises(RuntimeError, match="No camera found"):
        CameraSource(0)


# -------------------------------------------------------------- screenshot
class PortraitBackend(FakeBackend):
    """Previews a real portrait (the shared astronaut photo) with a posterised stand-in for the toon."""

    def preview(self, source, frame, params, progress=None, cancel=None):
        import cv2

        photo = REPO.parent / "shared" / "fixtures" / "astronaut.png"
        if not photo.exists():
            return super().preview(source, frame, params)
        image = cv2.cvtColor(cv2.imread(str(photo)), cv2.COLOR_BGR2RGB)
        smooth = cv2.bilateralFilter(image, 9, 60, 9)
        toon = (smooth // 48) * 48 + 24
        edges = cv2.adaptiveThreshold(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 255, cv2.ADAPTIVE_THRESH_MEAN_C,
                                      cv2.THRESH_BINARY, 9, 4)
        toon[edges == 0] = 30
        return Preview(image, toon.astype(np.uint8), 1, frame)


def test_screenshot(app, tmp_path):
    backend = PortraitBackend()
    doc = clips_doc(tmp_path)
    w = ToonPanel(backend, clips_doc=doc, models=[{"name": "toonify", "label": "Toonify", "size": 1024}],
                  poll_ms=20)
    w.resize(1200, 760)
    w.show()
    try:
        w.viewer.frame_slider.setValue(5)
        w.preview()
        assert wait_until(app, lambda: w.viewer.last_preview is not None)
        w.render()
        assert wait_until(app, lambda: 0 < w.render_bar.progress.value() < 100, timeout=5) or True
        path = tmp_path / "panel.png"
        w.save_screenshot(str(path))
        from PySide6.QtGui import QImage

        shot = QImage(str(path))
        assert shot.width() >= 1000 and shot.height() >= 600
        shutil.copyfile(path, SCREENSHOT_COPY)
    finally:
        w.close()


# -------------------------------------------------------------- command line
def test_panel_command_line(tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    out = subprocess.run([sys.executable, "-m", "toon_ofx.panel", "--help"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert out.returncode == 0 and "--live" in out.stdout
    out = subprocess.run([sys.executable, "-m", "toon_ofx.panel", str(tmp_path / "nope.mp4")],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2 and "does not exist" in out.stderr and "Traceback" not in out.stderr
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"text": "Placed 1 toon clip(s) on V2", "failed": []}))
    shot = tmp_path / "shot.png"
    movie = _write_movie(tmp_path / "m.mp4", 5)
    out = subprocess.run([sys.executable, "-m", "toon_ofx.panel", str(movie), "--backend", "inprocess",
                          "--set", "steps=42", "--screenshot", str(shot)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert shot.exists() and shot.stat().st_size > 1000


# ------------------------------------------------------------------ backends
def test_engine_backend_previews_through_the_engine_process(app, tmp_path, movie):
    """EngineBackend over real HTTP (an in-process server with a stand-in preview)."""
    from toon_ofx.client import EngineClient
    from toon_ofx.service.server import Server

    def fake_preview(source, frame, params):
        image = read_frame(source, frame)
        return image, 255 - image, [{"box": [1, 2, 3, 4]}]

    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", preview_fn=fake_preview,
                    model_check=None)
    with server:
        backend = EngineBackend(EngineClient(server.url, server.token))
        w = ToonPanel(backend, source=str(movie), models=[])
        try:
            w.viewer.frame_slider.setValue(4)
            w.preview()
            assert wait_until(app, lambda: w.viewer.last_preview is not None, timeout=30), w.status.text()
            assert w.viewer.stylised_view.image.size().toTuple() == (96, 72)
            assert w.viewer.last_preview.faces == 1 and w.viewer.last_preview.frame == 4
        finally:
            w.close()


def test_render_after_cancel_resumes_the_same_engine_job(app, tmp_path, movie):
    """Through the real engine process: Cancel, then Render again continues the same job into the same
    output (the engine's retry), where a new submission would have started `clip_toon_2` from frame 0."""
    from toon_ofx.client import EngineClient
    from toon_ofx.service.server import Server

    if not hasattr(EngineClient, "retry"):
        pytest.skip("this engine client has no retry yet")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_jobs import fake_render

    written = []

    def render(request, progress=None, cancel=None):
        def counting(event):
            written.append(event.frames_done)
            if progress is not None:
                progress(event)
        return fake_render(request, counting, cancel, delay=0.05)

    server = Server(config_dir=tmp_path / "config", data_dir=tmp_path / "data", render_fn=render,
                    preview_fn=lambda *a: None, model_check=None)
    with server:
        backend = EngineBackend(EngineClient(server.url, server.token))
        w = ToonPanel(backend, source=str(movie), models=[], poll_ms=20)
        try:
            w.source_box.output_edit.setText(str(tmp_path / "out"))
            w.render()
            assert wait_until(app, lambda: w.render_bar.progress.value() >= 20, timeout=30)
            w.cancel()
            assert wait_until(app, lambda: not w.busy() and w.render_bar.render_button.isEnabled(), timeout=30)
            (stopped,) = [e["job"] for e in w.render_bar.entries]
            assert stopped["state"] == "cancelled"
            kept = stopped["progress"]["frames_done"]
            assert 0 < kept < 20
            w.render()
            assert wait_until(app, lambda: w.status.text().startswith("Done"), timeout=60), w.status.text()
            (job,) = backend.jobs()
            assert job["id"] == stopped["id"] and job["state"] == "done"
            assert job["result"]["pattern"] == stopped["output"].get("pattern", job["result"]["pattern"])
            assert "clip_toon_2" not in json.dumps(job)
        finally:
            w.close()


def test_in_process_backend_runs_render_in_a_thread_and_cancels(tmp_path):
    from types import SimpleNamespace

    release = threading.Event()

    class FakeRender:
        RenderRequest = staticmethod(lambda **kw: SimpleNamespace(**kw))

        @staticmethod
        def preview(source, frame, params, cancel=None, progress=None):
            return face_image(), face_image(), 1

        @staticmethod
        def render(request, progress=None, cancel=None):
            first, last = request.frames
            for i in range(first, last + 1):
                progress(SimpleNamespace(stage="rendering", frames_done=i - first + 1, frames_total=last - first + 1,
                                         faces=1, eta_seconds=None))
                if cancel.wait(0.01 if release.is_set() else 5):
                    from toon_ofx.core.errors import Cancelled
                    raise Cancelled("cancelled")
            return SimpleNamespace(kind="sequence", output=Path(request.output).parent, pattern=str(request.output),
                                   first_frame=first, last_frame=last, fps=24.0)

    backend = InProcessBackend(render_module=FakeRender)
    assert backend.preview("x.mp4", 0, {}).faces == 1
    job = backend.submit("/m/a.mp4", [2, 5], {"steps": 9}, str(tmp_path), "sequence")
    assert job["params"]["steps"] == 9
    assert wait_for(lambda: backend.job(job["id"])["state"] == "running")
    backend.cancel(job["id"])
    assert wait_for(lambda: backend.job(job["id"])["state"] == "cancelled")
    release.set()
    resumed = backend.retry(job["id"])                     # the cancelled job runs again into its output
    assert resumed["id"] == job["id"] and resumed["state"] in ("queued", "running", "done")
    assert wait_for(lambda: backend.job(job["id"])["state"] == "done")
    assert [j["id"] for j in backend.jobs()] == [job["id"]]
    job = backend.submit("/m/a.mp4", [2, 5], {}, str(tmp_path), "sequence")
    assert wait_for(lambda: backend.job(job["id"])["state"] == "done")
    result = backend.job(job["id"])["result"]
    assert (result["first_frame"], result["last_frame"]) == (2, 5) and result["pattern"].endswith("a_toon.%06d.png")


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.mark.slow
def test_preview_through_the_real_renderer_with_tiny_models(app, astronaut_clip, tiny_params):
    """The panel's in-process backend on toon_ofx.core.render.preview: a real face, tiny generators."""
    pytest.importorskip("toon_ofx.core.render")
    w = ToonPanel(InProcessBackend(), source=str(astronaut_clip), models=[])
    try:
        w.set_params(tiny_params)
        w.viewer.frame_slider.setValue(3)
        w.preview()
        assert wait_until(app, lambda: w.viewer.last_preview is not None or "failed" in w.status.text(), timeout=300)
        assert w.viewer.last_preview is not None, w.status.text()
        assert w.viewer.original_view.image.size().toTuple() == (256, 192)
        assert w.viewer.stylised_view.image.size().toTuple() == (256, 192)
        assert w.viewer.last_preview.faces == 1 and w.viewer.last_preview.frame == 3
    finally:
        w.close()
