"""engine.pipeline: warm starts, keyframes, batching and pass-through, on real faces."""
from __future__ import annotations

import numpy as np
import pytest

import engine.pipeline as pipeline_module
from engine.generator.blend import blend_generators
from engine.faces.landmarks import make_landmarker
from engine.inversion.lpips import TinyPerceptual
from engine.pipeline import PipelineConfig, ToonPipeline

from conftest import fixture_path, panning_frames
from tiny_models import tiny_generator


@pytest.fixture(scope="module")
def parts():
    base, toon = tiny_generator(32, seed=0), tiny_generator(32, seed=1)
    return make_landmarker("dlib"), base, blend_generators(base, toon, 8), TinyPerceptual()


def spy_projection(monkeypatch):
    calls = []
    real = pipeline_module.project

    def spy(generator, targets, **kw):
        calls.append((targets.shape[0], kw["steps"], kw["init"] is not None))
        return real(generator, targets, **kw)

    monkeypatch.setattr(pipeline_module, "project", spy)
    return calls


def test_warm_starts_between_keyframes(monkeypatch, parts, astronaut):
    calls = spy_projection(monkeypatch)
    pipe = ToonPipeline(*parts, PipelineConfig(steps=3, warm_steps=1, keyframe_interval=3, keyframe_overlap=0))
    for index, frame in enumerate(panning_frames(astronaut, 5)):
        result = pipe.process(frame, index)
        assert result.faces == 1 and result.image.shape == frame.shape and result.image.dtype == np.uint8
        assert set(result.timings) >= {"detect", "track", "align", "project", "generate", "paste"}
    # frame 0 cold, 1-2 warm, 3 (a keyframe) cold again, 4 warm
    assert [(steps, warm) for _, steps, warm in calls] == [(3, False), (1, True), (1, True), (3, False), (1, True)]


def test_old_chain_runs_into_the_next_keyframe_interval(monkeypatch, parts, astronaut):
    """keyframe_overlap: the chain of keyframe 0 keeps projecting frames 4 and 5 beside the new chain."""
    calls = spy_projection(monkeypatch)
    weights = []
    real_crossfade = pipeline_module.crossfade
    monkeypatch.setattr(pipeline_module, "crossfade",
                        lambda old, new, weight: weights.append(weight) or real_crossfade(old, new, weight))
    config = PipelineConfig(steps=3, warm_steps=1, keyframe_interval=4, keyframe_overlap=2)
    results = dict(ToonPipeline(*parts, config).run(enumerate(panning_frames(astronaut, 7))))
    assert weights == [1 / 3, 2 / 3]  # frames 4 and 5 show (1 - a) * old + a * new
    assert sorted(results) == list(range(7)) and all(r.faces == 1 for r in results.values())
    # per frame: old chain first (warm), then the new chain: 4 -> cold start of the new chain
    assert [(steps, warm) for _, steps, warm in calls] == [
        (3, False), (1, True), (1, True), (1, True),  # frames 0-3, chain 0
        (1, True), (3, False),                        # frame 4: chain 0 warm, chain 4 cold
        (1, True), (1, True),                         # frame 5: both warm, never batched together
        (1, True)]                                    # frame 6: chain 4 alone


def test_a_jump_in_time_restarts_cold(monkeypatch, parts, astronaut):
    calls = spy_projection(monkeypatch)
    pipe = ToonPipeline(*parts, PipelineConfig(steps=2, warm_steps=1, keyframe_interval=0))
    frames = list(panning_frames(astronaut, 2))
    pipe.process(frames[0], 10)
    pipe.process(frames[1], 20)
    assert [warm for *_, warm in calls] == [False, False]


def test_warmup_start_covers_the_chains_and_the_tracking_history(parts):
    pipe = ToonPipeline(*parts, PipelineConfig(keyframe_interval=48, keyframe_overlap=8))
    history = pipe.plan.history
    assert history > 0 and pipe.look_ahead > 0
    assert pipe.warmup_start(110) == 96 - history  # the fix: the tracker warms up before the keyframe
    assert pipe.warmup_start(100) == 48 - history  # inside the cross-fade: the old chain from its keyframe
    assert pipe.warmup_start(5) == 0
    assert ToonPipeline(*parts, PipelineConfig(keyframe_interval=0)).warmup_start(100) == 0


def test_faces_of_one_frame_are_batched(monkeypatch, parts):
    from toon_ofx.core.media import read_image

    image = read_image(fixture_path("multi_face.jpg"))
    calls = spy_projection(monkeypatch)
    pipe = ToonPipeline(*parts, PipelineConfig(steps=2, warm_steps=1, batch_size=8))
    result = pipe.process(image, 0)
    assert result.faces >= 4
    assert calls == [(result.faces, 2, False)]
    changed = np.abs(result.image.astype(int) - image.astype(int)).max(axis=2) > 0
    assert 0.005 < changed.mean() < 0.6


def test_frames_without_faces_pass_through(parts):
    blank = np.full((120, 160, 3), 90, np.uint8)
    out = ToonPipeline(*parts).process(blank, 0)
    assert out.faces == 0 and np.array_equal(out.image, blank)
    overlay = ToonPipeline(*parts, PipelineConfig(overlay=True)).process(blank, 0)
    assert overlay.image.shape == (120, 160, 4) and not overlay.image.any()


def test_rejects_mismatched_generators(parts):
    landmarker, base, _, perceptual = parts
    with pytest.raises(ValueError, match="differ"):
        ToonPipeline(landmarker, base, tiny_generator(64, seed=0), perceptual)


def test_faces_of_two_pipelines_projected_together_match_separate_runs(monkeypatch, parts, astronaut):
    """The stages of run(): two independent chains, their faces in one project() call."""
    frames = list(panning_frames(astronaut, 4))
    config = PipelineConfig(steps=2, warm_steps=1, keyframe_interval=2, keyframe_overlap=0, batch_size=4)
    expected = dict(ToonPipeline(*parts, config).run(enumerate(frames)))
    calls = spy_projection(monkeypatch)
    first, second = ToonPipeline(*parts, config), ToonPipeline(*parts, config)
    # each chain decodes from its warm-up start (0 here) and tracks with its look-ahead
    streams = [first.track(enumerate(frames), 0, 1), second.track(enumerate(frames), 2, 3)]
    got = {}
    for step in range(2):  # chains 0-1 and 2-3 in lockstep
        prepared = [first.prepare(next(streams[0])), second.prepare(next(streams[1]))]
        assert [p.index for p in prepared] == [step, 2 + step]
        first.project_faces(prepared)
        got[step], got[2 + step] = first.finish(prepared[0]).image, second.finish(prepared[1]).image
    assert calls == [(2, 2, False), (2, 1, True)]
    for index, result in expected.items():
        # batched convolutions may round differently: at most one grey level, on a few pixels
        diff = np.abs(got[index].astype(int) - result.image.astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01, (index, diff.max(), diff.mean())
    with pytest.raises(ValueError, match="pipeline that prepared"):
        second.finish(first.prepare(next(first.track(enumerate(frames)))))


def test_on_step_sees_every_projection_step_and_can_stop_inside_one(parts, astronaut):
    frames = list(panning_frames(astronaut, 2))
    pipe = ToonPipeline(*parts, PipelineConfig(steps=5, warm_steps=2, keyframe_interval=0))
    seen = []
    pipe.on_step = lambda step, steps: seen.append((step, steps))
    pipe.process(frames[0], 0)
    pipe.process(frames[1], 1)
    assert seen == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5), (1, 2), (2, 2)]

    class Stop(Exception):
        pass

    def stop_at_third(step, steps):
        if step == 3:
            raise Stop
    stopping = ToonPipeline(*parts, PipelineConfig(steps=50, keyframe_interval=0))
    stopping.on_step = stop_at_third
    with pytest.raises(Stop):
        stopping.process(frames[0], 0)
