"""pSp / e4e / ReStyle encoders: tiny checkpoints in the real layout, loaded as users load them.

Parity with the reference implementations at real sizes is measured by
bench/parity_encoders.py (it needs the reference checkouts); here the
behaviour that matters is pinned on tiny models: shapes, latent_avg, e4e's
deltas, ReStyle's iterations, strict key names at the real sizes, and every
refusal.
"""
from __future__ import annotations

import argparse
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.generator.checkpoints import CheckpointError, save_generator
from engine.generator.stylegan2 import Generator
from engine.inversion.encoders import (EncoderInfo, inspect_encoder, load_encoder, load_encoder_decoder,
                                       preprocess, resize_faces)
from engine.inversion.encoders.architectures import (BackboneEncoder, BackboneEncoderUsingLastLayerIntoW,
                                                     BackboneEncoderUsingLastLayerIntoWPlus, GradualStyleEncoder)
from engine.inversion.encoders.backbones import Layout
from tiny_encoders import save_encoder_checkpoint, tiny_encoder, write_tiny_encoder
from tiny_models import tiny_generator


def faces(n=2, size=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """Tiny checkpoints, written once: name -> path."""
    d = tmp_path_factory.mktemp("encoders")
    out = {}
    for name, kind, size in [("psp", "GradualStyleEncoder", 32), ("e4e", "Encoder4Editing", 32),
                             ("psp-w", "BackboneEncoderUsingLastLayerIntoW", 32),
                             ("psp-w+", "BackboneEncoderUsingLastLayerIntoWPlus", 32),
                             ("restyle-psp", "BackboneEncoder", 32),
                             ("restyle-e4e", "ProgressiveBackboneEncoder", 32),
                             ("restyle-psp-resnet", "ResNetBackboneEncoder", 32),
                             ("restyle-e4e-resnet", "ResNetProgressiveBackboneEncoder", 32)]:
        out[name] = write_tiny_encoder(d / f"{name}.pt", kind, size=size)
    return out


# ------------------------------------------------------------------ shapes and info


@pytest.mark.parametrize("size,n_latent", [(512, 16), (1024, 18)])
@pytest.mark.parametrize("encoder_type", ["GradualStyleEncoder", "Encoder4Editing"])
def test_latents_for_512_and_1024_generators(tmp_path, encoder_type, size, n_latent):
    path = write_tiny_encoder(tmp_path / "enc.pt", encoder_type, size=size)
    info = inspect_encoder(path)
    assert (info.n_latent, info.size, info.style_dim, info.input_nc) == (n_latent, size, 16, 3)
    enc = load_encoder(path)
    assert enc.info == info and not enc.training
    assert enc(faces(3)).shape == (3, n_latent, 16)


@pytest.mark.parametrize("name,kind,iterations,backbone", [
    ("psp", "psp", 1, "ir_se50"), ("e4e", "e4e", 1, "ir_se50"), ("psp-w", "psp-w", 1, "ir_se50"),
    ("psp-w+", "psp-w+", 1, "ir_se50"), ("restyle-psp", "restyle-psp", 5, "ir_se50"),
    ("restyle-e4e", "restyle-e4e", 5, "ir_se50"), ("restyle-psp-resnet", "restyle-psp", 5, "resnet34"),
    ("restyle-e4e-resnet", "restyle-e4e", 5, "resnet34")])
def test_every_kind_loads_and_encodes(ckpts, name, kind, iterations, backbone):
    info = inspect_encoder(ckpts[name])
    assert isinstance(info, EncoderInfo)
    assert (info.kind, info.iterations, info.backbone, info.n_latent, info.has_decoder) == \
        (kind, iterations, backbone, 8, True)
    assert info.input_nc == (6 if kind.startswith("restyle") else 3)
    out = load_encoder(ckpts[name])(faces(2))
    assert out.shape == (2, 8, 16) and torch.isfinite(out).all()


def test_faces_are_encoded_independently_of_the_batch(ckpts):
    """Eval-mode BatchNorm (running statistics): a face's latents do not depend on its batch mates."""
    for name in ("psp", "restyle-e4e-resnet"):
        enc = load_encoder(ckpts[name])
        x = faces(3)
        torch.testing.assert_close(enc(x)[1:2], enc(x[1:2]), rtol=0, atol=1e-5)


def test_any_crop_size_is_resized_like_the_reference(ckpts):
    enc = load_encoder(ckpts["psp"])
    big = faces(1, 256)
    assert enc.info.input_size == 64
    torch.testing.assert_close(enc(big), enc(resize_faces(big, 64)), rtol=0, atol=0)
    assert not torch.allclose(enc(big), enc(F.interpolate(big, size=64, mode="nearest")), atol=1e-3)


# ------------------------------------------------------------------ latent_avg and e4e deltas


def _same_weights(tmp_path, encoder_type, opts, zero_heads=(), namespace=False, name="enc.pt"):
    decoder = tiny_generator(32, seed=0)
    encoder = tiny_encoder(encoder_type, 8, seed=1)
    with torch.no_grad():
        for i in zero_heads:  # this head outputs exactly 0
            encoder.styles[i].linear.weight.zero_()
            encoder.styles[i].linear.bias.zero_()
    latent_avg = decoder.latent_avg[None] + 0.3 * torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    return save_encoder_checkpoint(tmp_path / name, encoder_type, encoder, decoder, latent_avg, opts,
                                   namespace=namespace), latent_avg


def test_start_from_latent_avg_adds_latent_avg(tmp_path):
    on, latent_avg = _same_weights(tmp_path, "GradualStyleEncoder", {"start_from_latent_avg": True}, name="on.pt")
    off, _ = _same_weights(tmp_path, "GradualStyleEncoder", {"start_from_latent_avg": False}, name="off.pt")
    x = faces(2)
    a, b = load_encoder(on), load_encoder(off)
    assert a.info.start_from_latent_avg and not b.info.start_from_latent_avg
    torch.testing.assert_close(a(x) - b(x), latent_avg.expand(2, -1, -1), rtol=0, atol=1e-5)


def test_opts_as_an_argparse_namespace(tmp_path):
    path, _ = _same_weights(tmp_path, "Encoder4Editing", {"start_from_latent_avg": True}, namespace=True)
    assert inspect_encoder(path).kind == "e4e"


def test_e4e_adds_per_layer_deltas_to_one_w(tmp_path):
    """A zero delta head leaves its layer at W (head 0); in pSp a zero head leaves latent_avg."""
    e4e, _ = _same_weights(tmp_path, "Encoder4Editing", {"start_from_latent_avg": False}, zero_heads=(2, 5),
                           name="e4e.pt")
    psp, latent_avg = _same_weights(tmp_path, "GradualStyleEncoder", {"start_from_latent_avg": True},
                                    zero_heads=(2, 5), name="psp.pt")
    x = faces(2)
    w = load_encoder(e4e)(x)
    for i in (2, 5):
        torch.testing.assert_close(w[:, i], w[:, 0], rtol=0, atol=0)
    assert not torch.allclose(w[:, 1], w[:, 0], atol=1e-4)
    p = load_encoder(psp)(x)
    for i in (2, 5):
        torch.testing.assert_close(p[:, i], latent_avg[i].expand(2, -1), rtol=0, atol=1e-6)


def test_single_w_encoder_repeats_one_code(ckpts):
    w = load_encoder(ckpts["psp-w"])(faces(2))
    latent_avg = load_encoder(ckpts["psp-w"]).latent_avg
    torch.testing.assert_close(w - latent_avg, (w - latent_avg)[:, :1].expand_as(w), rtol=0, atol=1e-5)


# ------------------------------------------------------------------ ReStyle


@pytest.mark.parametrize("name", ["restyle-psp", "restyle-e4e-resnet"])
def test_restyle_iterates_from_the_average_image(ckpts, name):
    enc = load_encoder(ckpts[name])
    decoder = load_encoder_decoder(ckpts[name])
    x = faces(2, 64)
    steps = enc(x, return_all=True)
    assert len(steps) == 5
    seen = resize_faces(x, enc.info.input_size)  # what the network sees: the crop in whole grey levels
    # the average image is the decoder's rendering of latent_avg, average-pooled to the input size
    avg = F.adaptive_avg_pool2d(decoder.synthesis(enc.latent_avg[None]), enc.info.input_size)
    torch.testing.assert_close(enc.avg_image, avg, rtol=0, atol=1e-6)
    # iteration 1 starts at latent_avg, iteration k+1 adds to iteration k the encoding of (face, its render)
    torch.testing.assert_close(steps[0], enc.latent_avg + enc.encoder(torch.cat([seen, avg.expand(2, -1, -1, -1)], 1)),
                               rtol=0, atol=1e-5)
    recon = F.adaptive_avg_pool2d(decoder.synthesis(steps[0]), enc.info.input_size)
    torch.testing.assert_close(steps[1], steps[0] + enc.encoder(torch.cat([seen, recon], 1)), rtol=0, atol=1e-5)
    assert (steps[1] - steps[0]).abs().max() > 1e-3


def test_restyle_iteration_count_is_honoured(ckpts):
    enc = load_encoder(ckpts["restyle-psp"])
    x = faces(2)
    five = enc(x, return_all=True)
    torch.testing.assert_close(enc(x), five[-1], rtol=0, atol=0)
    torch.testing.assert_close(enc(x, iterations=2), five[1], rtol=0, atol=0)
    assert len(enc(x, iterations=3, return_all=True)) == 3
    with pytest.raises(ValueError, match="iterations"):
        enc(x, iterations=0)
    with pytest.raises(ValueError, match="one-pass"):
        load_encoder(ckpts["psp"])(x, iterations=2)


# ------------------------------------------------------------------ real-size key names (no weights)

# Derived by hand from the reference code (pixel2style2pixel models/encoders/helpers.py, psp_encoders.py;
# restyle-encoder restyle_*_encoders.py and torchvision's resnet34):
#   IR-SE-50: input_layer = conv + BN(5 entries) + PReLU = 7 keys; each of the 24 units has 15 keys
#   (BN 5, conv, PReLU, conv, BN 5, SE fc1 + fc2) and units 3, 7, 21 (channel changes) a conv + BN
#   shortcut (+6): 7 + 24*15 + 3*6 = 385.
#   ResNet-34: conv1 + bn1(5) + PReLU = 7; 16 BasicBlocks of 12 keys (conv, BN 5, conv, BN 5) and
#   downsample (conv + BN, +6) in units 3, 7, 13: 7 + 16*12 + 3*6 = 217.
#   map2style head with k convs: 2k + 2 keys (k = 4 coarse, 5 middle, 6 fine at 256 px input).
IRSE_KEYS, RESNET_KEYS = 385, 217


def _keys(module_fn):
    with torch.device("meta"):
        m = module_fn()
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


@pytest.mark.parametrize("n_styles", [16, 18])
def test_psp_and_e4e_real_size_keys(n_styles):
    fine = n_styles - 7
    for progressive in (False, True):
        keys = _keys(lambda: GradualStyleEncoder(Layout(n_styles=n_styles), progressive=progressive))
        assert len(keys) == IRSE_KEYS + 3 * 10 + 4 * 12 + fine * 14 + 4
        assert keys["input_layer.0.weight"] == (64, 3, 3, 3)
        assert keys["body.0.res_layer.5.fc1.weight"] == (4, 64, 1, 1)
        assert keys["body.23.res_layer.3.weight"] == (512, 512, 3, 3)
        assert [k for k in keys if k.endswith("shortcut_layer.0.weight")] == \
            ["body.3.shortcut_layer.0.weight", "body.7.shortcut_layer.0.weight", "body.21.shortcut_layer.0.weight"]
        assert keys["latlayer1.weight"] == (512, 256, 1, 1) and keys["latlayer2.weight"] == (512, 128, 1, 1)
        assert "styles.2.convs.6.weight" in keys and "styles.2.convs.8.weight" not in keys
        assert "styles.6.convs.8.weight" in keys and "styles.6.convs.10.weight" not in keys
        assert keys[f"styles.{n_styles - 1}.convs.10.weight"] == (512, 512, 3, 3)
        assert keys[f"styles.{n_styles - 1}.linear.weight"] == (512, 512)
        assert f"styles.{n_styles}.linear.weight" not in keys


def test_psp_w_and_wplus_real_size_keys():
    w = _keys(lambda: BackboneEncoderUsingLastLayerIntoW(Layout()))
    assert len(w) == IRSE_KEYS + 2 and w["linear.weight"] == (512, 512)
    wp = _keys(lambda: BackboneEncoderUsingLastLayerIntoWPlus(Layout()))
    assert len(wp) == IRSE_KEYS + 5 + 2 + 2
    assert wp["output_layer_2.0.running_var"] == (512,)
    assert wp["output_layer_2.3.weight"] == (512, 512 * 7 * 7) and wp["linear.weight"] == (512 * 18, 512)


def test_restyle_real_size_keys():
    irse = _keys(lambda: BackboneEncoder(Layout(input_nc=6)))
    assert len(irse) == IRSE_KEYS + 18 * 10 and irse["input_layer.0.weight"] == (64, 6, 3, 3)
    assert "styles.17.convs.6.weight" in irse and "styles.17.convs.8.weight" not in irse
    res = _keys(lambda: BackboneEncoder(Layout(backbone="resnet34", input_nc=6), progressive=True))
    assert len(res) == RESNET_KEYS + 18 * 10
    assert res["conv1.weight"] == (64, 6, 7, 7) and res["relu.weight"] == (64,)
    assert res["bn1.num_batches_tracked"] == ()
    assert [k for k in res if k.endswith("downsample.0.weight")] == \
        ["body.3.downsample.0.weight", "body.7.downsample.0.weight", "body.13.downsample.0.weight"]
    assert res["body.13.downsample.0.weight"] == (512, 256, 1, 1) and res["body.15.conv2.weight"] == (512, 512, 3, 3)
    assert res["body.2.bn2.running_mean"] == (64,) and "body.0.downsample.0.weight" not in res


# ------------------------------------------------------------------ refusals


class _Payload:
    """Pickles as a call to os.system: a loader that runs code from the file would create `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    encoder = tiny_encoder("GradualStyleEncoder", 8)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                "opts": {"encoder_type": "GradualStyleEncoder", "output_size": 32, "hook": _Payload(marker)}}, path)
    for fn in (inspect_encoder, load_encoder, load_encoder_decoder):
        with pytest.raises(CheckpointError, match=r"evil\.pt.*refusing"):
            fn(path)
    assert not marker.exists()


def test_wrong_and_unknown_files_are_refused(tmp_path, ckpts):
    gen = save_generator(tmp_path / "gen.pt", tiny_generator(32))
    with pytest.raises(CheckpointError, match=r"gen\.pt is not an encoder checkpoint \(it is a StyleGAN2 generator"):
        load_encoder(gen)
    pkl = tmp_path / "net.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": 1}))
    with pytest.raises(CheckpointError, match=r"net\.pkl is a plain pickle.*expected a pSp, e4e or ReStyle"):
        load_encoder(pkl)
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "missing.pt")
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(ckpts["psp"].read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"cut\.pt is truncated or corrupt"):
        load_encoder(truncated)
    unknown, _ = _same_weights(tmp_path, "GradualStyleEncoder", {"encoder_type": "StyleTransformer"}, name="u.pt")
    with pytest.raises(CheckpointError, match=r"u\.pt: unknown encoder type 'StyleTransformer'"):
        inspect_encoder(unknown)


def test_weights_that_do_not_match_the_architecture_are_refused(tmp_path):
    decoder = tiny_generator(32)
    encoder = tiny_encoder("GradualStyleEncoder", 8)
    state = dict(encoder.state_dict())
    state["body.1.res_layer.1.weight"] = state["body.1.res_layer.1.weight"][:, :-1]
    broken = tmp_path / "shapes.pt"
    torch.save({"state_dict": {**{f"encoder.{k}": v for k, v in state.items()},
                               **{f"decoder.{k}": v for k, v in decoder.state_dict().items()}},
                "latent_avg": decoder.latent_avg, "opts": {"encoder_type": "GradualStyleEncoder",
                                                           "output_size": 32}}, broken)
    with pytest.raises(CheckpointError, match=r"shapes\.pt: encoder weights do not match GradualStyleEncoder: "
                                              r"wrong shapes: body\.1\.res_layer\.1\.weight"):
        load_encoder(broken)
    # an e4e checkpoint whose type says pSp-W: the layout of the weights is not that of the named type
    e4e = tiny_encoder("Encoder4Editing", 8)
    named_wrong = save_encoder_checkpoint(tmp_path / "w.pt", "BackboneEncoderUsingLastLayerIntoW", e4e, decoder,
                                          None)
    with pytest.raises(CheckpointError, match=r"w\.pt: .*BackboneEncoderUsingLastLayerIntoW"):
        load_encoder(named_wrong)


def test_encoder_for_another_generator_size_is_refused(tmp_path, ckpts):
    with pytest.raises(CheckpointError, match=r"psp\.pt encodes faces for a 32 px generator \(8 latents\), but the "
                                              r"base generator is 1024 px \(18 latents\)"):
        load_encoder(ckpts["psp"], expect_size=1024)
    assert load_encoder(ckpts["psp"], expect_size=32).info.size == 32
    # opts that disagree with the decoder the file carries
    path, _ = _same_weights(tmp_path, "GradualStyleEncoder", {"output_size": 64})
    with pytest.raises(CheckpointError, match=r"opts say a 64 px generator, but decoder\.\* is 32 px"):
        inspect_encoder(path)


def test_restyle_without_its_decoder_is_refused(tmp_path):
    encoder = tiny_encoder("BackboneEncoder", 8)
    path = save_encoder_checkpoint(tmp_path / "r.pt", "BackboneEncoder", encoder, None, torch.zeros(8, 16),
                                   {"output_size": 32})
    with pytest.raises(CheckpointError, match=r"r\.pt: a ReStyle encoder needs its decoder"):
        load_encoder(path)


# ------------------------------------------------------------------ decoder (pSp's Toonify)


def test_checkpoint_decoder_loads_as_a_generator(tmp_path):
    toon = tiny_generator(32, seed=7)
    encoder = tiny_encoder("GradualStyleEncoder", 8)
    latent_avg = toon.latent_avg.repeat(8, 1)
    path = save_encoder_checkpoint(tmp_path / "psp_toonify.pt", "GradualStyleEncoder", encoder, toon, latent_avg,
                                   {"start_from_latent_avg": False})
    g = load_encoder_decoder(path)
    assert isinstance(g, Generator) and g.size == 32 and not g.training
    for k, v in toon.state_dict().items():
        torch.testing.assert_close(g.state_dict()[k], v, rtol=0, atol=0)
    torch.testing.assert_close(g.latent_avg, toon.latent_avg, rtol=0, atol=0)
    latents = load_encoder(path)(faces(1))
    torch.testing.assert_close(g.synthesis(latents), toon.synthesis(latents), rtol=0, atol=0)
    bare = save_encoder_checkpoint(tmp_path / "bare.pt", "GradualStyleEncoder", encoder, None, None,
                                   {"output_size": 32, "start_from_latent_avg": False})
    assert load_encoder_decoder(bare) is None and not inspect_encoder(bare).has_decoder


# ------------------------------------------------------------------ the reference input transform


def _pil_levels(crop, size):
    """The reference: PIL's Image.resize((size, size), BILINEAR) of a uint8 crop, as grey levels."""
    Image = pytest.importorskip("PIL.Image")
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BILINEAR)).astype(np.int64)


def _levels(x):
    """(N, 3, S, S) in [-1, 1] -> grey levels (S, S, 3) of the first face, unrounded."""
    return ((x[0].permute(1, 2, 0).double() + 1) * 127.5).numpy()


def _real_crops():
    """FFHQ-aligned crops of a real face (astronaut.png, dlib's landmarks) that shrink by 4, by a
    non-integer ratio, and grow."""
    from skimage import data

    from engine.faces.align import align_face, ffhq_quad
    from test_tracking import _ASTRO

    return [align_face(data.astronaut(), ffhq_quad(_ASTRO), size)[0] for size in (1024, 300, 200)]


def test_preprocess_matches_pil_resize():
    """The reference's transforms.Resize((256,256)) on a PIL image, bit for bit: on real face crops and on
    fine detail (where rounding ties to even instead of half up, or rounding once, shows)."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    img = np.asarray(Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).resize((1000, 1000),
                                                                                                 Image.BICUBIC))
    img = np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)  # fine detail
    for crop in _real_crops() + [img]:
        ours = preprocess(crop)
        assert ours.shape == (1, 3, 256, 256) and ours.dtype == torch.float32
        assert np.abs(_levels(ours) - _pil_levels(crop, 256)).max() < 1e-3, crop.shape
    naive = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None].float(), size=256, mode="bilinear",
                          align_corners=False)[0].permute(1, 2, 0).numpy() / 127.5 - 1
    assert np.abs((naive + 1) * 127.5 - _pil_levels(img, 256)).max() > 4  # without antialiasing: far off
    assert preprocess(img[None]).shape == (1, 3, 256, 256)
    with pytest.raises(ValueError, match="uint8"):
        preprocess(img.astype(np.float32))


def test_the_encoder_sees_the_reference_transform_of_the_render_crop(ckpts):
    """The render path (the pipeline's crop tensor into FaceEncoder): the network's input is PIL's resize of
    the crop in whole grey levels, bit for bit; a 16-bit crop is read as its 8-bit rounding."""
    from engine.pipeline import _to_tensor

    enc = load_encoder(ckpts["psp"])
    seen = []
    enc.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    for crop in _real_crops():
        for depth in (crop, crop.astype(np.uint16) * 257):
            enc(_to_tensor([depth], "cpu", torch.float32))
            assert np.abs(_levels(seen[-1]) - _pil_levels(crop, enc.info.input_size)).max() < 1e-3
