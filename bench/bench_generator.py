"""Benchmark the config-f StyleGAN2 generator: forward time and peak memory per resolution.

Builds real-architecture generators (default channels, channel_multiplier 2,
random weights) and times ``synthesis`` for each size. Each size runs in its
own child process so that its peak memory (max RSS; CUDA peak allocation on
GPU) is measured alone.

    python bench/bench_generator.py                      # 256, 512, 1024 on CPU
    python bench/bench_generator.py --device cuda --half --batch 4
    python bench/bench_generator.py --json bench/results/generator.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def run_one(size: int, batch: int, repeats: int, device: str, half: bool) -> dict:
    """Time one resolution in this process and return the measurements."""
    import torch

    sys.path.insert(0, str(ROOT))
    from engine.generator.stylegan2 import Generator

    torch.manual_seed(0)
    rss_before = _peak_rss_mb()
    t0 = time.perf_counter()
    g = Generator(size).eval().requires_grad_(False).to(device)
    if half:
        g = g.half()
    build_s = time.perf_counter() - t0
    dtype = torch.float16 if half else torch.float32
    ws = torch.randn(batch, g.n_latent, g.style_dim, device=device, dtype=dtype)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    times = []
    with torch.no_grad():
        img = g.synthesis(ws)  # warm-up (allocator, kernels)
        sync()
        for _ in range(repeats):
            t0 = time.perf_counter()
            img = g.synthesis(ws)
            sync()
            times.append(time.perf_counter() - t0)
    assert img.shape == (batch, 3, size, size) and torch.isfinite(img.float()).all()
    return {
        "size": size,
        "batch": batch,
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "params_m": sum(p.numel() for p in g.parameters()) / 1e6,
        "n_latent": g.n_latent,
        "build_s": build_s,
        "forward_s": statistics.median(times),
        "forward_min_s": min(times),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_import_mb": rss_before,
        "cuda_peak_mb": (torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else None,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="float16 (CUDA)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode
    args = ap.parse_args(argv)

    if args.one:
        print(json.dumps(run_one(args.one, args.batch, args.repeats, args.device, args.half)))
        return 0

    results = []
    for size in args.sizes:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(size),
               "--batch", str(args.batch), "--repeats", str(args.repeats), "--device", args.device]
        if args.half:
            cmd.append("--half")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        if proc.returncode != 0:
            print(f"size {size} failed:\n{proc.stderr.strip()}", file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))

    base = results[0]
    print(f"StyleGAN2 config-f synthesis, batch {args.batch}, {base['device']} {base['dtype']}, "
          f"{base['threads']} threads")
    print(f"{'size':>6} {'params(M)':>9} {'build(s)':>9} {'forward(s)':>10} {'x vs first':>10} "
          f"{'peak RSS(MB)':>12} {'CUDA peak(MB)':>13}")
    for r in results:
        ratio = r["forward_s"] / base["forward_s"]
        cuda = f"{r['cuda_peak_mb']:.0f}" if r["cuda_peak_mb"] is not None else "-"
        rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "-"
        r["ratio_vs_first"] = ratio
        print(f"{r['size']:>6} {r['params_m']:>9.2f} {r['build_s']:>9.2f} {r['forward_s']:>10.3f} "
              f"{ratio:>10.2f} {rss:>12} {cuda:>13}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
