"""Per-frame time of `toon-ofx render`, split by stage, on a real face clip.

Uses a small real-architecture generator (config-f layout at 64 px, channel
multiplier 1, random weights) and a random-weight VGG16 LPIPS, so the numbers
measure the code, not the weights. Figures are shares of one run's total
(these machines are noisy): compare ratios, not seconds.

    python bench/bench_pipeline.py [--size 64] [--frames 12] [--steps 20 --warm-steps 5]
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
    args = ap.parse_args()

    import torch
    from skimage import data

    from conftest import make_clip, panning_frames
    from engine.checkpoints import save_generator
    from engine.lpips import LPIPS
    from engine.stylegan2 import Generator
    from toon_ofx.render import RenderRequest, Renderer

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
              "steps": args.steps, "warm_steps": args.warm_steps, "keyframe_interval": 0, "device": "cpu"}
    t = time.perf_counter()
    renderer = Renderer(params)
    load = time.perf_counter() - t
    t = time.perf_counter()
    result = renderer.render(RenderRequest(clip, work / "out.mp4", params))
    total = time.perf_counter() - t
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
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
