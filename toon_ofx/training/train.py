"""`toon-ofx train`: fine-tune a toon model from a base generator on a face dataset.

Checkpoints are rosinality `.pt` files (`g_ema`, `latent_avg`, plus `g`, `d`,
optimiser state and the iteration for resuming), so the engine loads them like
any other model and `toon-ofx blend` blends them with their base. At the end
the run also writes `toon.pt` (g_ema and latent_avg only) for blending.

Run folder layout::

    OUT/checkpoints/000500.pt ...   resumable checkpoints (every --save-every iterations)
    OUT/samples/000000.png ...      4x4 grids of g_ema from fixed latents (000000 = the base)
    OUT/log.jsonl                   one line of losses per iteration
    OUT/toon.pt                     the final generator, ready for `toon-ofx blend`
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from ..core import model_store
from ..core.errors import UserError

CACHE_BYTES = 1 << 30  # datasets up to 1 GiB (at model size) are kept in memory


class ImageBank:
    """The dataset's crops as training batches at the model's size.

    Small datasets are decoded once and kept in memory as uint8; large ones
    (the paper's 30k crops at 512 px are ~24 GB) are read from disk per batch.
    """

    def __init__(self, files: List[Path], size: int, mirror: bool = True, cache_bytes: int = CACHE_BYTES):
        if not files:
            raise UserError("the dataset holds no images", field="data")
        self.files = [Path(f) for f in files]
        self.size = int(size)
        self.mirror = bool(mirror)
        self.images: Optional[np.ndarray] = None
        self.upscaled = 0
        if len(self.files) * self.size * self.size * 3 <= cache_bytes:
            self.images = np.stack([self._read(f) for f in self.files])
        else:
            self._read(self.files[0])
        if self.upscaled:
            print(f"toon-ofx: warning: training images are smaller than the {self.size} px model and are "
                  "upscaled; build the dataset with --size equal to the model's size", file=sys.stderr)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, file: Path) -> np.ndarray:
        import cv2

        image = cv2.imread(str(file), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"cannot read training image {file}", field="data")
        if image.shape[:2] != (self.size, self.size):
            shrink = image.shape[0] > self.size
            self.upscaled += not shrink
            image = cv2.resize(image, (self.size, self.size),
                               interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def indices(self, iteration: int, batch: int, seed: int) -> List[int]:
        """Dataset indices of a batch: epochs of shuffled order, from (seed, iteration) alone."""
        n = len(self.files)
        out = []
        for k in range(iteration * batch, (iteration + 1) * batch):
            epoch, pos = divmod(k, n)
            out.append(int(np.random.default_rng([seed, epoch]).permutation(n)[pos]))
        return out

    def batch(self, iteration: int, batch: int, seed: int):
        """A batch chosen by (seed, iteration) alone, so a resumed run sees the same data."""
        import torch

        picks = self.indices(iteration, batch, seed)
        images = np.stack([self.images[i] if self.images is not None else self._read(self.files[i])
                           for i in picks])
        if self.mirror:  # x-flips double a face dataset (NVIDIA's --mirror)
            flips = np.random.default_rng([seed, iteration, 1]).random(batch) < 0.5
            images[flips] = images[flips, :, ::-1]
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
        return x / 127.5 - 1.0


def save_checkpoint(path: Path, trainer) -> Path:
    """Write a resumable checkpoint atomically (g_ema's latent_avg refreshed first)."""
    trainer.refresh_latent_avg()
    return write_torch(path, trainer.state_dict())


def write_torch(path: Path, obj) -> Path:
    """torch.save `obj` atomically (temp file, fsync, rename); UserError when the disk refuses."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write checkpoint {path}: {exc.strerror or exc}", field="output") from None
    return path


def sample_latents(style_dim: int, seed: int, count: int = 16):
    import torch

    return torch.randn(count, style_dim, generator=torch.Generator().manual_seed(seed + 12345))


def save_samples(path: Path, g_ema, z) -> Path:
    """A grid of images from fixed latents and the stored noise maps, to watch the style emerge."""
    import torch

    with torch.no_grad():
        images, _ = g_ema([z.to(next(g_ema.parameters()).device)], randomize_noise=False)
    return write_grid(path, images)


def write_grid(path: Path, images, cols: Optional[int] = None) -> Path:
    """Images (N, 3, H, W) in [-1, 1] as one picture, `cols` to a row (default: a square grid)."""
    from ..core import media

    images = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    cols = cols or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / cols))
    size = images.shape[1]
    grid = np.zeros((rows * size, cols * size, 3), np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * size:(r + 1) * size, c * size:(c + 1) * size] = image
    return media.write_frame(Path(path), grid, fsync=False)


def _checkpoint_error(exc) -> UserError:
    return UserError(str(exc), field="base")


def build_trainer(base_path: Path, config, device, resume: Optional[dict] = None):
    """Trainer whose G, D and EMA start from the base checkpoint (or from `resume`, a checkpoint dict).

    G starts from the file's `g` when it has one (a rosinality training
    checkpoint), else from `g_ema`; D from its `d` when present, else from
    random weights (a warning: fine-tuning then converges more slowly).
    """
    import torch

    from engine.generator.checkpoints import CheckpointError, generator_from_state_dict, load_generator
    from engine.generator.stylegan2 import Discriminator
    from engine.generator.training import Trainer, discriminator_channels, read_checkpoint_dict

    try:
        g_ema = load_generator(base_path, device=device)
        raw = resume if resume is not None else read_checkpoint_dict(base_path)
    except CheckpointError as exc:
        raise _checkpoint_error(exc) from None
    except Exception as exc:  # read_checkpoint_dict after load_generator succeeded: unusual
        raise UserError(f"cannot read {base_path}: {exc}", field="base") from None
    raw = raw or {}
    name = Path(base_path).name
    try:
        g = generator_from_state_dict(raw["g"], g_ema.latent_avg) if isinstance(raw.get("g"), dict) else None
    except CheckpointError as exc:
        raise UserError(f"{name}: its training generator 'g' does not match 'g_ema' ({exc})", field="base") from None
    if g is None:
        g = copy.deepcopy(g_ema)
    g.conv_clamp = g_ema.conv_clamp
    g = g.to(device)
    d_state = raw.get("d") if isinstance(raw.get("d"), dict) else None
    if d_state is not None:
        try:
            d = Discriminator(g.size, channels=discriminator_channels(d_state, g.size))
            d.load_state_dict(d_state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"{name}: its discriminator 'd' does not fit a {g.size}px StyleGAN2 "
                            f"discriminator ({str(exc).splitlines()[0]})", field="base") from None
    else:
        print(f"toon-ofx: {name} has no discriminator ('d'); starting it from random weights "
              "(fine-tuning converges more slowly)", file=sys.stderr)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            d = Discriminator(g.size, channels=dict(g.channels))
    trainer = Trainer(g, d.to(device), config, g_ema=g_ema)
    if resume is not None:
        try:
            trainer.load_state_dict(resume)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot resume from {name}: {str(exc).splitlines()[0]}", field="resume") from None
    return trainer


def load_resume(path: Path) -> dict:
    """A checkpoint written by `toon-ofx train` (or rosinality's train.py), checked for resuming."""
    from engine.generator.checkpoints import CheckpointError, inspect_checkpoint
    from engine.generator.training import read_checkpoint_dict

    try:
        inspect_checkpoint(path)
        state = read_checkpoint_dict(path)
    except CheckpointError as exc:
        raise UserError(str(exc), field="resume") from None
    missing = [k for k in ("g", "d", "g_ema", "g_optim", "d_optim") if not isinstance((state or {}).get(k), dict)]
    if missing:
        raise UserError(f"{path} is a generator checkpoint, not a training checkpoint (no {', '.join(missing)}); "
                        "use it as --base to start a new run", field="resume")
    return state


def latest_checkpoint(out: Path) -> Optional[Path]:
    found = sorted(p for p in (Path(out) / "checkpoints").glob("*.pt") if p.stem.isdigit())
    return found[-1] if found else None


def train(base: Path, data: Path, out: Path, iters: int, *, config=None, resume: Optional[Path] = None,
          save_every: int = 500, sample_every: int = 100, device: str = "cpu", progress: bool = True,
          mirror: bool = True):
    """Fine-tune until iteration `iters` (in total, counting resumed ones).

    `base` is the checkpoint the run starts from (when resuming, the resumed
    checkpoint is used if `base` is None). Returns the trainer and the last
    checkpoint written.
    """
    import torch
    from tqdm import tqdm

    from engine.generator.checkpoints import save_generator
    from engine.generator.training import TrainConfig

    from .dataset import load_dataset_images

    files = load_dataset_images(data)
    state = load_resume(Path(resume)) if resume is not None else None
    if config is None:
        config = TrainConfig.from_dict(state["train_config"]) if state and "train_config" in state else TrainConfig()
    try:
        config.check()
    except ValueError as exc:
        raise UserError(str(exc)) from None
    out = Path(out)
    trainer = build_trainer(Path(base if base is not None else resume), config, torch.device(device), resume=state)
    state = None  # free the copy
    bank = ImageBank(files, trainer.g.size, mirror=mirror)
    z = sample_latents(trainer.g.style_dim, config.seed)
    out.mkdir(parents=True, exist_ok=True)
    first_sample = out / "samples" / f"{trainer.iteration:06d}.png"
    if sample_every and not first_sample.exists():
        save_samples(first_sample, trainer.g_ema, z)
    last = None
    bar = tqdm(total=iters, initial=min(trainer.iteration, iters), unit="it", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    try:
        with open(out / "log.jsonl", "a") as log:
            while trainer.iteration < iters:
                t = time.perf_counter()
                losses = trainer.step(bank.batch(trainer.iteration, config.batch, config.seed))
                log.write(json.dumps({"iter": trainer.iteration, "seconds": round(time.perf_counter() - t, 4),
                                      **{k: round(v, 5) for k, v in losses.items()}}) + "\n")
                log.flush()
                bar.update(1)
                bar.set_postfix(d=f"{losses['d']:.3f}", g=f"{losses['g']:.3f}")
                if sample_every and trainer.iteration % sample_every == 0:
                    save_samples(out / "samples" / f"{trainer.iteration:06d}.png", trainer.g_ema, z)
                if trainer.iteration % save_every == 0 or trainer.iteration == iters:
                    last = save_checkpoint(out / "checkpoints" / f"{trainer.iteration:06d}.pt", trainer)
    except KeyboardInterrupt:
        bar.close()
        if trainer.iteration > 0:
            saved = save_checkpoint(out / "checkpoints" / f"{trainer.iteration:06d}.pt", trainer)
            print(f"toon-ofx: interrupted; saved {saved}; continue with --resume", file=sys.stderr)
        raise
    bar.close()
    if last is not None:
        trainer.refresh_latent_avg()
        save_generator(out / "toon.pt", trainer.g_ema,
                       extra={"toon_ofx_train": {"iter": int(trainer.iteration), "checkpoint": last.name,
                                                 "images": len(bank), "batch": int(config.batch)}})
    return trainer, last


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a toon model from a base generator",
                       description="Transfer-learning fine-tune of a StyleGAN2 generator (and discriminator) on "
                                   "aligned faces from `toon-ofx dataset build`. Keep it short (a few thousand "
                                   "iterations at most) so the model still blends with its base; checkpoints "
                                   "are saved along the way so you can pick the one that blends best.")
    p.add_argument("--base", help="base generator to start from (.pt with g_ema and ideally g/d, .pkl, or a "
                                  "model name); optional with --resume")
    p.add_argument("--data", type=Path, required=True, help="dataset folder from `toon-ofx dataset build` "
                                                            "(or any folder of aligned face images)")
    p.add_argument("--iters", type=int, default=5000, help="train until this iteration (default 5000)")
    p.add_argument("-o", "--output", type=Path, default=Path("toon-training"),
                   help="run folder for checkpoints, samples and log (default ./toon-training)")
    p.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                   help="continue a run: a checkpoint, or the latest in the run folder when no path is given")
    p.add_argument("--batch", type=int, default=None, help="images per iteration (default 4)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default 0.002)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="differentiable augmentation for small data sets (adaptive probability)")
    p.add_argument("--augment-p", type=float, default=None, help="fixed augmentation probability instead of ADA")
    p.add_argument("--no-mirror", dest="mirror", action="store_false", help="do not x-flip training images")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint interval (default 500)")
    p.add_argument("--sample-every", type=int, default=100, help="sample grid interval, 0 = never (default 100)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (default cpu)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _config_from_args(args, state: Optional[dict]):
    from engine.generator.training import TrainConfig

    base = TrainConfig.from_dict(state["train_config"]) if state and "train_config" in state else TrainConfig()
    given: Dict = {k: getattr(args, k) for k in ("batch", "lr", "augment", "augment_p", "seed")
                   if getattr(args, k) is not None}
    if args.augment_p is not None:
        given["augment"] = True
    values = {**base.__dict__, **given}
    try:
        return TrainConfig(**values).check()
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r} (use cpu, cuda or cuda:N)", field="device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} is not available: this torch has no CUDA device", field="device")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' is not available on this machine", field="device")


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def run_train(args: argparse.Namespace) -> int:
    from engine.generator.checkpoints import CheckpointError, inspect_checkpoint

    from .dataset import load_dataset_images

    if args.iters < 1 or args.save_every < 1 or args.sample_every < 0:
        raise UserError("--iters and --save-every must be at least 1, --sample-every at least 0")
    load_dataset_images(args.data)  # missing / empty folder: say so before loading any model
    if _inside(args.output, args.data):
        raise UserError(f"the run folder {args.output} is inside the dataset {args.data}; choose another -o",
                        field="output")
    resume = None
    if args.resume is not None:
        resume = latest_checkpoint(args.output) if args.resume == "latest" else Path(args.resume)
        if resume is None:
            raise UserError(f"nothing to resume: {args.output / 'checkpoints'} holds no checkpoint", field="resume")
        if not resume.is_file():
            raise UserError(f"checkpoint {resume} does not exist", field="resume")
    if args.base is None and resume is None:
        raise UserError("--base is required (the generator to fine-tune), unless you --resume a run", field="base")
    base = model_store.resolve(args.base) if args.base is not None else None
    state = load_resume(resume) if resume is not None else None
    if base is not None and state is not None:
        try:
            b, r = inspect_checkpoint(base), inspect_checkpoint(resume)
        except CheckpointError as exc:
            raise UserError(str(exc), field="base") from None
        if (b.size, b.style_dim, b.n_mlp, b.channels) != (r.size, r.style_dim, r.n_mlp, r.channels):
            raise UserError(f"{resume.name} was not trained from {base.name}: a {r.size}px model vs a "
                            f"{b.size}px one (or different layers)", field="resume")
        base = None  # the resumed checkpoint holds G, D and EMA
    config = _config_from_args(args, state)
    _check_device(args.device)
    del state
    try:
        _, last = train(base, args.data, args.output, args.iters, config=config, resume=resume,
                        save_every=args.save_every, sample_every=args.sample_every, device=args.device,
                        progress=not args.quiet, mirror=args.mirror)
    except CheckpointError as exc:
        raise UserError(str(exc), field="base") from None
    except KeyboardInterrupt:
        return 130
    if last is None:
        print(f"toon-ofx: nothing to do: the run is already at iteration {args.iters}", file=sys.stderr)
    else:
        print(f"toon-ofx: trained to iteration {args.iters}; checkpoint {last}; generator "
              f"{args.output / 'toon.pt'} (blend it: toon-ofx blend BASE {args.output / 'toon.pt'} -o blended.pt)",
              file=sys.stderr)
    return 0
