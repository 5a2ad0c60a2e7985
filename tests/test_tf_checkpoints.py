"""engine.generator.checkpoints: NVIDIA TensorFlow StyleGAN2 pickles (Toonify, stylegan2-ffhq-config-f.pkl).

The files are written by tests/tiny_models.save_tf_pkl exactly as
dnnlib.tflib.network.Network.__getstate__ lays them out, with variables in
TensorFlow's names and layouts. Besides bit-exact round trips, the loaded
generator is checked against an independent forward pass written from
NVlabs/stylegan2's TensorFlow ops (networks_stylegan2.py, upfirdn_2d.py) that
consumes the raw TF-layout arrays, so a wrong transpose or flip in the
conversion cannot cancel out against the test writer.
"""

import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.generator import checkpoints as ck
from engine.generator.checkpoints import CheckpointError, inspect_checkpoint, load_generator, save_generator
from engine.generator.safe_pickle import RestrictedUnpickler
from tiny_models import (TF_BUILD_MODULE_SRC, TFNetwork, random_ws, same_outputs, save_tf_pkl,
                         tf_discriminator_stub, tf_generator_network, tf_networks, tiny_generator,
                         write_tf_pickle)


@pytest.fixture(scope="module")
def gen():
    return tiny_generator(size=32, seed=0)


def _same_state(g1, g2):
    sd2 = g2.state_dict()
    return all(torch.equal(v, sd2[k]) for k, v in g1.state_dict().items()) and \
        torch.equal(g1.latent_avg, g2.latent_avg)


def _err(path, match=None, **kw):
    with pytest.raises(CheckpointError, match=match) as ei:
        load_generator(path, **kw)
    if not kw:
        with pytest.raises(CheckpointError):
            inspect_checkpoint(path)
    msg = str(ei.value)
    assert "\n" not in msg and len(msg) < 400
    return msg


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_tf_pkl_round_trip_is_bit_identical(gen, tmp_path, protocol):
    path = save_tf_pkl(tmp_path / "ffhq-cartoon-blended-64.pkl", gen, protocol=protocol)
    info = inspect_checkpoint(path)
    assert info == ck.CheckpointInfo(format="nvidia-tf", size=32, n_latent=8, style_dim=16, n_mlp=2,
                                     channels={4: 16, 8: 16, 16: 16, 32: 16}, path=path)
    g2 = load_generator(path, expect_size=32)
    assert _same_state(gen, g2)  # every tensor, noise buffers and latent_avg (dlatent_avg) included
    assert same_outputs(gen, g2)
    assert g2.conv_clamp is None
    assert not g2.training and not any(p.requires_grad for p in g2.parameters())


def test_tf_pkl_converts_to_rosinality_pt(gen, tmp_path):
    g2 = load_generator(save_tf_pkl(tmp_path / "g.pkl", gen))
    g3 = load_generator(save_generator(tmp_path / "g.pt", g2))
    assert _same_state(gen, g3)


def test_tf_pkl_512_and_1024_layouts(tmp_path):
    for size, n_latent in ((512, 16), (1024, 18)):
        g = tiny_generator(size=size, style_dim=8, n_mlp=1, channels=2)
        p = save_tf_pkl(tmp_path / f"g{size}.pkl", g)
        info = inspect_checkpoint(p)
        assert (info.format, info.size, info.n_latent, info.n_mlp) == ("nvidia-tf", size, n_latent, 1)
        g2 = load_generator(p)
        assert g2.n_latent == n_latent and _same_state(g, g2)


def test_the_pickle_is_what_tensorflow_writes(gen, tmp_path):
    import pickletools
    path = save_tf_pkl(tmp_path / "g.pkl", gen, protocol=3)
    names = {arg for op, arg, _ in pickletools.genops(path.read_bytes()) if op.name == "GLOBAL"}
    assert names == {"dnnlib.tflib.network Network", "numpy.core.multiarray _reconstruct",
                     "numpy ndarray", "numpy dtype", "numpy.core.multiarray scalar"}
    with open(path, "rb") as f:
        G, D, Gs = RestrictedUnpickler(f, "g.pkl").load()
    assert set(Gs.state) == {"version", "name", "static_kwargs", "components", "build_module_src",
                             "build_func_name", "variables"}
    assert Gs.state["version"] == 4 and Gs.state["build_module_src"] == TF_BUILD_MODULE_SRC
    syn = dict(Gs.state["components"]["synthesis"].state["variables"])
    assert syn["8x8/Conv0_up/weight"].shape == (3, 3, 16, 16)  # HWIO
    assert syn["4x4/Conv/mod_weight"].shape == (16, 16) and syn["noise0"].shape == (1, 1, 4, 4)
    assert isinstance(syn["4x4/Conv/noise_strength"], np.float32)  # scalars come back as numpy scalars
    assert [k for k, _ in Gs.state["variables"]] == ["lod", "dlatent_avg"]


# -------------------------------------------------------- which network is loaded


def test_G_D_Gs_tuple_picks_Gs(gen, tmp_path):
    other = tiny_generator(size=32, seed=1)  # the training G differs from Gs
    p = save_tf_pkl(tmp_path / "snapshot.pkl", gen, training_generator=other)
    assert _same_state(gen, load_generator(p))
    # Gs found by name wherever it is, by position when names are unusual, or alone
    G, D, Gs = tf_networks(gen, other)
    assert _same_state(gen, load_generator(write_tf_pickle(tmp_path / "a.pkl", (Gs, G, D))))
    G.name, Gs.name = "G_train", "G_ema"
    assert _same_state(gen, load_generator(write_tf_pickle(tmp_path / "b.pkl", (G, D, Gs))))
    assert _same_state(gen, load_generator(write_tf_pickle(tmp_path / "c.pkl", Gs)))
    assert _same_state(gen, load_generator(write_tf_pickle(tmp_path / "d.pkl", [D, Gs])))
    _err(write_tf_pickle(tmp_path / "e.pkl", (D,)), "no unique generator")
    _err(write_tf_pickle(tmp_path / "f.pkl", D), "no unique generator")
    _err(write_tf_pickle(tmp_path / "g.pkl", (G, Gs)), "no unique generator")


# --------------------------------------- independent TensorFlow-convention forward


def _setup_kernel(k):
    k = np.asarray(k, dtype=np.float32)
    k = np.outer(k, k)
    return k / k.sum()


def _tf_upfirdn(x, k, up, pad0, pad1):
    """upfirdn_2d.py's _upfirdn_2d_ref: insert zeros after each pixel, pad, convolve."""
    n, c, h, w = x.shape
    if up > 1:
        y = x.new_zeros(n, c, h * up, w * up)
        y[:, :, ::up, ::up] = x
        x = y
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    kernel = torch.from_numpy(np.ascontiguousarray(k[::-1, ::-1]))[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, kernel, groups=c)


def _tf_conv2d_transpose_stride2(x, f):
    """tf.nn.conv2d_transpose(x, f [kh, kw, out, in], strides=2, padding='VALID'): the adjoint
    of a VALID stride-2 conv2d, i.e. every input pixel scatters its weighted filter at 2q."""
    n, _, H, W = x.shape
    kh, kw, cout, _ = f.shape
    y = x.new_zeros(n, cout, (H - 1) * 2 + kh, (W - 1) * 2 + kw)
    for a in range(kh):
        for b in range(kw):
            y[:, :, a:a + 2 * H - 1:2, b:b + 2 * W - 1:2] += torch.einsum("nihw,oi->nohw", x, f[a, b])
    return y


def _tf_upsample_conv_2d(x, w):
    """upfirdn_2d.upsample_conv_2d for one group: flip w, conv2d_transpose, then blur."""
    k = _setup_kernel([1, 3, 3, 1]) * 4
    p = (k.shape[0] - 2) - (w.shape[1] - 1)
    f = w.flip([0, 1]).permute(0, 1, 3, 2)  # w[::-1, ::-1], [kh, kw, in, out] -> [kh, kw, out, in]
    x = _tf_conv2d_transpose_stride2(x, f)
    return _tf_upfirdn(x, k, 1, (p + 1) // 2 + 2 - 1, p // 2 + 1)


def _tf_reference(gs, ms, ss, mkw, z, psi):
    """G_main(z, truncation_psi=psi, randomize_noise=False) of networks_stylegan2.py, written with
    torch on the TF-layout variables (dict name -> tensor), one sample at a time (not fused)."""
    sqrt2 = math.sqrt(2)

    def dense(x, w, lrmul=1.0):  # get_weight: w * lrmul / sqrt(fan_in); w is [in, out]
        return x @ (w * (lrmul / math.sqrt(w.shape[0])))

    def lrelu(x):
        return F.leaky_relu(x, 0.2) * sqrt2

    def modconv(x, y, scope, demodulate, up=False):
        w = ss[f"{scope}/weight"]
        kk, _, cin, _ = w.shape
        w = w / math.sqrt(kk * kk * cin)
        s = dense(y, ss[f"{scope}/mod_weight"]) + ss[f"{scope}/mod_bias"] + 1  # [B, I]
        outs = []
        for b in range(x.shape[0]):
            ww = w * s[b][None, None, :, None]
            if demodulate:
                ww = ww * torch.rsqrt(ww.square().sum([0, 1, 2]) + 1e-8)
            xb = x[b:b + 1]
            if up:
                outs.append(_tf_upsample_conv_2d(xb, ww))
            else:  # tf.nn.conv2d(..., padding='SAME') with an HWIO filter
                outs.append(F.conv2d(xb, ww.permute(3, 2, 0, 1), padding=kk // 2))
        return torch.cat(outs)

    def layer(x, dl, idx, scope, up=False):
        x = modconv(x, dl[:, idx], scope, True, up)
        x = x + ss[f"noise{idx}"] * ss[f"{scope}/noise_strength"]
        return lrelu(x + ss[f"{scope}/bias"][None, :, None, None])

    def torgb(x, y, dl, res):
        scope = f"{2**res}x{2**res}/ToRGB"
        t = modconv(x, dl[:, res * 2 - 3], scope, False) + ss[f"{scope}/bias"][None, :, None, None]
        return t if y is None else y + t

    lrmul = mkw.get("mapping_lrmul", 0.01)
    x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
    i = 0
    while f"Dense{i}/weight" in ms:
        x = lrelu(dense(x, ms[f"Dense{i}/weight"], lrmul) + ms[f"Dense{i}/bias"] * lrmul)
        i += 1
    res_log2 = max(int(k.split("x")[0]) for k in ss if k[0].isdigit()).bit_length() - 1
    num_layers = res_log2 * 2 - 2
    dl = x[:, None].repeat(1, num_layers, 1)
    dl = gs["dlatent_avg"] + (dl - gs["dlatent_avg"]) * psi  # tflib.lerp(dlatent_avg, dlatents, psi)

    x = ss["4x4/Const/const"].repeat(z.shape[0], 1, 1, 1)
    x = layer(x, dl, 0, "4x4/Conv")
    y = torgb(x, None, dl, 2)
    for res in range(3, res_log2 + 1):
        r = 2**res
        x = layer(x, dl, res * 2 - 5, f"{r}x{r}/Conv0_up", up=True)
        x = layer(x, dl, res * 2 - 4, f"{r}x{r}/Conv1")
        y = _tf_upfirdn(y, _setup_kernel([1, 3, 3, 1]) * 4, 2, 2, 1)  # upsample_2d
        y = torgb(x, y, dl, res)
    return y


def _raw_tf_variables(path):
    with open(path, "rb") as f:
        _, _, Gs = RestrictedUnpickler(f, path.name).load()
    comps = Gs.state["components"]

    def tensors(net):
        return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in net.state["variables"]}

    mkw = comps["mapping"].state["static_kwargs"]
    return tensors(Gs), tensors(comps["mapping"]), tensors(comps["synthesis"]), mkw


@pytest.mark.parametrize("mapping_lrmul", [0.01, 0.1])
def test_loaded_tf_pkl_matches_tensorflow_forward_semantics(tmp_path, mapping_lrmul):
    g = tiny_generator(size=32, seed=5)
    path = save_tf_pkl(tmp_path / "g.pkl", g, mapping_lrmul=mapping_lrmul)
    gs, ms, ss, mkw = _raw_tf_variables(path)
    z = torch.randn(3, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = _tf_reference(gs, ms, ss, mkw, z, psi=0.7)
        g2 = load_generator(path)
        ours, _ = g2([z], truncation=0.7, truncation_latent=g2.latent_avg, randomize_noise=False)
        orig, _ = g([z], truncation=0.7, truncation_latent=g.latent_avg, randomize_noise=False)
    assert ref.shape == (3, 3, 32, 32) and ref.abs().mean() > 0.05
    torch.testing.assert_close(ours, ref, atol=2e-5, rtol=1e-4)
    if mapping_lrmul == 0.01:
        assert torch.equal(ours, orig)
    else:  # rescaled mapping weights: equal up to float rounding
        torch.testing.assert_close(ours, orig, atol=1e-5, rtol=1e-5)

    # the check is sensitive to the transposed-conv convention: without the
    # spatial flip of Conv0_up (a symmetric-looking mistake) the result differs
    bad = dict(ss)
    for k in ss:
        if k.endswith("Conv0_up/weight"):
            bad[k] = ss[k].flip([0, 1])
    with torch.no_grad():
        wrong = _tf_reference(gs, ms, bad, mkw, z, psi=0.7)
    assert (wrong - ours).abs().max() > 1e-2


def test_stylegan2_ada_tensorflow_options(gen, tmp_path):
    # stylegan2-ada (TensorFlow) uses the same names; conv_clamp and use_noise=False are its options
    p = save_tf_pkl(tmp_path / "ada.pkl", gen, static_kwargs={"conv_clamp": 256, "num_fp16_res": 4})
    g2 = load_generator(p)
    assert g2.conv_clamp == 256.0 and _same_state(gen, g2)
    p = save_tf_pkl(tmp_path / "nonoise.pkl", gen, use_noise=False)
    g3 = load_generator(p)
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in g3.state_dict().items()
               if k.endswith("noise.weight") or k.startswith("noises."))
    with torch.no_grad():  # no noise: the conv layers and mapping are the same as gen's
        g4 = tiny_generator(size=32, seed=0)
        for k, v in g4.state_dict().items():
            if k.endswith("noise.weight"):
                v.zero_()
        ws = random_ws(gen)
        assert torch.equal(g3.synthesis(ws), g4.synthesis(ws))


# ---------------------------------------------------------------- security


SENTINEL_CODE = "open({path!r}, 'w').write('pwned')\n"


class _Evil:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return (self.fn, (self.arg,))


def test_build_module_src_is_never_executed(gen, tmp_path):
    sentinel = tmp_path / "ran.txt"
    src = SENTINEL_CODE.format(path=str(sentinel)) + "def G_main(*a, **k): pass\n"
    p = save_tf_pkl(tmp_path / "g.pkl", gen, build_module_src=src)
    assert str(sentinel).encode() in p.read_bytes()  # the source really is in the file
    assert _same_state(gen, load_generator(p))
    inspect_checkpoint(p)
    assert not sentinel.exists()


@pytest.mark.parametrize("how", ["os.system", "exec_build_module_src", "in_variables", "tflib_function"])
def test_malicious_tf_pickles_are_refused_and_not_executed(gen, tmp_path, how):
    sentinel = tmp_path / "pwned.txt"
    code = SENTINEL_CODE.format(path=str(sentinel))
    G, D, Gs = tf_networks(gen)
    path = tmp_path / "evil.pkl"
    if how == "os.system":  # a global hidden inside a component's static kwargs
        Gs.components["synthesis"].static_kwargs["x"] = _Evil(os.system, f"touch {sentinel}")
        write_tf_pickle(path, (G, D, Gs))
        match = "os.system|posix.system"
    elif how == "exec_build_module_src":  # what NVIDIA's __setstate__ would do, as a pickle global
        Gs.build_module_src = _Evil(exec, code)
        write_tf_pickle(path, (G, D, Gs))
        match = "builtins.exec"
    elif how == "in_variables":
        Gs.components["mapping"].variables.append(("Dense9/weight", _Evil(eval, code)))
        write_tf_pickle(path, (G, D, Gs))
        match = "builtins.eval"
    else:  # other dnnlib.tflib names are code, not state
        path.write_bytes(b"\x80\x03cdnnlib.tflib.tfutil\nrun\nq\x00X\x04\x00\x00\x00evilq\x01\x85q\x02Rq\x03.")
        match = "dnnlib.tflib.tfutil.run"
    msg = _err(path, match)
    assert "could run code" in msg
    assert not sentinel.exists()


def test_network_class_called_with_arguments_is_refused(tmp_path):
    p = tmp_path / "call.pkl"
    # REDUCE on the Network class with an argument instead of NEWOBJ + BUILD
    p.write_bytes(b"\x80\x03cdnnlib.tflib.network\nNetwork\nq\x00X\x01\x00\x00\x00xq\x01\x85q\x02Rq\x03.")
    _err(p, "truncated or corrupt")


# ------------------------------------------------------- unsupported networks


def test_conditional_generators_are_rejected(gen, tmp_path):
    msg = _err(save_tf_pkl(tmp_path / "cond.pkl", gen, label_size=10), "class-conditional")
    assert "label_size=10" in msg
    # found from the variables alone too
    G, D, Gs = tf_networks(gen)
    Gs.components["mapping"].variables.insert(0, ("LabelConcat/weight", np.ones((3, 16), np.float32)))
    _err(write_tf_pickle(tmp_path / "cond2.pkl", (G, D, Gs)), "class-conditional")


def test_resnet_and_orig_architectures_are_rejected(gen, tmp_path):
    msg = _err(save_tf_pkl(tmp_path / "resnet.pkl", gen, architecture="resnet"), "'resnet'")
    assert "only config-e/f ('skip')" in msg
    G, D, Gs = tf_networks(gen, architecture="resnet")
    for net in Gs.components.values():  # no static kwarg: recognised by the Skip variables
        net.static_kwargs.pop("architecture")
    Gs.static_kwargs.pop("architecture")
    _err(write_tf_pickle(tmp_path / "resnet2.pkl", (G, D, Gs)), "'resnet'")
    _err(save_tf_pkl(tmp_path / "orig.pkl", gen, architecture="orig"), "'orig'")


def test_other_unsupported_tf_networks(gen, tmp_path):
    def variant(name, edit):
        G, D, Gs = tf_networks(gen)
        edit(Gs, Gs.components["mapping"], Gs.components["synthesis"])
        return write_tf_pickle(tmp_path / f"{name}.pkl", (G, D, Gs))

    def stylegan1(gs, m, s):  # StyleGAN (v1) names
        s.variables = [(k.replace("4x4/Conv/mod_weight", "4x4/Const/StyleMod/weight"), v)
                       for k, v in s.variables]
    _err(variant("v1", stylegan1), r"StyleGAN \(v1\)")

    def progressive(gs, m, s):  # G_synthesis_stylegan_revised: ToRGB_lod{n}
        s.variables = [(k.replace("32x32/ToRGB", "ToRGB_lod0"), v) for k, v in s.variables]
    _err(variant("revised", progressive), "progressive")

    _err(variant("relu", lambda gs, m, s: s.static_kwargs.update(nonlinearity="relu")), "nonlinearity")
    _err(variant("box", lambda gs, m, s: s.static_kwargs.update(resample_kernel=[1, 1])),
         "resample_kernel")
    _err(variant("nonorm", lambda gs, m, s: m.static_kwargs.update(normalize_latents=False)),
         "normalize_latents")
    _err(variant("extra", lambda gs, m, s: s.variables.append(("128x128/Conv1/weight", np.ones(3, np.float32)))),
         "unrecognised synthesis layout")
    _err(variant("extra2", lambda gs, m, s: s.variables.append(("4x4/Conv/bogus", np.ones(3, np.float32)))),
         "4x4/Conv/bogus")
    _err(variant("nodense", lambda gs, m, s: setattr(m, "variables", [])), "Dense0")
    _err(variant("nosyn", lambda gs, m, s: gs.components.pop("synthesis")), "not a StyleGAN generator")
    _err(variant("missing", lambda gs, m, s: setattr(s, "variables", [
        (k, v) for k, v in s.variables if k != "16x16/Conv1/mod_bias"])), "16x16/Conv1/mod_bias")
    _err(variant("shape", lambda gs, m, s: setattr(s, "variables", [
        (k, v[:, :, :8] if k == "8x8/Conv1/weight" else v) for k, v in s.variables])), "wrong shapes")
    _err(variant("text", lambda gs, m, s: s.variables.append(("noise99", "not an array"))),
         "not a numeric array")
    _err(variant("res", lambda gs, m, s: s.static_kwargs.update(resolution=1024)), "resolution=1024")
    _err(variant("gsvar", lambda gs, m, s: gs.variables.append(("truncation", np.float32(0.5)))),
         "truncation")


def test_malformed_tf_state_and_truncated_files(gen, tmp_path):
    class Old(TFNetwork):
        def __getstate__(self):
            return dict(super().__getstate__(), version=1)

    from tiny_models import _TF_ALIASES
    _TF_ALIASES[id(Old)] = ("dnnlib.tflib.network", "Network")
    try:
        old = Old("Gs", "G_main")
        _err(write_tf_pickle(tmp_path / "old.pkl", old), "unknown pickle version 1")
    finally:
        del _TF_ALIASES[id(Old)]
    bad = tf_generator_network(gen)
    bad.variables = [("dlatent_avg",)]
    _err(write_tf_pickle(tmp_path / "badvars.pkl", bad), "malformed TensorFlow variable list")

    data = save_tf_pkl(tmp_path / "g.pkl", gen).read_bytes()
    for frac in (0.3, 0.98):
        cut = tmp_path / f"cut_{frac}.pkl"
        cut.write_bytes(data[: int(len(data) * frac)])
        _err(cut, "truncated or corrupt")
    _err(tmp_path / "g.pkl", "32x32", expect_size=1024)
    assert isinstance(tf_discriminator_stub(32), TFNetwork)
