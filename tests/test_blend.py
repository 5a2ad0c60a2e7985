"""Network blending (layer swapping) of base and toon generators."""

from __future__ import annotations

import math
import re

import pytest
import torch

from engine.generator.blend import (
    blend_checkpoints,
    blend_generators,
    blend_state_dicts,
    layer_weights,
    param_resolution,
    toon_weight,
)
from engine.generator.stylegan2 import Generator


def _gen(size, seed, ch=2, style_dim=4, n_mlp=2):
    torch.manual_seed(seed)
    chans = {2**i: ch for i in range(2, int(math.log2(size)) + 1)}
    g = Generator(size, style_dim=style_dim, n_mlp=n_mlp, channels=chans)
    with torch.no_grad():  # make every parameter differ between models (noise weights start at 0)
        for p in g.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        g.latent_avg.copy_(torch.randn(style_dim))
    return g


@pytest.fixture(scope="module", params=[512, 1024])
def pair(request):
    size = request.param
    return size, _gen(size, 1), _gen(size, 2)


def _expected_res(key: str) -> int | None:
    """Independent statement of rosinality's layout: which resolution a key belongs to."""
    if key.startswith("style."):
        return None
    if key.startswith("input.") or key.startswith("conv1.") or key.startswith("to_rgb1."):
        return 4
    m = re.match(r"convs\.(\d+)\.", key)
    if m:
        return 2 ** (int(m.group(1)) // 2 + 3)  # convs.0 (upsampling) and convs.1 are 8x8
    m = re.match(r"to_rgbs\.(\d+)\.", key)
    if m:
        return 2 ** (int(m.group(1)) + 3)
    m = re.match(r"noises\.noise_(\d+)$", key)
    if m:
        k = int(m.group(1))
        return 4 if k == 0 else 2 ** ((k + 1) // 2 + 2)
    raise AssertionError(f"unexpected key {key}")


def test_layouts_have_expected_latents(pair):
    size, base, _ = pair
    assert base.n_latent == {512: 16, 1024: 18}[size]
    keys = base.state_dict().keys()
    for k in keys:
        if not k.startswith("input."):
            assert param_resolution(k) == _expected_res(k), k
    assert max(param_resolution(k) or 0 for k in keys) == size


@pytest.mark.parametrize("swap_res", [4, 8, 32, 64, 256, "size"])
def test_hard_swap_takes_each_weight_from_the_right_model(pair, swap_res):
    size, base, toon = pair
    r = size if swap_res == "size" else swap_res
    before_b = {k: v.clone() for k, v in base.state_dict().items()}
    before_t = {k: v.clone() for k, v in toon.state_dict().items()}
    out = blend_generators(base, toon, r)
    assert out is not base and out is not toon
    sd_b, sd_t, sd_o = base.state_dict(), toon.state_dict(), out.state_dict()
    n_toon = n_base = 0
    toon_res = set()
    for k, v in sd_o.items():
        if k.startswith("style."):
            src, other = sd_b[k], sd_t[k]  # mapping from base by default
        elif k.startswith("input."):
            src, other = sd_t[k], sd_b[k]  # constant from toon by default
        elif _expected_res(k) <= r:
            src, other = sd_t[k], sd_b[k]
            n_toon += 1
            toon_res.add(_expected_res(k))
        else:
            src, other = sd_b[k], sd_t[k]
            n_base += 1
        assert torch.equal(v, src), k
        if not torch.equal(src, other):
            assert not torch.equal(v, other), k
    assert toon_res == {2**i for i in range(2, int(math.log2(r)) + 1)}
    assert n_base == 0 if r == size else n_base > 0
    # latent_avg follows the mapping network (base) by default
    assert torch.equal(out.latent_avg, base.latent_avg)
    # inputs unchanged
    assert all(torch.equal(before_b[k], v) for k, v in base.state_dict().items())
    assert all(torch.equal(before_t[k], v) for k, v in toon.state_dict().items())


def test_sources_of_mapping_const_and_latent_avg_are_choices(pair):
    size, base, toon = pair
    out = blend_generators(base, toon, 16, mapping_from="toon", const_from="base")
    sd_b, sd_t, sd_o = base.state_dict(), toon.state_dict(), out.state_dict()
    assert torch.equal(sd_o["style.1.weight"], sd_t["style.1.weight"])
    assert torch.equal(sd_o["input.input"], sd_b["input.input"])
    assert torch.equal(out.latent_avg, toon.latent_avg)  # defaults to mapping_from
    out2 = blend_generators(base, toon, 16, mapping_from="toon", latent_avg_from="base")
    assert torch.equal(out2.latent_avg, base.latent_avg)
    assert torch.equal(out2.state_dict()["input.input"], sd_t["input.input"])
    # Pinkney's recipe: everything but the high-resolution synthesis layers from the toon model
    pinkney = blend_generators(base, toon, 16, mapping_from="toon", const_from="toon")
    for k, v in pinkney.state_dict().items():
        res = _expected_res(k)
        src = sd_t if res is None or res <= 16 else sd_b
        assert torch.equal(v, src[k]), k


def test_validation_errors():
    base, toon = _gen(32, 1), _gen(32, 2)
    for bad in (2, 3, 48, 64, 0, -4, 8.5, "16"):
        with pytest.raises(ValueError, match="power of two"):
            blend_generators(base, toon, bad)
    blend_generators(base, toon, 16.0)  # an integral float is fine
    other = _gen(32, 3, ch=3)  # different channels
    with pytest.raises(ValueError, match="same architecture"):
        blend_generators(base, other, 16)
    with pytest.raises(ValueError, match="same architecture"):
        blend_generators(base, _gen(32, 3, n_mlp=3), 16)
    with pytest.raises(ValueError, match="different resolutions"):
        blend_generators(base, _gen(64, 3), 16)
    with pytest.raises(ValueError, match="'base' or 'toon'"):
        blend_generators(base, toon, 16, mapping_from="cartoon")
    with pytest.raises(ValueError, match="width"):
        blend_generators(base, toon, 16, width=-1)
    # state-dict level: same checks
    sd_b, sd_t = base.state_dict(), toon.state_dict()
    del sd_t["to_rgbs.2.bias"]
    with pytest.raises(ValueError, match="keys only in base"):
        blend_state_dicts(sd_b, sd_t, 16)
    with pytest.raises(ValueError, match="which layer"):
        blend_state_dicts({"foo.weight": torch.zeros(1), **sd_b}, {"foo.weight": torch.zeros(1), **sd_b}, 16)


def test_toon_weight_convention():
    # width 0 is the hard swap
    for r in (4, 16, 64, 1024):
        for res in (4, 8, 16, 32, 64, 128, 256, 512, 1024):
            assert toon_weight(res, r, 0.0) == (1.0 if res <= r else 0.0)
            # width -> 0 converges to it
            assert abs(toon_weight(res, r, 1e-3) - (1.0 if res <= r else 0.0)) < 1e-12
    # 0.5 at the boundary midpoint, half an octave above r; symmetric around it
    r, w = 64, 0.7
    mid = 2 ** (math.log2(r) + 0.5)
    assert toon_weight(mid, r, w) == pytest.approx(0.5)
    for d in (0.25, 1.0, 2.5):
        up, down = 2 ** (math.log2(mid) + d), 2 ** (math.log2(mid) - d)
        assert toon_weight(up, r, w) + toon_weight(down, r, w) == pytest.approx(1.0)
    # monotonic decreasing in resolution, within (0,1)
    ws = [toon_weight(2**i, r, w) for i in range(2, 11)]
    assert all(a > b for a, b in zip(ws, ws[1:]))
    assert all(0 < x < 1 for x in ws)
    # wider -> softer
    assert toon_weight(128, 64, 2.0) > toon_weight(128, 64, 0.5)
    assert toon_weight(64, 64, 2.0) < toon_weight(64, 64, 0.5)
    # huge resolutions / tiny widths do not overflow
    assert toon_weight(2**60, 4, 1e-6) == 0.0 and toon_weight(4, 2**40, 1e-6) == 1.0


def test_smooth_blend_weights(pair):
    size, base, toon = pair
    r, width = 32, 1.0
    out = blend_generators(base, toon, r, width=width)
    sd_b, sd_t, sd_o = base.state_dict(), toon.state_dict(), out.state_dict()
    weights = layer_weights(sd_b.keys(), r, width=width)
    for k, v in sd_o.items():
        if k.startswith("style."):
            assert weights[k] == 0.0 and torch.equal(v, sd_b[k])
        elif k.startswith("input."):
            assert weights[k] == 1.0 and torch.equal(v, sd_t[k])
        elif k.startswith("noises."):
            # noise maps are not averaged: whole from the majority model
            src = sd_t if weights[k] >= 0.5 else sd_b
            assert torch.equal(v, src[k]), k
        else:
            t = toon_weight(_expected_res(k), r, width)
            assert weights[k] == t
            assert torch.allclose(v, sd_b[k] + t * (sd_t[k] - sd_b[k]), atol=1e-6), k
    # a conv at the swap resolution is mostly toon, the next one mostly base
    t_r = weights["convs.%d.conv.weight" % (2 * (int(math.log2(r)) - 3))]
    t_2r = weights["convs.%d.conv.weight" % (2 * (int(math.log2(r)) - 2))]
    assert 0.5 < t_r < 1 and 0 < t_2r < 0.5 and t_r + t_2r == pytest.approx(1.0)
    # a very narrow smooth blend equals the hard swap
    narrow = blend_generators(base, toon, r, width=1e-4).state_dict()
    hard = blend_generators(base, toon, r).state_dict()
    assert all(torch.equal(narrow[k], hard[k]) for k in hard)


def test_blended_output_matches_sources():
    """r = size with everything from toon renders exactly like toon."""
    base, toon = _gen(32, 1, ch=4), _gen(32, 2, ch=4)
    ws = torch.randn(2, toon.n_latent, toon.style_dim)
    all_toon = blend_generators(base, toon, 32, mapping_from="toon", const_from="toon")
    with torch.no_grad():
        assert torch.equal(all_toon.synthesis(ws), toon.synthesis(ws))
        assert torch.equal(all_toon.mapping(ws[:, 0]), toon.mapping(ws[:, 0]))
        mixed = blend_generators(base, toon, 8).synthesis(ws)
        assert not torch.allclose(mixed, toon.synthesis(ws)) and not torch.allclose(mixed, base.synthesis(ws))


def test_blended_generator_saves_and_loads_like_any_other(tmp_path):
    from engine.generator.checkpoints import load_generator, save_generator

    try:
        from tests.tiny_models import tiny_generator
    except ImportError:
        from tiny_models import tiny_generator

    base, toon = tiny_generator(seed=1), tiny_generator(seed=2)
    with torch.no_grad():
        for p in toon.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        toon.latent_avg.copy_(torch.randn_like(toon.latent_avg))
        base.latent_avg.copy_(torch.randn_like(base.latent_avg))
    blended = blend_generators(base, toon, 16, width=0.5)
    path = tmp_path / "blended.pt"
    save_generator(path, blended)
    loaded = load_generator(path)
    assert loaded.size == blended.size and loaded.n_latent == blended.n_latent
    for k, v in blended.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert torch.equal(loaded.latent_avg, base.latent_avg)
    ws = torch.randn(1, loaded.n_latent, loaded.style_dim)
    with torch.no_grad():
        assert torch.equal(loaded.synthesis(ws), blended.synthesis(ws))

    # the CLI entry point: checkpoints in, rosinality .pt out
    save_generator(tmp_path / "base.pt", base)
    save_generator(tmp_path / "toon.pt", toon)
    out = blend_checkpoints(tmp_path / "base.pt", tmp_path / "toon.pt", tmp_path / "out.pt", 16, width=0.5)
    again = load_generator(tmp_path / "out.pt")
    for k, v in blended.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
        assert torch.equal(out.state_dict()[k], v), k
    raw = torch.load(tmp_path / "out.pt", map_location="cpu", weights_only=True)
    assert "g_ema" in raw and "latent_avg" in raw
    with pytest.raises(ValueError, match="one of the inputs"):
        blend_checkpoints(tmp_path / "base.pt", tmp_path / "toon.pt", tmp_path / "base.pt", 16)
    with pytest.raises(ValueError, match="power of two"):
        blend_checkpoints(tmp_path / "base.pt", tmp_path / "toon.pt", tmp_path / "x.pt", 64)
