"""Transfer-learning fine-tune at tiny scale: losses, learning, exact resume, checkpoints that load and blend."""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import fixture_path
from tiny_models import tiny_channels, tiny_generator
from engine.generator.stylegan2 import Discriminator
from engine.generator.training import (
    TrainConfig,
    Trainer,
    augment,
    d_logistic_loss,
    d_r1_penalty,
    g_nonsaturating_loss,
    iteration_generator,
    path_length_penalty,
)
from toon_ofx import cli
from toon_ofx.training.train import ImageBank, train

SIZE = 32


def tiny_discriminator(seed: int = 1) -> Discriminator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Discriminator(SIZE, channels=tiny_channels(SIZE))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A rosinality *training* checkpoint: g, d, g_ema, optimiser states and the argparse Namespace."""
    g, d = tiny_generator(SIZE, seed=0), tiny_discriminator()
    path = tmp_path_factory.mktemp("base") / "base.pt"
    torch.save({"g": g.state_dict(), "d": d.state_dict(), "g_ema": g.state_dict(),
                "g_optim": torch.optim.Adam(g.parameters()).state_dict(),
                "d_optim": torch.optim.Adam(d.parameters()).state_dict(),
                "args": argparse.Namespace(size=SIZE, batch=4, iter=800000, ckpt=None), "ada_aug_p": 0.0}, path)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Faces from the real test clip, built as a user would (dlib, FFHQ alignment)."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    from toon_ofx.training.dataset import DatasetBuilder, DatasetOptions

    out = tmp_path_factory.mktemp("faces")
    DatasetBuilder(out, DatasetOptions(size=SIZE, every=6)).build([fixture_path("single_face.mp4")], progress=False)
    return out


def state_of(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def mean_image_gap(g, real: torch.Tensor) -> float:
    """Mean absolute gap between the average generated image and the average dataset image."""
    z = torch.randn(64, g.style_dim, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        fake, _ = g([z], randomize_noise=False)
    return (fake.mean(0) - real.mean(0)).abs().mean().item()


# ---------------------------------------------------------------- the pieces


def test_losses_and_regularisers_have_stylegan2_values():
    zero = torch.zeros(4, 1)
    assert d_logistic_loss(zero, zero).item() == pytest.approx(2 * math.log(2))
    assert g_nonsaturating_loss(zero).item() == pytest.approx(math.log(2))
    assert d_logistic_loss(torch.full((4, 1), 20.0), torch.full((4, 1), -20.0)).item() < 1e-6

    # R1 of a linear critic D(x) = <w, x> is |w|^2 for every image.
    w = torch.randn(3, 8, 8)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    pred = (x * w).sum((1, 2, 3))
    assert d_r1_penalty(pred, x).item() == pytest.approx(w.pow(2).sum().item(), rel=1e-5)

    # Path length of a linear "generator": the running mean moves 1% towards the batch mean.
    latents = torch.randn(2, 4, 5, requires_grad=True)
    img = torch.einsum("nld,dchw->nchw", latents, torch.randn(5, 3, 8, 8))
    penalty, mean, lengths = path_length_penalty(img, latents, torch.zeros(()),
                                                 generator=torch.Generator().manual_seed(0))
    assert lengths.shape == (2,) and penalty.item() >= 0
    assert mean.item() == pytest.approx(0.01 * lengths.mean().item(), rel=1e-5)
    assert not mean.requires_grad


def test_augment_is_seeded_differentiable_and_off_at_p0():
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    assert augment(x, 0.0, torch.Generator().manual_seed(0)) is x
    a = augment(x, 1.0, torch.Generator().manual_seed(3))
    b = augment(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, x)
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_image_bank_batches_depend_on_seed_and_iteration_only(dataset):
    from toon_ofx.training.dataset import load_dataset_images

    files = load_dataset_images(dataset)
    bank = ImageBank(files, SIZE)
    assert bank.images.shape == (len(files), SIZE, SIZE, 3)
    n = len(files)
    # Every image once per epoch (shuffled), the same choice when asked again.
    seen = [i for it in range(n) for i in bank.indices(it, 1, seed=5)]
    assert sorted(seen) == list(range(n))
    assert torch.equal(bank.batch(3, 4, seed=5), ImageBank(files, SIZE).batch(3, 4, seed=5))
    x = bank.batch(0, 4, seed=5)
    assert x.shape == (4, 3, SIZE, SIZE) and x.min() >= -1 and x.max() <= 1
    lazy = ImageBank(files, SIZE, cache_bytes=0)  # big datasets stream from disk: same batches
    assert lazy.images is None and torch.equal(lazy.batch(3, 4, seed=5), bank.batch(3, 4, seed=5))


def test_generator_step_lowers_its_loss_against_a_frozen_discriminator(dataset):
    from toon_ofx.training.dataset import load_dataset_images

    bank = ImageBank(load_dataset_images(dataset), SIZE)
    real = bank.batch(0, 4, seed=0)
    trainer = Trainer(tiny_generator(SIZE, seed=2), tiny_discriminator(3), TrainConfig(batch=4, seed=1))
    for i in range(10):  # a few ordinary iterations first: a random D gives G little to follow
        trainer.step(bank.batch(i, 4, seed=0))
    for group in trainer.d_optim.param_groups:
        group["lr"] = 0.0  # D frozen (Adam with lr 0 changes nothing)
    d_before = state_of(trainer.d)
    z = torch.randn(8, trainer.g.style_dim, generator=torch.Generator().manual_seed(9))
    before = trainer.evaluate(real, z)["g"]
    for i in range(10, 20):
        trainer.step(bank.batch(i, 4, seed=0))
    assert same(state_of(trainer.d), d_before)
    after = trainer.evaluate(real, z)["g"]
    assert after < before - 0.1


# ---------------------------------------------------------------- a real fine-tune


@pytest.fixture(scope="module")
def run(base, dataset, tmp_path_factory):
    """40 iterations on the clip's faces from the base checkpoint, as `toon-ofx train` runs them."""
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(batch=4, seed=0)
    trainer, last = train(base, dataset, out, 40, config=config, save_every=20, sample_every=20, progress=False)
    return out, trainer, last


def test_fine_tune_changes_weights_and_learns_the_data(run, base, dataset):
    from engine.generator.checkpoints import load_generator
    from engine.generator.training import read_checkpoint_dict
    from toon_ofx.training.dataset import load_dataset_images

    out, trainer, last = run
    start = read_checkpoint_dict(base)
    for name, module in (("g", trainer.g), ("g_ema", trainer.g_ema), ("d", trainer.d)):
        now = module.state_dict()
        changed = [k for k in start[name] if not torch.equal(start[name][k], now[k])]
        assert len(changed) > len(now) // 2, name

    real = ImageBank(load_dataset_images(dataset), SIZE).batch(0, 12, seed=0)
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    g0 = load_generator(base)
    d0 = tiny_discriminator()
    d0.load_state_dict(start["d"])
    before = Trainer(g0, d0, TrainConfig()).evaluate(real, z)
    after = trainer.evaluate(real, z)
    # D learned to tell the faces from G's images: its loss on fixed batches fell.
    assert after["d"] < before["d"] - 0.3, (before, after)
    # G moved towards the data: its average image is closer to the dataset's.
    assert mean_image_gap(trainer.g, real) < 0.8 * mean_image_gap(g0, real)

    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == list(range(1, 41))
    assert "r1" in log[0] and "path" in log[0] and all(math.isfinite(r["g"]) for r in log)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["000020.pt", "000040.pt"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["000000.png", "000020.png", "000040.png"]
    assert last == out / "checkpoints" / "000040.pt"


def test_resume_continues_exactly_like_an_uninterrupted_run(base, dataset, tmp_path):
    # ADA augmentation, lazy R1 and path length all cross the resume point.
    config = TrainConfig(batch=4, seed=3, augment=True, ada_every=2, ada_kimg=0.1, d_reg_every=4, g_reg_every=3)
    straight, _ = train(base, dataset, tmp_path / "a", 10, config=config, save_every=5, sample_every=0,
                        progress=False)
    assert straight.augment_p > 0  # ADA moved

    train(base, dataset, tmp_path / "b", 5, config=config, save_every=5, sample_every=0, progress=False)
    assert (tmp_path / "b" / "checkpoints" / "000005.pt").exists()
    # Continue through the CLI: the settings come back from the checkpoint.
    assert cli.main(["train", "--data", str(dataset), "-o", str(tmp_path / "b"), "--iters", "10",
                     "--resume", "--save-every", "5", "--sample-every", "0", "-q"]) == 0
    resumed = torch.load(tmp_path / "b" / "checkpoints" / "000010.pt", weights_only=True)
    reference = torch.load(tmp_path / "a" / "checkpoints" / "000010.pt", weights_only=True)
    assert resumed["iter"] == reference["iter"] == 10
    for key in ("g_ema", "g", "d"):
        assert same(resumed[key], reference[key]), key
    assert torch.equal(resumed["latent_avg"], reference["latent_avg"])
    assert resumed["ada_aug_p"] == reference["ada_aug_p"]
    assert torch.equal(resumed["g_optim"]["state"][0]["exp_avg_sq"], reference["g_optim"]["state"][0]["exp_avg_sq"])

    # Resuming a finished run does nothing.
    assert cli.main(["train", "--data", str(dataset), "-o", str(tmp_path / "b"), "--iters", "10", "--resume",
                     "-q"]) == 0
    assert len((tmp_path / "b" / "log.jsonl").read_text().splitlines()) == 10


def test_checkpoint_loads_in_the_engine_blends_with_its_base_and_renders(run, base, tmp_path):
    from engine.generator.blend import blend_checkpoints
    from engine.generator.checkpoints import inspect_checkpoint, load_generator

    out, trainer, last = run
    for path in (last, out / "toon.pt"):
        info = inspect_checkpoint(path)
        assert (info.size, info.n_latent, info.style_dim) == (SIZE, 8, 16)
        g = load_generator(path)
        assert same(state_of(g), state_of(trainer.g_ema))
        assert torch.allclose(g.latent_avg, trainer.g_ema.latent_avg)
    toon = load_generator(out / "toon.pt")
    base_g = load_generator(base)

    blended_path = tmp_path / "blended.pt"
    assert cli.main(["blend", str(base), str(out / "toon.pt"), "-o", str(blended_path), "--swap-res", "16"]) == 0
    blended = load_generator(blended_path)
    sb, st, sg = state_of(blended), state_of(toon), state_of(base_g)
    assert torch.equal(sb["convs.0.conv.weight"], st["convs.0.conv.weight"])      # 8 px: toon
    assert torch.equal(sb["convs.4.conv.weight"], sg["convs.4.conv.weight"])      # 32 px: base
    assert not torch.equal(st["convs.4.conv.weight"], sg["convs.4.conv.weight"])  # (training changed it)
    again = blend_checkpoints(base, out / "toon.pt", tmp_path / "again.pt", 16)
    assert same(state_of(again), sb)

    ws = base_g.latent_avg.expand(1, base_g.n_latent, -1).clone()
    with torch.no_grad():
        images = [m.synthesis(ws) for m in (blended, toon, base_g)]
    assert images[0].shape == (1, 3, SIZE, SIZE) and torch.isfinite(images[0]).all()
    assert not torch.allclose(images[0], images[1]) and not torch.allclose(images[0], images[2])


def test_trained_model_renders_a_clip_frame(run, base, tmp_path, tiny_params, astronaut_clip):
    from toon_ofx.core.render import RenderRequest, render

    out, _, _ = run
    params = dict(tiny_params, model=str(out / "toon.pt"), base_model=str(base), steps=4, warm_steps=2)
    result = render(RenderRequest(source=astronaut_clip, output=tmp_path / "frames", params=params, frames=(0, 0)))
    assert result.written == 1
    frames = sorted((tmp_path / "frames").glob("*.png"))
    assert len(frames) == 1
    from toon_ofx.core import media

    source = dict(media.read_frames(astronaut_clip, 0, 0))[0]
    image = media.read_image(frames[0])
    assert image.shape == source.shape and np.abs(image.astype(int) - source.astype(int)).max() > 20


# ---------------------------------------------------------------- base without D, bad input


@pytest.mark.parametrize("kind", ["pt", "pkl"])
def test_base_without_discriminator_starts_a_random_one(kind, dataset, tmp_path, capsys):
    from engine.generator.checkpoints import load_generator, save_generator
    from tiny_models import save_nvidia_pkl

    g = tiny_generator(SIZE, seed=4)
    path = save_generator(tmp_path / "g.pt", g) if kind == "pt" else save_nvidia_pkl(tmp_path / "g.pkl", g)
    trainer, last = train(path, dataset, tmp_path / "run", 2, config=TrainConfig(batch=2),
                          save_every=2, sample_every=0, progress=False)
    assert "no discriminator" in capsys.readouterr().err
    assert trainer.iteration == 2 and last.exists()
    assert not same(state_of(load_generator(last)), state_of(g))


@pytest.mark.parametrize("case", ["missing_data", "empty_data", "data_is_file", "missing_base", "junk_base",
                                  "no_base", "resume_nothing", "resume_generator_only", "output_in_data"])
def test_bad_input_is_one_clear_message(case, base, dataset, tmp_path, tiny_model_paths, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"PK\x03\x04 not really a checkpoint")
    data = {"missing_data": tmp_path / "nope", "empty_data": empty, "data_is_file": junk}.get(case, dataset)
    argv = ["train", "--data", str(data), "--iters", "2", "-o", str(tmp_path / "run"), "-q"]
    argv += {"missing_base": ["--base", str(tmp_path / "ffhq.pt")], "junk_base": ["--base", str(junk)],
             "no_base": [], "resume_nothing": ["--base", str(base), "--resume"],
             "resume_generator_only": ["--resume", str(tiny_model_paths["base"])],
             "output_in_data": ["--base", str(base), "-o", str(dataset / "run")]}.get(case, ["--base", str(base)])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("toon-ofx: error: "), err
    expected = {"missing_data": "does not exist", "empty_data": "no training images", "data_is_file": "not a folder",
                "missing_base": "ffhq.pt", "junk_base": "junk.pt", "no_base": "--base",
                "resume_nothing": "nothing to resume", "resume_generator_only": "not a training checkpoint",
                "output_in_data": "inside the dataset"}[case]
    assert expected in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_subprocess_missing_base_has_no_traceback(dataset, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toon_ofx", "train", "--base", str(tmp_path / "ffhq.pt"),
                           "--data", str(dataset), "-o", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "ffhq.pt" in proc.stderr


def test_iteration_generator_is_a_pure_function_of_seed_and_iteration():
    a = torch.rand(3, generator=iteration_generator(1, 7))
    assert torch.equal(a, torch.rand(3, generator=iteration_generator(1, 7)))
    assert not torch.equal(a, torch.rand(3, generator=iteration_generator(1, 8)))
    assert not torch.equal(a, torch.rand(3, generator=iteration_generator(2, 7)))
