"""`toon-ofx distill` speed: seconds per iteration of each stage, out-scale 4 against 2, and the models' inference.

Random weights (time and memory do not depend on them), interleaved repeats in
one run so the ratios hold on a noisy machine:

* ``--size tiny``: the test suite's nets (256 px generators with 8 channels,
  tiny parser and style encoder, random VGG16 LPIPS) -- runs anywhere in seconds;
* ``--size full``: the paper's shapes (1024 config-f G0/G1, BiSeNet, the IR-SE-50
  Z+ encoder, VGG16 LPIPS): the figures a GPU run needs (minutes per step on a CPU).

Per stage: pretrain (batch ``--pretrain-batch``), train before the temporal
ramp and train with it (batch ``--batch``), for ``--out-scale 4`` and ``2``; then
one forward of the trained network on a ``--crop`` px frame crop at 4x and at
2x (what a render pays per face and frame), and the peak GPU memory on CUDA.

    PYTHONPATH=. .venv/bin/python bench/bench_distill.py --size tiny --repeats 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bench_projection import random_generator  # noqa: E402
from engine.generator.blend import blend_generators  # noqa: E402
from engine.inversion.encoders.architectures import GradualStyleEncoder  # noqa: E402
from engine.inversion.encoders.backbones import Layout  # noqa: E402
from engine.inversion.lpips import LPIPS  # noqa: E402
from engine.vtoonify import BiSeNet, StyleEncoder  # noqa: E402
from engine.vtoonify.training import Distiller, DistillConfig, Teachers  # noqa: E402


def teachers(size: str, device) -> Teachers:
    if size == "tiny":
        from tiny_models import tiny_generator
        from tiny_vtoonify import N_LATENT, STYLE_DIM, tiny_face_parser, tiny_style_encoder

        base, toon = tiny_generator(256, seed=0, channels=8), tiny_generator(256, seed=1, channels=8)
        parser = tiny_face_parser(0)
        encoder = StyleEncoder(tiny_style_encoder(0), torch.zeros(N_LATENT, STYLE_DIM))
        dirs = torch.randn(6, N_LATENT, STYLE_DIM)
    else:
        base, toon = random_generator(1024, seed=0), random_generator(1024, seed=1)
        parser = BiSeNet(19)
        encoder = StyleEncoder(GradualStyleEncoder(Layout(n_styles=18)), torch.zeros(18, 512))
        dirs = torch.randn(6, 18, 512)
    blended = blend_generators(base, toon, 64)
    return Teachers(base.to(device), blended.to(device), parser.to(device), encoder.to(device),
                    dirs.to(device)).check()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--pretrain-batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--crop", type=int, default=0, help="inference crop side (default: the input size)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t = teachers(args.size, device)
    perceptual = LPIPS().to(device)
    runs = {}
    for scale in (4, 2):
        # pretrain 1 iteration, then train: iteration 2 is before the temporal ramp, iteration 4 after
        cfg = DistillConfig(pretrain_iters=1, iters=4, batch=args.batch, pretrain_batch=args.pretrain_batch,
                            out_scale=scale)
        runs[scale] = Distiller(t, cfg, perceptual, device=device)
    times = {(s, stage): [] for s in (4, 2) for stage in ("pretrain", "train", "train+tmp", "infer")}
    for r in range(args.repeats):
        for scale, d in runs.items():
            d.iteration, d.stage = 0, "pretrain"
            d._enter("pretrain", fresh=False)
            times[(scale, "pretrain")].append(timed(d.step, device))
            d.step()  # enters training (the first train step is left out: allocations)
            times[(scale, "train")].append(timed(d.step, device))
            d.iteration = 4
            times[(scale, "train+tmp")].append(timed(d.step, device))
            side = args.crop or d.net.in_size
            x = torch.rand(1, 22, side, side, device=device)
            style = torch.zeros(1, d.net.n_latent, t.blended.style_dim, device=device)
            with torch.no_grad():
                times[(scale, "infer")].append(timed(lambda: d.g_ema(x, style), device))
    rows = {f"{stage} x{scale}": statistics.median(v) for (scale, stage), v in times.items()}
    print(f"{args.size} nets on {device} (batch {args.batch}, pretrain batch {args.pretrain_batch}, "
          f"median of {args.repeats}):")
    for stage in ("pretrain", "train", "train+tmp", "infer"):
        a, b = rows[f"{stage} x4"], rows[f"{stage} x2"]
        print(f"  {stage:10s} out-scale 4: {a:8.3f} s   out-scale 2: {b:8.3f} s   ratio {a / b:5.2f}")
    if device.type == "cuda":
        rows["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        print(f"  peak GPU memory {rows['peak_gib']:.1f} GiB")
    print(json.dumps({k: round(v, 4) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
