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
