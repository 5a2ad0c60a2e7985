"""engine.generator.checkpoints: rosinality .pt and NVIDIA .pkl round trips, and every error path."""

import argparse
import io
import math
import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.generator import checkpoints as ck
from engine.generator.checkpoints import (CheckpointError, CheckpointInfo, inspect_checkpoint,
                                load_generator, save_generator)
from engine.generator.nvidia_pkl import module_tensors
from engine.generator.safe_pickle import RestrictedUnpickler, read_torch_file
from engine.generator.stylegan2 import Generator
from tiny_models import (EasyDict, nv_module, nvidia_generator, nvidia_state_dict, same_outputs,
                         save_nvidia_pkl, tiny_generator, write_nvidia_pickle)


@pytest.fixture(scope="module")
def gen():
    return tiny_generator(size=32, seed=0)


# --------------------------------------------------------------- round trips


def test_rosinality_round_trip_is_bit_identical(gen, tmp_path):
    path = save_generator(tmp_path / "toon.pt", gen)
    info = inspect_checkpoint(path)
    assert info == CheckpointInfo(format="rosinality", size=32, n_latent=8, style_dim=16, n_mlp=2,
                                  channels={4: 16, 8: 16, 16: 16, 32: 16}, path=path)
    g2 = load_generator(path, expect_size=32)
    assert same_outputs(gen, g2)
    assert torch.equal(g2.latent_avg, gen.latent_avg)
    assert not g2.training and not any(p.requires_grad for p in g2.parameters())
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"g_ema", "latent_avg"} and set(raw["g_ema"]) == set(gen.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["toon.pt"]  # no temp files left


@pytest.mark.parametrize("protocol", [3, 4])
def test_nvidia_pkl_round_trip_is_bit_identical(gen, tmp_path, protocol):
    path = save_nvidia_pkl(tmp_path / "network-snapshot-000100.pkl", gen, protocol=protocol)
    info = inspect_checkpoint(path)
    assert (info.format, info.size, info.n_latent, info.style_dim, info.n_mlp) == \
        ("nvidia", 32, 8, 16, 2)
    g2 = load_generator(path)
    assert same_outputs(gen, g2)
    assert torch.equal(g2.latent_avg, gen.latent_avg)  # from mapping.w_avg
    assert g2.conv_clamp is None


def test_nvidia_pkl_is_plain_pickle_with_nvidia_globals(gen, tmp_path):
    import pickletools
    path = save_nvidia_pkl(tmp_path / "g.pkl", gen, protocol=3)
    names = {arg for op, arg, _ in pickletools.genops(path.read_bytes()) if op.name == "GLOBAL"}
    assert "torch_utils.persistence _reconstruct_persistent_obj" in names
    assert "torch.storage _load_from_bytes" in names
    assert "numpy.core.multiarray scalar" in names and "dnnlib.util EasyDict" in names


def test_conv_clamp_survives_pkl_and_pt(gen, tmp_path):
    pkl = save_nvidia_pkl(tmp_path / "c.pkl", gen, conv_clamp=256)
    g2 = load_generator(pkl)
    assert g2.conv_clamp == 256.0
    g3 = load_generator(save_generator(tmp_path / "c.pt", g2))
    assert g3.conv_clamp == 256.0 and same_outputs(g2, g3)


def test_1024_and_512_layouts_round_trip(tmp_path):
    for size, n_latent in ((512, 16), (1024, 18)):
        g = tiny_generator(size=size, style_dim=8, n_mlp=1, channels=2)
        pt = save_generator(tmp_path / f"g{size}.pt", g)
        pkl = save_nvidia_pkl(tmp_path / f"g{size}.pkl", g)
        for p in (pt, pkl):
            info = inspect_checkpoint(p)
            assert (info.size, info.n_latent) == (size, n_latent)
        for p in (pt, pkl):  # identical tensors => identical outputs (forward tested elsewhere)
            g2 = load_generator(p)
            assert g2.n_latent == n_latent and torch.equal(g2.latent_avg, g.latent_avg)
            sd2 = g2.state_dict()
            assert all(torch.equal(v, sd2[k]) for k, v in g.state_dict().items())


def test_rosinality_training_checkpoint_with_args_and_legacy_format(gen, tmp_path):
    d_state = {"convs.0.0.weight": torch.randn(2, 3, 1, 1)}
    ckpt = {"g": gen.state_dict(), "d": d_state, "g_ema": gen.state_dict(),
            "g_optim": {"state": {}, "param_groups": [{"lr": 0.002, "params": [0, 1]}]},
            "args": argparse.Namespace(size=32, channel_multiplier=2, lr=0.002),
            "latent_avg": gen.latent_avg[None]}
    p1 = tmp_path / "050000.pt"
    torch.save(ckpt, p1)
    assert same_outputs(gen, load_generator(p1))
    p2 = tmp_path / "legacy.pt"
    torch.save({"g_ema": gen.state_dict(), "latent_avg": gen.latent_avg}, p2,
               _use_new_zipfile_serialization=False)
    assert inspect_checkpoint(p2).format == "rosinality"
    assert same_outputs(gen, load_generator(p2))


def test_bare_state_dict_and_missing_latent_avg(gen, tmp_path):
    p = tmp_path / "bare.pt"
    torch.save(gen.state_dict(), p)
    g1 = load_generator(p)
    g2 = load_generator(p)
    assert same_outputs(gen, g1)
    # latent_avg is estimated deterministically when the file has none
    assert torch.equal(g1.latent_avg, g2.latent_avg) and g1.latent_avg.abs().sum() > 0


def test_missing_blur_kernels_are_filled(gen, tmp_path):
    sd = {k: v for k, v in gen.state_dict().items() if not k.endswith(".kernel")}
    p = tmp_path / "old.pt"
    torch.save({"g_ema": sd, "latent_avg": gen.latent_avg}, p)
    assert same_outputs(gen, load_generator(p))


def test_half_generator_saves_as_float32(gen, tmp_path):
    g = tiny_generator().half()
    p = save_generator(tmp_path / "h.pt", g, extra={"note": "half"})
    raw = torch.load(p, weights_only=True)
    assert raw["note"] == "half"
    assert all(v.dtype == torch.float32 for v in raw["g_ema"].values())
    assert load_generator(p).input.input.dtype == torch.float32


def test_load_does_not_disturb_global_rng(gen, tmp_path):
    p = save_generator(tmp_path / "g.pt", gen)
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    load_generator(p)
    assert torch.equal(torch.rand(3), a)


# ------------------------------------- NVIDIA semantics (independent reference)


def _nv_upfirdn(x, f, up, pad0, pad1, gain):
    """upfirdn2d as in NVIDIA's reference implementation (zero stuffing, pad, convolve)."""
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros(n, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    f = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, f, groups=c)


def _nv_reference(t, z, psi, conv_clamp=None):
    """stylegan2-ada-pytorch Generator.forward(z, c=None, truncation_psi=psi, noise_mode='const'),
    written from training/networks.py on NVIDIA-layout tensors, one sample at a time."""
    filt = torch.tensor([1.0, 3, 3, 1])
    filt = torch.outer(filt, filt) / 64
    sqrt2 = math.sqrt(2)

    def fc(x, pre, lr=1.0, act=False):
        w = t[f"{pre}.weight"]
        x = x @ (w * (lr / math.sqrt(w.shape[1]))).T + t[f"{pre}.bias"] * lr
        return F.leaky_relu(x, 0.2) * sqrt2 if act else x

    def modconv(x, weight, styles, demodulate, up):
        w = weight[None] * styles[:, None, :, None, None]
        if demodulate:
            w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
        outs = []
        for b in range(x.shape[0]):
            xb = x[b:b + 1]
            if up == 2:  # conv2d_resample's generic path: upfirdn (pad 1+2, 1+1), then convolution
                xb = _nv_upfirdn(xb, filt, 2, 3, 2, gain=4)
                outs.append(F.conv2d(xb, w[b].flip([2, 3])))
            else:
                kw = weight.shape[-1]
                outs.append(F.conv2d(xb, w[b], padding=kw // 2))
        return torch.cat(outs)

    def layer(x, ws_i, pre, up):
        styles = fc(ws_i, f"{pre}.affine")
        x = modconv(x, t[f"{pre}.weight"], styles, True, up)
        x = x + t[f"{pre}.noise_const"] * t[f"{pre}.noise_strength"]
        x = F.leaky_relu(x + t[f"{pre}.bias"][None, :, None, None], 0.2) * sqrt2
        return x.clamp(-conv_clamp, conv_clamp) if conv_clamp is not None else x

    def torgb(x, ws_i, pre):
        weight = t[f"{pre}.weight"]
        styles = fc(ws_i, f"{pre}.affine") * (1 / math.sqrt(weight.shape[1]))
        y = modconv(x, weight, styles, False, 1) + t[f"{pre}.bias"][None, :, None, None]
        return y.clamp(-conv_clamp, conv_clamp) if conv_clamp is not None else y

    x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
    n_mlp = len([k for k in t if k.startswith("mapping.fc") and k.endswith(".weight")])
    for i in range(n_mlp):
        x = fc(x, f"mapping.fc{i}", lr=0.01, act=True)
    res = sorted({int(k.split(".")[1][1:]) for k in t if k.startswith("synthesis.b")})
    num_ws = 2 * len(res)
    ws = x[:, None].repeat(1, num_ws, 1)
    ws = t["mapping.w_avg"].lerp(ws, psi)
    w_idx, img, x = 0, None, None
    for r in res:
        pre = f"synthesis.b{r}"
        n_conv = 1 if r == 4 else 2
        bws = ws[:, w_idx:w_idx + n_conv + 1]
        w_idx += n_conv
        if r == 4:
            x = t[f"{pre}.const"][None].repeat(z.shape[0], 1, 1, 1)
            x = layer(x, bws[:, 0], f"{pre}.conv1", 1)
        else:
            x = layer(x, bws[:, 0], f"{pre}.conv0", 2)
            x = layer(x, bws[:, 1], f"{pre}.conv1", 1)
        if img is not None:
            img = _nv_upfirdn(img, filt, 2, 2, 1, gain=4)
        y = torgb(x, bws[:, -1], f"{pre}.torgb")
        img = y if img is None else img + y
    return img


@pytest.mark.parametrize("conv_clamp", [None, 0.5])
def test_loaded_pkl_matches_nvidia_forward_semantics(tmp_path, conv_clamp):
    g = tiny_generator(size=32, seed=5)
    path = save_nvidia_pkl(tmp_path / "g.pkl", g, conv_clamp=conv_clamp)
    with open(path, "rb") as f:  # the tensors exactly as stored in the file, NVIDIA names
        data = RestrictedUnpickler(f, "g.pkl").load()
    t = {k: v.float() for k, v in module_tensors(data["G_ema"]).items()}
    assert "synthesis.b8.conv0.noise_strength" in t and t["synthesis.b4.const"].ndim == 3
    expected = nvidia_state_dict(g)
    assert all(torch.equal(t[k], v) for k, v in expected.items())
    assert {k for k in t if k not in expected} == {k for k in t if k.endswith("resample_filter")}
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = _nv_reference(t, z, psi=0.7, conv_clamp=conv_clamp)
        g2 = load_generator(path)
        ours, _ = g2([z], truncation=0.7, truncation_latent=g2.latent_avg, randomize_noise=False)
    assert ref.abs().mean() > 0.05
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------- errors


def _err(path, match=None, **kw):
    with pytest.raises(CheckpointError, match=match) as ei:
        load_generator(path, **kw)
    if not kw:  # expect_size is checked by load_generator only
        with pytest.raises(CheckpointError):
            inspect_checkpoint(path)
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


def test_error_missing_empty_folder_and_garbage(tmp_path):
    _err(tmp_path / "nope.pt", "not found")
    (tmp_path / "empty.pt").write_bytes(b"")
    _err(tmp_path / "empty.pt", "empty")
    _err(tmp_path, "folder")
    (tmp_path / "text.pt").write_text("hello, not a model\n")
    _err(tmp_path / "text.pt", "not a StyleGAN2 checkpoint")
    (tmp_path / "noise.pkl").write_bytes(os.urandom(4096))
    _err(tmp_path / "noise.pkl")
    z = tmp_path / "other.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "not torch")
    _err(z, "zip archive but not a torch checkpoint")


def test_error_truncated_files(gen, tmp_path):
    pt = save_generator(tmp_path / "g.pt", gen)
    pkl = save_nvidia_pkl(tmp_path / "g.pkl", gen)
    for src in (pt, pkl):
        data = src.read_bytes()
        for frac in (0.5, 0.97):
            cut = tmp_path / f"cut_{frac}{src.suffix}"
            cut.write_bytes(data[: int(len(data) * frac)])
            _err(cut, "truncated or corrupt")
    legacy = tmp_path / "legacy.pt"
    torch.save({"g_ema": gen.state_dict()}, legacy, _use_new_zipfile_serialization=False)
    cut = tmp_path / "legacy_cut.pt"
    cut.write_bytes(legacy.read_bytes()[:5000])
    _err(cut)


def test_error_torch_file_that_is_not_a_generator(tmp_path):
    p = tmp_path / "vgg.pt"
    torch.save({"features.0.weight": torch.randn(2, 3, 3, 3)}, p)
    assert "g_ema" in _err(p, "not a StyleGAN2 generator")
    p2 = tmp_path / "t.pt"
    torch.save(torch.randn(3), p2)
    _err(p2, "not a StyleGAN2 generator")


def test_error_missing_unexpected_and_misshapen_keys(gen, tmp_path):
    sd = gen.state_dict()
    bad = dict(sd)
    del bad["convs.1.noise.weight"], bad["to_rgbs.0.bias"]
    torch.save({"g_ema": bad}, tmp_path / "missing.pt")
    msg = _err(tmp_path / "missing.pt", "missing 2 key")
    assert "convs.1.noise.weight" in msg and "to_rgbs.0.bias" in msg
    extra = dict(sd, **{"convs.99.conv.weight": torch.zeros(1)})
    torch.save({"g_ema": extra}, tmp_path / "extra.pt")
    assert "convs.99.conv.weight" in _err(tmp_path / "extra.pt", "unexpected")
    shaped = dict(sd, **{"convs.1.conv.weight": torch.zeros(1, 16, 8, 3, 3)})
    torch.save({"g_ema": shaped}, tmp_path / "shape.pt")
    assert "convs.1.conv.weight" in _err(tmp_path / "shape.pt", "wrong shapes")
    torch.save({"g_ema": sd, "latent_avg": torch.zeros(5)}, tmp_path / "avg.pt")
    _err(tmp_path / "avg.pt", "latent_avg")
    kern = dict(sd, **{"convs.0.conv.blur.kernel": torch.ones(4, 4)})
    torch.save({"g_ema": kern}, tmp_path / "kern.pt")
    _err(tmp_path / "kern.pt", "blur kernel")


def test_error_wrong_resolution(gen, tmp_path):
    for p in (save_generator(tmp_path / "g.pt", gen), save_nvidia_pkl(tmp_path / "g.pkl", gen)):
        msg = _err(p, "32x32", expect_size=1024)
        assert "1024x1024" in msg


SENTINEL_CODE = "open({path!r}, 'w').write('pwned')"


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


@pytest.mark.parametrize("how", ["os.system", "builtins.eval", "nested", "inside_torch_pt"])
def test_malicious_pickles_are_refused_and_not_executed(gen, tmp_path, how):
    sentinel = tmp_path / "pwned.txt"
    code = SENTINEL_CODE.format(path=str(sentinel))
    path = tmp_path / "evil.pkl"
    if how == "os.system":
        path.write_bytes(pickle.dumps({"G_ema": _Evil(os.system, f"touch {sentinel}")}, protocol=2))
        match = "os.system|posix.system"
    elif how == "builtins.eval":
        path.write_bytes(pickle.dumps(_Evil(eval, code), protocol=4))
        match = "builtins.eval"
    elif how == "nested":  # hidden inside a network's state, after legitimate objects
        G = nvidia_generator(gen)
        G.payload = _Evil(eval, code)
        write_nvidia_pickle(path, dict(G=None, G_ema=G))
        match = "builtins.eval"
    else:
        path = tmp_path / "evil.pt"
        torch.save({"g_ema": gen.state_dict(), "x": _Evil(eval, code)}, path)
        match = "other than tensors"
    msg = _err(path, match)
    assert "could run code" in msg
    assert not sentinel.exists()


def test_module_src_is_never_executed(gen, tmp_path):
    sentinel = tmp_path / "ran.txt"
    src = SENTINEL_CODE.format(path=str(sentinel)) + "\nclass Generator: pass\n"
    p = save_nvidia_pkl(tmp_path / "g.pkl", gen, module_src=src)
    assert same_outputs(gen, load_generator(p))
    assert not sentinel.exists()


def _sg3_like(gen):
    affine = nv_module("FullyConnectedLayer", params={"weight": torch.randn(4, 16),
                                                      "bias": torch.zeros(4)})
    inp = nv_module("SynthesisInput", params={"weight": torch.randn(16, 4)},
                    buffers={"transform": torch.eye(3), "freqs": torch.randn(16, 2),
                             "phases": torch.randn(16)},
                    modules={"affine": affine}, size=np.broadcast_to(np.asarray(36), [2]).copy(),
                    sampling_rate=16, bandwidth=2)
    l0 = nv_module("SynthesisLayer", params={"weight": torch.randn(16, 16, 3, 3),
                                             "bias": torch.zeros(16)},
                   buffers={"up_filter": torch.ones(1), "magnitude_ema": torch.ones([])},
                   in_size=np.array([36, 36]), is_torgb=False)
    synthesis = nv_module("SynthesisNetwork", modules={"input": inp, "L0_36_16": l0})
    mapping = nvidia_generator(gen)._modules["mapping"]
    return nv_module("Generator", modules={"synthesis": synthesis, "mapping": mapping})


def test_stylegan3_is_rejected_clearly(gen, tmp_path):
    p = write_nvidia_pickle(tmp_path / "stylegan3-t-ffhq.pkl", dict(G_ema=_sg3_like(gen)))
    msg = _err(p, "StyleGAN3")
    assert "only StyleGAN2 config-f" in msg


def test_other_unsupported_nvidia_layouts(gen, tmp_path):
    G = nvidia_generator(gen)
    G._modules["mapping"].embed = nv_module("FullyConnectedLayer", params={
        "weight": torch.randn(16, 10), "bias": torch.zeros(16)})
    _err(write_nvidia_pickle(tmp_path / "cond.pkl", dict(G_ema=G)), "conditional")

    G = nvidia_generator(gen)
    G._modules["synthesis"]._modules["b8"].skip = nv_module("Conv2dLayer", params={
        "weight": torch.randn(16, 16, 1, 1)})
    _err(write_nvidia_pickle(tmp_path / "resnet.pkl", dict(G_ema=G)), "resnet")

    G = nvidia_generator(gen)
    del G._modules["synthesis"]._modules["b16"]._modules["torgb"]
    _err(write_nvidia_pickle(tmp_path / "orig.pkl", dict(G_ema=G)), "torgb")

    _err(write_nvidia_pickle(tmp_path / "noG.pkl", dict(G=nvidia_generator(gen))), "G_ema")
    _err(write_nvidia_pickle(tmp_path / "list.pkl", [1, 2, 3]), "G_ema")
    _err(write_nvidia_pickle(tmp_path / "notpers.pkl", dict(G_ema=OrderedDict(a=1))), "persistence")


def test_tensorflow_pickle_gets_a_conversion_hint(tmp_path):
    # what the original TF StyleGAN2 .pkl files start with
    p = tmp_path / "stylegan2-ffhq-config-f.pkl"
    p.write_bytes(b"\x80\x03cdnnlib.tflib.network\nNetwork\nq\x00)\x81q\x01.")
    _err(p, "TensorFlow")


def test_save_is_atomic_on_failure(gen, tmp_path, monkeypatch):
    target = save_generator(tmp_path / "g.pt", gen)
    before = target.read_bytes()

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ck.torch, "save", boom)
    with pytest.raises(RuntimeError):
        save_generator(target, tiny_generator(seed=9))
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt"]


def test_save_errors(gen, tmp_path):
    with pytest.raises(CheckpointError, match="cannot write"):
        save_generator(tmp_path / "no" / "such" / "dir" / "g.pt", gen)
    with pytest.raises(ValueError):
        save_generator(tmp_path / "g.pt", gen, extra={"g_ema": {}})


def test_restricted_unpickler_allows_only_the_list(tmp_path):
    def load(obj):
        data = write_nvidia_pickle(tmp_path / "x.pkl", obj).read_bytes()
        return RestrictedUnpickler(io.BytesIO(data), "x").load()

    assert load({"a": OrderedDict(b={1, 2}), "n": np.float64(0.5)})["n"] == 0.5
    t = load(torch.nn.Parameter(torch.arange(4.0)))
    assert torch.equal(t, torch.arange(4.0))
    assert load(EasyDict(x=1)) == {"x": 1}
    for bad in (argparse.Namespace(a=1), Generator, print, np.array([object()], dtype=object)):
        with pytest.raises(CheckpointError):
            load(bad)


def test_read_torch_file_returns_the_raw_object(tmp_path):
    # the shared safe entry for any torch .pt, e.g. a pSp/e4e encoder file
    enc = {"state_dict": {"w": torch.arange(3.0)}, "latent_avg": torch.zeros(2, 4), "opts": {"n_styles": 2}}
    torch.save(enc, tmp_path / "enc.pt")
    got = read_torch_file(tmp_path / "enc.pt")
    assert torch.equal(got["state_dict"]["w"], torch.arange(3.0)) and got["opts"] == {"n_styles": 2}
    with pytest.raises(CheckpointError, match="not a torch checkpoint"):
        read_torch_file(write_nvidia_pickle(tmp_path / "x.pkl", {"a": 1}))
    torch.save({"args": argparse.Namespace(a=1), "opts": Generator}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        read_torch_file(tmp_path / "code.pt")
