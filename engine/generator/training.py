"""Transfer-learning fine-tune of a StyleGAN2 generator (the Toonify "toon" model).

StyleGAN2's recipe, as in rosinality's ``train.py`` and NVIDIA's
stylegan2-ada ``loss.py``: non-saturating logistic loss, lazy R1 on the
discriminator (every ``d_reg_every`` iterations, weighted by that interval),
lazy path-length regularisation on the generator (every ``g_reg_every``), style
mixing, an EMA copy of the generator (the one saved as ``g_ema`` and used by
the engine), and optional differentiable augmentation (flip, translation,
brightness, saturation) with a fixed or ADA-style adaptive probability for
small data sets. Starting from the base model and stopping after a few
thousand iterations keeps the low-resolution layers aligned with the base,
which layer swapping relies on.

Reproducibility: every random draw of iteration ``i`` (latents, mixing cut,
noise maps, augmentation, path-length probe) comes from a generator seeded
with ``(seed, i)``; nothing reads the global RNGs. A run saved at iteration N
and resumed therefore continues exactly like the uninterrupted run.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import autograd, nn

__all__ = [
    "TrainConfig",
    "Trainer",
    "d_logistic_loss",
    "g_nonsaturating_loss",
    "d_r1_penalty",
    "path_length_penalty",
    "augment",
    "accumulate",
    "iteration_generator",
    "read_checkpoint_dict",
    "discriminator_channels",
]


@dataclass
class TrainConfig:
    batch: int = 4
    lr: float = 0.002
    r1: float = 10.0
    path_regularize: float = 2.0
    path_batch_shrink: int = 2
    d_reg_every: int = 16
    g_reg_every: int = 4
    mixing: float = 0.9
    # EMA half-life in thousands of images; None = batch * 10 / 32, i.e. a
    # half-life of ~312 iterations whatever the batch (rosinality's fixed
    # 0.5 ** (32 / 10000) per step, NVIDIA's "auto" config).
    ema_kimg: Optional[float] = None
    augment: bool = False
    # Fixed augmentation probability; None = adaptive (ADA): p follows the
    # sign of D(real), aiming at ada_target, moving by at most 1 per ada_kimg
    # thousand images (100 as in StyleGAN3's train.py: fast enough for short
    # fine-tunes), re-tuned every ada_every iterations.
    augment_p: Optional[float] = None
    ada_target: float = 0.6
    ada_kimg: float = 100.0
    ada_every: int = 4
    seed: int = 0

    def check(self) -> "TrainConfig":
        """Raise ValueError on values the trainer cannot use."""
        if self.batch < 1:
            raise ValueError("batch must be at least 1")
        if not self.lr > 0:
            raise ValueError("lr must be positive")
        if self.d_reg_every < 1 or self.g_reg_every < 1 or self.ada_every < 1 or self.path_batch_shrink < 1:
            raise ValueError("d_reg_every, g_reg_every, ada_every and path_batch_shrink must be at least 1")
        if not 0 <= self.mixing <= 1:
            raise ValueError("mixing must be in [0, 1]")
        if self.augment_p is not None and not 0 <= self.augment_p <= 1:
            raise ValueError("augment_p must be in [0, 1]")
        if self.ema_kimg is not None and self.ema_kimg < 0:
            raise ValueError("ema_kimg must be >= 0")
        return self

    @property
    def ema_decay(self) -> float:
        kimg = self.batch * 10 / 32 if self.ema_kimg is None else self.ema_kimg
        return 0.5 ** (self.batch / (kimg * 1000)) if kimg > 0 else 0.0

    @classmethod
    def from_dict(cls, values: Mapping) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(values).items() if k in names})


# ----------------------------------------------------------------------- losses


def d_logistic_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    return F.softplus(-real_pred).mean() + F.softplus(fake_pred).mean()


def g_nonsaturating_loss(fake_pred: torch.Tensor) -> torch.Tensor:
    return F.softplus(-fake_pred).mean()


def d_r1_penalty(real_pred: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    (grad,) = autograd.grad(real_pred.sum(), real_img, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def path_length_penalty(fake_img: torch.Tensor, latents: torch.Tensor, mean_path_length: torch.Tensor,
                        generator: Optional[torch.Generator] = None, decay: float = 0.01):
    """StyleGAN2's path-length regulariser; returns (penalty, new running mean, path lengths).

    ``generator`` draws the random image-space probe (the global RNG when None).
    The running mean is detached (as NVIDIA's ``pl_mean`` buffer).
    """
    probe = torch.randn(fake_img.shape, generator=generator).to(fake_img)
    probe = probe / math.sqrt(fake_img.shape[2] * fake_img.shape[3])
    (grad,) = autograd.grad((fake_img * probe).sum(), latents, create_graph=True)
    lengths = torch.sqrt(grad.pow(2).sum(2).mean(1))
    new_mean = mean_path_length.to(lengths) + decay * (lengths.mean().detach() - mean_path_length.to(lengths))
    return (lengths - new_mean).pow(2).mean(), new_mean.detach(), lengths


def augment(images: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Differentiable x-flip, translation (reflected borders), brightness and saturation.

    Each transform is applied to each image with probability ``p``; all draws
    come from ``generator``. p == 0 returns the images unchanged.
    """
    if p <= 0:
        return images
    n, _, h, w = images.shape
    dev, dt = images.device, images.dtype

    def chance():
        return (torch.rand(n, 1, 1, 1, generator=generator) < p).to(dev, dt)

    out = images + chance() * (images.flip(3) - images)
    shift = min(h, w) // 8
    if shift > 0:
        dx, dy = torch.randint(-shift, shift + 1, (2, n), generator=generator).tolist()
        padded = F.pad(out, (shift, shift, shift, shift), mode="reflect")
        moved = torch.stack([padded[i, :, shift + dy[i]:shift + dy[i] + h, shift + dx[i]:shift + dx[i] + w]
                             for i in range(n)])
        out = out + chance() * (moved - out)
    bright = ((torch.rand(n, 1, 1, 1, generator=generator) - 0.5) * 0.4).to(dev, dt)
    out = out + chance() * bright
    mean = out.mean(1, keepdim=True)
    sat = (torch.rand(n, 1, 1, 1, generator=generator) + 0.5).to(dev, dt)
    out = out + chance() * ((out - mean) * sat + mean - out)
    return out


def accumulate(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, parameter by parameter."""
    with torch.no_grad():
        for e, m in zip(ema.parameters(), model.parameters()):
            e.mul_(decay).add_(m.detach(), alpha=1 - decay)


def iteration_generator(seed: int, iteration: int, stream: int = 0) -> torch.Generator:
    """A CPU torch.Generator that depends only on (seed, iteration, stream)."""
    state = np.random.SeedSequence([int(seed), int(iteration), int(stream)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# ---------------------------------------------------------------- checkpoints


def read_checkpoint_dict(path) -> Optional[dict]:
    """The top-level dict of a rosinality ``.pt`` file (tensors only, no code), or None for other formats.

    rosinality's training checkpoints carry their ``argparse.Namespace`` in
    ``args``; it is allowed (as plain data) and dropped.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save zip files and pre-1.6 torch files; NVIDIA pickles hold no rosinality D
    if head != b"PK\x03\x04" and head != b"\x80\x02\x8a\x0a":
        return None
    safe = getattr(torch.serialization, "safe_globals", None)
    ctx = safe([argparse.Namespace]) if safe is not None else contextlib.nullcontext()
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict):
        return None
    obj.pop("args", None)
    return obj


def discriminator_channels(state: Mapping[str, torch.Tensor], size: int) -> Dict[int, int]:
    """Channels per resolution of a rosinality Discriminator state dict for images of ``size``."""
    chans = {size: int(state["convs.0.0.weight"].shape[0])}
    res, block = size, 1
    while res > 4:
        chans[res // 2] = int(state[f"convs.{block}.conv2.1.weight"].shape[0])
        res //= 2
        block += 1
    return chans


# -------------------------------------------------------------------- trainer


class Trainer:
    """Fine-tunes `generator` against `discriminator` on batches of real images in [-1, 1].

    ``generator`` and ``discriminator`` are trained in place; ``g_ema`` (a copy
    of the generator unless given) follows them as an exponential moving
    average. Modules may come from ``engine.generator.checkpoints.load_generator``
    (eval mode, no grad): the trainer switches them to training itself.
    """

    def __init__(self, generator, discriminator, config: Optional[TrainConfig] = None, g_ema=None):
        self.config = cfg = (config or TrainConfig()).check()
        self.g = generator.train().requires_grad_(True)
        self.d = discriminator.train().requires_grad_(True)
        self.g_ema = g_ema if g_ema is not None else copy.deepcopy(generator)
        self.g_ema.eval().requires_grad_(False)
        g_ratio = cfg.g_reg_every / (cfg.g_reg_every + 1)
        d_ratio = cfg.d_reg_every / (cfg.d_reg_every + 1)
        self.g_optim = torch.optim.Adam(self.g.parameters(), lr=cfg.lr * g_ratio, betas=(0.0, 0.99 ** g_ratio))
        self.d_optim = torch.optim.Adam(self.d.parameters(), lr=cfg.lr * d_ratio, betas=(0.0, 0.99 ** d_ratio))
        self.iteration = 0
        self.mean_path_length = torch.zeros(())
        self.augment_p = float(cfg.augment_p) if cfg.augment_p is not None else 0.0
        self._ada_signs = 0.0
        self._ada_count = 0

    @property
    def device(self):
        return next(self.g.parameters()).device

    # -- random draws (all from the iteration's generator) -------------------

    def _latents(self, batch: int, rng: torch.Generator):
        """Style-mixing z list and its crossover index, as rosinality's mixing_noise."""
        dim = self.g.style_dim
        mix = self.config.mixing > 0 and torch.rand((), generator=rng).item() < self.config.mixing
        z = [torch.randn(batch, dim, generator=rng).to(self.device) for _ in range(2 if mix else 1)]
        inject = int(torch.randint(1, self.g.n_latent, (), generator=rng)) if mix else None
        return z, inject

    def _noise(self, batch: int, rng: torch.Generator) -> List[torch.Tensor]:
        """Fresh per-sample noise maps (what randomize_noise=True draws, but reproducibly)."""
        sizes = [4] + [2 ** i for i in range(3, self.g.log_size + 1) for _ in range(2)]
        return [torch.randn(batch, 1, s, s, generator=rng).to(self.device) for s in sizes]

    def _fake(self, batch: int, rng: torch.Generator, return_latents: bool = False):
        z, inject = self._latents(batch, rng)
        return self.g(z, return_latents=return_latents, inject_index=inject, noise=self._noise(batch, rng))

    def _aug(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        return augment(images, self.augment_p, rng) if self.config.augment else images

    def _tune_ada(self, real_pred: torch.Tensor) -> None:
        cfg = self.config
        if not cfg.augment or cfg.augment_p is not None:
            return
        self._ada_signs += float(torch.sign(real_pred.detach()).sum())
        self._ada_count += int(real_pred.shape[0])
        if (self.iteration + 1) % cfg.ada_every == 0 and self._ada_count:
            r_t = self._ada_signs / self._ada_count
            step = self._ada_count / (cfg.ada_kimg * 1000)
            self.augment_p = min(1.0, max(0.0, self.augment_p + (step if r_t > cfg.ada_target else -step)))
            self._ada_signs, self._ada_count = 0.0, 0

    # -- one iteration -------------------------------------------------------

    def step(self, real: torch.Tensor) -> Dict[str, float]:
        """One iteration (D step, lazy R1, G step, lazy path length, EMA); returns the losses."""
        cfg, i = self.config, self.iteration
        rng = iteration_generator(cfg.seed, i)
        real = real.to(self.device, torch.float32)
        batch = real.shape[0]
        logs: Dict[str, float] = {}

        self.g.requires_grad_(False)
        self.d.requires_grad_(True)
        with torch.no_grad():
            fake, _ = self._fake(batch, rng)
        real_pred = self.d(self._aug(real, rng))
        fake_pred = self.d(self._aug(fake, rng))
        d_loss = d_logistic_loss(real_pred, fake_pred)
        self.d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optim.step()
        logs["d"] = d_loss.item()
        logs["real_score"] = real_pred.mean().item()
        logs["fake_score"] = fake_pred.mean().item()
        self._tune_ada(real_pred)

        if cfg.r1 > 0 and i % cfg.d_reg_every == 0:
            real_r1 = real.detach().clone().requires_grad_(True)
            pred = self.d(self._aug(real_r1, rng))
            r1 = d_r1_penalty(pred, real_r1)
            self.d.zero_grad(set_to_none=True)
            (cfg.r1 / 2 * r1 * cfg.d_reg_every).backward()
            self.d_optim.step()
            logs["r1"] = r1.item()

        self.g.requires_grad_(True)
        self.d.requires_grad_(False)
        fake, _ = self._fake(batch, rng)
        g_loss = g_nonsaturating_loss(self.d(self._aug(fake, rng)))
        self.g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.g_optim.step()
        logs["g"] = g_loss.item()

        if cfg.path_regularize > 0 and i % cfg.g_reg_every == 0:
            path_batch = max(1, batch // cfg.path_batch_shrink)
            fake, latents = self._fake(path_batch, rng, return_latents=True)
            penalty, self.mean_path_length, lengths = path_length_penalty(
                fake, latents, self.mean_path_length, generator=rng)
            self.g.zero_grad(set_to_none=True)
            (cfg.path_regularize * cfg.g_reg_every * penalty).backward()
            self.g_optim.step()
            logs["path"] = penalty.item()
            logs["path_length"] = lengths.mean().item()

        accumulate(self.g_ema, self.g, cfg.ema_decay)
        self.d.requires_grad_(True)
        if cfg.augment:
            logs["augment_p"] = self.augment_p
        self.iteration += 1
        return logs

    @torch.no_grad()
    def evaluate(self, real: torch.Tensor, z: torch.Tensor, generator: Optional[nn.Module] = None
                 ) -> Dict[str, float]:
        """Losses on fixed inputs without training: D loss of (real, G(z)) and G's loss on G(z).

        No augmentation, stored noise maps; ``generator`` defaults to the trained G.
        """
        g = self.g if generator is None else generator
        fake, _ = g([z.to(self.device)], randomize_noise=False)
        real_pred = self.d(real.to(self.device, torch.float32))
        fake_pred = self.d(fake)
        return {"d": d_logistic_loss(real_pred, fake_pred).item(), "g": g_nonsaturating_loss(fake_pred).item(),
                "real_score": real_pred.mean().item(), "fake_score": fake_pred.mean().item()}

    def refresh_latent_avg(self, samples: int = 4096) -> None:
        """Recompute g_ema.latent_avg: fine-tuning moves the mapping network's mean."""
        z = torch.randn(samples, self.g_ema.style_dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            self.g_ema.latent_avg.copy_(self.g_ema.mapping(z.to(self.device)).mean(0))

    # -- checkpoints ---------------------------------------------------------

    def state_dict(self) -> Dict:
        """rosinality's checkpoint keys (g, d, g_ema, g_optim, d_optim, ada_aug_p) plus what resuming needs.

        Everything is a tensor or plain data, so ``torch.load(weights_only=True)`` reads it
        and ``engine.generator.checkpoints.load_generator`` loads its ``g_ema``.
        """
        return {"g": self.g.state_dict(), "d": self.d.state_dict(), "g_ema": self.g_ema.state_dict(),
                "g_optim": self.g_optim.state_dict(), "d_optim": self.d_optim.state_dict(),
                "latent_avg": self.g_ema.latent_avg.detach().clone(), "iter": self.iteration,
                "mean_path_length": self.mean_path_length.detach().clone(),
                "ada_aug_p": float(self.augment_p),
                "ada_stats": [float(self._ada_signs), int(self._ada_count)],
                "train_config": asdict(self.config)}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a state written by :meth:`state_dict` (or a rosinality training checkpoint)."""
        self.g.load_state_dict(state["g"])
        self.d.load_state_dict(state["d"])
        self.g_ema.load_state_dict(state["g_ema"])
        if "latent_avg" in state and isinstance(state["latent_avg"], torch.Tensor):
            with torch.no_grad():
                self.g_ema.latent_avg.copy_(state["latent_avg"].reshape(-1))
        if "g_optim" in state:
            self.g_optim.load_state_dict(state["g_optim"])
        if "d_optim" in state:
            self.d_optim.load_state_dict(state["d_optim"])
        self.iteration = int(state.get("iter", 0))
        self.mean_path_length = torch.as_tensor(state.get("mean_path_length", 0.0), dtype=torch.float32).clone()
        if self.config.augment_p is None:
            self.augment_p = float(state.get("ada_aug_p", 0.0))
        signs, count = state.get("ada_stats", [0.0, 0])
        self._ada_signs, self._ada_count = float(signs), int(count)
