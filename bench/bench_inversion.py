"""Inversion per face-frame at 1024 config-f: encoder, encoder+projection (k = 10, 50), projection (k = 100, 500).

    python bench/bench_inversion.py [--size 1024] [--steps 3] [--encoder-type Encoder4Editing] [--batch 8]

Random weights (time and memory do not depend on them): a config-f generator
of ``--size``, the real LPIPS-VGG16 architecture, and an encoder of the public
architecture (e4e's ``Encoder4Editing`` on IR-SE-50 by default) saved in the
public checkpoint layout and read back by ``engine.inversion.encoders.load_encoder``.
Times come from one process in which the encoder runs between the steps of a
projection (so both see the same machine load): the median projection step
(``--steps`` of them, the first step's set-up excluded) and the median encoder
pass on one face; then the encoder on ``--batch`` faces and one render. Peak
resident memory comes from one fresh process per mode (encoder on
``--batch`` faces and a render; a 2-step projection). A projection of k steps costs k of those steps (its
set-up, the target's VGG16 features, is under one step), so the k = 100/500
and refinement k = 10/50 figures are k x the measured step, plus the encoder
for encoder+projection; rendering the face with the blended generator (one
synthesis, the same for every mode) is reported beside them. Figures are
ratios within one run; seconds depend on the machine and its load.
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_encoder(path: Path, encoder_type: str, size: int) -> Path:
    """A random encoder of the public architecture, in the public checkpoint layout."""
    import math

    import torch

    from engine.inversion.encoders.architectures import GradualStyleEncoder
    from engine.inversion.encoders.backbones import Layout

    progressive = {"Encoder4Editing": True, "GradualStyleEncoder": False}[encoder_type]
    n_latent = 2 * int(math.log2(size)) - 2
    torch.manual_seed(1)
    encoder = GradualStyleEncoder(Layout(n_styles=n_latent), progressive=progressive)
    size_key = "stylegan_size" if encoder_type == "Encoder4Editing" else "output_size"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                "latent_avg": torch.randn(n_latent, 512) * 0.1,
                "opts": {"encoder_type": encoder_type, "input_nc": 3, size_key: size,
                         "start_from_latent_avg": True, "dataset_type": "ffhq_encode"}}, path)
    return path


def _child(job: str, args: dict, out) -> None:
    """One fresh process: `timing` (encoder passes interleaved with projection steps), or one mode's peak memory."""
    import torch

    from engine.inversion.encoders import load_encoder
    from engine.inversion.lpips import LPIPS
    from engine.inversion.projection import latent_stats, project

    torch.set_num_threads(args["threads"])
    from bench_projection import random_generator

    g = random_generator(args["size"])
    target = torch.rand(1, 3, args["size"], args["size"]) * 2 - 1
    result = {}
    enc = load_encoder(args["encoder"], expect_size=g.size) if job != "projection" else None
    lpips = LPIPS().eval() if job != "encoder" else None
    if lpips is not None:
        latent_stats(g, n=1000)
    result["rss_loaded_mb"] = _rss_mb()
    if job == "encoder":
        with torch.no_grad():
            g.synthesis(enc(target.expand(args["batch"], -1, -1, -1)))
    elif job == "projection":
        project(g, target, steps=2, perceptual=lpips, n_mean_latent=1000, evaluate=False)
    else:  # timing: one projection whose callback runs the encoder between steps (same machine load)
        with torch.no_grad():
            enc(target)  # first call: allocator and kernel warm-up
        steps, encodes, last = [], [], [None]

        def between_steps(i, losses):
            now = time.perf_counter()
            if last[0] is not None:
                steps.append(now - last[0])
            with torch.no_grad():
                t = time.perf_counter()
                enc(target)
                encodes.append(time.perf_counter() - t)
            last[0] = time.perf_counter()

        project(g, target, steps=args["steps"] + 1, perceptual=lpips, n_mean_latent=1000, evaluate=False,
                callback=between_steps)
        result["step_s"], result["encoder_s"] = statistics.median(steps), statistics.median(encodes)
        with torch.no_grad():
            t = time.perf_counter()
            enc(target.expand(args["batch"], -1, -1, -1))
            result["encoder_batch_per_face_s"] = (time.perf_counter() - t) / args["batch"]
            t = time.perf_counter()
            g.synthesis(g.latent_avg.expand(1, g.n_latent, -1))
            result["render_s"] = time.perf_counter() - t
    result["rss_peak_mb"] = _rss_mb()
    out.put(result)


def run_child(job: str, args: dict) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(job, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=3, help="timed projection steps")
    ap.add_argument("--repeats", type=int, default=3, help="timed encoder passes")
    ap.add_argument("--batch", type=int, default=8, help="faces in the batched encoder pass")
    ap.add_argument("--encoder-type", default="Encoder4Editing", choices=("Encoder4Editing", "GradualStyleEncoder"))
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="toon-bench-") as tmp:
        shared = dict(vars(args), encoder=str(write_encoder(Path(tmp) / "encoder.pt", args.encoder_type, args.size)))
        timing = run_child("timing", shared)
        enc = run_child("encoder", shared)
        proj = run_child("projection", shared)
    step, e = timing["step_s"], timing["encoder_s"]
    per_face = {"encoder": e, "encoder+projection k=10": e + 10 * step, "encoder+projection k=50": e + 50 * step,
                "projection k=100": 100 * step, "projection k=500": 500 * step}
    base = per_face["projection k=500"]
    report = {
        "bench": "inversion_per_face_frame", "size": args.size, "encoder": args.encoder_type,
        "seconds_per_face": {k: round(v, 3) for k, v in per_face.items()},
        "speedup_over_projection_500": {k: round(base / v, 1) for k, v in per_face.items()},
        "goals": {"encoder >= 100x": base / e >= 100, "encoder+projection k=50 >= 8x": base / (e + 50 * step) >= 8},
        "measured": {"projection_step_s": round(step, 3), "encoder_s": round(e, 3),
                     f"encoder_batch_{args.batch}_per_face_s": round(timing["encoder_batch_per_face_s"], 3),
                     "render_s": round(timing["render_s"], 3)},
        "peak_rss_mb": {f"encoder (batch {args.batch}) + render": round(enc["rss_peak_mb"]),
                        "projection": round(proj["rss_peak_mb"])},
        "rss_after_loading_mb": {"encoder": round(enc["rss_loaded_mb"]), "projection": round(proj["rss_loaded_mb"])},
        "threads": args.threads, "torch": __import__("torch").__version__, "machine": platform.machine(),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
