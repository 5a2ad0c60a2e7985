"""Slow tests on the real public checkpoints, wherever they are installed.

They run on a machine where `toon-ofx models pull ffhq-1024 toonify lpips` has
been done (or TOON_OFX_MODELS points at the files) and are skipped elsewhere;
the tiny-model tests cover the same code paths everywhere.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from toon_ofx.core import model_store

pytestmark = pytest.mark.slow

# The user's own model folder, read before any fixture points TOON_OFX_MODELS at tiny test models.
USER_MODELS = os.environ.get("TOON_OFX_MODELS")


@pytest.fixture(autouse=True)
def user_model_folder(monkeypatch):
    if USER_MODELS is None:
        monkeypatch.delenv("TOON_OFX_MODELS", raising=False)
    else:
        monkeypatch.setenv("TOON_OFX_MODELS", USER_MODELS)


def installed(*names: str) -> None:
    missing = [n for n in names if model_store.find(n) is None]
    if missing:
        pytest.skip(f"real weights not installed: {', '.join(missing)} (toon-ofx models pull ...)")


def test_base_model_loads_as_config_f_1024():
    installed("ffhq-1024")
    from engine.generator.checkpoints import inspect_checkpoint

    info = inspect_checkpoint(model_store.find("ffhq-1024"))
    assert (info.size, info.n_latent, info.style_dim, info.n_mlp) == (1024, 18, 512, 8)


def test_toonify_renders_a_real_face(astronaut):
    installed("ffhq-1024", "toonify", "vgg16", "lpips-vgg")
    from toon_ofx.core.render import Renderer

    params = {"steps": 50, "device": "auto"}
    renderer = Renderer(params)
    result = renderer.pipeline(params).process(astronaut, 0)
    assert result.faces == 1 and result.image.shape == astronaut.shape
    changed = np.abs(result.image.astype(int) - astronaut.astype(int)).max(axis=2) > 8
    assert 0.02 < changed.mean() < 0.5


def test_lpips_identity_and_order():
    installed("vgg16", "lpips-vgg")
    import torch

    from engine.inversion.lpips import load_lpips

    lp = load_lpips(model_store.find("vgg16"), model_store.find("lpips-vgg"))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    slightly, very = (x + 0.05 * torch.randn_like(x)).clamp(-1, 1), torch.rand_like(x) * 2 - 1
    d_same, d_slight, d_very = (lp(x, y).item() for y in (x, slightly, very))
    assert d_same == 0 and 0 < d_slight < d_very


# ------------------------------------------------------------------ face encoders (issue 12)

INVERSION_ENCODERS = ["psp-encode", "e4e-encode", "restyle-psp-encode", "restyle-e4e-encode"]


@pytest.fixture(scope="module")
def projected_astronaut(astronaut):
    """The astronaut's aligned face, the base generator, LPIPS, and a 500-step W+ projection of the face:
    its LPIPS and the time its first 50 steps took."""
    installed("ffhq-1024", "vgg16", "lpips-vgg")
    import time

    import torch

    from engine.faces.align import align_face, ffhq_quad
    from engine.faces.landmarks import make_landmarker
    from engine.generator.checkpoints import load_generator
    from engine.inversion.lpips import load_lpips
    from engine.inversion.projection import project

    face = make_landmarker("dlib").detect(astronaut)[0]
    crop, _ = align_face(astronaut, ffhq_quad(face.landmarks), 1024)
    target = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    g = load_generator(model_store.find("ffhq-1024"))
    lp = load_lpips(model_store.find("vgg16"), model_store.find("lpips-vgg"))
    marks = {}
    start = time.perf_counter()

    def at_step(i, _losses):
        if i == 49:
            marks["fifty_steps"] = time.perf_counter() - start

    result = project(g, target, steps=500, perceptual=lp, callback=at_step)
    with torch.no_grad():
        lpips_500 = lp(result.images, target).item()
    return {"target": target, "generator": g, "lpips": lp, "lpips_500": lpips_500, **marks}


@pytest.mark.parametrize("name", INVERSION_ENCODERS)
def test_encoder_beats_a_long_projection_in_the_time_of_a_short_one(projected_astronaut, name):
    """Issue 12's bar: a better LPIPS than 500 projection steps, in no more time than 50 of them.

    The encoder's one pass is measured alone; where it does not reach the bar by itself, the
    product's encoder+projection does the rest: refinement steps from the encoder's latent in
    what is left of the 50-step budget.
    """
    installed(name)
    import time

    import torch

    from engine.inversion.encoders import load_encoder
    from engine.inversion.projection import project

    p = projected_astronaut
    g, lp, target = p["generator"], p["lpips"], p["target"]
    enc = load_encoder(model_store.find(name), expect_size=g.size)
    assert enc.info.n_latent == 18 and enc.info.input_size == 256
    with torch.no_grad():
        start = time.perf_counter()
        latents = enc(target)
        seconds = time.perf_counter() - start
        lpips_enc = lp(g.synthesis(latents), target).item()
    assert seconds <= p["fifty_steps"], (name, seconds, p["fifty_steps"])
    best = lpips_enc
    if lpips_enc >= p["lpips_500"]:
        steps = int((p["fifty_steps"] - seconds) / (p["fifty_steps"] / 50))
        refined = project(g, target, steps=steps, init=latents, perceptual=lp)
        with torch.no_grad():
            best = lp(refined.images, target).item()
    assert best < p["lpips_500"], (name, lpips_enc, best, p["lpips_500"])


def test_psp_toonify_renders_a_toon_face_in_one_pass(astronaut):
    installed("psp-toonify", "ffhq-1024")
    import torch

    from engine.faces.align import align_face, ffhq_quad
    from engine.faces.landmarks import make_landmarker
    from engine.generator.checkpoints import load_generator
    from engine.inversion.encoders import load_encoder, load_encoder_decoder

    path = model_store.find("psp-toonify")
    enc, toon = load_encoder(path), load_encoder_decoder(path)
    assert toon.size == 1024 and enc.info.kind == "psp"
    face = make_landmarker("dlib").detect(astronaut)[0]
    crop, _ = align_face(astronaut, ffhq_quad(face.landmarks), 1024)
    target = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        latents = enc(target)
        toon_face = toon.synthesis(latents)
        base_face = load_generator(model_store.find("ffhq-1024")).synthesis(latents)
    assert toon_face.shape == (1, 3, 1024, 1024) and toon_face.abs().max() < 2
    assert (toon_face - base_face).abs().mean() > 0.05  # its own decoder, not the base model
