"""engine.vtoonify's network and inference steps on tiny models loaded through the real file formats.

Numerical parity with the reference code is bench/parity_vtoonify.py's job;
these tests pin the behaviour the render path relies on.
"""

from __future__ import annotations

import pytest
import torch

from engine.generator.blend import blend_generators, toon_weight
from engine.vtoonify import (VToonify, blend_weights, load_face_parser, load_style_encoder, load_vtoonify,
                             parse_faces, read_exstyles, style_code, stylize)
from engine.vtoonify.blend import index_resolution
from tiny_models import tiny_generator
from tiny_vtoonify import N_LATENT, STYLE_DIM, write_tiny_set

BACKBONES = ["toonify", "dualstylegan"]


@pytest.fixture(scope="module", params=BACKBONES)
def models(request, tmp_path_factory):
    """(net, parser, encoder, exstyle W+ or None), loaded from files written in the public formats."""
    paths = write_tiny_set(tmp_path_factory.mktemp(request.param), request.param, seed=5)
    net = load_vtoonify(paths["model"])
    exstyle = None
    if net.backbone == "dualstylegan":
        codes = read_exstyles(paths["exstyles"])
        exstyle = net.zplus2wplus(torch.from_numpy(list(codes.values())[1]))
    return net, load_face_parser(paths["parser"]), load_style_encoder(paths["encoder"]), exstyle


def _frames(n=2, h=40, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, h, w, generator=g) * 2 - 1


def _aligned(n=1, seed=1):
    return torch.rand(n, 3, 256, 256, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_stylize_is_4x_and_clamped(models):
    net, parser, encoder, exstyle = models
    x = _frames()
    w = style_code(net, encoder, _aligned(), exstyle)
    y = stylize(net, parser, x, w, degree=0.5)
    assert y.shape == (2, 3, 160, 192) and y.dtype == torch.float32
    with torch.no_grad():
        raw = net(torch.cat([x, parse_faces(parser, x) / 16], 1), w.repeat(2, 1, 1), d_s=0.5)
    assert torch.equal(y, raw.clamp(-1, 1))
    bright = torch.nn.Parameter(net.stylegan().to_rgbs[-1].bias + 5)  # push the raw output past 1
    original, net.stylegan().to_rgbs[-1].bias = net.stylegan().to_rgbs[-1].bias, bright
    try:
        y = stylize(net, parser, x, w, degree=0.5)
        assert float(y.max()) == 1.0 and float(y.min()) >= -1.0
    finally:
        net.stylegan().to_rgbs[-1].bias = original


def test_stylize_refuses_sides_that_are_not_multiples_of_8(models):
    net, parser, encoder, exstyle = models
    w = style_code(net, encoder, _aligned(), exstyle)
    with pytest.raises(ValueError, match="multiples of 8"):
        stylize(net, parser, _frames(1, 36, 40), w)


def test_style_degree_changes_only_vtoonify_d(models):
    net, parser, encoder, exstyle = models
    x, w = _frames(), style_code(net, encoder, _aligned(), exstyle)
    a, b = stylize(net, parser, x, w, degree=0.2), stylize(net, parser, x, w, degree=0.9)
    if net.backbone == "dualstylegan":
        assert float((a - b).abs().max()) > 1e-3
    else:
        assert torch.equal(a, b)


def test_deterministic_and_batch_independent(models):
    net, parser, encoder, exstyle = models
    x, w = _frames(2, seed=3), style_code(net, encoder, _aligned(), exstyle)
    first = stylize(net, parser, x, w, degree=0.5)
    assert torch.equal(first, stylize(net, parser, x, w, degree=0.5))  # no noise: bit for bit
    singles = torch.cat([stylize(net, parser, x[i:i + 1], w, degree=0.5) for i in range(2)])
    assert float((first - singles).abs().max()) <= 1e-6


def test_style_code(models):
    net, _, encoder, exstyle = models
    faces = _aligned(2, seed=4)
    with torch.no_grad():
        own = net.zplus2wplus(encoder(faces))
    code = style_code(net, encoder, faces, exstyle)
    assert code.shape == (2, N_LATENT, STYLE_DIM)
    if net.backbone == "toonify":
        assert torch.equal(code, own)
        return
    assert torch.equal(code[:, :7], exstyle[:, :7].expand(2, -1, -1))  # structure from the style image
    assert torch.equal(code[:, 7:], own[:, 7:])  # colour from the face
    assert torch.equal(style_code(net, encoder, faces, exstyle, color_transfer=True), exstyle.expand(2, -1, -1))
    with pytest.raises(ValueError, match="extrinsic style code"):
        style_code(net, encoder, faces)


def test_zplus2wplus_maps_each_layer(models):
    net = models[0]
    z = torch.randn(2, N_LATENT, STYLE_DIM)
    with torch.no_grad():
        w = net.zplus2wplus(z)
        for i in range(N_LATENT):
            assert torch.allclose(w[:, i], net.stylegan().style(z[:, i]), atol=1e-6)


def test_single_w_code_is_every_layer(models):
    net, parser, encoder, exstyle = models
    x = torch.cat([_frames(1), torch.zeros(1, 19, 40, 48)], 1)
    w = torch.randn(1, STYLE_DIM)
    with torch.no_grad():
        a, b = net(x, w, d_s=0.5), net(x, w[:, None].repeat(1, N_LATENT, 1), d_s=0.5)
    assert float((a - b).abs().max()) <= 1e-5  # the same values through differently batched matmuls


def test_vtoonify_d_needs_a_style_degree():
    net = VToonify(in_size=32, out_size=64, style_channels=8, channels={r: 4 for r in (4, 8, 16, 32, 64)})
    with pytest.raises(ValueError, match="style degree"):
        net(torch.zeros(1, 22, 16, 16), torch.zeros(1, net.n_latent, 8))
    with pytest.raises(ValueError, match="backbone"):
        VToonify(backbone="cartoon")


def test_reference_shapes_by_default():
    """The public network's layout (built on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        net = VToonify(backbone="dualstylegan")
    sd = net.state_dict()
    assert sd["encoder.0.0.weight"].shape == (32, 22, 3, 3)
    assert sd["encoder.1.0.weight"].shape == (256, 128, 3, 3) and "encoder.3.0.weight" in sd  # 3 stride-2 blocks
    assert sd["encoder.4.5.conv.weight"].shape == (512, 512, 3, 3) and "encoder.4.6.conv.weight" not in sd
    assert sd["encoder.5.weight"].shape == (3, 512, 1, 1)
    assert sd["fusion_out.3.conv.weight"].shape == (128, 256, 3, 3)
    assert sd["res.6.conv.0.weight"].shape == (512, 512, 3, 3) and net.res[6].conv[0].dilation == 1
    assert net.res[1].conv[0].dilation == 4 and net.res[1].conv[0].padding == 4
    assert sd["generator.style.2.weight"].shape == (512, 512) and "generator.style.3.weight" not in sd
    assert sd["generator.res.17.weight"].shape == (512, 512) and net.n_latent == 18


# ------------------------------------------------------------------ blend weights


def _reference_blend(base, toon, weights):
    """VToonify's util.blend_models: layer i = base * (1 - w[i]) + toon * w[i]; the rest from base."""
    def layer(n):
        if n.startswith("convs."):
            return int(n.split(".")[1]) + 1
        if n.startswith("to_rgbs."):
            return int(n.split(".")[1]) * 2 + 3
        return {"conv1": 0, "to_rgb1": 1}.get(n.split(".")[0])

    b, t = base.state_dict(), toon.state_dict()
    return {k: b[k] if layer(k) is None else b[k] * (1 - weights[layer(k)]) + t[k] * weights[layer(k)] for k in b}


def test_blend_weights_hard_swap_is_vtoonify_default():
    assert blend_weights(64) == [1.0] * 9 + [0.0] * 9
    assert blend_weights(32) == [1.0] * 7 + [0.0] * 11
    assert blend_weights(1024) == [1.0] * 18
    smooth = blend_weights(64, width=0.5)
    assert all(a >= b for a, b in zip(smooth, smooth[1:])) and 0 < smooth[-1] < smooth[0] < 1
    assert [index_resolution(i) for i in (0, 1, 2, 3, 16, 17)] == [4, 8, 8, 16, 1024, 1024]
    for bad in (3, 48, 2048, True):
        with pytest.raises(ValueError, match="power of two"):
            blend_weights(bad)


@pytest.mark.parametrize("swap_res, width", [(16, 0.0), (64, 0.0), (64, 0.7), (32, 0.3)])
def test_blend_weights_agree_with_blend_generators(swap_res, width):
    base, toon = tiny_generator(256, seed=1), tiny_generator(256, seed=2)
    n_latent = base.n_latent
    ours = blend_generators(base, toon, swap_res, width=width, const_from="base").state_dict()
    theirs = _reference_blend(base, toon, blend_weights(swap_res, width, n_latent))
    below = blend_generators(base, toon, swap_res // 2, width=width).state_dict()
    last_rgb = f"to_rgbs.{len(base.to_rgbs) - 1}."
    for k, v in theirs.items():
        if k.startswith(("conv1.", "convs.", last_rgb, "style.", "input.")):
            assert torch.allclose(v, ours[k], atol=1e-6), k  # every convolution: the same blend
        elif k.startswith(("to_rgb1.", "to_rgbs.")):
            assert torch.allclose(v, below[k], atol=1e-6), k  # a to_rgb follows the conv an octave above
    # (noise buffers: VToonify keeps the base model's, toon-ofx takes them from the dominant model)
    assert blend_weights(swap_res, width, n_latent)[1] == toon_weight(8, swap_res, width)  # convs.0, at 8x8
