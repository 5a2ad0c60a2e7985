"""Distil a VToonify-T from a blended Toonify generator, as VToonify's ``train_vtoonify_t.py`` trains one.

Teachers (frozen): the base generator G0 (real faces), the blended generator
G1 (the toon style: base and toon blended by layer), the face parser and the
Z+ style encoder, and editing directions (``directions.npy``). The student is a
VToonify-T whose StyleGAN layers are G1's (frozen); its encoder and fusion
blocks learn. Sizes follow G1's size S (1024 in the paper): frames enter at S/4
and leave at S (``out_scale`` 4) or S/2 (``out_scale`` 2: the student's
generator stops one layer early and its targets are downsampled).

Two stages, one iteration counter:

* **pretrain** (``pretrain_iters``): the encoder alone learns to give G1's 32x32
  feature and RGB skip (``return_feature_ind=6``) for the input of the image
  G0 renders from the same latent (MSE, no augmentation).
* **train** (``iters``): pairs (x, y): x = G0(w'), y = G1(w'') with w'' = G0's
  coarse code (W+ indices 0..6) and the style encoder's code of x for the
  rest; both warped by one mild random affine. The student maps x (plus its
  parsing map / 16) to y: non-saturating adversarial loss against a StyleGAN2
  discriminator at S/4 (logistic, weight ``adv``), MSE (``rec``), LPIPS at S/2
  (``perc``), and a temporal-consistency loss (``tmp``): the output of a random
  7/8 crop of the input must equal the same crop of the full output, its weight
  ramping up from 0 over the second half of the run (the reference's
  ``max(i / (iters / 2) - 1, 0)``).

Initialisation as the reference's: encoder and fusion convolutions
Kaiming-normal with zero biases; at the start of training the encoder is the
pretrain's EMA encoder and each fusion convolution is 0.01 times its init plus
the identity from G1's feature (so training starts from G1's rendering). An EMA
copy (decay 0.5 ** (32 / 10000) per step) of the encoder and fusion blocks is
the model saved. Adam(lr, betas 0.9/0.99) for both networks.

Reproducibility: every random draw of iteration i on rank r comes from
``iteration_generator(seed, i, r)`` (large noise maps from a device generator
it seeds), so a run resumed from a checkpoint continues exactly like the
uninterrupted one. Several processes: gradients are averaged by
``DistributedDataParallel`` (the caller initialises ``torch.distributed``).
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import asdict, dataclass, fields
from typing import Dict, List, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from engine.generator.stylegan2 import Discriminator, Generator, make_kernel, upfirdn2d
from engine.generator.training import accumulate, d_logistic_loss, g_nonsaturating_loss, iteration_generator

from .augment import random_affine
from .network import VToonify
from .stylize import PARSING_DIVISOR, STRUCTURE_LAYERS

__all__ = ["DistillConfig", "Teachers", "TeacherError", "Distiller", "downsample", "student_network", "generator_features",
           "encoder_features", "init_weights", "init_fusion_near_identity", "EMA_DECAY", "EDIT_LAYERS"]

EMA_DECAY = 0.5 ** (32 / (10 * 1000))
EDIT_LAYERS = slice(3, 7)  # W+ indices the editing directions move (w' = w + n)
FEATURE_RES = 32  # where the encoder hands over to G1's layers
CROP = 7 / 8  # the temporal loss's crop: 896 of 1024
SAMPLE_STREAM = 1 << 20  # the fixed sample batch's stream (ranks use 0..world-1)


@dataclass
class DistillConfig:
    iters: int = 2000  # training iterations (after the pretrain)
    pretrain_iters: int = 30000
    batch: int = 4
    pretrain_batch: int = 1
    lr: float = 1e-4
    adv: float = 0.01
    rec: float = 0.1
    perc: float = 0.01
    tmp: float = 1.0
    truncation: float = 0.5  # x' = G0(truncation * w'), towards 0 as the reference
    augment_p: float = 0.2
    out_scale: int = 4
    seed: int = 0

    def check(self) -> "DistillConfig":
        """Raise ValueError on values the distiller cannot use."""
        if self.iters < 0 or self.pretrain_iters < 0 or self.iters + self.pretrain_iters < 1:
            raise ValueError("iteration counts must be >= 0, and not both 0")
        if self.batch < 1 or self.pretrain_batch < 1:
            raise ValueError("batch sizes must be at least 1")
        if not self.lr > 0:
            raise ValueError("lr must be positive")
        for name in ("adv", "rec", "perc", "tmp"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"the {name} loss weight must be >= 0")
        if not 0 < self.truncation <= 1:
            raise ValueError("truncation must be in (0, 1]")
        if not 0 <= self.augment_p <= 1:
            raise ValueError("augment_p must be in [0, 1]")
        if self.out_scale not in (2, 4):
            raise ValueError(f"out_scale must be 4 or 2, got {self.out_scale}")
        return self

    @classmethod
    def from_dict(cls, values: Mapping) -> "DistillConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in dict(values).items() if k in names})


class TeacherError(ValueError):
    """Teachers that do not fit together; ``role``: the field at fault ("base", "directions", ...)."""

    def __init__(self, role: str, message: str):
        super().__init__(message)
        self.role = role


@dataclass
class Teachers:
    """The frozen networks the data comes from (all on one device, eval mode)."""

    base: Generator  # G0
    blended: Generator  # G1
    parser: nn.Module  # BiSeNet
    style_encoder: nn.Module  # Z+ pSp (engine.vtoonify.StyleEncoder)
    directions: torch.Tensor  # (K, >= 7, style_dim)

    def check(self) -> "Teachers":
        """Raise :class:`TeacherError` (naming the teacher at fault) when the networks do not fit together."""
        g0, g1 = self.base, self.blended
        if (g0.size, g0.style_dim, g0.n_latent) != (g1.size, g1.style_dim, g1.n_latent):
            raise TeacherError("blended", f"the base ({g0.size} px) and blended ({g1.size} px) generators differ")
        if g1.size < 256:
            raise TeacherError("base", f"VToonify needs a generator of at least 256 px; this one is {g1.size} px")
        d = self.directions
        if d.ndim != 3 or d.shape[0] < 1 or d.shape[1] < EDIT_LAYERS.stop or d.shape[2] != g0.style_dim:
            raise TeacherError("directions", f"editing directions must be (K, >= {EDIT_LAYERS.stop}, "
                                             f"{g0.style_dim}) for this generator, got {tuple(d.shape)}")
        n_styles = getattr(self.style_encoder, "n_styles", g1.n_latent)
        if n_styles != g1.n_latent:
            raise TeacherError("style_encoder", f"the style encoder gives {n_styles} codes, the {g1.size} px "
                                                f"generator takes {g1.n_latent}")
        for net in (g0, g1, self.parser, self.style_encoder):
            net.eval().requires_grad_(False)
        return self


# --------------------------------------------------------------------- pieces


def downsample(x: torch.Tensor) -> torch.Tensor:
    """Halve with the [1, 3, 3, 1] blur, as StyleGAN2's ``Downsample`` (the reference's anti-flicker blur)."""
    return upfirdn2d(x, make_kernel([1, 3, 3, 1]).to(x), down=2, pad=(1, 1))


def student_network(blended: Generator, out_scale: int = 4) -> VToonify:
    """A VToonify-T with G1's layers (frozen) up to ``size * out_scale / 4``; encoder and fusion untrained."""
    size = blended.size
    with torch.random.fork_rng(devices=[]):
        net = VToonify(in_size=size // 4, out_size=size * out_scale // 4, style_channels=blended.style_dim,
                       num_mlps=blended.n_mlp,
                       backbone="toonify", channels=dict(blended.channels))
    source = blended.state_dict()
    net.generator.load_state_dict({k: source[k] for k in net.generator.state_dict()}, strict=True)
    net.generator.conv_clamp = blended.conv_clamp
    net.generator.requires_grad_(False)
    return net.to(blended.input.input.device)


def init_weights(modules, generator: torch.Generator) -> None:
    """Kaiming-normal (fan in, gain sqrt 2) weights and zero biases for every Conv2d / Linear (``weights_init``)."""
    with torch.no_grad():
        for module in modules:
            for m in module.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    w = torch.empty(m.weight.shape)
                    nn.init.kaiming_normal_(w, a=0, mode="fan_in", generator=generator)
                    m.weight.copy_(w)
                    if m.bias is not None:
                        m.bias.zero_()


def init_fusion_near_identity(net: VToonify) -> None:
    """Fusion convolutions pass G1's feature (and skip) through: 0.01 * weight + identity on those channels."""
    with torch.no_grad():
        for conv in list(net.fusion_out) + list(net.fusion_skip):
            out = conv.weight.shape[0]
            conv.weight.mul_(0.01)
            conv.weight[:, :out, 1, 1] += torch.eye(out, device=conv.weight.device)


def generator_features(g: Generator, ws: torch.Tensor, noise: List[torch.Tensor], res: int = FEATURE_RES):
    """G's feature map and RGB skip after its ``res`` block (rosinality's ``return_feature_ind``)."""
    out = g.input(ws)
    out = g.conv1(out, ws[:, 0], noise=noise[0], clamp=g.conv_clamp)
    skip = g.to_rgb1(out, ws[:, 1], clamp=g.conv_clamp)
    i, block_res = 1, 8
    for conv1, conv2, to_rgb in zip(g.convs[::2], g.convs[1::2], g.to_rgbs):
        if block_res > res:
            break
        out = conv1(out, ws[:, i], noise=noise[i], clamp=g.conv_clamp)
        out = conv2(out, ws[:, i + 1], noise=noise[i + 1], clamp=g.conv_clamp)
        skip = to_rgb(out, ws[:, i + 2], skip, clamp=g.conv_clamp)
        i, block_res = i + 2, block_res * 2
    return out, skip


def encoder_features(net: VToonify, x: torch.Tensor):
    """The encoder's last feature and skip (VToonify's ``return_feat``), for VToonify-T."""
    feat = x
    for block in net.encoder[:-1]:
        feat = block(feat)
    return feat, net.encoder[-1](feat)


class _Student(nn.Module):
    """What DistributedDataParallel wraps: the student's forward, or its encoder alone (``feat``)."""

    def __init__(self, net: VToonify):
        super().__init__()
        self.net = net

    def forward(self, x, style=None, feat: bool = False):
        return encoder_features(self.net, x) if feat else self.net(x, style)


def _noise(g: Generator, n: int, rng: torch.Generator, max_res: Optional[int] = None) -> List[torch.Tensor]:
    sizes = [4] + [2 ** i for i in range(3, g.log_size + 1) for _ in range(2)]
    return [torch.randn(n, 1, s, s, generator=rng, device=rng.device) if max_res is None or s <= max_res
            else None for s in sizes]


def _device_generator(rng: torch.Generator, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded from ``rng`` (big noise maps are drawn where they are used)."""
    seed = int(torch.randint(0, 2 ** 62, (), generator=rng))
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class TrainBatch:
    inp: torch.Tensor  # (N, 22, S/4, S/4): frame, parsing / 16
    style: torch.Tensor  # (N, L, D) W+: w''
    target: torch.Tensor  # (N, 3, out, out): y
    crop_inp: torch.Tensor  # the 7/8 crop of the input (from the full-size frame)
    crop: tuple  # (top, left, size) of that crop in output pixels


# -------------------------------------------------------------------- distiller


class Distiller:
    """Pretrains then trains a VToonify-T student from ``teachers``; one :meth:`step` per iteration.

    ``perceptual``: an LPIPS module ((N,3,H,W) x 2 -> (N,)). ``world_size`` > 1:
    ``torch.distributed`` is initialised and this is process ``rank``.
    """

    def __init__(self, teachers: Teachers, config: DistillConfig, perceptual: nn.Module,
                 device="cpu", rank: int = 0, world_size: int = 1):
        self.t = teachers.check()
        self.config = cfg = config.check()
        self.device = torch.device(device)
        self.perceptual = perceptual.eval().requires_grad_(False)
        self.rank, self.world_size = int(rank), int(world_size)
        self.size = self.t.blended.size
        self.net = student_network(self.t.blended, cfg.out_scale).to(self.device)
        init_weights([self.net.encoder, self.net.fusion_out, self.net.fusion_skip], self._init_rng(0))
        self.g_ema = copy.deepcopy(self.net).eval()
        self.iteration = 0
        self.d: Optional[Discriminator] = None
        self.d_optim = None
        self._enter("pretrain" if cfg.pretrain_iters > 0 else "train")

    # -- stages --------------------------------------------------------------

    @property
    def total(self) -> int:
        return self.config.pretrain_iters + self.config.iters

    def _init_rng(self, what: int) -> torch.Generator:
        return iteration_generator(self.config.seed, what, SAMPLE_STREAM + 1)

    def _trainable(self, net: VToonify) -> List[nn.Module]:
        return [net.encoder] + ([net.fusion_out, net.fusion_skip] if self.stage == "train" else [])

    def _enter(self, stage: str, fresh: bool = True) -> None:
        """Set up a stage: what learns, its optimiser, the discriminator (train); ``fresh``: its initial weights."""
        self.stage = stage
        net, cfg = self.net, self.config
        if stage == "train" and fresh:
            with torch.no_grad():
                net.encoder.load_state_dict(self.g_ema.encoder.state_dict())  # the pretrain's EMA encoder
            init_weights([net.fusion_out, net.fusion_skip], self._init_rng(1))
            init_fusion_near_identity(net)
            accumulate(self.g_ema.fusion_out, net.fusion_out, 0.0)
            accumulate(self.g_ema.fusion_skip, net.fusion_skip, 0.0)
            accumulate(self.g_ema.encoder, net.encoder, 0.0)
        net.requires_grad_(False)
        params = [p for m in self._trainable(net) for p in m.parameters()]
        for p in params:
            p.requires_grad_(True)
        self.optim = torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.99))
        self.student = self._parallel(_Student(net))
        if stage == "train":
            ch = {r: c for r, c in self.t.blended.channels.items() if r <= net.in_size}
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2 ** 62, (), generator=self._init_rng(2))))
                self.d = Discriminator(net.in_size, channels=ch).to(self.device)
            self.d_optim = torch.optim.Adam(self.d.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
            self.d_parallel = self._parallel(self.d)

    def _parallel(self, module: nn.Module) -> nn.Module:
        if self.world_size <= 1:
            return module
        ddp = nn.parallel.DistributedDataParallel
        ids = [self.device.index] if self.device.type == "cuda" else None
        # buffers (noise maps, blur kernels) are equal everywhere: no need to send them every forward
        quiet = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
            else "broadcast_buffers"
        return ddp(module, device_ids=ids, **{quiet: False})

    def tmp_weight(self, iteration: int) -> float:
        """The temporal loss's ramp at a (global) iteration: 0 over the first half of training, then up to ~1."""
        i = iteration - self.config.pretrain_iters
        return max(i / (self.config.iters / 2.0) - 1, 0.0) * self.config.tmp if self.config.iters else 0.0

    # -- data ----------------------------------------------------------------

    def _edited_latents(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """w' = w + n: random W of G0 repeated over W+, an editing direction added on W+ indices 3..6."""
        g0, dirs = self.t.base, self.t.directions
        z = torch.randn(n, g0.style_dim, generator=rng).to(self.device)
        pick = torch.randint(0, dirs.shape[0], (n,), generator=rng)
        w = g0.style(z).unsqueeze(1).repeat(1, g0.n_latent, 1)
        w[:, EDIT_LAYERS] += dirs[pick.to(dirs.device), EDIT_LAYERS].to(w)
        return w

    def _frame_input(self, frame: torch.Tensor):
        """(S/4 input with its parsing map / 16, the parsing logits at S/2) of frames at S."""
        half = downsample(frame)
        parsing = self.t.parser(2 * half)[0]
        return torch.cat((downsample(half), downsample(parsing) / PARSING_DIVISOR), 1), parsing

    @torch.no_grad()
    def pretrain_batch(self, n: int, rng: torch.Generator):
        """(input, G1's 32x32 feature, G1's 32x32 skip) for ``n`` random faces."""
        dev_rng = _device_generator(rng, self.device)
        ws = self.config.truncation * self._edited_latents(n, rng)
        frame = self.t.base.synthesis(ws, noise=_noise(self.t.base, n, dev_rng)).clamp(-1, 1)
        inp, _ = self._frame_input(frame)
        feat, skip = generator_features(self.t.blended, ws, _noise(self.t.blended, n, dev_rng, FEATURE_RES))
        return inp, feat, skip

    @torch.no_grad()
    def train_batch(self, n: int, rng: torch.Generator) -> TrainBatch:
        """A pair (x, y, w'') as the reference generates it, augmented, with the temporal loss's crop."""
        t, cfg, size = self.t, self.config, self.size
        dev_rng = _device_generator(rng, self.device)
        w = self._edited_latents(n, rng)
        frame = t.base.synthesis(cfg.truncation * w, noise=_noise(t.base, n, dev_rng)).clamp(-1, 1)
        codes = t.style_encoder(F.adaptive_avg_pool2d(frame, t.style_encoder.input_size))
        coded = t.blended.style(codes.reshape(-1, codes.shape[2])).reshape(codes.shape)
        style = torch.cat((cfg.truncation * w[:, :STRUCTURE_LAYERS], coded[:, STRUCTURE_LAYERS:]), 1)
        toon = t.blended.synthesis(style, noise=_noise(t.blended, n, dev_rng)).clamp(-1, 1)
        pair = random_affine(torch.cat((frame, toon), 1), cfg.augment_p, rng)
        frame, target = pair[:, :3], pair[:, 3:]
        inp, parsing = self._frame_input(frame)
        if cfg.out_scale == 2:
            target = downsample(target)
        parsing = F.interpolate(parsing, scale_factor=2, mode="nearest")  # back to S, as the reference
        step = 4 // cfg.out_scale  # frame pixels per output pixel
        out_crop = int(round(self.net.out_size * CROP))
        top, left = (int(v) for v in torch.randint(0, self.net.out_size - out_crop + 1, (2,), generator=rng))
        rows = slice(top * step, (top + out_crop) * step)
        cols = slice(left * step, (left + out_crop) * step)
        crop = torch.cat((frame[:, :, rows, cols], parsing[:, :, rows, cols] / PARSING_DIVISOR), 1)
        return TrainBatch(inp, style, target, downsample(downsample(crop)), (top, left, out_crop))

    # -- one iteration -------------------------------------------------------

    def step(self) -> Dict[str, float]:
        """One iteration of the current stage (moving to training when the pretrain is done); returns its losses."""
        if self.stage == "pretrain" and self.iteration >= self.config.pretrain_iters:
            self._enter("train")
        rng = iteration_generator(self.config.seed, self.iteration, self.rank)
        logs = self._pretrain_step(rng) if self.stage == "pretrain" else self._train_step(rng)
        self.iteration += 1
        return self._mean_over_ranks(logs)

    def _pretrain_step(self, rng: torch.Generator) -> Dict[str, torch.Tensor]:
        inp, feat, skip = self.pretrain_batch(self.config.pretrain_batch, rng)
        fake_feat, fake_skip = self.student(inp, feat=True)
        loss = F.mse_loss(fake_feat, feat) + F.mse_loss(fake_skip, skip)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        accumulate(self.g_ema.encoder, self.net.encoder, EMA_DECAY)
        return {"feat": loss.detach()}

    def _train_step(self, rng: torch.Generator) -> Dict[str, torch.Tensor]:
        cfg, net, d = self.config, self.net, self.d
        b = self.train_batch(cfg.batch, rng)
        at = net.in_size

        with torch.no_grad():
            fake = net(b.inp, b.style)
        fake_pred = self.d_parallel(F.adaptive_avg_pool2d(fake, at))
        real_pred = d(F.adaptive_avg_pool2d(b.target, at))
        d_loss = d_logistic_loss(real_pred, fake_pred) * cfg.adv
        self.d_optim.zero_grad(set_to_none=True)
        d_loss.backward()
        self.d_optim.step()

        d.requires_grad_(False)
        fake = self.student(b.inp, b.style)
        g_loss = g_nonsaturating_loss(d(F.adaptive_avg_pool2d(fake, at))) * cfg.adv
        rec = F.mse_loss(fake, b.target) * cfg.rec
        half = self.size // 2
        perc = self.perceptual(F.adaptive_avg_pool2d(fake, half), F.adaptive_avg_pool2d(b.target, half)).sum() \
            * cfg.perc
        ramp = self.tmp_weight(self.iteration)
        tmp = fake.new_zeros(())
        if ramp > 0:  # the reference computes it times 0 before; skipping changes nothing but the time
            top, left, c = b.crop
            tmp = ((net(b.crop_inp, b.style) - fake[:, :, top:top + c, left:left + c]) ** 2).mean() * ramp
        self.optim.zero_grad(set_to_none=True)
        (g_loss + rec + perc + tmp).backward()
        self.optim.step()
        d.requires_grad_(True)
        for name in ("encoder", "fusion_out", "fusion_skip"):
            accumulate(getattr(self.g_ema, name), getattr(net, name), EMA_DECAY)
        return {"d": d_loss.detach(), "g": g_loss.detach(), "rec": rec.detach(), "perc": perc.detach(),
                "tmp": tmp.detach()}

    def _mean_over_ranks(self, logs: Dict[str, torch.Tensor]) -> Dict[str, float]:
        values = torch.stack([v.float() for v in logs.values()])
        if self.world_size > 1:
            torch.distributed.all_reduce(values)
            values /= self.world_size
        return dict(zip(logs, values.tolist()))

    @torch.no_grad()
    def samples(self, n: int = 4):
        """(targets, g_ema outputs) of a fixed batch of pairs, to watch training."""
        b = self.train_batch(n, iteration_generator(self.config.seed, 0, SAMPLE_STREAM))
        return b.target, self.g_ema(b.inp, b.style).clamp(-1, 1)

    # -- checkpoints ---------------------------------------------------------

    def vtoonify_state(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """The model as the reference saves it: ``{"g_ema": VToonify state dict}``."""
        return {"g_ema": {k: v.detach().cpu() for k, v in self.g_ema.state_dict().items()}}

    def pretrain_state(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """The pretrained encoder as the reference's ``pretrain.pt``: ``{"g_ema": encoder state dict}``."""
        return {"g_ema": {k: v.detach().cpu() for k, v in self.g_ema.encoder.state_dict().items()}}

    def state_dict(self) -> Dict:
        """Everything resuming needs (tensors and plain data; ``g_ema`` in the reference's layout)."""
        learned = ("encoder.", "fusion_out.", "fusion_skip.")
        state = {"stage": self.stage, "iter": self.iteration, "config": asdict(self.config),
                 "student": {k: v for k, v in self.net.state_dict().items() if k.startswith(learned)},
                 "g_ema": self.g_ema.state_dict(), "optim": self.optim.state_dict()}
        if self.d is not None:
            state.update(d=self.d.state_dict(), d_optim=self.d_optim.state_dict())
        return state

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a state written by :meth:`state_dict` (same teachers and config)."""
        if state["stage"] not in ("pretrain", "train"):
            raise ValueError(f"unknown stage {state['stage']!r}")
        self.net.load_state_dict(state["student"], strict=False)
        self.g_ema.load_state_dict(state["g_ema"], strict=True)
        if state["stage"] != self.stage:
            self._enter(state["stage"], fresh=False)
        self.optim.load_state_dict(state["optim"])
        if self.stage == "train":
            self.d.load_state_dict(state["d"])
            self.d_optim.load_state_dict(state["d_optim"])
        self.iteration = int(state["iter"])

