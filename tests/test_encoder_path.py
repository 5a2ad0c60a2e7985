"""The encoder path: `inversion` = encoder / encoder+projection, in the engine and through a render.

Tiny pSp/e4e checkpoints in the real layout (tests/tiny_encoders.py) go through the loader users run.
"""
from __future__ import annotations

import io
from contextlib import redirect_stderr

import numpy as np
import pytest
import torch

import engine.pipeline as pipeline_module
from engine.faces.landmarks import make_landmarker
from engine.generator.blend import blend_generators
from engine.generator.checkpoints import load_generator
from engine.inversion.encoders import load_encoder
from engine.inversion.lpips import TinyPerceptual
from engine.pipeline import PipelineConfig, ToonPipeline
from toon_ofx.core import media
from toon_ofx.core.errors import UserError
from toon_ofx.core.render import RenderRequest, get_renderer, render

from conftest import TINY_SIZE, fixture_path, panning_frames
from tiny_encoders import write_tiny_encoder


@pytest.fixture(scope="module")
def e4e_file(tmp_path_factory):
    return write_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny_e4e.pt", "Encoder4Editing", size=TINY_SIZE)


@pytest.fixture(scope="module")
def toonify_file(tmp_path_factory):
    """A pSp checkpoint whose decoder is 'the toon generator': a one-pass toon style."""
    return write_tiny_encoder(tmp_path_factory.mktemp("enc") / "tiny_psp_toonify.pt", "GradualStyleEncoder",
                              size=TINY_SIZE, seed=3)


@pytest.fixture(scope="module")
def parts(tiny_model_paths, e4e_file):
    base = load_generator(tiny_model_paths["base"])
    toon = load_generator(tiny_model_paths["toon"])
    return (make_landmarker("dlib"), base, blend_generators(base, toon, 8), TinyPerceptual()), load_encoder(e4e_file)


def spy_projection(monkeypatch):
    calls = []
    real = pipeline_module.project

    def spy(generator, targets, **kw):
        calls.append({"n": targets.shape[0], "steps": kw["steps"], "init": kw["init"]})
        return real(generator, targets, **kw)

    monkeypatch.setattr(pipeline_module, "project", spy)
    return calls


def run(parts, frames, **config):
    engine_parts, encoder = parts
    pipe = ToonPipeline(*engine_parts, PipelineConfig(**config), encoder=encoder)
    return pipe, [pipe.process(frame, index) for index, frame in enumerate(frames)]


# ------------------------------------------------------------------ engine


def test_encoder_mode_takes_every_face_from_the_encoder(monkeypatch, parts, astronaut):
    calls = spy_projection(monkeypatch)
    frames = list(panning_frames(astronaut, 3))
    pipe, results = run(parts, frames, inversion="encoder", keyframe_interval=0)
    assert calls == [] and all(r.faces == 1 for r in results)
    seen, project_faces = [], pipe.project_faces
    pipe.project_faces = lambda prepared: (project_faces(prepared), seen.extend(prepared))
    pipe.process(frames[0], 3)  # a later frame: still the encoder's own latent, no chain
    task = seen[0].tasks[0]
    assert not task.warm and task.steps == 0
    assert torch.allclose(task.state.latent, parts[1](task.target)[0], atol=1e-6)


def test_keyframes_start_from_the_encoder_and_later_frames_from_the_previous(monkeypatch, parts, astronaut):
    calls = spy_projection(monkeypatch)
    _, results = run(parts, panning_frames(astronaut, 5), inversion="encoder+projection", steps=7,
                     refine_steps=2, warm_steps=1, keyframe_interval=3, keyframe_overlap=0)
    assert [(c["steps"], c["init"] is not None) for c in calls] == [(2, True), (1, True), (1, True), (2, True),
                                                                    (1, True)]
    encoder = parts[1]
    for call in (calls[0], calls[3]):  # keyframes: the encoder's latent, not the mean face
        assert not torch.allclose(call["init"], encoder.latent_avg.expand_as(call["init"]))


def test_encoder_projection_with_no_steps_equals_encoder(monkeypatch, parts, astronaut):
    frames = list(panning_frames(astronaut, 4))
    calls = spy_projection(monkeypatch)
    _, refined = run(parts, frames, inversion="encoder+projection", refine_steps=0, warm_steps=0,
                     keyframe_interval=3)
    _, encoded = run(parts, frames, inversion="encoder", keyframe_interval=3)
    assert calls == []
    for a, b in zip(refined, encoded):
        assert np.array_equal(a.image, b.image)


def test_refinement_steps_reach_the_on_step_hook(parts, astronaut):
    engine_parts, encoder = parts
    pipe = ToonPipeline(*engine_parts, PipelineConfig(inversion="encoder+projection", refine_steps=3),
                        encoder=encoder)
    seen = []
    pipe.on_step = lambda step, steps: seen.append((step, steps))
    pipe.process(next(panning_frames(astronaut, 1)), 0)
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_faces_of_several_frames_share_one_encoder_batch(monkeypatch, parts, astronaut):
    frames = list(panning_frames(astronaut, 6))
    engine_parts, encoder = parts

    def clip(batch_size):
        pipe = ToonPipeline(*engine_parts, PipelineConfig(inversion="encoder", batch_size=batch_size,
                                                          keyframe_interval=0), encoder=encoder)
        return [result for _, result in pipe.run(enumerate(frames))]

    single = clip(1)
    batches = []
    real_forward = type(encoder).forward
    monkeypatch.setattr(type(encoder), "forward", lambda self, x, *a, **k: (batches.append(len(x)),
                                                                            real_forward(self, x, *a, **k))[1])
    grouped = clip(4)
    assert batches == [4, 4]   # frames 0-3, then 4-5 padded to the batch size
    for a, b in zip(grouped, single):  # batched convolutions may round differently: one grey level at most
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_pipeline_refuses_an_encoder_mode_without_an_encoder(parts):
    engine_parts, _ = parts
    with pytest.raises(ValueError, match="needs an encoder"):
        ToonPipeline(*engine_parts, PipelineConfig(inversion="encoder"))
    with pytest.raises(ValueError, match="inversion must be"):
        ToonPipeline(*engine_parts, PipelineConfig(inversion="pca"), encoder=parts[1])


# ------------------------------------------------------------------ product


@pytest.fixture(scope="module")
def enc_params(tiny_params, e4e_file):
    return dict(tiny_params, inversion="encoder", encoder=str(e4e_file))


def test_encoder_render_of_a_real_clip_keeps_frames_fps_and_audio(tmp_path, enc_params):
    clip = fixture_path("single_face.mp4")  # its first second (30 frames): crosses the 8-frame groups
    result = render(RenderRequest(clip, tmp_path / "out.mp4", dict(enc_params, batch_size=8), frames=(0, 29)))
    src, out = media.probe(clip), media.probe(result.output)
    assert result.written == out.frame_count == 30 and abs(float(out.fps) - float(src.fps)) < 1e-6
    assert (out.width, out.height) == (src.width, src.height)
    assert src.has_audio and out.has_audio


def test_render_refine_zero_equals_encoder(tmp_path, astronaut_clip, enc_params):
    encoded = render(RenderRequest(astronaut_clip, tmp_path / "enc", enc_params))
    refined = render(RenderRequest(astronaut_clip, tmp_path / "ref", dict(
        enc_params, inversion="encoder+projection", refine_steps=0, warm_steps=0)))
    for i in range(10):
        assert np.array_equal(media.read_image(encoded.pattern % i), media.read_image(refined.pattern % i))


def test_frame_groups_equal_one_at_a_time_and_chunks_reproduce_them(tmp_path, astronaut_clip, enc_params):
    one = render(RenderRequest(astronaut_clip, tmp_path / "one", dict(enc_params, batch_size=1)))
    grouped = render(RenderRequest(astronaut_clip, tmp_path / "four", dict(enc_params, batch_size=4)))
    chunk = render(RenderRequest(astronaut_clip, tmp_path / "chunk", dict(enc_params, batch_size=4), frames=(5, 9)))
    for i in range(10):
        a = media.read_image(one.pattern % i).astype(int)
        b = media.read_image(grouped.pattern % i).astype(int)
        assert np.abs(a - b).max() <= 1, i  # batched convolutions round differently: one grey level at most
        if i >= 5:
            assert np.array_equal(media.read_image(chunk.pattern % i), media.read_image(grouped.pattern % i))


def test_fallback_to_projection_is_announced_once(tmp_path, astronaut_clip, tiny_params, tiny_models_dir):
    params = dict(tiny_params, encoder="e4e-encode")  # default inversion, no encoder in the model folder
    events = []
    render(RenderRequest(astronaut_clip, tmp_path / "seq", params, frames=(0, 2)), progress=events.append)
    notices = [e.notice for e in events if e.notice]
    assert len(notices) == 1 and "no face encoder installed (e4e-encode)" in notices[0]
    assert "toon-ofx models pull e4e-encode" in notices[0]

    from toon_ofx.cli import main
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["render", str(astronaut_clip), "-o", str(tmp_path / "cli"), "--frames", "0-1", "--quiet",
                     "--model", params["model"], "--base-model", params["base_model"], "--steps", "2",
                     "--warm-steps", "1", "--swap-res", "16", "--device", "cpu"])
    assert code == 0 and err.getvalue().count("no face encoder installed") == 1, err.getvalue()


def test_encoder_problems_are_one_clear_error(tmp_path, astronaut_clip, tiny_params, tiny_model_paths):
    with pytest.raises(UserError, match="models pull e4e-encode") as info:
        render(RenderRequest(astronaut_clip, tmp_path / "a", dict(tiny_params, inversion="encoder",
                                                                     encoder="e4e-encode")))
    assert info.value.field == "encoder"
    with pytest.raises(UserError, match="not an encoder checkpoint") as info:  # a generator given as encoder
        render(RenderRequest(astronaut_clip, tmp_path / "b", dict(tiny_params, inversion="encoder",
                                                                     encoder=str(tiny_model_paths["base"]))))
    assert info.value.field == "encoder"
    with pytest.raises(UserError, match="does not exist") as info:
        render(RenderRequest(astronaut_clip, tmp_path / "c", dict(tiny_params, encoder=str(tmp_path / "no.pt"))))
    assert info.value.field == "encoder"


def test_one_pass_toon_style_needs_no_base_model_and_ignores_swap_res(tmp_path, astronaut_clip, tiny_params,
                                                                      toonify_file):
    params = dict(tiny_params, model=str(toonify_file), base_model=str(tmp_path / "absent-base.pt"),
                  inversion="projection")
    first = render(RenderRequest(astronaut_clip, tmp_path / "a", dict(params, swap_res=8), frames=(0, 2)))
    second = render(RenderRequest(astronaut_clip, tmp_path / "b", dict(params, swap_res=32), frames=(0, 2)))
    source = dict(media.read_frames(media.probe(astronaut_clip), 0, 2))
    for i in range(3):
        image = media.read_image(first.pattern % i)
        assert np.array_equal(image, media.read_image(second.pattern % i))
        assert np.abs(image.astype(int) - source[i].astype(int)).max() > 30  # the face was replaced


def test_one_renderer_serves_live_encoder_previews_and_refined_renders(enc_params):
    live = get_renderer(enc_params)
    refined = dict(enc_params, inversion="encoder+projection", refine_steps=2)
    assert get_renderer(refined) is live  # no reload when the panel's live preview and a render alternate
    assert live.pipeline(enc_params).perceptual is None  # encoder-only needs no LPIPS
    pipe = live.pipeline(refined)
    assert pipe.perceptual is not None and pipe.encoder is live.pipeline(enc_params).encoder


class _Payload:
    """Pickles as a call to os.system: a loader that ran code from the file would create `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("damage", ["carries code", "truncated"])
def test_a_refused_model_file_is_reported_with_its_reason(tmp_path, astronaut_clip, tiny_params, damage):
    """`--model hostile.pt --inversion encoder`: the model file's own problem is the message (issue 22 item 8),
    never "the face encoder ... is not installed"."""
    from toon_ofx.cli import main

    marker, model = tmp_path / "ran", tmp_path / "hostile.pt"
    if damage == "carries code":
        torch.save({"g_ema": {"w": torch.zeros(2)}, "hook": _Payload(marker)}, model)
        words = "could run code"
    else:
        torch.save({"g_ema": {"w": torch.zeros(4096)}}, model)
        model.write_bytes(model.read_bytes()[:-700])
        words = "truncated or corrupt"
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["render", str(astronaut_clip), "-o", str(tmp_path / "out"), "--frames", "0-0", "--quiet",
                     "--model", str(model), "--base-model", tiny_params["base_model"], "--inversion", "encoder",
                     "--device", "cpu"])
    assert code == 2 and words in err.getvalue() and "hostile.pt" in err.getvalue(), err.getvalue()
    assert "not installed" not in err.getvalue() and not marker.exists()
