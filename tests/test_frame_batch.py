"""frame_batch: keyframe segments rendered in lockstep, their faces projected together."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import engine.pipeline as pipeline_module
from toon_ofx.core import media
from toon_ofx.core.params import ParamError, validate
from toon_ofx.core.render import RenderRequest, render

FAST = {"steps": 4, "warm_steps": 2, "keyframe_interval": 3, "keyframe_overlap": 0}


def spy_projection(monkeypatch):
    calls = []
    real = pipeline_module.project

    def spy(generator, targets, **kw):
        calls.append((targets.shape[0], kw["steps"], kw["init"] is not None, list(kw["seed"])))
        return real(generator, targets, **kw)

    monkeypatch.setattr(pipeline_module, "project", spy)
    return calls


def frames_of(pattern, frames=range(10)):
    return [media.read_image(pattern % i) for i in frames]


@pytest.fixture(scope="module")
def single(tmp_path_factory, astronaut_clip, tiny_params):
    """The clip rendered with frame_batch 1 (keyframes 0, 3, 6, 9)."""
    out = tmp_path_factory.mktemp("single") / "seq"
    return render(RenderRequest(astronaut_clip, out, dict(tiny_params, **FAST)))


def assert_same_frames(got, want):
    # Projection is per sample (its own loss, Adam state and random stream); only batched
    # convolutions may round differently (this clip comes out bit-identical on CPU, but
    # test_pipeline shows a one-level difference elsewhere): one grey level at most.
    for i, (a, b) in enumerate(zip(got, want)):
        diff = np.abs(a.astype(int) - b.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01, (i, diff.max(), diff.mean())


def test_frame_batch_gives_the_frames_of_a_single_pass(tmp_path, monkeypatch, single, astronaut_clip,
                                                       tiny_params):
    calls = spy_projection(monkeypatch)
    events = []
    out = tmp_path / "seq"
    result = render(RenderRequest(astronaut_clip, out, dict(tiny_params, **FAST, frame_batch=3, batch_size=8)),
                    progress=events.append)
    assert (result.written, result.skipped) == (10, 0)
    assert [e.frames_done for e in events if e.stage == "rendering"] == list(range(11))
    assert events[-1].stage == "done" and events[-1].faces >= 10
    assert_same_frames(frames_of(result.pattern), frames_of(single.pattern))
    # Segments 0-2, 3-5, 6-8 in lockstep (tracker-only warm-up frames run through first, so
    # their keyframes line up): one cold call for frames 0, 3, 6, warm calls for 1, 4, 7 and
    # 2, 5, 8; then segment 9 alone. Seeds are each face's own (frame * 1009 + position).
    assert calls == [(3, 4, False, [0, 3 * 1009, 6 * 1009]), (3, 2, True, [1009, 4 * 1009, 7 * 1009]),
                     (3, 2, True, [2 * 1009, 5 * 1009, 8 * 1009]), (1, 4, False, [9 * 1009])]


def test_resume_with_frame_batch_writes_only_missing_frames(tmp_path, monkeypatch, single, astronaut_clip,
                                                           tiny_params):
    calls = spy_projection(monkeypatch)
    out = tmp_path / "seq"
    out.mkdir()
    pattern = str(out / Path(single.pattern).name)
    done = (0, 1, 2, 4, 7)  # a crashed frame-batched render: frames of several segments on disk
    for i in done:
        Path(pattern % i).write_bytes(Path(single.pattern % i).read_bytes())
    before = {i: os.stat(pattern % i).st_mtime_ns for i in done}
    again = render(RenderRequest(astronaut_clip, out, dict(tiny_params, **FAST, frame_batch=2)))
    assert (again.written, again.skipped) == (5, 5)
    assert {i: os.stat(pattern % i).st_mtime_ns for i in done} == before, "finished frames were rewritten"
    assert_same_frames(frames_of(pattern), frames_of(single.pattern))
    # Missing 3, 5, 6, 8, 9: segments 3-5 and 6-8 (each from its keyframe) in lockstep, then 9
    # (batch_size 1: one call per face); frames 0-2 are not projected again.
    assert [seed // 1009 for c in calls for seed in c[3]] == [3, 6, 4, 7, 5, 8, 9]


def test_frame_batch_with_cross_fades_gives_the_frames_of_a_single_pass(tmp_path, astronaut_clip, tiny_params):
    """With a cross-fade (chains 0 and 3 both shown at frame 4 ...) segments start on the grid 0, 4, 7:
    each re-projects the one frame of its chain that the segment before it writes."""
    params = dict(tiny_params, **dict(FAST, keyframe_overlap=1, keyframe_interval=3))
    single = render(RenderRequest(astronaut_clip, tmp_path / "single", params))
    batched = render(RenderRequest(astronaut_clip, tmp_path / "batched", dict(params, frame_batch=3, batch_size=8)))
    assert batched.written == 10
    assert_same_frames(frames_of(batched.pattern), frames_of(single.pattern))


def test_frame_batch_needs_keyframes():
    assert validate({"frame_batch": 4})["frame_batch"] == 4
    with pytest.raises(ParamError) as err:
        validate({"frame_batch": 2, "keyframe_interval": 0})
    assert err.value.field == "frame_batch"
    assert validate({"frame_batch": 1, "keyframe_interval": 0})["frame_batch"] == 1
    with pytest.raises(ParamError):
        validate({"frame_batch": 17})


def test_cancel_stops_a_frame_batched_render(tmp_path, astronaut_clip, tiny_params):
    import threading

    from toon_ofx.core.errors import Cancelled

    cancel = threading.Event()

    def progress(event):
        if event.stage == "rendering" and event.frames_done >= 1:
            cancel.set()

    out = tmp_path / "seq"
    with pytest.raises(Cancelled):
        render(RenderRequest(astronaut_clip, out, dict(tiny_params, **FAST, frame_batch=2)), progress=progress,
               cancel=cancel)
    written = sorted(out.iterdir())
    assert 1 <= len(written) <= 2  # the step in flight finishes, nothing after it
