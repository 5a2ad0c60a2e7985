"""End to end: `toon-ofx render` on real faces with tiny models."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toon_ofx.core import media
from toon_ofx.core.render import RenderRequest, render

from conftest import REPO, fixture_path

FAST = {"steps": 4, "warm_steps": 2}


def run_cli(*args, env=None):
    """Run `python -m toon_ofx` as a user would; returns the CompletedProcess."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "toon_ofx", *map(str, args)], capture_output=True,
                          text=True, cwd=REPO, env=full_env, timeout=600)


def read_png_sequence(pattern: str, frames):
    return [media.read_image(pattern % i) for i in frames]


@pytest.fixture(scope="module")
def whole_render(tmp_path_factory, astronaut_clip, tiny_params):
    """The astronaut clip rendered in one pass into a PNG sequence."""
    out = tmp_path_factory.mktemp("whole") / "seq"
    events = []
    result = render(RenderRequest(astronaut_clip, out, dict(tiny_params, **FAST)), progress=events.append)
    return result, events


def test_movie_keeps_fps_frame_count_size_and_audio(tmp_path, astronaut_clip, tiny_params):
    out = tmp_path / "toon.mp4"
    result = render(RenderRequest(astronaut_clip, out, dict(tiny_params, **FAST)))
    src, dst = media.probe(astronaut_clip), media.probe(out)
    assert result.kind == "movie" and out.exists()
    assert (dst.width, dst.height) == (src.width, src.height)
    assert dst.fps == src.fps and dst.frame_count == src.frame_count
    assert src.has_audio and dst.has_audio
    assert abs(dst.duration - src.duration) < 0.1
    assert not any(p.name.startswith(".toon.mp4") for p in tmp_path.iterdir()), "frame folder left behind"


def test_faces_found_and_only_the_face_changes(whole_render, astronaut_clip):
    result, events = whole_render
    assert result.written == 10 and result.skipped == 0
    assert events[-1].stage == "done" and events[-1].faces >= 10  # the face is found in every frame
    source = [f for _, f in media.read_frames(astronaut_clip)]
    rendered = read_png_sequence(result.pattern, range(10))
    for src, out in zip(source, rendered):
        assert out.shape == src.shape and out.dtype == np.uint8
        changed = np.abs(out.astype(int) - src.astype(int)).max(axis=2) > 0
        assert changed.mean() > 0.01, "the face was not stylised"
        assert changed.mean() < 0.5, "more than the face region changed"
        # Outside the face region the frame is bit-identical to the source.
        for corner in (changed[:20, :20], changed[:20, -20:], changed[-20:, :20], changed[-20:, -20:]):
            assert not corner.any()


def test_resume_renders_only_missing_frames_identically(tmp_path, whole_render, astronaut_clip, tiny_params):
    result, _ = whole_render
    out = tmp_path / "seq"
    out.mkdir()
    pattern = str(out / Path(result.pattern).name)
    for i in range(10):  # a crashed render: frames 0-5 done
        if i <= 5:
            Path(pattern % i).write_bytes(Path(result.pattern % i).read_bytes())
    before = {i: os.stat(pattern % i).st_mtime_ns for i in range(6)}
    again = render(RenderRequest(astronaut_clip, out, dict(tiny_params, **FAST)))
    assert (again.written, again.skipped) == (4, 6)
    assert {i: os.stat(pattern % i).st_mtime_ns for i in range(6)} == before, "finished frames were rewritten"
    for i in range(6, 10):
        assert np.array_equal(media.read_image(pattern % i), media.read_image(result.pattern % i)), i


def test_chunks_reproduce_the_whole_render(tmp_path, whole_render, astronaut_clip, tiny_params):
    """Frame ranges (farm chunks) give the same pixels as one pass (keyframe interval 4)."""
    result, _ = whole_render
    out = tmp_path / "chunks"
    for first, last in ((0, 2), (3, 6), (7, 9)):
        render(RenderRequest(astronaut_clip, out, dict(tiny_params, **FAST), frames=(first, last)))
    pattern = str(out / Path(result.pattern).name)
    for i in range(10):
        assert np.array_equal(media.read_image(pattern % i), media.read_image(result.pattern % i)), i


def test_overlay_is_rgba_with_alpha_only_on_the_face(tmp_path, astronaut_clip, tiny_params):
    out = tmp_path / "overlay.%06d.png"
    params = dict(tiny_params, **FAST, output_kind="overlay")
    render(RenderRequest(astronaut_clip, out, params, frames=(0, 1)))
    import cv2

    rgba = cv2.imread(str(out) % 0, cv2.IMREAD_UNCHANGED)  # media.read_image would drop the alpha
    assert rgba.shape == (192, 256, 4)
    alpha = rgba[:, :, 3]
    assert 0.01 < (alpha > 0).mean() < 0.5
    assert alpha[0, 0] == 0 and alpha[-1, -1] == 0


def test_no_face_clip_passes_through(tmp_path, tiny_params):
    clip = fixture_path("no_face.mp4")
    out = tmp_path / "seq"
    result = render(RenderRequest(clip, out, dict(tiny_params, **FAST), frames=(0, 2)))
    source = dict(media.read_frames(clip, 0, 2))
    for i in range(3):
        assert np.array_equal(media.read_image(result.pattern % i), source[i])


def test_cli_render_json_progress(tmp_path, astronaut_clip, tiny_params, tiny_models_dir):
    out = tmp_path / "cli.mp4"
    proc = run_cli("render", astronaut_clip, "-o", out, "--frames", "0-3", "--json",
                   "--model", tiny_params["model"], "--base-model", tiny_params["base_model"],
                   "--swap-res", "16", "--steps", "4", "--warm-steps", "2", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert lines[-1]["stage"] == "done" and lines[-1]["frames_done"] == lines[-1]["frames_total"] == 4
    assert media.probe(out).frame_count == 4


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "range", "same", "model", "param"])
def test_cli_bad_input_one_clear_error(tmp_path, case, astronaut_clip, tiny_params, tiny_models_dir):
    src = astronaut_clip
    args = []
    if case == "missing":
        src = tmp_path / "nope.mp4"
    elif case == "text":
        src = tmp_path / "notes.mp4"
        src.write_text("not a video")
    elif case == "truncated":
        src = tmp_path / "cut.mp4"
        src.write_bytes(astronaut_clip.read_bytes()[:2000])
    elif case == "range":
        args = ["--frames", "5-50"]
    elif case == "model":
        args = ["--model", "no-such-style"]
    elif case == "param":
        args = []
    out = src if case == "same" else tmp_path / "out.mp4"
    before = src.read_bytes() if src.exists() else None
    model = [] if case == "model" else ["--model", tiny_params["model"]]
    proc = run_cli("render", src, "-o", out, *args, *model, "--base-model", tiny_params["base_model"],
                   "--steps", "2", "--warm-steps", "1", "--swap-res", *(["48"] if case == "param" else ["16"]), "--device", "cpu")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("toon-ofx: error: ") and proc.stderr.count("\n") == 1, proc.stderr
    if case != "same":
        assert not out.exists(), "a failed render left an output file"
    if before is not None:
        assert src.read_bytes() == before, "the source was modified"


def test_cancel_stops_inside_a_projection_and_writes_nothing(tmp_path, monkeypatch, astronaut_clip, tiny_params):
    """A cancel set during the first frame's projection takes effect at the next step, not after the frame."""
    import threading

    from toon_ofx.core.errors import Cancelled
    from toon_ofx.core.render import Renderer

    cancel, steps_seen = threading.Event(), []
    real_pipeline = Renderer.pipeline

    def pipeline_that_cancels_at_step_2(self, params, cancel_event=None, on_step=None, inversion=None):
        pipe = real_pipeline(self, params, cancel_event, on_step, inversion)
        stop_if_cancelled = pipe.on_step

        def on_step(step, steps):
            steps_seen.append(step)
            if step == 2:
                cancel.set()  # as the user's Cancel button would, mid-projection
            stop_if_cancelled(step, steps)
        pipe.on_step = on_step
        return pipe

    monkeypatch.setattr(Renderer, "pipeline", pipeline_that_cancels_at_step_2)
    out = tmp_path / "seq"
    with pytest.raises(Cancelled, match="step 2 of 400"):
        render(RenderRequest(astronaut_clip, out, dict(tiny_params, steps=400)), cancel=cancel)
    assert steps_seen == [1, 2]
    assert not list(out.glob("*.png"))


def test_first_run_offline_names_every_missing_model_at_once(tmp_path, monkeypatch, astronaut_clip, capsys):
    """No models installed, no network: one message lists the four files a default render needs, each
    with size, licence and URL, and the folder to put them in (one download attempt, not four reruns)."""
    import urllib.error
    import urllib.request

    from toon_ofx.cli import main

    for var in ("TOON_OFX_MODELS", "TOON_OFX_CACHE_DIR", "TORCH_HOME"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    attempts = []

    def offline(request, timeout=None):
        attempts.append(request.full_url)
        raise urllib.error.URLError(OSError(-2, "Name or service not known"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    code = main(["render", str(astronaut_clip), "-o", str(tmp_path / "out.mp4"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(attempts) == 1
    assert err.startswith("toon-ofx: error: 4 model files are missing (this machine looks offline):")
    files = {"stylegan2-ffhq-1024x1024.pkl": "ffhq-1024", "ffhq-cartoon-blended-64.pkl": "toonify",
             "vgg16-397923af.pth": "vgg16", "lpips-vgg-v0.1.pth": "lpips-vgg"}
    listed = [line for line in err.splitlines() if line.startswith("  - ")]
    assert len(listed) == 4
    for line, (file, name) in zip(listed, files.items()):
        assert line.startswith(f"  - {file} (model {name}, ") and "licence: " in line and " from https://" in line
    assert "vgg16-397923af.pth (model vgg16, 527.8 MiB, licence: " in err
    assert f"Put them in {tmp_path / 'toon_ofx_models'}" in err
    assert "toon-ofx models pull ffhq-1024 toonify vgg16 lpips-vgg" in err
    assert not (tmp_path / "out.mp4").exists()


def test_progress_names_each_model_loaded_and_each_projection_step(tmp_path, astronaut_clip, tiny_params):
    from toon_ofx.core import render as render_module

    render_module._CACHE.clear()           # load the models in this render
    events = []
    params = dict(tiny_params, steps=5, warm_steps=2)
    render(RenderRequest(astronaut_clip, tmp_path / "seq", params, frames=(0, 2)), progress=events.append)
    loading = [e for e in events if e.stage == "loading" and e.model]
    assert [(e.model, e.step, e.steps) for e in loading] == [
        ("tiny-base.pt", 1, 4), ("tiny-toon.pt", 2, 4), ("lpips", 3, 4), ("dlib", 4, 4)]
    assert events[0].stage == "loading" and not events[0].model   # the render's first word, before any model
    # every projection reports its first and last step, between the frames it belongs to
    stages = [e.stage for e in events]
    first_render = stages.index("rendering")
    projecting = [e for e in events if e.stage == "projecting"]
    assert {(e.step, e.steps) for e in projecting} >= {(1, 5), (5, 5), (1, 2), (2, 2)}
    for e in projecting:
        assert 1 <= e.step <= e.steps and e.frames_total == 3
    assert stages.index("projecting") > first_render
    assert [e.frames_done for e in events if e.stage in ("rendering", "projecting")] == sorted(
        e.frames_done for e in events if e.stage in ("rendering", "projecting"))
    json.dumps(projecting[0].to_dict())     # the JSON form carries the new fields
    assert set(projecting[0].to_dict()) == {"stage", "frames_done", "frames_total", "faces", "eta_seconds",
                                            "model", "step", "steps", "notice", "warning"}


def test_preview_reports_loading_and_projection_steps_with_an_eta_and_stops_on_cancel(astronaut_clip, tiny_params):
    """toon_ofx.core.render.preview with `progress` (issue 22 item 7): "loading", then "projecting" steps with
    an ETA from the step rate; a cancel stops it at the next projection step."""
    import threading

    from toon_ofx.core.errors import Cancelled
    from toon_ofx.core.render import preview

    events, cancel = [], threading.Event()

    def progress(event):
        events.append(event)
        if event.stage == "projecting" and event.step >= 3:
            cancel.set()

    params = dict(tiny_params, inversion="projection", steps=40)
    with pytest.raises(Cancelled):
        preview(astronaut_clip, 3, params, cancel=cancel, progress=progress)
    assert events[0].stage == "loading"
    steps = [e for e in events if e.stage == "projecting"]
    assert steps[0].step == 1 and steps[0].steps == 40 and 3 <= steps[-1].step < 40
    assert steps[-2].step < 3   # nothing after the step that asked to cancel
    assert all(e.eta_seconds > 0 for e in steps[1:])
    original, stylised, faces = preview(astronaut_clip, 3, dict(params, steps=2), progress=events.append)
    assert faces == 1 and events[-1].stage == "projecting" and events[-1].step == 2
