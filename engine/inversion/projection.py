"""GAN inversion: find W / W+ latents (and noise maps) that make a generator reproduce targets.

The optimisation follows rosinality's ``projector.py`` (itself after the
StyleGAN2 paper's projector): Adam over the latent and the per-layer noise maps,
a learning rate with a linear ramp-up and a cosine ramp-down, Gaussian noise on
the latent that decays to zero over the first 75% of a cold start
(exploration), multi-scale autocorrelation regularisation of the noise maps and
their renormalisation after each step; loss = perceptual (LPIPS) + ``pixel_weight``
* MSE + ``noise_regularize`` * noise regularisation.

Differences from rosinality, for video and batches:

* every loss is per sample and sample ``i`` draws its random numbers from its
  own stream seeded with ``seed + i``, so the faces of a batch are projected
  independently (projecting a batch equals projecting each face alone);
* a warm start (``init`` = the previous frame's latent) skips the latent-noise
  exploration and uses a gentler learning rate (``lr * warm_lr_scale``): the
  solution is nearby, and a full-size first Adam step would throw it away;
* images larger than ``loss_size`` (256) are area-downsampled before the losses,
  like rosinality's projector does for LPIPS;
* step ``i`` of ``steps`` reads the schedule (learning rate, latent noise) at
  ``t = (i + 0.5) / steps``, the middle of its share of the run. The references
  (rosinality's ``get_lr(i / step)``, NVIDIA's ``step / num_steps``) read it at
  its start, where the ramp-up makes the learning rate 0: their first step never
  moves the latent, so one warm step would change nothing and two cold steps
  would take one. Long runs keep the same curve, half a step earlier.

Cost of a step (what NVIDIA's projector also does): the constant target's
perceptual features are computed once per projection (``lpips.bind_target``),
not forward and backward every step; the final render and loss evaluation that
fill ``ProjectionResult.images``/``losses`` can be skipped (``evaluate=False``)
by callers that only need the latents.  The generator renders at full size:
in W+ the layers above ``loss_size`` still shape the downsampled image (their
latents and noise maps are fitted through it, and the product renders them),
so stopping the synthesis at 256 would be a different, worse projection
(bench/bench_projection.py measures what those layers cost and change).
"""

from __future__ import annotations

import math
import numbers
import weakref
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .lpips import bind_target

__all__ = [
    "ProjectionResult",
    "Schedule",
    "COLD_SCHEDULE",
    "warm_schedule",
    "learning_rate",
    "noise_regularization",
    "normalize_noises_",
    "latent_stats",
    "project",
]

LossCallback = Callable[[int, "dict[str, torch.Tensor]"], "bool | None"]


@dataclass
class ProjectionResult:
    """Outcome of :func:`project` (all tensors detached, on the generator's device).

    latents: (N, n_latent, D) in W+ form (a W projection is repeated over layers);
    noises: per-layer noise maps, each (N, 1, r, r); images: (N, 3, S, S) rendered
    from latents + noises; losses: per-sample (N,) losses at the final latents
    (keys "perceptual", "mse", "noise", "total"); images None and losses empty
    when project() ran with evaluate=False; steps: iterations run;
    history: (steps, N) total loss at each iteration.
    """

    latents: torch.Tensor
    noises: list[torch.Tensor]
    images: torch.Tensor | None
    losses: dict[str, torch.Tensor]
    steps: int = 0
    history: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


@dataclass(frozen=True)
class Schedule:
    """Optimisation schedule; ramps are fractions of the step budget."""

    lr: float
    rampup: float = 0.05
    rampdown: float = 0.25
    latent_noise: float = 0.05  # initial latent noise, in units of the W std
    noise_ramp: float = 0.75


COLD_SCHEDULE = Schedule(lr=0.1)


def warm_schedule(lr: float, warm_lr_scale: float = 0.1) -> Schedule:
    """Warm start: no latent-noise exploration, smaller learning rate."""
    return Schedule(lr=lr * warm_lr_scale, rampup=0.05, rampdown=0.25, latent_noise=0.0, noise_ramp=0.75)


def learning_rate(t: float, initial_lr: float, rampdown: float = 0.25, rampup: float = 0.05) -> float:
    """rosinality's ``get_lr``: cosine ramp-down over the last ``rampdown``, linear ramp-up over ``rampup``."""
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp *= min(1.0, t / rampup)
    return initial_lr * ramp


def noise_regularization(noises: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample (N,) multi-scale autocorrelation penalty of noise maps (N,1,r,r)."""
    total = None
    for noise in noises:
        n = noise
        size = n.shape[2]
        while True:
            term = (n * torch.roll(n, shifts=1, dims=3)).mean(dim=(1, 2, 3)).pow(2) + (
                n * torch.roll(n, shifts=1, dims=2)
            ).mean(dim=(1, 2, 3)).pow(2)
            total = term if total is None else total + term
            if size <= 8:
                break
            n = n.reshape(n.shape[0], 1, size // 2, 2, size // 2, 2).mean(dim=(3, 5))
            size //= 2
    if total is None:
        raise ValueError("no noise maps")
    return total


@torch.no_grad()
def normalize_noises_(noises: Sequence[torch.Tensor]) -> None:
    """Renormalise each sample's noise map to zero mean, unit std, in place."""
    for noise in noises:
        mean = noise.mean(dim=(1, 2, 3), keepdim=True)
        std = noise.std(dim=(1, 2, 3), keepdim=True)
        noise.sub_(mean).div_(std.clamp_min(1e-8))


_STATS_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _mapping_signature(generator, n: int, seed: int):
    params = list(generator.style.parameters()) if hasattr(generator, "style") else list(generator.parameters())
    return (n, seed, str(_device_of(generator)), tuple((p.data_ptr(), p._version) for p in params))


@torch.no_grad()
def latent_stats(generator, n: int = 10000, seed: int = 0, batch: int = 2048) -> tuple[torch.Tensor, float]:
    """Mean W (D,) and rosinality's W spread ``sqrt(sum((w - mean)^2) / n)`` from ``n`` mapped z.

    Cached per generator until its mapping weights change.
    """
    sig = _mapping_signature(generator, n, seed)
    hit = _STATS_CACHE.get(generator)
    if hit is not None and hit[0] == sig:
        return hit[1].clone(), hit[2]
    mean, std = _latent_stats(generator, n, seed, batch)
    _STATS_CACHE[generator] = (sig, mean.clone(), std)
    return mean, std


def _latent_stats(generator, n: int, seed: int, batch: int) -> tuple[torch.Tensor, float]:
    device = _device_of(generator)
    g = torch.Generator().manual_seed(seed)
    d = generator.style_dim
    dtype = next(iter(generator.parameters())).dtype
    s1 = torch.zeros(d, dtype=torch.float64, device=device)
    ws = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        z = torch.randn(m, d, generator=g).to(device=device, dtype=dtype)
        w = generator.mapping(z).double()
        ws.append(w)
        s1 += w.sum(0)
    mean = s1 / n
    sq = sum(((w - mean) ** 2).sum() for w in ws)
    return mean.float(), float((sq / n) ** 0.5)


def _device_of(module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def _prepare_targets(targets: torch.Tensor, size: int, device) -> torch.Tensor:
    if not isinstance(targets, torch.Tensor) or targets.dim() != 4 or targets.shape[1] != 3:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"targets must be a (N,3,H,W) tensor in [-1,1], got {shape}")
    if targets.shape[0] == 0:
        raise ValueError("targets is an empty batch")
    t = targets.detach().to(device=device, dtype=torch.float32)
    if t.shape[-2:] != (size, size):
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t


def _to_loss_size(x: torch.Tensor, loss_size: int | None) -> torch.Tensor:
    if loss_size is None or x.shape[-1] <= loss_size:
        return x
    return F.interpolate(x, size=(loss_size, loss_size), mode="area")


def _initial_latent(generator, n: int, init, space: str, seed: int, n_mean_latent: int):
    """(latent (N,D) or (N,L,D), latent_std or None, warm: bool)."""
    device = _device_of(generator)
    n_latent, d = generator.n_latent, generator.style_dim
    if init is not None:
        w = torch.as_tensor(init).detach().to(device=device, dtype=torch.float32)
        if w.dim() == 1:
            w = w.unsqueeze(0)
        if w.dim() == 2 and w.shape[1] == d:
            if w.shape[0] != n:
                raise ValueError(f"init has {w.shape[0]} latents for {n} targets")
            w = w.unsqueeze(1).expand(n, n_latent, d)
        elif w.dim() == 3 and w.shape[1:] == (n_latent, d):
            if w.shape[0] != n:
                raise ValueError(f"init has {w.shape[0]} latents for {n} targets")
        else:
            raise ValueError(
                f"init must be (N,{d}) or (N,{n_latent},{d}) for this generator, got {tuple(w.shape)}"
            )
        # W space from a W+ init: the mean over layers
        latent = w.mean(dim=1) if space == "w" else w
        return latent.clone(), None, True
    avg = getattr(generator, "latent_avg", None)
    # fixed sample (not the projection seed): the start must not couple faces of a batch
    mean, std = latent_stats(generator, n=n_mean_latent, seed=0)
    if avg is not None and avg.numel() == d and bool(avg.abs().sum() > 0):
        mean = avg.detach().to(device=device, dtype=torch.float32).reshape(d)
    latent = mean.unsqueeze(0).repeat(n, 1)
    if space == "w+":
        latent = latent.unsqueeze(1).repeat(1, n_latent, 1)
    return latent, std, False


def project(
    generator,
    targets: torch.Tensor,
    *,
    steps: int,
    space: str = "w+",
    init: torch.Tensor | None = None,
    perceptual,
    pixel_weight: float = 0.1,
    noise_regularize: float = 1e5,
    lr: float = 0.1,
    seed: int | Sequence[int] = 0,
    callback: LossCallback | None = None,
    init_noises: Sequence[torch.Tensor] | None = None,
    optimize_noise: bool = True,
    warm_lr_scale: float = 0.1,
    schedule: Schedule | None = None,
    loss_size: int | None = 256,
    n_mean_latent: int = 10000,
    evaluate: bool = True,
) -> ProjectionResult:
    """Invert ``targets`` (N,3,H,W) in [-1,1] into ``generator``'s W or W+ space.

    Cold start (``init=None``) from ``generator.latent_avg`` (or the mean of
    ``n_mean_latent`` mapped z when it is zero) with latent-noise exploration;
    warm start from ``init`` ((N,D) or (N,n_latent,D), e.g. the previous frame's
    latents) with ``warm_schedule`` (no exploration, ``lr * warm_lr_scale``);
    ``schedule`` overrides either.  Noise maps start from ``init_noises`` (e.g.
    the previous frame's ``result.noises``), else from the generator's own noise
    buffers (what ``synthesis(ws, noise=None, randomize_noise=False)`` renders
    with); ``optimize_noise=False`` keeps them fixed.
    ``perceptual(x, y) -> (N,)``.  ``callback(step, losses)`` is called after
    every step with per-sample (N,) losses of that step; returning True stops.
    Deterministic given ``seed``; sample i uses the random stream ``seed + i``,
    or ``seed[i]`` when ``seed`` is a sequence of N per-sample seeds (so a sample
    draws the same numbers whatever batch it is projected in).
    ``evaluate=False`` skips the final render and loss evaluation: ``images`` is
    then None and ``losses`` empty (the pipeline renders with another generator).
    """
    if space not in ("w", "w+"):
        raise ValueError(f"space must be 'w' or 'w+', got {space!r}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    steps = int(steps)
    if perceptual is None:
        raise ValueError("a perceptual loss module is required (e.g. engine.inversion.lpips.load_lpips(...))")
    device = _device_of(generator)
    size = int(generator.size)
    target = _prepare_targets(targets, size, device)
    n = target.shape[0]
    target_l = _to_loss_size(target, loss_size)
    distance = bind_target(perceptual, target_l)  # the target's features, once

    if isinstance(seed, numbers.Integral):
        seeds = [int(seed) + i for i in range(n)]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"seed has {len(seeds)} per-sample seeds for {n} targets")
    latent, latent_std, warm = _initial_latent(generator, n, init, space, seeds[0], n_mean_latent)
    if schedule is None:
        schedule = warm_schedule(lr, warm_lr_scale) if warm else Schedule(lr=lr)
    rngs = [torch.Generator().manual_seed(s) for s in seeds]

    shapes = [tuple(t.shape[-2:]) for t in generator.make_noise()]
    if init_noises is None:
        # Start from the generator's own noise buffers (what synthesis(noise=None,
        # randomize_noise=False) renders with): N(0,1) like rosinality's fresh draw,
        # but the same for every frame, so warm starts and final renders agree.
        own = getattr(generator, "noises", None)
        if own is not None and all(hasattr(own, f"noise_{i}") for i in range(len(shapes))):
            init_noises = [getattr(own, f"noise_{i}") for i in range(len(shapes))]
    if init_noises is not None:
        if len(init_noises) != len(shapes):
            raise ValueError(f"init_noises has {len(init_noises)} maps, the generator needs {len(shapes)}")
        noises = []
        for t, shp in zip(init_noises, shapes):
            t = torch.as_tensor(t).detach().to(device=device, dtype=torch.float32)
            if t.dim() == 3:
                t = t.unsqueeze(1)
            if t.shape[0] == 1 and n > 1:
                t = t.expand(n, 1, *shp)
            if tuple(t.shape) != (n, 1, *shp):
                raise ValueError(f"init noise map has shape {tuple(t.shape)}, expected {(n, 1, *shp)}")
            noises.append(t.clone())
    else:
        noises = [
            torch.cat([torch.randn((1, 1, *shp), generator=rngs[i]) for i in range(n)]).to(device)
            for shp in shapes
        ]

    latent.requires_grad_(True)
    params = [latent]
    if optimize_noise:
        for t in noises:
            t.requires_grad_(True)
        params += noises
    optimizer = torch.optim.Adam(params, lr=schedule.lr)

    def render(w):
        ws = w.unsqueeze(1).expand(n, generator.n_latent, w.shape[-1]) if w.dim() == 2 else w
        return generator.synthesis(ws, noise=noises, randomize_noise=False)

    def losses_of(img):
        img_l = _to_loss_size(img, loss_size)
        p = distance(img_l)
        if p.dim() != 1 or p.shape[0] != n:
            p = p.reshape(n, -1).sum(dim=1)
        mse = ((img_l - target_l) ** 2).mean(dim=(1, 2, 3))
        nreg = noise_regularization(noises)
        total = p + noise_regularize * nreg + pixel_weight * mse
        return {"perceptual": p, "mse": mse, "noise": nreg, "total": total}

    frozen = [(p, p.requires_grad) for m in (generator, perceptual) if hasattr(m, "parameters") for p in m.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    history: list[torch.Tensor] = []
    done = 0
    try:
        for i in range(steps):
            t = (i + 0.5) / steps  # the middle of the step's share of the run: step 0 moves too
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(t, schedule.lr, schedule.rampdown, schedule.rampup)
            w_in = latent
            if latent_std is not None and schedule.latent_noise > 0:
                strength = latent_std * schedule.latent_noise * max(0.0, 1.0 - t / schedule.noise_ramp) ** 2
                if strength > 0:
                    eps = torch.cat([torch.randn((1, *latent.shape[1:]), generator=rngs[j]) for j in range(n)])
                    w_in = latent + eps.to(device) * strength
            losses = losses_of(render(w_in))
            optimizer.zero_grad(set_to_none=True)
            losses["total"].sum().backward()
            optimizer.step()
            if optimize_noise:
                normalize_noises_(noises)
            done = i + 1
            detached = {k: v.detach() for k, v in losses.items()}
            history.append(detached["total"])
            if callback is not None and callback(i, detached):
                break
        images, final = None, {}
        if evaluate:
            with torch.no_grad():
                images = render(latent.detach())
                final = {k: v.detach() for k, v in losses_of(images).items()}
    finally:
        for p, req in frozen:
            p.requires_grad_(req)

    w = latent.detach()
    if w.dim() == 2:
        w = w.unsqueeze(1).repeat(1, generator.n_latent, 1)
    return ProjectionResult(
        latents=w.clone(),
        noises=[t.detach().clone() for t in noises],
        images=images,
        losses=final,
        steps=done,
        history=torch.stack(history) if history else torch.zeros(0, n),
    )
