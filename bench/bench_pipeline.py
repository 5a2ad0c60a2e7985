"""Per-frame time of `toon-ofx render`, split by stage, on a real face clip.

Uses a small real-architecture generator (config-f layout at 64 px, channel
multiplier 1, random weights) and a random-weight VGG16 LPIPS, so the numbers
measure the code, not the weights. Figures are shares of one run's total
(these machines are noisy): compare ratios, not seconds.

    python bench/bench_pipeline.py [--size 64] [--frames 12] [--steps 20 --warm-steps 5]
        [--frame-batch B [--keyframe-interval 4] [--batch-size N]]

With --frame-batch B > 1 the clip is rendered twice with the same models and
keyframe interval, frame_batch 1 and B (batch_size N, default B), and frames/s
of both and their ratio are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warm-steps", type=int, default=5)
    ap.add_argument("--frame-batch", type=int, default=1, help="also render with this frame_batch; print the ratio")
    ap.add_argument("--keyframe-interval", type=int, default=None,
                    help="default: 0, or 4 with --frame-batch > 1")
    ap.add_argument("--batch-size", type=int, default=None, help="faces per projection (default: --frame-batch)")
    args = ap.parse_args()
    keyframes = args.keyframe_interval if args.keyframe_interval is not None else (4 if args.frame_batch > 1 else 0)

    import torch
    from skimage import data

    from conftest import make_clip, panning_frames
    from engine.generator.checkpoints import save_generator
    from engine.inversion.lpips import LPIPS
    from engine.inversion.projection import latent_stats
    from engine.generator.stylegan2 import Generator
    from toon_ofx.core.render import RenderRequest, Renderer

    work = Path(tempfile.mkdtemp(prefix="toon-bench-"))
    torch.manual_seed(0)
    for name in ("base", "toon"):
        save_generator(work / f"{name}.pt", Generator(args.size, channel_multiplier=1))
    lpips = LPIPS()
    torch.save(lpips.vgg_state_dict(), work / "vgg16-397923af.pth")
    torch.save(lpips.lin_state_dict(), work / "lpips-vgg-v0.1.pth")
    os.environ["TOON_OFX_MODELS"] = str(work)
    clip = make_clip(work / "clip.mp4", panning_frames(data.astronaut(), args.frames))

    params = {"model": str(work / "toon.pt"), "base_model": str(work / "base.pt"), "swap_res": 16,
              "steps": args.steps, "warm_steps": args.warm_steps, "keyframe_interval": keyframes,
              "batch_size": args.batch_size or args.frame_batch, "device": "cpu"}
    t = time.perf_counter()
    renderer = Renderer(params)
    load = time.perf_counter() - t
    latent_stats(renderer.base)  # cached: neither timed run pays for it
    t = time.perf_counter()
    result = renderer.render(RenderRequest(clip, work / "out.mp4", params))
    total = time.perf_counter() - t
    batched = None
    if args.frame_batch > 1:
        t = time.perf_counter()
        renderer.render(RenderRequest(clip, work / "out_batched.mp4", dict(params, frame_batch=args.frame_batch)))
        seconds = time.perf_counter() - t
        batched = {"frame_batch": args.frame_batch, "batch_size": params["batch_size"],
                   "keyframe_interval": keyframes,
                   "fps_frame_batch_1": round(args.frames / total, 3),
                   f"fps_frame_batch_{args.frame_batch}": round(args.frames / seconds, 3),
                   "speedup": round(total / seconds, 3)}
    stages = dict(result.timings)
    per_frame = {k: v / args.frames for k, v in stages.items()}
    share = {k: v / total for k, v in stages.items()}
    report = {
        "generator": f"{args.size}px config-f, channel_multiplier 1",
        "frames": args.frames, "steps_cold": args.steps, "steps_warm": args.warm_steps,
        "model_load_s": round(load, 3), "total_s": round(total, 3),
        "per_frame_s": {k: round(v, 4) for k, v in per_frame.items()},
        "share_of_total": {k: round(v, 3) for k, v in share.items()},
    }
    if batched is not None:
        report["frame_batch"] = batched
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
