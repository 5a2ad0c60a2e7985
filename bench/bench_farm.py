"""Farm benchmark: Ray throughput with 1 and 2 CPU workers, and what persistent workers save.

    python bench/bench_farm.py                       # engine mode when the model store is usable, else synthetic
    python bench/bench_farm.py --mode synthetic      # infrastructure only: a CPU-bound stand-in renderer
    python bench/bench_farm.py --mode engine --frames 16 --chunk 4 --size 32

Measures, on a local Ray cluster with as many CPUs as workers:
- throughput (frames/s) of `render_with_ray` with 1 and 2 workers and their ratio;
- model loading: persistent workers (one load per worker) against loading per task (a new
  renderer for every chunk, what a farm task that starts a new process pays), as measured
  load seconds and wall time.
Results are printed and written as JSON to bench/results/farm.json (git-ignored).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toon_ofx.core import media  # noqa: E402

FIXTURES = ROOT.parent / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")
CLIP = FIXTURES / "single_face.mp4"


class SyntheticRenderer:
    """A stand-in with the real renderer's shape: heavy load in __init__, CPU-bound work per frame.

    Loading reads `weights_mb` of weights from disk; each frame runs `matmuls` float32 matrix
    products (single-threaded per worker, like a torch worker pinned to its CPU share).
    """

    def __init__(self, params, weights: str, matmuls: int = 40, size: int = 384):
        t = time.perf_counter()
        self.weights = np.load(weights)
        self.a = self.weights[: size * size].reshape(size, size).astype(np.float32)
        self.matmuls = matmuls
        self.load_seconds = time.perf_counter() - t

    def render(self, request, progress=None, cancel=None):
        from toon_ofx.core.render import ProgressEvent, RenderResult

        first, last = request.frames
        pattern = str(request.output)
        written = 0
        for index, frame in media.read_frames(request.source, first, last):
            x = self.a
            for _ in range(self.matmuls):
                x = np.tanh(x @ self.a * 0.01)
            shade = np.uint8(int(abs(float(x[0, 0])) * 255) % 256)
            path = Path(pattern % index)
            if not path.exists():
                media.write_frame(path, (frame // 2 + shade // 2).astype(np.uint8), fsync=False)
                written += 1
            if progress:
                progress(ProgressEvent("rendering", index - first + 1, last - first + 1, 0, None))
        return RenderResult(Path(pattern).parent, "sequence", pattern, first, last, written,
                            last - first + 1 - written, 30.0)


def _run(ray, request, workers, chunk, factory, persistent):
    from toon_ofx.farm.ray_backend import render_with_ray

    ray.init(num_cpus=workers, object_store_memory=100 * 1024 ** 2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        t = time.perf_counter()
        result = render_with_ray(request, chunk_size=chunk, workers=workers, renderer_factory=factory,
                                 persistent=persistent)
        wall = time.perf_counter() - t
    finally:
        ray.shutdown()
        time.sleep(5)   # let the cluster's processes exit before the next measurement
    frames = result.last_frame - result.first_frame + 1
    timings = result.timings
    loads = timings.get("load_total", 0.0) + timings.get("chunk_load_total", 0.0)
    return {"workers": workers, "persistent": persistent, "frames": frames, "chunks": int(timings["chunks"]),
            "wall_seconds": round(wall, 3), "render_seconds": round(timings["render"], 3),
            "frames_per_second": round(frames / timings["render"], 3),
            "model_loads": int(timings["workers"]) if persistent else int(timings["chunks"]),
            "load_seconds_total": round(loads, 3)}


def synthetic_factory(tmp: Path, weights_mb: int):
    path = tmp / "weights.npy"
    np.save(path, np.random.default_rng(0).standard_normal(weights_mb * 1024 * 1024 // 4).astype(np.float32))
    return functools.partial(SyntheticRenderer, weights=str(path)), {"keyframe_interval": 4}


def make_engine_models(folder: Path, size: int, *, tiny: bool = True) -> dict:
    """Random-weight models for the real Renderer in `folder` (set TOON_OFX_MODELS to it).

    tiny: small generators (tests/tiny_models.py); else full config-f generators of `size` px,
    whose load time is that of the real checkpoints. LPIPS always has the full VGG16 trunk.
    """
    import torch

    from engine.generator.checkpoints import save_generator
    from engine.inversion.lpips import LPIPS
    from engine.generator.stylegan2 import Generator

    folder.mkdir(parents=True, exist_ok=True)
    for name, seed in (("base.pt", 0), ("toon.pt", 1)):
        if tiny:
            sys.path.insert(0, str(ROOT / "tests"))
            from tiny_models import tiny_generator

            g = tiny_generator(size, seed=seed)
        else:
            torch.manual_seed(seed)
            g = Generator(size)
        save_generator(folder / name, g)
    lpips = LPIPS()
    torch.save(lpips.vgg_state_dict(), folder / "vgg16-397923af.pth")
    torch.save(lpips.lin_state_dict(), folder / "lpips-vgg-v0.1.pth")
    return {"model": str(folder / "toon.pt"), "base_model": str(folder / "base.pt"),
            "swap_res": min(16, size), "steps": 2, "warm_steps": 1, "device": "cpu", "landmarker": "dlib",
            "smoothing": 0.0}


def engine_factory(tmp: Path, size: int):
    """The real Renderer (default factory) with random-weight models of `size` px."""
    from toon_ofx.core.render import Renderer

    params = make_engine_models(tmp / "models", size)
    os.environ["TOON_OFX_MODELS"] = str(tmp / "models")
    Renderer(params)     # fails here (and falls back to synthetic mode) when the engine cannot render
    return None, params


def production_load(tmp: Path, size: int = 1024) -> dict:
    """Load time of the real Renderer with full-size (config-f, `size` px) random checkpoints."""
    from toon_ofx.core.render import Renderer

    t = time.perf_counter()
    params = make_engine_models(tmp / "full", size, tiny=False)
    made = time.perf_counter() - t
    old = os.environ.get("TOON_OFX_MODELS")
    os.environ["TOON_OFX_MODELS"] = str(tmp / "full")
    try:
        loads = []
        for _ in range(2):
            t = time.perf_counter()
            Renderer(params)
            loads.append(time.perf_counter() - t)
    finally:
        if old is None:
            os.environ.pop("TOON_OFX_MODELS", None)
        else:
            os.environ["TOON_OFX_MODELS"] = old
    mb = sum(p.stat().st_size for p in (tmp / "full").iterdir()) / 1e6
    return {"generator_size": size, "model_files_mb": round(mb, 1), "seconds_to_make": round(made, 1),
            "load_seconds": [round(x, 2) for x in loads]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("auto", "engine", "synthetic"), default="auto")
    parser.add_argument("--frames", type=int, default=32, help="frames of single_face.mp4 to render")
    parser.add_argument("--chunk", type=int, default=4, help="frames per chunk (= keyframe interval)")
    parser.add_argument("--size", type=int, default=32, help="engine mode: generator resolution")
    parser.add_argument("--steps", type=int, default=2,
                        help="engine mode: projection steps per keyframe (half that per warm frame)")
    parser.add_argument("--weights-mb", type=int, default=200, help="synthetic mode: model size to load")
    parser.add_argument("--production-load", type=int, default=1024, metavar="SIZE",
                        help="also time loading full-size random models of SIZE px (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "farm.json")
    args = parser.parse_args(argv)

    import ray

    from toon_ofx.core.render import RenderRequest

    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "ray": ray.__version__},
              "clip": CLIP.name, "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench-farm-") as tmp:
        tmp = Path(tmp)
        mode = args.mode
        factory, params = None, {}
        if mode in ("auto", "engine"):
            try:
                factory, params = engine_factory(tmp, args.size)
                mode = "engine"
            except Exception as exc:  # the model store or its test models are not there
                if mode == "engine":
                    raise
                print(f"bench_farm: engine mode unavailable ({exc}); synthetic mode", file=sys.stderr)
                mode = "synthetic"
        if mode == "synthetic":
            factory, params = synthetic_factory(tmp, args.weights_mb)
        params = dict(params, keyframe_interval=args.chunk)
        if mode == "engine":
            params.update(steps=args.steps, warm_steps=max(1, args.steps // 2))
        report["mode"] = mode
        report["settings"] = {"frames": args.frames, "chunk": args.chunk, "size": args.size, "steps": args.steps}
        # the first run warms file caches and imports; it is not reported
        for i, (workers, persistent) in enumerate(((2, True), (1, True), (2, True), (2, False))):
            out = tmp / f"run-{i}" / "f.%06d.png"
            request = RenderRequest(source=CLIP, output=out, params=params, frames=(0, args.frames - 1))
            run = _run(ray, request, workers, args.chunk, factory, persistent)
            if i:
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
        if args.production_load:
            report["production_load"] = production_load(tmp, args.production_load)
            print(json.dumps(report["production_load"]), flush=True)
    one, two, per_task = report["runs"]
    report["speedup_2_vs_1_workers"] = round(two["frames_per_second"] / one["frames_per_second"], 3)
    report["persistent_vs_per_task"] = {
        "model_loads": [two["model_loads"], per_task["model_loads"]],
        "load_seconds": [two["load_seconds_total"], per_task["load_seconds_total"]],
        "render_seconds": [two["render_seconds"], per_task["render_seconds"]],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if "production_load" in report:
        load = min(report["production_load"]["load_seconds"])
        chunks = -(-240 // 96)   # a 240-frame clip in 96-frame chunks...
        report["amortised_example"] = {
            "clip_frames": 240, "chunk": 96, "workers": 2,
            "per_task_load_seconds": round(chunks * load, 1), "persistent_load_seconds": round(2 * load, 1),
            "per_task_load_seconds_2400_frames": round(25 * load, 1)}
    print(json.dumps({k: report.get(k) for k in ("mode", "speedup_2_vs_1_workers", "persistent_vs_per_task",
                                                 "amortised_example")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
