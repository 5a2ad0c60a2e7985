"""Warm-start vs cold-start projection: how many steps does a warm start need?

A short synthetic "clip" is rendered by a random generator of the real
StyleGAN2 config-f architecture (small: 64 px, channel_multiplier 1, optionally
fewer channels): the latent drifts smoothly from frame to frame.  For every
frame after the first:

* cold: ``project(..., steps=K)`` from latent_avg -> reconstruction error E;
* warm: ``project(..., init=<previous frame's latents>, init_noises=...)`` with
  a ladder of budgets k = 2, 3, 4, 6, 8, 11, 16, ... until its error <= E.

Reported: k / K per frame (the warm/cold step ratio at equal reconstruction
error), errors, seconds per step.  Error = the per-sample loss named by
``--metric`` at the final latents ("mse" pixels or "perceptual").

The perceptual loss is the real LPIPS-VGG16 code with random weights unless
``--vgg``/``--lin`` point at real weight files (weights change the landscape,
not the code path).  Prints one JSON object on stdout.

    OMP_NUM_THREADS=2 python bench/bench_projection.py --size 64 --channels 128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.inversion.lpips import LPIPS, TinyPerceptual, load_lpips  # noqa: E402
from engine.inversion.projection import project  # noqa: E402
from engine.generator.stylegan2 import Generator  # noqa: E402

LADDER = (2, 3, 4, 6, 8, 11, 16, 22, 32, 45, 64, 90, 128, 180, 256, 360, 512)


def build_generator(size: int, channels: int | None, channel_multiplier: int, seed: int) -> Generator:
    chans = None
    if channels:
        chans = {2**i: channels for i in range(2, int(math.log2(size)) + 1)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(size, style_dim=512, n_mlp=8, channel_multiplier=channel_multiplier, channels=chans)
        with torch.no_grad():
            # trained networks have non-zero noise strengths; keep them modest
            for name, p in g.named_parameters():
                if name.endswith("noise.weight"):
                    p.fill_(0.05)
            g.latent_avg.copy_(g.mapping(torch.randn(4096, 512)).mean(0))
    return g.eval()


def make_clip(g: Generator, frames: int, drift: float, seed: int, batch: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z0 = torch.randn(batch, g.style_dim, generator=gen)
    dz = torch.randn(batch, g.style_dim, generator=gen)
    out = []
    with torch.no_grad():
        for f in range(frames):
            w = g.mapping(z0 + f * drift * dz)
            out.append(g.synthesis(w[:, None].repeat(1, g.n_latent, 1)))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=128, help="channels at every resolution (0 = config-f table)")
    ap.add_argument("--channel-multiplier", type=int, default=1)
    ap.add_argument("--cold-steps", type=int, default=200)
    ap.add_argument("--frames", type=int, default=3, help="clip length (the first frame only seeds the chain)")
    ap.add_argument("--drift", type=float, default=0.05, help="z change per frame, in units of z's std")
    ap.add_argument("--space", choices=("w", "w+"), default="w+")
    ap.add_argument("--metric", choices=("mse", "perceptual"), default="mse")
    ap.add_argument("--warm-lr-scale", type=float, default=None, help="default: project()'s default")
    ap.add_argument("--perceptual", choices=("lpips", "tiny"), default="lpips")
    ap.add_argument("--vgg", type=Path, help="torchvision vgg16-397923af.pth (else random trunk)")
    ap.add_argument("--lin", type=Path, help="lpips weights/v0.1/vgg.pth (else random heads)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    g = build_generator(args.size, args.channels or None, args.channel_multiplier, args.seed)
    if args.perceptual == "tiny":
        perceptual = TinyPerceptual(seed=args.seed)
    elif args.vgg and args.lin:
        perceptual = load_lpips(args.vgg, args.lin)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            perceptual = LPIPS()
            with torch.no_grad():
                for lin in perceptual.lins:
                    lin.model[1].weight.uniform_(0.0, 0.1)
    clip = make_clip(g, args.frames, args.drift, args.seed + 1, args.batch)
    kw = dict(space=args.space, perceptual=perceptual)
    warm_kw = dict(kw)
    if args.warm_lr_scale is not None:
        warm_kw["warm_lr_scale"] = args.warm_lr_scale

    K = args.cold_steps
    prev = project(g, clip[0], steps=K, seed=args.seed, **kw)  # also fills the latent-stats cache
    frames = []
    warm_time = warm_steps_run = cold_time = 0.0
    for f in range(1, args.frames):
        t = time.perf_counter()
        cold = project(g, clip[f], steps=K, seed=args.seed, **kw)
        cold_time += time.perf_counter() - t
        target_err = cold.losses[args.metric]
        with torch.no_grad():
            start = project(g, clip[f], steps=0, init=prev.latents, init_noises=prev.noises, **warm_kw)
        reached = None
        for k in LADDER:
            if k > K:
                break
            t = time.perf_counter()
            warm = project(g, clip[f], steps=k, init=prev.latents, init_noises=prev.noises, seed=args.seed, **warm_kw)
            warm_time += time.perf_counter() - t
            warm_steps_run += k
            if bool((warm.losses[args.metric] <= target_err).all()):
                reached = (k, warm)
                break
        frames.append(
            {
                "frame": f,
                "cold_error": target_err.tolist(),
                "warm_start_error": start.losses[args.metric].tolist(),
                "warm_steps": reached[0] if reached else None,
                "warm_error": reached[1].losses[args.metric].tolist() if reached else None,
                "ratio": (reached[0] / K) if reached else None,
            }
        )
        # the chain continues from the warm result, as the pipeline does
        prev = reached[1] if reached else cold
    ratios = [fr["ratio"] for fr in frames if fr["ratio"] is not None]
    summary = {
        "bench": "projection_warm_vs_cold",
        "generator": {
            "size": args.size,
            "style_dim": 512,
            "n_mlp": 8,
            "n_latent": g.n_latent,
            "channel_multiplier": args.channel_multiplier,
            "channels": g.channels,
            "params_M": round(sum(p.numel() for p in g.parameters()) / 1e6, 2),
        },
        "perceptual": "lpips-vgg16 (real weights)" if (args.vgg and args.lin) else
        ("tiny" if args.perceptual == "tiny" else "lpips-vgg16 (random weights)"),
        "space": args.space,
        "metric": args.metric,
        "cold_steps": K,
        "drift": args.drift,
        "batch": args.batch,
        "frames": frames,
        "warm_to_cold_ratio_mean": (sum(ratios) / len(ratios)) if ratios else None,
        "warm_to_cold_ratio_max": max(ratios) if ratios else None,
        "all_reached": len(ratios) == len(frames),
        "cold_sec_per_step": round(cold_time / (K * (args.frames - 1)), 4) if args.frames > 1 else None,
        "warm_sec_per_step": round(warm_time / warm_steps_run, 4) if warm_steps_run else None,
        "threads": args.threads,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
