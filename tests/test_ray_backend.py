"""`render --ray`: chunks on a local 2-CPU Ray cluster with persistent workers.

A stand-in renderer (models "load" in its constructor, frames are written like the real
renderer's) exercises scheduling, one load per worker, retries, a lost worker, progress,
cancellation and movie assembly; the real engine's Ray render is compared frame by frame with
a single-process render in test_ray_matches_single_process_render.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from toon_ofx.core import media  # noqa: E402
from toon_ofx.core.errors import Cancelled, UserError  # noqa: E402
from engine.temporal import TemporalPlan, VToonifyPlan  # noqa: E402
from toon_ofx.farm.plan import chunk_size_for_workers  # noqa: E402
from toon_ofx.farm.ray_backend import render_with_ray  # noqa: E402
from toon_ofx.core.render import ProgressEvent, RenderRequest, RenderResult  # noqa: E402

from conftest import FIXTURES  # noqa: E402

CLIP = FIXTURES / "single_face.mp4"   # 72 frames, 30 fps, 640x360, audio


@pytest.fixture(scope="module")
def engine_params(tiny_params):
    """Tiny models for the real renderer (TOON_OFX_MODELS, set by conftest, reaches the workers)."""
    return dict(tiny_params, steps=1, warm_steps=1, smoothing=0.0)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster: 2 CPU workers, small object store, no dashboard."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers cannot import tests/
    ray.init(num_cpus=2, object_store_memory=100 * 1024 ** 2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


class FakeRenderer:
    """Loads 'models' once in __init__ (logged per process) and writes frames like Renderer.render.

    Frame i is the source's frame i, darkened: deterministic per frame, so a correct chunking
    gives exactly the single-pass result. Marker files in `log_dir` inject faults for a chunk:
    fail-<first> raises once, die-<first> kills the worker process once.
    """

    def __init__(self, params, log_dir, load_seconds=0.2, frame_seconds=0.0):
        time.sleep(load_seconds)
        self.log_dir, self.frame_seconds = Path(log_dir), frame_seconds
        with open(self.log_dir / "loads.txt", "a") as f:
            f.write(f"{os.getpid()}\n")

    def render(self, request, progress=None, cancel=None):
        first, last = request.frames
        for name, action in (("fail", "raise"), ("die", "exit")):
            marker = self.log_dir / f"{name}-{first}"
            if marker.exists():
                marker.unlink()
                if action == "raise":
                    raise RuntimeError(f"injected failure in chunk {first}")
                os._exit(1)
        with open(self.log_dir / "chunks.txt", "a") as f:
            f.write(f"{os.getpid()} {first}-{last}\n")
        pattern = str(request.output)
        todo = [i for i in range(first, last + 1) if not Path(pattern % i).exists()]
        done = last - first + 1 - len(todo)
        if progress:
            progress(ProgressEvent("rendering", done, last - first + 1, 0, None))
        for index, frame in media.read_frames(CLIP, todo[0], todo[-1]) if todo else ():
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            if index in todo:
                media.write_frame(Path(pattern % index), (frame // 2).astype(np.uint8))
                done += 1
                if progress:
                    progress(ProgressEvent("rendering", done, last - first + 1, 1, None))
                time.sleep(self.frame_seconds)
        return RenderResult(output=Path(pattern).parent, kind="sequence", pattern=pattern, first_frame=first,
                            last_frame=last, written=len(todo), skipped=last - first + 1 - len(todo), fps=30.0)


def _expected(first, last):
    return {i: (f // 2).astype(np.uint8) for i, f in media.read_frames(CLIP, first, last)}


def _request(out, frames, **params):
    return RenderRequest(source=CLIP, output=out, params={"keyframe_interval": 4, **params}, frames=frames)


def _factory(tmp_path, **kw):
    return functools.partial(FakeRenderer, log_dir=str(tmp_path), **kw)


def test_two_persistent_workers_render_every_chunk_once(cluster, tmp_path):
    events = []
    out = tmp_path / "seq" / "clip.%06d.png"
    result = render_with_ray(_request(out, (2, 25)), chunk_size=4, progress=events.append,
                             renderer_factory=_factory(tmp_path, frame_seconds=0.02))
    assert result.kind == "sequence" and (result.first_frame, result.last_frame) == (2, 25)
    assert result.written == 24 and result.skipped == 0
    expected = _expected(2, 25)
    for i, image in expected.items():
        assert np.array_equal(media.read_image(str(out) % i), image), i
    assert not Path(str(out) % 1).exists() and not Path(str(out) % 26).exists()
    # models loaded once per worker, not once per chunk: 2 workers, 6 chunks on the 4-frame grid shifted
    # by the keyframe cross-fade (2 frames at keyframe interval 4: the segment grid 6, 10, 14, ...)
    loads = (tmp_path / "loads.txt").read_text().split()
    chunks = [line.split() for line in (tmp_path / "chunks.txt").read_text().splitlines()]
    assert len(loads) == 2 and len(set(loads)) == 2
    assert sorted(c for _, c in chunks) == sorted(["2-5", "6-9", "10-13", "14-17", "18-21", "22-25"])
    assert {pid for pid, _ in chunks} <= set(loads)
    assert result.timings["workers"] == 2 and result.timings["chunks"] == 6
    # progress: loading first, frames never go backwards, done at the end with every frame
    assert events[0].stage == "loading" and events[-1].stage == "done"
    assert events[-1].frames_done == events[-1].frames_total == 24
    done = [e.frames_done for e in events]
    assert done == sorted(done)
    assert any(0 < e.frames_done < 24 and e.stage == "rendering" for e in events)


def test_failed_chunks_are_retried_and_a_lost_worker_is_replaced(cluster, tmp_path):
    (tmp_path / "fail-6").touch()   # chunks 0-5, 6-9, 10-13, 14-15
    (tmp_path / "die-10").touch()
    out = tmp_path / "seq" / "clip.%06d.png"
    result = render_with_ray(_request(out, (0, 15)), chunk_size=4, renderer_factory=_factory(tmp_path))
    assert result.written == 16 and result.timings["retries"] == 2
    assert not (tmp_path / "fail-6").exists() and not (tmp_path / "die-10").exists()
    for i, image in _expected(0, 15).items():
        assert np.array_equal(media.read_image(str(out) % i), image), i
    assert len((tmp_path / "loads.txt").read_text().split()) == 3   # 2 workers + 1 replacement


def test_a_chunk_failing_every_time_stops_with_a_clear_error(cluster, tmp_path):
    class Always(FakeRenderer):
        def render(self, request, progress=None, cancel=None):
            if request.frames[0] == 6:
                raise RuntimeError("GPU fell off the bus")
            return super().render(request, progress, cancel)

    out = tmp_path / "seq" / "clip.%06d.png"
    with pytest.raises(UserError, match=r"frames 6-9 failed 3 times.*GPU fell off the bus"):
        render_with_ray(_request(out, (0, 11)), chunk_size=4, max_retries=2,
                        renderer_factory=functools.partial(Always, log_dir=str(tmp_path), load_seconds=0))


def test_bad_input_in_a_worker_is_a_user_error_not_retried(cluster, tmp_path):
    class Broken(FakeRenderer):
        def __init__(self, params, log_dir):
            raise UserError("model 'nope' is not in the model store", field="model")

    with pytest.raises(UserError, match="not in the model store"):
        render_with_ray(_request(tmp_path / "seq", (0, 7)), chunk_size=4,
                        renderer_factory=functools.partial(Broken, log_dir=str(tmp_path)))


def test_resume_skips_finished_chunks_and_encodes_a_movie(cluster, tmp_path):
    work = tmp_path / "work"
    pattern = str(work / f"{CLIP.stem}.%06d.png")
    for i, image in _expected(0, 9).items():           # chunks 0-5 and 6-9 were done by an earlier run
        media.write_frame(Path(pattern % i), image)
    req = RenderRequest(source=CLIP, output=tmp_path / "out.mp4", params={"keyframe_interval": 4},
                        frames=(0, 19), work_dir=work)
    result = render_with_ray(req, chunk_size=4, renderer_factory=_factory(tmp_path))
    assert result.kind == "movie" and result.output == tmp_path / "out.mp4"
    assert result.written == 10 and result.skipped == 10
    chunks = sorted(line.split()[1] for line in (tmp_path / "chunks.txt").read_text().splitlines())
    assert chunks == ["10-13", "14-17", "18-19"]
    info = media.probe(tmp_path / "out.mp4")
    assert info.frame_count == 20 and info.has_audio
    assert not work.exists()                           # frames removed after encoding (keep_frames=False)


def test_cancel_stops_the_workers(cluster, tmp_path):
    cancel = threading.Event()
    seen = []

    def progress(event):
        seen.append(event)
        if event.frames_done >= 2:
            cancel.set()

    with pytest.raises(Cancelled):
        render_with_ray(_request(tmp_path / "seq", (0, 63)), chunk_size=8, progress=progress, cancel=cancel,
                        renderer_factory=_factory(tmp_path, load_seconds=0, frame_seconds=0.05))
    written = list((tmp_path / "seq").glob("*.png"))
    assert 2 <= len(written) < 64


def test_chunking_needs_keyframes(cluster, tmp_path):
    with pytest.raises(UserError, match="keyframe_interval > 0"):
        render_with_ray(_request(tmp_path / "seq", (0, 7), keyframe_interval=0),
                        renderer_factory=_factory(tmp_path))


def test_a_vtoonify_style_is_cut_into_chunks_of_exactly_the_size_asked(cluster, tmp_path):
    """No keyframe grid (keyframe_interval does not apply: 0 is not refused): chunks of 7 from the first
    frame, not one keyframe interval each."""
    from tiny_vtoonify import save_vtoonify, tiny_vtoonify

    model = save_vtoonify(tmp_path / "vt.pt", tiny_vtoonify())
    request = RenderRequest(source=CLIP, output=tmp_path / "seq" / "clip.%06d.png", frames=(3, 21),
                            params={"model": str(model), "keyframe_interval": 0})
    assert render_with_ray(request, chunk_size=7, renderer_factory=_factory(tmp_path)).written == 19
    chunks = [line.split()[1] for line in (tmp_path / "chunks.txt").read_text().splitlines()]
    assert sorted(chunks, key=lambda c: int(c.split("-")[0])) == ["3-9", "10-16", "17-21"]


def test_default_chunk_size_keeps_workers_busy():
    assert chunk_size_for_workers(1000, TemporalPlan(48), 2) == 96
    assert chunk_size_for_workers(100, TemporalPlan(48), 2) == 96
    assert chunk_size_for_workers(90, TemporalPlan(48), 2) == 48
    assert chunk_size_for_workers(30, TemporalPlan(4), 8) == 4
    # a VToonify style: up to 96 frames, split evenly when that keeps every worker busy
    assert chunk_size_for_workers(1000, VToonifyPlan(13, 14, 6), 2) == 96
    assert chunk_size_for_workers(90, VToonifyPlan(13, 14, 6), 2) == 45
    assert chunk_size_for_workers(30, VToonifyPlan(13, 14, 6), 8) == 4


def test_ray_matches_single_process_render(cluster, engine_params, tmp_path):
    """The real engine on 2 persistent CPU workers writes exactly the single-process frames."""
    from toon_ofx.core.render import Renderer

    first, last = 2, 13
    single = tmp_path / "single" / "f.%06d.png"
    Renderer(engine_params).render(RenderRequest(source=CLIP, output=single, params=engine_params,
                                                 frames=(first, last)))
    events = []
    out = tmp_path / "ray" / "f.%06d.png"
    result = render_with_ray(RenderRequest(source=CLIP, output=out, params=engine_params, frames=(first, last)),
                             chunk_size=4, workers=2, progress=events.append)
    assert result.written == last - first + 1 and result.timings["workers"] == 2
    assert result.timings["chunks"] == 3                    # 2-5, 6-9, 10-13 (the segment grid)
    for i in range(first, last + 1):
        assert np.array_equal(media.read_image(str(single) % i), media.read_image(str(out) % i)), i
    assert events[-1].stage == "done" and events[-1].frames_done == 12


def test_progress_never_goes_back_while_results_are_on_their_way():
    """A worker resets its status when a chunk ends, before the driver has collected the chunk's
    result (on a loaded machine that gap spans several polls); its frames must not vanish meanwhile."""
    from toon_ofx.farm.plan import plan_chunks
    from toon_ofx.farm.ray_backend import ChunkOutcome, RayProgress

    chunks = plan_chunks(0, 11, 4)                               # 0-3, 4-7, 8-11
    events = []
    report = RayProgress(events.append, chunks, present={8, 9})   # two frames of 8-11 were on disk
    assert report.frames_done == 2
    for status in ({"chunk": (0, 3), "done": 3, "faces": 1},      # worker A, three frames in
                   {"chunk": (8, 11), "done": 3, "faces": 1},     # worker B, counting the frames on disk
                   {"chunk": None, "done": 0, "faces": 0},        # A finished 0-3; its result is not in yet
                   {"chunk": (4, 7), "done": 1, "faces": 0},      # A already on its next chunk
                   {"chunk": (0, 3), "done": 2, "faces": 1}):     # a status that arrives late
        report.live(status)
        report.emit("rendering")
    report.finished(ChunkOutcome(chunks[0], 4, 0, 1, 0.1, 0.0, "A"))
    report.emit("rendering")
    done = [e.frames_done for e in events]
    assert done == [5, 6, 7, 8]        # +3 from 0-3, +1 from 8-11, +1 from 4-7, 0-3 complete
    assert done == sorted(done) and all(e.frames_total == 12 for e in events)


class WarningRenderer(FakeRenderer):
    """FakeRenderer whose chunks report warnings: one every chunk gives, one of the chunk starting at 6."""

    def render(self, request, progress=None, cancel=None):
        result = super().render(request, progress, cancel)
        first = request.frames[0]
        result.warnings = ["every chunk says this"] + ([f"only chunk {first} says this"] if first == 6 else [])
        return result


def test_chunk_warnings_reach_the_result_and_the_progress_once(cluster, tmp_path):
    events = []
    result = render_with_ray(_request(tmp_path / "seq", (2, 13)), chunk_size=4, progress=events.append,
                             renderer_factory=functools.partial(WarningRenderer, log_dir=str(tmp_path)))
    assert result.warnings == ["every chunk says this", "only chunk 6 says this"]   # 3 chunks, each said once
    assert [e.warning for e in events if e.warning] == result.warnings


def test_cli_render_ray_prints_the_warnings_like_a_local_render(cluster, tmp_path, monkeypatch, capsys):
    from toon_ofx.cli import main
    from toon_ofx.farm import ray_backend

    monkeypatch.setattr(ray_backend, "render_with_ray", functools.partial(
        ray_backend.render_with_ray, renderer_factory=functools.partial(WarningRenderer, log_dir=str(tmp_path))))
    assert main(["render", str(CLIP), "-o", str(tmp_path / "seq"), "--frames", "2-13", "--ray", "--chunk-size",
                 "4", "--keyframe-interval", "4", "-q"]) == 0
    err = capsys.readouterr().err
    assert err.count("toon-ofx: warning: every chunk says this") == 1
    assert err.count("toon-ofx: warning: only chunk 6 says this") == 1


def test_ray_warns_about_a_plate_as_a_local_render_does(cluster, engine_params, tmp_path, astronaut):
    """An ACEScg RGBA EXR plate into an .mp4 (HEVC named: the chunks, which write frames, do not take it): no
    alpha, no float values; the chunks' hidden PNG frames are not the output and add nothing."""
    import media_sources as ms
    from toon_ofx.core.render import render

    plate = tmp_path / "plate"
    plate.mkdir()
    for k, picture in enumerate(ms.frames(160, 120, 6, face=astronaut, face_size=100, face_x=40, face_y=10)):
        alpha = np.full((120, 160, 1), 0.5, np.float32)
        ms.write_image(plate / f"bg.{k + 1:04d}.exr", np.concatenate([ms.to_acescg(picture), alpha], axis=2)
                       .astype(np.float16), "half", oiio__ColorSpace="ACEScg")
    local = render(RenderRequest(plate, tmp_path / "local" / "bg.mp4", engine_params, codec="hevc-10bit"))
    events = []
    ray_result = render_with_ray(RenderRequest(plate, tmp_path / "ray" / "bg.mp4", engine_params, codec="hevc-10bit"),
                                 chunk_size=4, workers=2, progress=events.append)
    assert len(local.warnings) == 2 and ray_result.warnings == local.warnings   # alpha, float values
    assert [e.warning for e in events if e.warning] == local.warnings
    assert media.probe(tmp_path / "ray" / "bg.mp4").frame_count == 6
