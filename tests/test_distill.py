"""`toon-ofx distill` at tiny scale: the pieces, learning, exact resume, DDP, the model it writes, bad input.

Tiny models in the real formats: 256 px base and toon generators (8 channels,
style width 16, 14 W+ layers), the tiny BiSeNet and Z+ style encoder of
tiny_vtoonify, a directions.npy, and the random-weight VGG16/LPIPS of conftest.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import fixture_path
from tiny_models import tiny_generator
from tiny_vtoonify import N_LATENT, STYLE_DIM, save_face_parser, save_style_encoder, tiny_face_parser, \
    tiny_style_encoder
from engine.generator.blend import blend_generators
from engine.inversion.lpips import TinyPerceptual
from engine.vtoonify import load_face_parser, load_style_encoder, load_vtoonify, parse_faces, style_code, stylize
from engine.vtoonify.augment import random_affine
from engine.vtoonify.training import (Distiller, DistillConfig, Teachers, downsample, generator_features,
                                      init_fusion_near_identity, init_weights, student_network)
from toon_ofx import cli
from toon_ofx.training.distill import distill

SIZE = 256


def perturbed(g, seed: int):
    """A "fine-tuned" copy of g: the synthesis weights moved, the mapping kept."""
    toon = tiny_generator(SIZE, seed=0, channels=8)
    toon.load_state_dict(g.state_dict())
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        for name, p in toon.named_parameters():
            if not name.startswith("style."):
                p.add_(torch.randn(p.shape, generator=gen) * 0.5 * p.abs().mean().clamp_min(1e-3))
    return toon


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_models_dir) -> dict:
    """Model files as a user has them; LPIPS (vgg16, lpips-vgg) comes from the tiny model store."""
    from engine.generator.checkpoints import save_generator

    folder = tmp_path_factory.mktemp("distill-models")
    base = tiny_generator(SIZE, seed=0, channels=8)
    latent_avg = 0.3 * torch.randn(N_LATENT, STYLE_DIM, generator=torch.Generator().manual_seed(5))
    directions = 0.5 * np.random.default_rng(0).standard_normal((6, N_LATENT, STYLE_DIM)).astype(np.float32)
    np.save(folder / "directions.npy", directions)
    return {"base": save_generator(folder / "base.pt", base),
            "toon": save_generator(folder / "toon.pt", perturbed(base, 1)),
            "parser": save_face_parser(folder / "faceparsing.pth", tiny_face_parser(0)),
            "style_encoder": save_style_encoder(folder / "encoder.pt", tiny_style_encoder(0), latent_avg),
            "directions": folder / "directions.npy"}


@pytest.fixture(scope="module")
def teachers(models) -> Teachers:
    from engine.generator.checkpoints import load_generator

    base = load_generator(models["base"])
    return Teachers(base, blend_generators(base, load_generator(models["toon"]), 32),
                    load_face_parser(models["parser"]), load_style_encoder(models["style_encoder"]),
                    torch.from_numpy(np.load(models["directions"]))).check()


def argv(models, out: Path, *extra) -> list:
    return ["distill", "--base", str(models["base"]), "--toon", str(models["toon"]), "--swap-res", "32",
            "--style-encoder", str(models["style_encoder"]), "--parser", str(models["parser"]),
            "--directions", str(models["directions"]), "-o", str(out), "--pretrain-iters", "2", "--iters", "3",
            "--batch", "2", "--pretrain-batch", "2", "--save-every", "100", "--sample-every", "2", "-q", *extra]


def parse(args: list):
    return cli.build_parser().parse_args(args)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ the pieces


def test_affine_augmentation_is_seeded_moves_channels_together_and_is_the_identity_at_p0():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    pair = torch.cat((x, x), 1)
    a = random_affine(pair, 0.9, torch.Generator().manual_seed(3))
    assert torch.equal(a, random_affine(pair, 0.9, torch.Generator().manual_seed(3)))
    assert not torch.allclose(a, random_affine(pair, 0.9, torch.Generator().manual_seed(4)))
    assert torch.equal(a[:, :3], a[:, 3:])  # x and y of a pair get the same warp
    assert (a - pair).abs().max() > 0.5
    # p = 0: the symlet up/down filter pair reconstructs exactly (up to float error), the warp is the identity
    assert (random_affine(pair, 0.0, torch.Generator().manual_seed(3)) - pair).abs().max() < 1e-4


def test_downsample_is_stylegan2s_blur_and_halves():
    x = torch.ones(1, 2, 16, 16)
    y = downsample(x)
    assert y.shape == (1, 2, 8, 8) and torch.allclose(y[..., 1:-1, 1:-1], torch.ones(1, 2, 6, 6))
    impulse = torch.zeros(1, 1, 8, 8)
    impulse[..., 4, 4] = 1
    y = downsample(impulse)[0, 0]
    assert torch.allclose(y[1:3, 1:3], torch.tensor([[1.0, 3], [3, 9]]) / 64)  # [1,3,3,1] x [1,3,3,1] / 64
    assert float(y.sum()) == pytest.approx(0.25)


def test_generator_features_are_the_first_blocks_of_the_render(teachers):
    g = teachers.blended
    ws = g.style(torch.randn(2, STYLE_DIM, generator=torch.Generator().manual_seed(0))).unsqueeze(1) \
        .repeat(1, g.n_latent, 1)
    noise = [torch.randn(2, 1, *n.shape[2:], generator=torch.Generator().manual_seed(i))
             for i, n in enumerate(g.make_noise())]
    with torch.no_grad():
        _, skip = generator_features(g, ws, noise, res=SIZE)
        assert torch.equal(skip, g.synthesis(ws, noise=noise))
        feat, skip = generator_features(g, ws, noise)
    assert feat.shape == (2, g.channels[32], 32, 32) and skip.shape == (2, 3, 32, 32)


@pytest.mark.parametrize("scale", [4, 2])
def test_student_keeps_the_blended_layers_up_to_its_output(teachers, scale):
    net = student_network(teachers.blended, scale)
    assert (net.in_size, net.out_size) == (SIZE // 4, SIZE * scale // 4)
    source = teachers.blended.state_dict()
    mine = net.generator.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in mine.items())
    assert (len(mine) == len(source)) == (scale == 4)
    assert not any(p.requires_grad for p in net.generator.parameters())
    x = torch.rand(1, 22, 64, 64)
    with torch.no_grad():
        assert net(x, torch.zeros(1, N_LATENT, STYLE_DIM)).shape == (1, 3, 64 * scale, 64 * scale)


def test_fusion_starts_near_identity(teachers):
    net = student_network(teachers.blended)
    init_weights([net.fusion_out, net.fusion_skip], torch.Generator().manual_seed(0))  # as the distiller does
    init_fusion_near_identity(net)
    f_g, f_e = torch.randn(1, 8, 32, 32), torch.randn(1, 8, 32, 32)
    with torch.no_grad():
        out = net.fusion_out[0](torch.cat((f_g, f_e), 1))
        skip = net.fusion_skip[0](torch.cat((f_g[:, :3], f_e), 1))
    assert (out - f_g).abs().mean() < 0.05 * f_g.abs().mean()
    assert (skip - f_g[:, :3]).abs().mean() < 0.05 * f_g[:, :3].abs().mean()


def test_batches_depend_on_seed_and_iteration_only_and_fit_together(teachers):
    from engine.generator.training import iteration_generator

    d = Distiller(teachers, DistillConfig(iters=4, pretrain_iters=0, batch=2), TinyPerceptual())
    a = d.train_batch(2, iteration_generator(0, 5))
    b = d.train_batch(2, iteration_generator(0, 5))
    c = d.train_batch(2, iteration_generator(0, 6))
    assert torch.equal(a.inp, b.inp) and torch.equal(a.target, b.target) and a.crop == b.crop
    assert not torch.equal(a.inp, c.inp)
    assert a.inp.shape == (2, 22, 64, 64) and a.target.shape == (2, 3, 256, 256) and a.style.shape == (2, 14, 16)
    top, left, size = a.crop
    assert size == 224 and a.crop_inp.shape == (2, 22, 56, 56) and 0 <= top <= 32 and 0 <= left <= 32
    # the crop's parsing channels are the frame's parsing map, as the full input's are
    assert torch.allclose(a.crop_inp[:, 3:].abs().mean(), a.inp[:, 3:].abs().mean(), rtol=0.3)
    assert torch.isfinite(a.target).all()  # (the warp's filters may ring slightly past [-1, 1], as the reference's)


def test_temporal_loss_ramps_over_the_second_half():
    d = Distiller.__new__(Distiller)
    d.config = DistillConfig(iters=100, pretrain_iters=10, tmp=2.0)
    weights = [d.tmp_weight(10 + i) for i in (0, 50, 75, 99)]
    assert weights[:2] == [0.0, 0.0] and weights[2] == pytest.approx(1.0) and weights[3] == pytest.approx(1.96)


def test_pretrain_teaches_the_encoder_g1s_feature(teachers):
    from engine.generator.training import iteration_generator

    d = Distiller(teachers, DistillConfig(pretrain_iters=25, iters=0, pretrain_batch=2, lr=2e-3), TinyPerceptual())
    inp, feat, skip = d.pretrain_batch(4, iteration_generator(9, 0, 99))

    def loss():
        with torch.no_grad():
            f, s = d.student(inp, feat=True)
            return float(F.mse_loss(f, feat) + F.mse_loss(s, skip))

    before = loss()
    for _ in range(25):
        d.step()
    assert d.stage == "pretrain" and loss() < 0.7 * before
    # the EMA encoder moved too, the fusion blocks did not
    assert not torch.equal(d.g_ema.encoder[0][0].weight, student_network(teachers.blended).encoder[0][0].weight)


# ------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def run(models, tmp_path_factory) -> Path:
    """One uninterrupted tiny distillation (2 pretrain + 3 training iterations)."""
    out = tmp_path_factory.mktemp("distill") / "run"
    assert cli.main(argv(models, out)) == 0
    return out


def test_a_run_writes_the_reference_format_its_weights_log_and_samples(run, teachers):
    model = torch.load(run / "vtoonify.pt", weights_only=True)
    assert list(model) == ["g_ema"]
    pretrain = torch.load(run / "pretrain.pt", weights_only=True)
    assert list(pretrain) == ["g_ema"] and all(k[0].isdigit() for k in pretrain["g_ema"])
    record = json.loads((run / "run.json").read_text())
    # swap at 32 with 14 W+ layers: VToonify's --weight (indices 0..6 drive layers up to 32 px)
    assert record["vtoonify_weight"] == [1.0] * 7 + [0.0] * 7
    assert (record["in_size"], record["out_size"]) == (64, 256)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3, 4, 5]
    assert [r["stage"] for r in log] == ["pretrain"] * 2 + ["train"] * 3
    assert "feat" in log[0] and {"d", "g", "rec", "perc", "tmp"} <= set(log[2])
    assert log[2]["tmp"] == 0 and log[4]["tmp"] > 0  # the ramp starts halfway through training
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["000004.png", "000005.png"]
    # the frozen generator layers are G1's
    blended = teachers.blended.state_dict()
    assert all(torch.equal(v, blended[k[len("generator."):]]) for k, v in model["g_ema"].items()
               if k.startswith("generator."))


def test_resume_continues_exactly_like_an_uninterrupted_run(models, run, tmp_path):
    out = tmp_path / "run"
    # stopped at the end of the pretrain, then in the middle of training, then continued by the same command
    assert distill(parse(argv(models, out)), stop_after=2) is None
    assert distill(parse(argv(models, out)), stop_after=4) is None
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["000002.pt", "000004.pt"]
    assert cli.main(argv(models, out)) == 0
    assert states_equal(torch.load(out / "vtoonify.pt", weights_only=True)["g_ema"],
                        torch.load(run / "vtoonify.pt", weights_only=True)["g_ema"])
    assert states_equal(torch.load(out / "pretrain.pt", weights_only=True)["g_ema"],
                        torch.load(run / "pretrain.pt", weights_only=True)["g_ema"])
    a = torch.load(out / "checkpoints" / "000005.pt", weights_only=True)
    b = torch.load(run / "checkpoints" / "000005.pt", weights_only=True)
    for key in ("student", "d"):
        assert states_equal(a[key], b[key]), key
    strip = [{k: v for k, v in json.loads(line).items() if k != "seconds"}
             for line in (out / "log.jsonl").read_text().splitlines()]
    assert strip == [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                     for line in (run / "log.jsonl").read_text().splitlines()]
    # a finished run: nothing to do
    assert cli.main(argv(models, out)) == 0
    assert len((out / "log.jsonl").read_text().splitlines()) == 5


def test_ctrl_c_stops_after_an_iteration_and_the_same_command_continues(models, run, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "toon_ofx", *argv(models, out)], env=env, text=True,
                            stderr=subprocess.PIPE)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and log.read_text().strip()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "interrupted at iteration" in err and "Traceback" not in err
    done = len(log.read_text().splitlines())
    assert 1 <= done < 5 and (out / "checkpoints" / f"{done:06d}.pt").is_file()
    assert not (out / "vtoonify.pt").exists()
    assert cli.main(argv(models, out)) == 0
    assert states_equal(torch.load(out / "vtoonify.pt", weights_only=True)["g_ema"],
                        torch.load(run / "vtoonify.pt", weights_only=True)["g_ema"])


def face_crop() -> torch.Tensor:
    """The astronaut's head (a real face) as a 96x96 crop in [-1, 1]."""
    import cv2

    image = cv2.cvtColor(cv2.imread(str(fixture_path("astronaut.png"))), cv2.COLOR_BGR2RGB)
    crop = cv2.resize(image[10:250, 100:340], (96, 96), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_the_distilled_model_loads_and_stylizes_a_real_face(run, models):
    from engine.vtoonify import inspect_vtoonify

    net = load_vtoonify(run / "vtoonify.pt", backbone="toonify")
    info = inspect_vtoonify(run / "vtoonify.pt")
    assert (info.backbone, info.in_size, info.out_size) == ("toonify", 64, 256)
    parser, encoder = load_face_parser(models["parser"]), load_style_encoder(models["style_encoder"])
    x = face_crop()
    wplus = style_code(net, encoder, F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False))
    out = stylize(net, parser, x, wplus)
    assert out.shape == (1, 3, 384, 384) and torch.isfinite(out).all() and out.abs().max() <= 1
    # the file holds exactly the trained EMA network: the same output as a network built from its state
    state = torch.load(run / "vtoonify.pt", weights_only=True)["g_ema"]
    again = student_network(load_vtoonify(run / "vtoonify.pt").generator)  # same layout
    again.load_state_dict(state)
    with torch.no_grad():
        inputs = torch.cat((x, parse_faces(parser, x) / 16), 1)
        assert torch.equal(again(inputs, wplus).clamp(-1, 1), out)


@pytest.fixture(scope="module")
def run2(models, tmp_path_factory) -> Path:
    """A tiny distillation with --out-scale 2 (1 pretrain + 2 training iterations)."""
    out = tmp_path_factory.mktemp("distill2") / "run"
    assert cli.main(argv(models, out, "--out-scale", "2", "--pretrain-iters", "1", "--iters", "2")) == 0
    return out


def test_out_scale_2_writes_a_model_the_loader_reads_as_2x(models, run2):
    state = torch.load(run2 / "vtoonify.pt", weights_only=True)["g_ema"]
    assert "generator.to_rgbs.4.conv.weight" in state and "generator.to_rgbs.5.conv.weight" not in state  # 128 px
    net = load_vtoonify(run2 / "vtoonify.pt")
    assert (net.in_size, net.out_size, net.n_latent) == (64, 128, N_LATENT - 2)
    parser, encoder = load_face_parser(models["parser"]), load_style_encoder(models["style_encoder"])
    x = face_crop()
    # the style encoder gives N_LATENT codes (it is the full generator's): the network reads the first 12
    aligned = F.interpolate(x, size=(256, 256), mode="bilinear", align_corners=False)
    wplus = style_code(net, encoder, aligned)
    assert wplus.shape == (1, N_LATENT - 2, STYLE_DIM)
    full = net.zplus2wplus(encoder(aligned))   # what the reference passes: all of them
    out = stylize(net, parser, x, wplus)
    assert out.shape == (1, 3, 192, 192) and torch.equal(out, stylize(net, parser, x, full))


# ------------------------------------------------------------------ distil, then render a real clip


@pytest.mark.parametrize("scale", [4, 2])
def test_a_distilled_model_renders_a_real_clip_through_the_cli(scale, run, run2, models, tmp_path, monkeypatch,
                                                              capsys):
    """`toon-ofx render --model RUN/vtoonify.pt` on real footage, for both output scales: the face is found
    in every frame, its region changes, the frame away from the head does not, and the head is pasted at
    the same place (the same crop and parsing map) whatever the model's output scale."""
    import toon_ofx.core.vtoonify as core_vt
    from toon_ofx.core import media

    monkeypatch.setattr(core_vt, "PARSER", str(models["parser"]))   # users get both by manifest name
    monkeypatch.setattr(core_vt, "STYLE_ENCODER", str(models["style_encoder"]))
    clip, out = fixture_path("single_face.mp4"), tmp_path / "out"
    model = (run if scale == 4 else run2) / "vtoonify.pt"
    capsys.readouterr()
    assert cli.main(["render", str(clip), "-o", str(out), "--frames", "10-12", "--model", str(model),
                     "--device", "cpu", "--landmarker", "dlib", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert events[-1]["stage"] == "done" and events[-1]["frames_done"] == 3 and events[-1]["faces"] == 3
    source = dict(media.read_frames(clip, 10, 12))
    rendered = sorted(out.glob("*.png"))
    assert len(rendered) == 3
    for path, index in zip(rendered, range(10, 13)):
        changed = (media.read_image(str(path)) != source[index]).any(-1)
        assert changed[118:304, 201:386].mean() > 0.5           # the face (dlib's box in these frames)
        assert not changed[:, :50].any() and not changed[:, 530:].any()   # outside the crop (x 60-520): untouched


# ------------------------------------------------------------------ several processes


def _ddp_worker(rank: int, world: int, init: str, models: dict, result: dict):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from engine.generator.checkpoints import load_generator
    from engine.generator.training import iteration_generator

    base = load_generator(models["base"])
    teachers = Teachers(base, blend_generators(base, load_generator(models["toon"]), 32),
                        load_face_parser(models["parser"]), load_style_encoder(models["style_encoder"]),
                        torch.from_numpy(np.load(models["directions"])))
    d = Distiller(teachers, DistillConfig(pretrain_iters=2, iters=2, batch=2, pretrain_batch=1), TinyPerceptual(),
                  rank=rank, world_size=world)
    logs = [d.step() for _ in range(d.total)]
    inp, _, _ = d.pretrain_batch(1, iteration_generator(0, 0, rank))
    result[rank] = {"state": {k: v.clone() for k, v in d.state_dict()["student"].items()},
                    "d": {k: v.clone() for k, v in d.d.state_dict().items()}, "logs": logs, "inp": inp}
    dist.destroy_process_group()


def test_two_processes_train_on_their_own_batches_and_stay_in_step(models, tmp_path):
    import torch.multiprocessing as mp

    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", models, result), nprocs=2, join=True)
        r0, r1 = result[0], result[1]
    assert not torch.equal(r0["inp"], r1["inp"])  # per-rank data
    assert states_equal(r0["state"], r1["state"]) and states_equal(r0["d"], r1["d"])  # gradients averaged
    assert r0["logs"] == r1["logs"]  # losses reported as the mean over processes


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("case", ["missing_supporting_models", "toon_of_another_size", "another_run",
                                  "folder_with_other_files", "output_is_a_file", "pickled_directions",
                                  "directions_of_another_generator", "bad_numbers", "bad_device", "small_model"])
def test_bad_input_is_one_clear_message(case, models, tmp_path, capsys, monkeypatch):
    from engine.generator.checkpoints import save_generator

    out = tmp_path / "run"
    args = argv(models, out)
    expected = {
        "missing_supporting_models": "3 model files are missing",
        "toon_of_another_size": "is a 128x128 generator, but 256x256 is needed",
        "another_run": "holds another run",
        "folder_with_other_files": "holds other files",
        "output_is_a_file": "is a file",
        "pickled_directions": "not a plain NumPy array",
        "directions_of_another_generator": "d.npy: editing directions must be (K, >= 7, 16)",
        "bad_numbers": "batch sizes must be at least 1",
        "bad_device": "device",
        "small_model": "base128.pt: VToonify needs a generator of at least 256 px",
    }[case]
    if case == "missing_supporting_models":
        empty = tmp_path / "empty-models"
        empty.mkdir()
        for name in ("vgg16-397923af.pth", "lpips-vgg-v0.1.pth"):  # LPIPS present, VToonify's three absent
            os.symlink(Path(os.environ["TOON_OFX_MODELS"]) / name, empty / name)
        monkeypatch.setenv("TOON_OFX_MODELS", str(empty))
        from toon_ofx.core.model_store import DownloadError

        def offline(*a, **k):
            raise DownloadError("no network", offline=True)
        monkeypatch.setattr("toon_ofx.core.model_store.pull", offline)
        args = [a for a in args if a not in {str(models[k]) for k in ("style_encoder", "parser", "directions")}]
        args = [a for a in args if a not in ("--style-encoder", "--parser", "--directions")]
    elif case == "toon_of_another_size":
        args[args.index("--toon") + 1] = str(save_generator(tmp_path / "small.pt", tiny_generator(128, channels=8)))
    elif case == "another_run":
        assert cli.main(argv(models, out, "--pretrain-iters", "1", "--iters", "0")) == 0
        args = argv(models, out, "--swap-res", "64")
    elif case == "folder_with_other_files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "output_is_a_file":
        out.write_text("mine")
    elif case == "pickled_directions":
        np.save(tmp_path / "d.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
        args[args.index("--directions") + 1] = str(tmp_path / "d.npy")
    elif case == "directions_of_another_generator":
        np.save(tmp_path / "d.npy", np.zeros((3, 18, 512), np.float32))
        args[args.index("--directions") + 1] = str(tmp_path / "d.npy")
    elif case == "bad_numbers":
        args += ["--batch", "0"]
    elif case == "bad_device":
        args += ["--device", "cuda:7"]
    elif case == "small_model":
        small = tiny_generator(128, channels=8)
        for role in ("base", "toon"):
            args[args.index(f"--{role}") + 1] = str(save_generator(tmp_path / f"{role}128.pt", small))
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    capsys.readouterr()
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("toon-ofx: error: ") and expected in err, err
    if case == "missing_supporting_models":  # the first-run list names all three at once
        assert all(f in err for f in ("vtoonify_encoder.pt", "faceparsing.pth", "lowrankgan_directions.npy"))
    else:
        assert len(err.strip().splitlines()) == 1, err
    after = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    assert after == before  # nothing written


def test_cli_subprocess_missing_toon_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toon_ofx", "distill", "--toon", str(tmp_path / "toon.pt"),
                           "-o", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "toon.pt" in proc.stderr
