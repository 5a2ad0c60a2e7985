"""GAN inversion on a tiny generator."""

from __future__ import annotations

import math

import pytest
import torch

from engine.inversion.lpips import TinyPerceptual
from engine.inversion.projection import (
    ProjectionResult,
    latent_stats,
    learning_rate,
    noise_regularization,
    project,
)

try:
    from tests.tiny_models import tiny_generator
except ImportError:  # tests/ on sys.path (conftest) rather than the repo root
    from tiny_models import tiny_generator


@pytest.fixture(scope="module")
def G():
    return tiny_generator()


@pytest.fixture(scope="module")
def P():
    return TinyPerceptual(seed=0)


def _targets(G, seeds, drift=0.0, n_dz_seed=100):
    """G(w*) for z from each seed (moved by drift * dz), fixed noise buffers."""
    zs = [torch.randn(1, G.style_dim, generator=torch.Generator().manual_seed(s)) for s in seeds]
    dzs = [torch.randn(1, G.style_dim, generator=torch.Generator().manual_seed(n_dz_seed + s)) for s in seeds]
    z = torch.cat([a + drift * b for a, b in zip(zs, dzs)])
    with torch.no_grad():
        w = G.mapping(z)
        return G.synthesis(w[:, None].repeat(1, G.n_latent, 1))


def _mse(a, b):
    return ((a - b) ** 2).mean(dim=(1, 2, 3))


@pytest.mark.parametrize(
    "space,steps,optimize_noise,min_gain",
    [("w", 80, False, 10.0), ("w+", 150, False, 10.0), ("w+", 150, True, 4.0)],
)
def test_cold_projection_recovers_generated_image(G, P, space, steps, optimize_noise, min_gain):
    target = _targets(G, [5, 6])
    with torch.no_grad():
        start = G.synthesis(G.latent_avg.expand(2, G.n_latent, G.style_dim))
    res = project(G, target, steps=steps, space=space, perceptual=P, optimize_noise=optimize_noise)
    before, after = _mse(start, target), _mse(res.images, target)
    assert torch.all(before / after >= min_gain), (before, after)
    assert torch.allclose(after, res.losses["mse"], rtol=1e-4, atol=1e-7)
    # the images are what the returned latents and noises render
    with torch.no_grad():
        again = G.synthesis(res.latents, noise=res.noises)
    assert torch.allclose(again, res.images, atol=1e-5)
    if optimize_noise:  # renormalised after every step
        for nz in res.noises:
            assert torch.allclose(nz.mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-4)
            assert torch.allclose(nz.std(dim=(1, 2, 3)), torch.ones(2), atol=1e-4)


@pytest.mark.parametrize(
    "space,optimize_noise,offset,max_ratio",
    [("w+", True, 0.3, 0.25), ("w", False, 0.05, 0.35)],
)
def test_warm_start_needs_far_fewer_steps(G, P, space, optimize_noise, offset, max_ratio):
    """From a latent near the answer, a warm start reaches the cold start's final error much sooner."""
    K = 100
    target = _targets(G, [5])
    with torch.no_grad():
        w_true = G.mapping(torch.randn(1, G.style_dim, generator=torch.Generator().manual_seed(5)))
    kw = dict(space=space, perceptual=P, optimize_noise=optimize_noise)
    cold = project(G, target, steps=K, **kw)
    target_err = cold.losses["mse"].item()
    near = w_true[:, None].repeat(1, G.n_latent, 1)
    near = near + offset * torch.randn(near.shape, generator=torch.Generator().manual_seed(9))
    start = project(G, target, steps=0, init=near, **kw)
    assert start.losses["mse"].item() > target_err  # not trivially there already
    needed = None
    for k in (2, 4, 8, 16, 24, 32, 48, 64):
        warm = project(G, target, steps=k, init=near, **kw)
        if warm.losses["mse"].item() <= target_err:
            needed = k
            break
    assert needed is not None, "warm start never reached the cold start's error"
    assert needed / K <= max_ratio, (needed, K)


def test_w_and_wplus_shapes_and_init_forms(G, P):
    target = _targets(G, [1, 2, 3])
    L, D = G.n_latent, G.style_dim
    rw = project(G, target, steps=3, space="w", perceptual=P)
    assert isinstance(rw, ProjectionResult)
    assert rw.latents.shape == (3, L, D)
    assert torch.equal(rw.latents, rw.latents[:, :1].expand(3, L, D))  # one W repeated
    rp = project(G, target, steps=3, space="w+", perceptual=P)
    assert rp.latents.shape == (3, L, D)
    assert not torch.equal(rp.latents, rp.latents[:, :1].expand(3, L, D))
    for r in (rw, rp):
        assert r.images.shape == (3, 3, G.size, G.size)
        assert [tuple(t.shape) for t in r.noises] == [(3, 1, *t.shape[-2:]) for t in G.make_noise()]
        assert set(r.losses) == {"perceptual", "mse", "noise", "total"}
        assert all(v.shape == (3,) for v in r.losses.values())
        assert r.steps == 3 and r.history.shape == (3, 3)
    # init as (N, D), (N, L, D); W projection from a W+ init uses the layer mean
    w = torch.randn(3, D)
    r0 = project(G, target, steps=0, init=w, perceptual=P, space="w+")
    assert torch.equal(r0.latents, w[:, None].expand(3, L, D))
    wp = torch.randn(3, L, D)
    assert torch.equal(project(G, target, steps=0, init=wp, perceptual=P).latents, wp)
    assert torch.allclose(
        project(G, target, steps=0, init=wp, perceptual=P, space="w").latents, wp.mean(1, keepdim=True).expand(3, L, D)
    )
    for bad in (torch.randn(2, D), torch.randn(3, D + 1), torch.randn(3, L - 1, D)):
        with pytest.raises(ValueError, match="init"):
            project(G, target, steps=1, init=bad, perceptual=P)
    with pytest.raises(ValueError, match="space"):
        project(G, target, steps=1, space="z", perceptual=P)
    with pytest.raises(ValueError, match=r"\(N,3,H,W\)"):
        project(G, target[:, :2], steps=1, perceptual=P)


def test_callback_stops_early(G, P):
    target = _targets(G, [1, 2])
    seen = []

    def cb(step, losses):
        seen.append((step, {k: v.clone() for k, v in losses.items()}))
        return step == 4

    res = project(G, target, steps=50, perceptual=P, callback=cb)
    assert res.steps == 5 and [s for s, _ in seen] == [0, 1, 2, 3, 4]
    assert all(l["total"].shape == (2,) and not l["total"].requires_grad for _, l in seen)
    assert torch.allclose(res.history[-1], seen[-1][1]["total"])


def test_batch_faces_are_independent(G, P):
    """A batch of two equals each face projected alone (sample i uses seed + i)."""
    target = _targets(G, [7, 8])
    both = project(G, target, steps=30, perceptual=P, seed=3)
    first = project(G, target[:1], steps=30, perceptual=P, seed=3)
    second = project(G, target[1:], steps=30, perceptual=P, seed=4)
    # float tolerance: convolutions sum in a batch-size-dependent order, and Adam's
    # normalised step turns a 1e-7 gradient difference into ~1e-4 over 30 steps
    for i, single in enumerate((first, second)):
        assert torch.allclose(both.latents[i], single.latents[0], atol=5e-4)
        assert torch.allclose(both.losses["total"][i], single.losses["total"][0], rtol=1e-3)
        for a, b in zip(both.noises, single.noises):
            assert torch.allclose(a[i], b[0], atol=1e-4)


def test_deterministic_given_seed(G, P):
    target = _targets(G, [9])
    a = project(G, target, steps=12, perceptual=P, seed=11)
    b = project(G, target, steps=12, perceptual=P, seed=11)
    c = project(G, target, steps=12, perceptual=P, seed=12)
    assert torch.equal(a.latents, b.latents) and torch.equal(a.images, b.images)
    assert not torch.equal(a.latents, c.latents)  # the cold start's latent noise differs
    # a warm start has no latent-noise exploration: the seed does not matter
    w1 = project(G, target, steps=12, init=a.latents, perceptual=P, seed=1)
    w2 = project(G, target, steps=12, init=a.latents, perceptual=P, seed=2)
    assert torch.equal(w1.latents, w2.latents)


def test_generator_untouched_and_targets_resized(G, P):
    before = {k: v.clone() for k, v in G.state_dict().items()}
    grads = [p.requires_grad for p in G.parameters()]
    big = torch.nn.functional.interpolate(_targets(G, [1]), scale_factor=2, mode="bilinear")
    res = project(G, big, steps=3, perceptual=P)
    assert res.images.shape[-1] == G.size
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())
    assert [p.requires_grad for p in G.parameters()] == grads
    assert all(p.grad is None for p in G.parameters())


def test_loss_size_downsamples_what_the_perceptual_sees(G):
    sizes = []

    class Recorder(torch.nn.Module):
        def forward(self, x, y):
            sizes.append(tuple(x.shape[-2:]))
            return ((x - y) ** 2).mean(dim=(1, 2, 3))

    project(G, _targets(G, [1]), steps=2, perceptual=Recorder(), loss_size=16)
    assert set(sizes) == {(16, 16)}
    sizes.clear()
    project(G, _targets(G, [1]), steps=2, perceptual=Recorder())  # 32 px < 256: untouched
    assert set(sizes) == {(32, 32)}


def test_cold_start_from_latent_avg_or_estimated_mean(G, P):
    target = _targets(G, [1])
    res = project(G, target, steps=0, perceptual=P)
    assert torch.allclose(res.latents[0, 0], G.latent_avg)
    g2 = tiny_generator()
    g2.latent_avg.zero_()
    mean, std = latent_stats(g2, n=10000, seed=0)
    res = project(g2, target, steps=0, perceptual=P, seed=0)
    assert torch.allclose(res.latents[0, 0], mean)
    assert std > 0
    # cached until the mapping weights change
    assert torch.equal(latent_stats(g2, n=10000, seed=0)[0], mean)
    with torch.no_grad():
        g2.style[1].bias.add_(1.0)
    assert not torch.allclose(latent_stats(g2, n=10000, seed=0)[0], mean)


@pytest.mark.parametrize("steps, warm", [(1, True), (2, False), (4, True)])
def test_every_step_moves_the_latent(G, P, steps, warm):
    """Step 0 included: `--warm-steps 1` must not pay for a step that leaves the latent where it was,
    nor a cold `--steps 2` take a single real step (the references' schedule gives step 0 lr = 0)."""
    target = _targets(G, [5])
    init = None
    if warm:
        with torch.no_grad():
            w = G.mapping(torch.randn(1, G.style_dim, generator=torch.Generator().manual_seed(5)))
        init = w[:, None].repeat(1, G.n_latent, 1) + 0.3
    kw = dict(perceptual=P, init=init, evaluate=False)
    latents = [project(G, target, steps=0, **kw).latents]
    for stop in range(steps):  # the latent after step `stop` of a `steps`-step projection
        latents.append(project(G, target, steps=steps, callback=lambda i, _, stop=stop: i == stop, **kw).latents)
    moves = [float((b - a).abs().max()) for a, b in zip(latents, latents[1:])]
    assert min(moves) > 1e-4, moves


def test_schedule_and_noise_regularization():
    assert learning_rate(0.0, 0.1) == 0.0
    assert learning_rate(0.5, 0.1) == pytest.approx(0.1)
    assert learning_rate(0.025, 0.1) == pytest.approx(0.05)  # linear ramp-up over 5%
    assert learning_rate(0.875, 0.1) == pytest.approx(0.05)  # cosine ramp-down over the last 25%
    assert learning_rate(1.0, 0.1) == pytest.approx(0.0)
    g = torch.Generator().manual_seed(0)
    white = torch.randn(2, 1, 32, 32, generator=g)
    smooth = torch.nn.functional.interpolate(torch.randn(2, 1, 8, 8, generator=g), size=32, mode="bilinear")
    smooth = (smooth - smooth.mean()) / smooth.std()
    r_white, r_smooth = noise_regularization([white]), noise_regularization([smooth])
    assert r_white.shape == (2,) and torch.all(r_smooth > 100 * r_white)
    # per sample: a sample's penalty does not depend on the other
    assert torch.allclose(noise_regularization([white[:1]]), r_white[:1])
    assert math.isfinite(float(r_white.sum()))


def test_cached_target_features_give_the_same_loss_and_gradient():
    """The target's features computed once (bind_target) == the target through the trunk every call."""
    from engine.inversion.lpips import LPIPS, bind_target

    torch.manual_seed(0)
    lpips = LPIPS()
    x0, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    results = []
    for loss in (lambda x: lpips(x, y), bind_target(lpips, y)):
        x = x0.clone().requires_grad_(True)
        value = loss(x)
        value.sum().backward()
        results.append((value.detach(), x.grad))
    (v1, g1), (v2, g2) = results
    assert v1.shape == (2,) and g1.abs().sum() > 0
    assert torch.equal(v1, v2) and torch.equal(g1, g2)


def test_projection_with_cached_target_equals_plain_loss_calls(G, P):
    """project() over a loss without bind_target (called with the target each step) gives the same latents."""
    class Plain(torch.nn.Module):
        def forward(self, x, y):
            return P(x, y)

    target = _targets(G, [5, 6])
    cached = project(G, target, steps=15, perceptual=P, seed=2)
    plain = project(G, target, steps=15, perceptual=Plain(), seed=2)
    assert torch.equal(cached.latents, plain.latents)
    assert all(torch.equal(a, b) for a, b in zip(cached.noises, plain.noises))
    assert torch.equal(cached.history, plain.history)


def test_evaluate_false_skips_the_final_render_only(G, P):
    target = _targets(G, [4])
    full = project(G, target, steps=6, perceptual=P, seed=1)
    bare = project(G, target, steps=6, perceptual=P, seed=1, evaluate=False)
    assert bare.images is None and bare.losses == {}
    assert torch.equal(full.latents, bare.latents) and torch.equal(full.history, bare.history)
