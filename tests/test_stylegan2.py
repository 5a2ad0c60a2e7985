"""engine.generator.stylegan2: rosinality names/shapes, determinism, batching, API, discriminator."""

import math

import pytest
import torch

from engine.generator.stylegan2 import (Discriminator, Generator, default_channels, layer_resolution,
                              state_dict_shapes, upfirdn2d)
from tiny_models import tiny_channels, tiny_generator


def _ws(g, n=2, seed=1):
    return torch.randn(n, g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(seed))


def _expected_rosinality_keys(size, n_mlp):
    keys = [f"style.{i}.{p}" for i in range(1, n_mlp + 1) for p in ("weight", "bias")]
    keys += ["input.input"]
    conv = ["conv.weight", "conv.modulation.weight", "conv.modulation.bias", "noise.weight",
            "activate.bias"]
    rgb = ["conv.weight", "conv.modulation.weight", "conv.modulation.bias", "bias"]
    keys += [f"conv1.{k}" for k in conv] + [f"to_rgb1.{k}" for k in rgb]
    n_up = int(math.log2(size)) - 2
    for i in range(n_up):
        keys += [f"convs.{2 * i}.{k}" for k in conv] + [f"convs.{2 * i}.conv.blur.kernel"]
        keys += [f"convs.{2 * i + 1}.{k}" for k in conv]
        keys += [f"to_rgbs.{i}.{k}" for k in rgb] + [f"to_rgbs.{i}.upsample.kernel"]
    keys += [f"noises.noise_{k}" for k in range(2 * n_up + 1)]
    return set(keys)


def test_state_dict_names_and_shapes_match_rosinality():
    g = tiny_generator(size=32, style_dim=16, n_mlp=2, channels=16)
    sd = g.state_dict()
    assert set(sd) == _expected_rosinality_keys(32, 2)
    assert "latent_avg" not in sd and g.latent_avg.shape == (16,)
    assert sd["input.input"].shape == (1, 16, 4, 4)
    assert sd["conv1.conv.weight"].shape == (1, 16, 16, 3, 3)
    assert sd["conv1.noise.weight"].shape == (1,)
    assert sd["conv1.activate.bias"].shape == (16,)
    assert sd["to_rgb1.conv.weight"].shape == (1, 3, 16, 1, 1)
    assert sd["to_rgb1.bias"].shape == (1, 3, 1, 1)
    assert sd["convs.0.conv.blur.kernel"].shape == (4, 4)
    assert sd["to_rgbs.2.upsample.kernel"].shape == (4, 4)
    assert sd["noises.noise_6"].shape == (1, 1, 32, 32)
    assert torch.allclose(sd["to_rgbs.0.upsample.kernel"].sum(), torch.tensor(4.0))


@pytest.mark.parametrize("size,n_latent,n_noise", [(32, 8, 7), (256, 14, 13), (512, 16, 15),
                                                   (1024, 18, 17)])
def test_config_f_layout_on_meta_device(size, n_latent, n_noise):
    with torch.device("meta"):
        g = Generator(size)
    assert (g.size, g.style_dim, g.n_mlp, g.n_latent) == (size, 512, 8, n_latent)
    assert g.channels == default_channels(size, 2)
    sd = g.state_dict()
    assert set(sd) == _expected_rosinality_keys(size, 8)
    assert state_dict_shapes(size) == {k: tuple(v.shape) for k, v in sd.items()}
    assert len([k for k in sd if k.startswith("noises.")]) == n_noise
    assert sd["convs.0.conv.weight"].shape == (1, 512, 512, 3, 3)
    if size == 1024:
        assert sd["to_rgbs.7.conv.weight"].shape == (1, 3, 32, 1, 1)
        # rosinality's 1024 config-f g_ema has exactly this many parameters
        assert sum(p.numel() for p in g.parameters()) == 30_370_060


@pytest.mark.parametrize("size,n_latent", [(512, 16), (1024, 18)])
def test_tiny_large_layouts_run(size, n_latent):
    g = tiny_generator(size=size, style_dim=8, n_mlp=1, channels=2)
    assert g.n_latent == n_latent
    with torch.no_grad():
        img = g.synthesis(_ws(g, n=1))
    assert img.shape == (1, 3, size, size) and torch.isfinite(img).all()


def test_channel_multiplier_and_override():
    with torch.device("meta"):
        g = Generator(256, channel_multiplier=1, channels={256: 32})
    assert state_dict_shapes(256, channel_multiplier=1, channels={256: 32}) == \
        {k: tuple(v.shape) for k, v in g.state_dict().items()}
    t = tiny_generator(size=64, style_dim=8, n_mlp=3, channels={4: 5, 8: 6, 16: 7, 32: 3, 64: 2})
    assert state_dict_shapes(64, 8, 3, channels=t.channels) == \
        {k: tuple(v.shape) for k, v in t.state_dict().items()}
    assert g.channels == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 32}
    assert g.to_rgbs[-1].conv.weight.shape == (1, 3, 32, 1, 1)
    with pytest.raises(ValueError):
        Generator(48)


def test_output_shape_dtype_and_determinism():
    g = tiny_generator()
    ws = _ws(g, n=3)
    noise = g.make_noise()
    assert [n.shape[-1] for n in noise] == [4, 8, 8, 16, 16, 32, 32]
    with torch.no_grad():
        a = g.synthesis(ws, noise=noise)
        b = g.synthesis(ws, noise=noise)
        c = g.synthesis(ws)  # stored noise buffers
        d = g.synthesis(ws)
        e = g.synthesis(ws, randomize_noise=True)
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.equal(c, d)
    assert not torch.equal(c, e)
    assert not torch.equal(a, c)


def test_noise_weights_matter():
    g = tiny_generator()
    ws = _ws(g, n=1)
    with torch.no_grad():
        a = g.synthesis(ws, noise=[torch.zeros_like(n) for n in g.make_noise()])
        b = g.synthesis(ws)
    assert (a - b).abs().max() > 1e-3


def test_batch_consistency():
    g = tiny_generator()
    ws = _ws(g, n=4)
    with torch.no_grad():
        batch = g.synthesis(ws)
        single = torch.cat([g.synthesis(ws[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batch, single, atol=1e-5, rtol=1e-5)


def test_forward_matches_rosinality_semantics():
    g = tiny_generator()
    z = torch.randn(2, g.style_dim, generator=torch.Generator().manual_seed(3))
    z2 = torch.randn(2, g.style_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        w = g.mapping(z)
        assert torch.equal(w, g.get_latent(z))
        img, lat = g([z], return_latents=True, randomize_noise=False)
        assert lat.shape == (2, g.n_latent, g.style_dim)
        assert torch.equal(img, g.synthesis(w[:, None].repeat(1, g.n_latent, 1)))
        # W input, W+ input
        img_w, none = g([w], input_is_latent=True, randomize_noise=False)
        assert none is None and torch.equal(img_w, img)
        img_wp, _ = g([lat], input_is_latent=True, randomize_noise=False)
        assert torch.equal(img_wp, img)
        # style mixing
        _, mixed = g([z, z2], inject_index=3, return_latents=True, randomize_noise=False)
        assert torch.equal(mixed[:, :3], w[:, None].expand(2, 3, -1))
        assert torch.equal(mixed[:, 3:], g.mapping(z2)[:, None].expand(2, g.n_latent - 3, -1))
        # truncation 0 collapses onto the truncation latent
        t0, _ = g([z], truncation=0, truncation_latent=g.latent_avg[None], randomize_noise=False)
        avg = g.synthesis(g.latent_avg[None, None].repeat(2, g.n_latent, 1))
        torch.testing.assert_close(t0, avg)
        mean = g.mean_latent(64)
    assert mean.shape == (1, g.style_dim)


def test_synthesis_rejects_wrong_latent_count():
    g = tiny_generator()
    with pytest.raises(ValueError):
        g.synthesis(torch.zeros(1, g.n_latent + 1, g.style_dim))


def test_conv_clamp_limits_activations():
    g = tiny_generator()
    ws = _ws(g, n=1) * 50
    with torch.no_grad():
        free = g.synthesis(ws)
        g.conv_clamp = 1e-3
        clamped = g.synthesis(ws)
    assert not torch.equal(free, clamped)
    # four RGB outputs (4..32 px) each within +-clamp; upsampling keeps the bound
    assert clamped.abs().max() <= 4e-3 + 1e-6


def test_gradients_flow_to_latents():
    g = tiny_generator().requires_grad_(False)
    ws = _ws(g, n=1).requires_grad_(True)
    g.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(dtype):
    g = tiny_generator()
    ws = _ws(g, n=2)
    with torch.no_grad():
        ref = g.synthesis(ws)
        g.to(dtype)
        assert all(t.dtype == dtype for t in g.state_dict().values()) and g.latent_avg.dtype == dtype
        assert all(n.dtype == dtype for n in g.make_noise())
        try:
            out = g.synthesis(ws.to(dtype))
        except RuntimeError as e:  # some CPU builds lack half kernels
            pytest.skip(f"{dtype} not supported on CPU here: {e}")
    assert out.dtype == dtype
    assert (out.float() - ref).abs().max() < 0.1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
def test_cuda_half():
    g = tiny_generator().cuda().half()
    with torch.no_grad():
        img, _ = g([torch.randn(2, g.style_dim, device="cuda", dtype=torch.half)])
    assert img.dtype == torch.half and img.is_cuda


@pytest.mark.parametrize("name,res", [
    ("input.input", 4), ("conv1.conv.weight", 4), ("conv1.noise.weight", 4),
    ("to_rgb1.conv.modulation.bias", 4), ("noises.noise_0", 4),
    ("convs.0.conv.weight", 8), ("convs.1.activate.bias", 8), ("convs.0.conv.blur.kernel", 8),
    ("convs.2.conv.weight", 16), ("convs.3.noise.weight", 16), ("convs.15.conv.weight", 1024),
    ("to_rgbs.0.bias", 8), ("to_rgbs.1.upsample.kernel", 16), ("to_rgbs.7.conv.weight", 1024),
    ("noises.noise_1", 8), ("noises.noise_2", 8), ("noises.noise_3", 16), ("noises.noise_16", 1024),
    ("style.1.weight", None), ("style.8.bias", None), ("latent_avg", None), ("convs", None),
])
def test_layer_resolution(name, res):
    assert layer_resolution(name) == res


def test_layer_resolution_covers_every_synthesis_tensor():
    g = tiny_generator(size=64)
    for name, t in g.state_dict().items():
        r = layer_resolution(name)
        if name.startswith("style."):
            assert r is None
        else:
            assert r in (4, 8, 16, 32, 64)
            if name.startswith("noises."):
                assert t.shape[-1] == r


def test_upsample_preserves_constant_and_downsample_blur():
    x = torch.ones(1, 2, 8, 8)
    k = torch.tensor([[1.0, 3, 3, 1]]).T @ torch.tensor([[1.0, 3, 3, 1]])
    up = upfirdn2d(x, k / k.sum() * 4, up=2, pad=(2, 1))
    assert up.shape == (1, 2, 16, 16)
    torch.testing.assert_close(up[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))
    down = upfirdn2d(x, k / k.sum(), down=2, pad=(1, 1))
    assert down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(down[..., 1:-1, 1:-1], torch.ones(1, 2, 2, 2))


def test_discriminator_names_shapes_and_grad():
    d = Discriminator(32, channels=tiny_channels(32, 8))
    keys = set(d.state_dict())
    for k in ["convs.0.0.weight", "convs.0.1.bias", "convs.1.conv1.0.weight", "convs.1.conv1.1.bias",
              "convs.1.conv2.0.kernel", "convs.1.conv2.1.weight", "convs.1.conv2.2.bias",
              "convs.1.skip.0.kernel", "convs.1.skip.1.weight", "convs.3.skip.1.weight",
              "final_conv.0.weight", "final_conv.1.bias", "final_linear.0.weight",
              "final_linear.0.bias", "final_linear.1.weight", "final_linear.1.bias"]:
        assert k in keys, k
    assert "convs.4.conv1.0.weight" not in keys
    assert d.state_dict()["final_linear.0.weight"].shape == (8, 8 * 16)
    for n in (1, 3, 6):
        x = torch.randn(n, 3, 32, 32, requires_grad=True)
        out = d(x)
        assert out.shape == (n, 1)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)  # R1 needs double backward
    grad.square().sum().backward()
    assert d.final_linear[1].weight.grad is not None


def test_discriminator_default_config_f_on_meta():
    with torch.device("meta"):
        d = Discriminator(1024)
    assert d.state_dict()["convs.0.0.weight"].shape == (32, 3, 1, 1)
    assert len(d.convs) == 9


@pytest.mark.slow
def test_real_config_f_1024_forward_cpu():
    torch.manual_seed(0)
    g = Generator(1024).eval()
    with torch.no_grad():
        img, _ = g([torch.randn(1, 512)], randomize_noise=False)
    assert img.shape == (1, 3, 1024, 1024) and torch.isfinite(img).all()
