"""`toon-ofx distill`: make a VToonify-T (the fast video path) from a StyleGAN toon model and its base.

The teacher is the blended generator a render would use (`--swap-res`,
`--blend-width`, `--mapping-from`, as `toon-ofx blend`); engine.vtoonify.training
pretrains the student's encoder and then trains it as VToonify's
train_vtoonify_t.py does. Supporting models come from the model store:
the FFHQ base, `vtoonify-style-encoder`, `face-parsing`, `lowrankgan-directions`,
`vgg16` + `lpips-vgg` (a first run names every missing one at once).

Run folder layout::

    OUT/run.json                  what the run distils: models, blend, VToonify's per-layer `--weight`, options
    OUT/checkpoints/000500.pt     resumable checkpoints (every --save-every iterations; the latest two are kept)
    OUT/pretrain.pt               the pretrained encoder, as the reference saves it ({"g_ema": encoder})
    OUT/samples/002200.png        targets (top row) and the model's outputs (bottom row) on fixed pairs
    OUT/log.jsonl                 one line of losses per iteration
    OUT/vtoonify.pt               the model: {"g_ema": VToonify state dict}, the reference's format

Re-running the same command continues the run from its latest checkpoint.
Under torchrun (WORLD_SIZE > 1) every process trains on its own batches, DDP
averages the gradients, and rank 0 writes.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Dict, Optional

from ..core import model_store
from ..core.errors import UserError
from .train import _check_device, latest_checkpoint, write_grid, write_torch

DEFAULT_MODELS = {"style_encoder": "vtoonify-style-encoder", "parser": "face-parsing",
                  "directions": "lowrankgan-directions"}
KEEP_CHECKPOINTS = 2
# run.json keys that may change when a run is continued (the rest must match)
MAY_CHANGE = ("iters",)


def add_distill_parser(sub) -> None:
    p = sub.add_parser("distill", help="make a fast video style (VToonify-T) from a toon model and its base",
                       description="Distil a VToonify-T from the blended generator of --base and --toon: an encoder "
                                   "of the unaligned frame crop drives the blended generator's mid and high "
                                   "layers, trained on generated pairs with a temporal-consistency loss "
                                   "(VToonify's train_vtoonify_t.py). The result, RUN/vtoonify.pt, renders "
                                   "a face in one pass per frame: `toon-ofx render --model RUN/vtoonify.pt`. "
                                   "Re-run the same command to continue an interrupted run.")
    p.add_argument("--toon", required=True, help="toon generator (manifest name or .pt/.pkl file), e.g. the "
                                                  "toon.pt of `toon-ofx train`")
    p.add_argument("--base", default="ffhq-1024", help="the real-face generator the toon model was fine-tuned "
                                                        "from (default ffhq-1024)")
    p.add_argument("--swap-res", type=int, default=64, help="toon layers up to this resolution (default 64)")
    p.add_argument("--blend-width", type=float, default=0.0, help="smooth blend width in octaves (0 = hard swap)")
    p.add_argument("--mapping-from", choices=("base", "toon"), default="base",
                   help="model that supplies the mapping network (default base)")
    p.add_argument("-o", "--output", type=Path, required=True, help="run folder (checkpoints, samples, log, "
                                                                    "vtoonify.pt)")
    p.add_argument("--iters", type=int, default=2000, help="training iterations after the pretrain (default 2000)")
    p.add_argument("--pretrain-iters", type=int, default=30000,
                   help="encoder pretraining iterations (default 30000)")
    p.add_argument("--batch", type=int, default=4, help="pairs per iteration and process (default 4)")
    p.add_argument("--pretrain-batch", type=int, default=1, help="faces per pretrain iteration and process "
                                                                 "(default 1)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 0.0001)")
    p.add_argument("--adv-loss", type=float, default=0.01, help="adversarial loss weight (default 0.01)")
    p.add_argument("--rec-loss", type=float, default=0.1, help="MSE reconstruction loss weight (default 0.1)")
    p.add_argument("--perc-loss", type=float, default=0.01, help="LPIPS loss weight (default 0.01)")
    p.add_argument("--tmp-loss", type=float, default=1.0, help="temporal-consistency loss weight (default 1.0)")
    p.add_argument("--out-scale", type=int, choices=(4, 2), default=4,
                   help="output size / input size: 4 as VToonify, 2 for footage whose faces are pasted smaller "
                        "(the generator stops one layer early)")
    p.add_argument("--style-encoder", help="VToonify's Z+ style encoder (default: model vtoonify-style-encoder)")
    p.add_argument("--parser", help="the BiSeNet face parser (default: model face-parsing)")
    p.add_argument("--directions", help="editing directions .npy (default: model lowrankgan-directions)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N (default cpu; under torchrun "
                                                   "cuda means each process's own GPU)")
    p.add_argument("--save-every", type=int, default=1000, help="checkpoint interval (default 1000)")
    p.add_argument("--sample-every", type=int, default=200, help="sample interval while training, 0 = never "
                                                                 "(default 200)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


# ------------------------------------------------------------------ inputs


def _config(args):
    from engine.vtoonify.training import DistillConfig

    try:
        return DistillConfig(iters=args.iters, pretrain_iters=args.pretrain_iters, batch=args.batch,
                             pretrain_batch=args.pretrain_batch, lr=args.lr, adv=args.adv_loss, rec=args.rec_loss,
                             perc=args.perc_loss, tmp=args.tmp_loss, out_scale=args.out_scale,
                             seed=args.seed).check()
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _model_ref(text: Optional[str], default: str) -> str:
    """A manifest name as given, or an existing file as its absolute path (what run.json compares)."""
    if text is None:
        return default
    p = Path(text).expanduser()
    return str(p.resolve()) if p.is_file() else text


def describe_run(args, config) -> Dict:
    """The identity of a run: what must match for a run folder to be continued."""
    from dataclasses import asdict

    return {"base": _model_ref(args.base, "ffhq-1024"), "toon": _model_ref(args.toon, ""),
            "swap_res": int(args.swap_res), "blend_width": float(args.blend_width),
            "mapping_from": args.mapping_from,
            **{role: _model_ref(getattr(args, role), name) for role, name in DEFAULT_MODELS.items()},
            **{k: v for k, v in asdict(config).items()}}


def check_run_folder(out: Path, run: Dict) -> bool:
    """True when `out` holds this run (continue it), False when it is new; UserError for anything else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; -o names the run folder", field="output")
    record = out / "run.json"
    if not record.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise UserError(f"{out} holds other files, not a distill run; choose an empty or new folder for -o",
                            field="output")
        return False
    try:
        old = json.loads(record.read_text())["run"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{record} is unreadable; choose another folder for -o", field="output") from None
    differ = [k for k in sorted(set(old) | set(run)) if k not in MAY_CHANGE and old.get(k) != run.get(k)]
    if differ:
        shown = ", ".join(f"{k} {old.get(k)!r} (now {run.get(k)!r})" for k in differ[:4])
        raise UserError(f"{out} holds another run: {shown}; repeat its options to continue it, or choose "
                        "another folder for -o", field="output")
    return True


def _models(args, world_size: int) -> Dict[str, Path]:
    need = {"base": args.base, "toon": args.toon, "vgg16": "vgg16", "lpips": "lpips-vgg",
            **{role: getattr(args, role) or name for role, name in DEFAULT_MODELS.items()}}
    # under torchrun no process downloads (they would race): pull the models first
    return model_store.require(need, download=world_size == 1, progress=not args.quiet)


def read_directions(path: Path):
    """directions.npy as a float32 tensor (a plain array: no pickles are read)."""
    import numpy as np
    import torch

    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path.name} is not a plain NumPy array of editing directions ({exc})",
                        field="directions") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind != "f" or array.ndim != 3 \
            or not np.isfinite(array).all():
        raise UserError(f"{path.name}: editing directions must be a finite float array (K, layers, style_dim), "
                        f"got {getattr(array, 'dtype', '?')} {getattr(array, 'shape', '?')}", field="directions")
    return torch.from_numpy(array.astype(np.float32))


def build_teachers(args, files: Dict[str, Path], device):
    """(Teachers, perceptual loss, run.json's blend record) from the model files."""
    from engine.generator.blend import blend_generators
    from engine.generator.checkpoints import CheckpointError, load_generator
    from engine.inversion.lpips import LPIPSWeightsError, load_lpips
    from engine.vtoonify import blend_weights, load_face_parser, load_style_encoder
    from engine.vtoonify.training import TeacherError, Teachers

    try:
        base = load_generator(files["base"], device=device)
        toon = load_generator(files["toon"], device=device, expect_size=base.size)
        if model_store.is_blended(args.toon):  # a published pre-blended model: its blend is baked in
            blended, swap = toon, model_store.entry(args.toon).get("swap_res")
            print(f"toon-ofx: {args.toon} is already blended (swap_res {swap}); --swap-res and --blend-width "
                  "do not apply", file=sys.stderr)
            weights = blend_weights(int(swap), 0.0, base.n_latent) if swap else None
        else:
            blended = blend_generators(base, toon, args.swap_res, width=args.blend_width,
                                       mapping_from=args.mapping_from)
            weights = blend_weights(args.swap_res, args.blend_width, base.n_latent)
        del toon
        parser = load_face_parser(files["parser"], device=device)
        encoder = load_style_encoder(files["style_encoder"], device=device)
        perceptual = load_lpips(files["vgg16"], files["lpips"], device=device, resize=None)
        teachers = Teachers(base, blended, parser, encoder, read_directions(files["directions"]).to(device)).check()
    except TeacherError as exc:
        raise UserError(f"{files.get(exc.role, files['toon']).name}: {exc}", field=exc.role) from None
    except (CheckpointError, LPIPSWeightsError, ValueError) as exc:
        raise UserError(str(exc)) from None
    blend = {"size": base.size, "weight": weights, "files": {k: str(v) for k, v in files.items()}}
    return teachers, perceptual, blend


# ------------------------------------------------------------------ processes


def _distributed(device: str):
    """(rank, world size, device) from torchrun's environment; initialises torch.distributed when needed."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


class _StopAfterIteration:
    """Ctrl-C ends the run after the current iteration (a checkpoint is written); a second one at once."""

    def __init__(self, active: bool):
        self.requested, self.active, self._old = False, active, None

    def __enter__(self):
        if self.active:
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self.active:
            signal.signal(signal.SIGINT, self._old)


def _save_checkpoint(out: Path, distiller) -> Path:
    path = write_torch(out / "checkpoints" / f"{distiller.iteration:06d}.pt", distiller.state_dict())
    old = sorted(p for p in path.parent.glob("*.pt") if p.stem.isdigit())[:-KEEP_CHECKPOINTS]
    for p in old:
        p.unlink(missing_ok=True)
    return path


def _load_checkpoint(path: Path):
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign file
        raise UserError(f"cannot resume from {path}: {str(exc).splitlines()[0]}", field="output") from None


# ------------------------------------------------------------------ the run


def distill(args, stop_after: Optional[int] = None) -> Optional[Path]:
    """Run (or continue) the distillation `args` describes; returns vtoonify.pt, or None when stopped early.

    `stop_after`: stop once this many iterations are done, as an interruption
    would (a checkpoint is written); tests use it.
    """
    import torch
    from tqdm import tqdm

    from engine.vtoonify.training import Distiller

    config = _config(args)
    if args.save_every < 1 or args.sample_every < 0:
        raise UserError("--save-every must be at least 1, --sample-every at least 0")
    _check_device(args.device)
    out: Path = args.output
    run = describe_run(args, config)
    rank, world, device = _distributed(args.device)
    resuming = check_run_folder(out, run)
    if world > 1:
        torch.distributed.barrier()  # every process has read the folder before rank 0 writes to it
    files = _models(args, world)
    teachers, perceptual, blend = build_teachers(args, files, device)
    distiller = Distiller(teachers, config, perceptual, device=device, rank=rank, world_size=world)
    last = latest_checkpoint(out) if resuming else None
    if last is not None:
        try:
            distiller.load_state_dict(_load_checkpoint(last))
        except (KeyError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot resume from {last}: {str(exc).splitlines()[0]}", field="output") from None
    writer = rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        record = {"run": run, "vtoonify_weight": blend["weight"], "size": blend["size"],
                  "out_size": distiller.net.out_size, "in_size": distiller.net.in_size,
                  "world_size": world, "files": blend["files"]}
        (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    total = distiller.total if stop_after is None else min(distiller.total, stop_after)
    if writer and resuming and distiller.iteration >= distiller.total:
        print(f"toon-ofx: nothing to train: the run is at iteration {distiller.iteration} of {distiller.total}",
              file=sys.stderr)
    bar = None
    stopped = False
    with _StopAfterIteration(active=world == 1) as stop, open(out / "log.jsonl", "a") if writer else \
            open(os.devnull, "w") as log:
        while distiller.iteration < total:
            stage = "pretrain" if distiller.iteration < config.pretrain_iters else "train"
            if writer and not args.quiet and (bar is None or bar.desc != stage):
                if bar is not None:
                    bar.close()
                first, last_it = (0, config.pretrain_iters) if stage == "pretrain" else \
                    (config.pretrain_iters, distiller.total)
                bar = tqdm(total=last_it - first, initial=distiller.iteration - first, desc=stage, unit="it",
                           file=sys.stderr, dynamic_ncols=True)
            t = time.perf_counter()
            losses = distiller.step()
            i = distiller.iteration
            if writer:
                log.write(json.dumps({"iter": i, "stage": stage, "seconds": round(time.perf_counter() - t, 4),
                                      **{k: round(v, 6) for k, v in losses.items()}}) + "\n")
                log.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
                if i == config.pretrain_iters and config.pretrain_iters:
                    write_torch(out / "pretrain.pt", distiller.pretrain_state())
                if stage == "train" and args.sample_every and (i % args.sample_every == 0 or i == distiller.total):
                    target, output = distiller.samples()
                    write_grid(out / "samples" / f"{i:06d}.png", torch.cat((target, output)), cols=len(target))
                if i % args.save_every == 0 or i in (config.pretrain_iters, total) or stop.requested:
                    _save_checkpoint(out, distiller)
            if stop.requested:
                stopped = True
                break
    if bar is not None:
        bar.close()
    if stopped:
        print(f"toon-ofx: interrupted at iteration {distiller.iteration}; checkpoint saved; run the same command "
              "to continue", file=sys.stderr)
        raise KeyboardInterrupt
    if distiller.iteration < distiller.total:
        return None
    final = out / "vtoonify.pt"
    if writer:
        write_torch(final, distiller.vtoonify_state())
    return final


def run_distill(args: argparse.Namespace) -> int:
    try:
        final = distill(args)
    except KeyboardInterrupt:
        return 130
    if final is not None and not args.quiet and int(os.environ.get("RANK", "0")) == 0:
        print(f"toon-ofx: wrote {final} (render with it: toon-ofx render CLIP -o OUT --model {final})",
              file=sys.stderr)
    return 0
