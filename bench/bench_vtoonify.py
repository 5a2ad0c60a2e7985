"""The VToonify path per face-frame, side by side with the StyleGAN paths and the reference VToonify.

    python bench/bench_vtoonify.py speed [--rounds 3] [--device cpu|cuda] [--half]
    python bench/bench_vtoonify.py small [--rounds 2] [--device ...]
    python bench/bench_vtoonify.py crop

``speed``: one process, the four paths interleaved round by round on the same 1080p frame (a real face,
the astronaut photo at 1.76x on a 1920x1080 canvas: eye distance ~75 px, a full 400x400 crop):

* **VToonify (ours)**: ``VToonifyPipeline.process`` (detect, track, crop, style code, parse + VToonify at
  400x400 -> 1600x1600, paste) plus the frame's I/O (PNG write and read); VToonify-T 256 -> 1024, BiSeNet and
  the Z+ encoder at the public sizes, random weights written in the public formats.
* **Reference VToonify**: ``style_transfer.py``'s per-frame video loop on the same frame (blur, resize, crop,
  parse, network, clamp, back to uint8) with the same weights, from a checkout in ``bench/.reference/VToonify``
  (its op_cpu ops; see bench/parity_vtoonify.py).
* **Default StyleGAN path, a later frame**: ``ToonPipeline`` at 1024 config-f with a warm start; its
  ``warm_steps`` = 100 steps are extrapolated from the timed warm steps (``--steps`` a round) plus the
  frame's measured rest (detect, align, render, paste).
* **--inversion encoder**: ``ToonPipeline`` with e4e (public architecture) and the 1024 render.

Peak memory: on CUDA ``max_memory_allocated`` per path; on a CPU the peak resident size of one fresh
process per path. ``small``: what the reference computes for pixels a smaller face throws away —
the generator stopped one layer early (2x output) against the full 4x output, both reduced to the size the
paste uses (time and PSNR; random weights, so the PSNR says how much the last layer's detail survives the
reduction, not how a trained model looks), faces per batch, and the paste with and without reducing the
output on the device. ``crop``: the warp against the reference's blur + resize + crop on real frames.
Prints a table and one JSON object.
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
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from parity_vtoonify import DEFAULT_REFERENCE, enter_reference, write_encoder, write_parser, write_vtoonify  # noqa: E402

FIXTURES = Path(os.environ.get("TOON_OFX_FIXTURES", REPO.parent / "shared" / "fixtures"))
KERNEL = np.array([[0.125], [0.375], [0.375], [0.125]])


# ----------------------------------------------------------------- set-up


def bench_frame() -> np.ndarray:
    """1920x1080 RGB uint8: scikit-image's astronaut at 1.76x (eye distance ~75 px, a 1080p medium shot)."""
    from skimage import data

    face = cv2.resize(data.astronaut(), (900, 900), interpolation=cv2.INTER_CUBIC)
    canvas = np.full((1080, 1920, 3), 40, np.uint8)
    canvas[180:, 510:1410] = face
    return canvas


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@contextmanager
def timed(out: list, device):
    sync(device)
    t = time.perf_counter()
    yield
    sync(device)
    out.append(time.perf_counter() - t)


def write_models(folder: Path) -> dict:
    """Random weights at the public sizes, in the public formats (VToonify-T, BiSeNet, Z+ encoder, e4e); files
    already in `folder` are kept (several bench runs share them)."""
    from bench_inversion import write_encoder as write_e4e

    folder.mkdir(parents=True, exist_ok=True)
    writers = {"vtoonify": ("vtoonify.pt", lambda p: write_vtoonify(p, "toonify", 256, 1024, 2, seed=0)),
               "parser": ("faceparsing.pth", lambda p: write_parser(p, seed=1)),
               "style_encoder": ("encoder.pt", lambda p: write_encoder(p, 1024, seed=2)),
               "e4e": ("e4e.pt", lambda p: write_e4e(p, "Encoder4Editing", 1024))}
    files = {}
    for role, (name, write) in writers.items():
        files[role] = folder / name
        if not files[role].is_file():
            write(folder / f".{name}.tmp")
            (folder / f".{name}.tmp").rename(files[role])
    return files


def landmarker(kind: str = "auto"):
    """dlib, or (``fixed``, or ``auto`` where dlib is not installed, e.g. the GPU machine) the astronaut's face
    as dlib found it, placed as bench_frame places the photo (tests/fixed_landmarker.py)."""
    if kind == "auto":
        import importlib.util
        kind = "dlib" if importlib.util.find_spec("dlib") else "fixed"
    if kind == "fixed":
        from fixed_landmarker import FixedLandmarker
        return FixedLandmarker(scale=900 / 512, offset=(510, 180))
    from engine.faces.landmarks import make_landmarker
    return make_landmarker("dlib")


def ours(files: dict, device, half=False, batch=1, faces="auto"):
    from engine.vtoonify import load_face_parser, load_style_encoder, load_vtoonify
    from engine.vtoonify.video import VToonifyConfig, VToonifyPipeline

    return VToonifyPipeline(landmarker(faces), load_vtoonify(files["vtoonify"], device),
                            load_face_parser(files["parser"], device), load_style_encoder(files["style_encoder"], device),
                            VToonifyConfig(batch_size=batch, half=half))


def stylegan(files: dict, device, inversion: str, steps: int, faces="auto"):
    from bench_projection import random_generator
    from engine.inversion.encoders import load_encoder
    from engine.inversion.lpips import LPIPS
    from engine.pipeline import PipelineConfig, ToonPipeline

    g = random_generator(1024).to(device)
    encoder = load_encoder(files["e4e"], device=device) if inversion == "encoder" else None
    lpips = LPIPS().eval().requires_grad_(False).to(device) if inversion == "projection" else None
    config = PipelineConfig(inversion=inversion, steps=1, warm_steps=steps, keyframe_interval=0)
    return ToonPipeline(landmarker(faces), g, g, lpips, config, encoder=encoder)


class Reference:
    """style_transfer.py's per-frame video loop (after the first frame fixed the crop), same weights."""

    def __init__(self, files: dict, device, frame: np.ndarray, landmarks: np.ndarray, root: Path):
        ref = enter_reference(root)
        self.net = ref.VToonify(backbone="toonify")
        self.net.load_state_dict(torch.load(files["vtoonify"], map_location="cpu")["g_ema"])
        self.net.to(device).eval()
        self.parser = ref.BiSeNet(n_classes=19)
        self.parser.load_state_dict(torch.load(files["parser"], map_location="cpu"))
        self.parser.to(device).eval()
        self.device = device
        lm = landmarks   # util.get_video_crop_parameter, padding 200
        scale = 64. / (np.mean(lm[42:48, 0]) - np.mean(lm[36:42, 0]))
        center = ((np.mean(lm[42:48], 0) + np.mean(lm[36:42], 0)) / 2) * scale
        self.h, self.w = round(frame.shape[0] * scale), round(frame.shape[1] * scale)
        self.left, self.right = max(round(center[0] - 200), 0) // 8 * 8, min(round(center[0] + 200), self.w) // 8 * 8
        self.top, self.bottom = max(round(center[1] - 200), 0) // 8 * 8, min(round(center[1] + 200), self.h) // 8 * 8
        self.scale = scale

    def crop(self, frame: np.ndarray) -> np.ndarray:
        if self.scale <= 0.75:
            frame = cv2.sepFilter2D(frame, -1, KERNEL, KERNEL)
        if self.scale <= 0.375:
            frame = cv2.sepFilter2D(frame, -1, KERNEL, KERNEL)
        return cv2.resize(frame, (self.w, self.h))[self.top:self.bottom, self.left:self.right]

    @torch.no_grad()
    def __call__(self, frame: np.ndarray, style: torch.Tensor) -> np.ndarray:
        crop = self.crop(frame)
        x = (torch.from_numpy(crop).permute(2, 0, 1)[None].float().to(self.device) / 255 - 0.5) / 0.5
        x_p = F.interpolate(self.parser(2 * (F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)))[0],
                            scale_factor=0.5, recompute_scale_factor=False).detach()
        y = torch.clamp(self.net(torch.cat((x, x_p / 16.), dim=1), style, d_s=0.5), -1, 1)
        out = ((y[0].cpu().numpy().transpose(1, 2, 0) + 1.0) * 127.5).astype(np.uint8)
        return cv2.cvtColor(out, cv2.COLOR_RGB2BGR)


def frame_io(image: np.ndarray, folder: Path) -> None:
    """What a render does per frame around the engine: write the result as PNG, read a source frame."""
    from toon_ofx.core import media

    media.write_frame(folder / "frame.png", image)
    cv2.imread(str(folder / "frame.png"))


# ----------------------------------------------------------------- speed


def _rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _memory_child(path: str, args: dict, queue) -> None:
    """One path in a fresh process: its peak resident memory (CPU)."""
    torch.set_num_threads(args["threads"])
    files = {k: Path(v) for k, v in args["files"].items()}
    frame = bench_frame()
    if path == "vtoonify":
        ours(files, "cpu", faces=args["faces"]).process(frame, 0)
    elif path == "reference":
        lm = landmarker(args["faces"]).detect(frame)[0].landmarks
        Reference(files, "cpu", frame, lm, Path(args["reference"]))(frame, torch.randn(1, 18, 512))
    else:
        pipe = stylegan(files, "cpu", path, 1, args["faces"])
        for i in range(2):
            pipe.process(frame, i)
    queue.put(_rss_mb())


def peak_rss(path: str, args: dict) -> float:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_memory_child, args=(path, args, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def bench_speed(args) -> dict:
    from engine.faces.align import align_face, ffhq_quad
    from engine.vtoonify import style_code
    from engine.vtoonify.video import STYLE_STRIDE

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    frame = bench_frame()
    with tempfile.TemporaryDirectory(prefix="toon-bench-vt-") as tmp:
        tmp = Path(tmp)
        files = write_models(args.models or tmp / "models")
        vt = ours(files, device, half=args.half, faces=args.landmarker)
        vt32 = ours(files, device, faces=args.landmarker) if args.half else None
        landmarks = landmarker(args.landmarker).detect(frame)[0].landmarks
        reference = Reference(files, device, frame, landmarks, args.reference)
        assert (reference.bottom - reference.top, reference.right - reference.left) == (400, 400)
        style = vt.net.zplus2wplus(torch.randn(1, 18, 512, device=device))
        projection = stylegan(files, device, "projection", args.steps, args.landmarker)
        encoder = stylegan(files, device, "encoder", 0, args.landmarker)
        mem = {}
        steps: list = []
        projection.on_step = lambda step, total: steps.append(time.perf_counter())
        t = {k: [] for k in ("ours", "ours_io", "ours_style_code", "reference", "projection_rest", "encoder",
                             "network_ours", "network_reference")}
        same = torch.from_numpy(reference.crop(frame)).permute(2, 0, 1)[None].float().to(device) / 127.5 - 1
        aligned = vt._to_tensor([align_face(frame, ffhq_quad(landmarks), vt.encoder.input_size)[0]], np.uint8)
        stages: dict = {}
        parity = None
        for r in range(args.rounds + 1):   # round 0 warms up every path (allocators, kernels, first chain)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            with timed(t["ours"], device):
                result = vt.process(frame, r)
            with timed(t["ours_io"], device):
                frame_io(result.image, tmp)
            with timed(t["ours_style_code"], device), torch.no_grad():   # a face's code, taken every 4th frame
                style_code(vt.net, vt.encoder, aligned)
            if r:
                for stage, seconds in result.timings.items():
                    stages.setdefault(stage, []).append(seconds)
            if device.type == "cuda":
                mem["vtoonify"] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()
            if vt32 is not None and r == 0:
                full = vt32.process(frame, 0).image.astype(np.float64)
                diff = np.abs(vt.process(frame, 0).image.astype(np.float64) - full)
                parity = {"max_abs_levels": float(diff.max()), "mean_abs_levels": float(diff.mean()),
                          "psnr_db": float(10 * np.log10(255 ** 2 / max(np.mean(diff ** 2), 1e-12)))}
                vt.reset()
            with timed(t["reference"], device):
                reference(frame, style)
            for name, net, parser in (("network_ours", vt.net, vt.parser),
                                      ("network_reference", reference.net, reference.parser)):
                with timed(t[name], device), torch.no_grad():   # the same input through both networks
                    parsing = F.interpolate(parser(2 * F.interpolate(same, scale_factor=2, mode="bilinear",
                                                                     align_corners=False))[0],
                                            scale_factor=0.5, recompute_scale_factor=False)
                    net(torch.cat((same, parsing / 16.0), 1), style, d_s=0.5)
            if device.type == "cuda":
                mem["reference"] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()
            steps.clear()
            total = []
            with timed(total, device):
                projection.process(frame, r)
            if r:   # a warm frame: args.steps steps, and the rest of the frame
                step_times = np.diff(steps)
                t.setdefault("step", []).extend(step_times.tolist())
                t["projection_rest"].append(total[0] - (steps[-1] - steps[0]) - float(np.median(step_times)))
            if device.type == "cuda":
                mem["projection"] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()
            with timed(t["encoder"], device):
                encoder.process(frame, r)
            if device.type == "cuda":
                mem["encoder"] = torch.cuda.max_memory_allocated() / 2**20
            if r == 0:
                for key in t:
                    t[key].clear()
        if device.type != "cuda" and not args.no_memory:
            shared = {"threads": args.threads, "files": {k: str(v) for k, v in files.items()},
                      "reference": str(args.reference), "faces": args.landmarker}
            mem = {path: peak_rss(path, shared) for path in ("vtoonify", "reference", "projection", "encoder")}
    med = {k: statistics.median(v) for k, v in t.items() if v}
    stage = {k: statistics.median(v) for k, v in stages.items()}
    stage.pop("encode", None)   # the rounds' frames are no sample frames: the code is timed apart, amortized
    stage["style code (every 4th frame, amortized)"] = med["ours_style_code"] / STYLE_STRIDE
    network = stage["generate"] + stage["style code (every 4th frame, amortized)"]
    ours_total = med["ours"] + med["ours_io"] + stage["style code (every 4th frame, amortized)"]
    around = ours_total - network
    later = 100 * med["step"] + med["projection_rest"]
    report = {
        "bench": "vtoonify_speed", "device": str(device), "half": args.half, "rounds": args.rounds,
        "seconds_per_face_frame": {
            "vtoonify (ours, everything)": ours_total, "reference vtoonify (per-frame loop)": med["reference"],
            "stylegan default, later frame (100 warm steps, extrapolated)": later,
            "stylegan --inversion encoder": med["encoder"]},
        "ours_stages_s": {**stage, "io": med["ours_io"]},
        "measured": {"projection_step_s": med["step"], "projection_frame_rest_s": med["projection_rest"]},
        "ratios": {"default_later_frame / ours": later / ours_total, "ours / reference": ours_total / med["reference"],
                   "ours_without_detection / reference": (ours_total - stage.get("detect", 0)) / med["reference"],
                   "network only, same input: ours / reference": med["network_ours"] / med["network_reference"],
                   "around_network_share": around / ours_total,
                   "around_without_detection_share": (around - stage.get("detect", 0)) / ours_total,
                   "encoder_path / ours": med["encoder"] / ours_total},
        "goals": {"ours >= 30x faster than the default's later frames": later / ours_total >= 30,
                  "ours within 1.1x of the reference": ours_total / med["reference"] <= 1.1,
                  "around the network <= 10%": around / ours_total <= 0.10},
        "peak_memory_mb": {k: round(v) for k, v in mem.items()},
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS of one process per path",
        "fp16_vs_fp32": parity, "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
    }
    return report


# ----------------------------------------------------------------- small faces


@contextmanager
def early_exit(net, drop: int = 1):
    """The network with its last `drop` generator layers removed (output 4 / 2**drop times the crop)."""
    g = net.stylegan()
    convs, rgbs = g.convs, g.to_rgbs
    g.convs = torch.nn.ModuleList(list(convs)[:len(convs) - 2 * drop])
    g.to_rgbs = torch.nn.ModuleList(list(rgbs)[:len(rgbs) - drop])
    try:
        yield net
    finally:
        g.convs, g.to_rgbs = convs, rgbs


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())   # images in [-1, 1]: peak-to-peak 2
    return 10 * np.log10(4 / max(mse, 1e-12))


def bench_small(args) -> dict:
    from engine.faces.align import ffhq_quad
    from engine.vtoonify.stylize import PARSING_DIVISOR, parse_faces
    from engine.vtoonify.crop import crop_image, face_crop
    from engine.vtoonify.paste import HeadLayer, head_mask, paste_heads
    from engine.vtoonify.video import VToonifyPipeline

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    frame = bench_frame()
    with tempfile.TemporaryDirectory(prefix="toon-bench-vt-") as tmp:
        files = write_models(args.models or Path(tmp) / "models")
        pipe = ours(files, device, faces=args.landmarker)
    net, parser = pipe.net, pipe.parser
    quad = ffhq_quad(landmarker(args.landmarker).detect(frame)[0].landmarks)
    crop = face_crop(quad)
    x = pipe._to_tensor([crop_image(frame, crop)] * 4, np.uint8)
    style = net.zplus2wplus(torch.randn(4, 18, 512, device=device))
    times = {"full 4x": [], "stopped one layer early (2x)": []}
    batches = {b: [] for b in (1, 2, 4)}
    quality = {}
    with torch.no_grad():
        p = parse_faces(parser, x[:1])
        inputs = torch.cat((x[:1], p / PARSING_DIVISOR), 1)
        full = net(inputs, style[:1], d_s=0.5).clamp(-1, 1)
        with early_exit(net):
            half = net(inputs, style[:1], d_s=0.5).clamp(-1, 1)
        for footprint in (800, 625, 400, 160):   # frame pixels the 400 crop covers: eye distance 32-160 px
            a = F.interpolate(full, size=(footprint,) * 2, mode="bilinear", antialias=True, align_corners=False)
            b = F.interpolate(half, size=(footprint,) * 2, mode="bilinear", antialias=True, align_corners=False)
            quality[f"paste at {footprint} px (eye distance {64 * footprint / 400:.0f} px)"] = round(psnr(a, b), 2)
        for r in range(args.rounds + 1):
            for name, ctx in (("full 4x", None), ("stopped one layer early (2x)", 1)):
                out = []
                with timed(out, device):
                    if ctx is None:
                        net(torch.cat((x[:1], parse_faces(parser, x[:1]) / PARSING_DIVISOR), 1), style[:1], d_s=0.5)
                    else:
                        with early_exit(net):
                            net(torch.cat((x[:1], parse_faces(parser, x[:1]) / PARSING_DIVISOR), 1), style[:1],
                                d_s=0.5)
                if r:
                    times[name].append(out[0])
            for b in batches:
                out = []
                with timed(out, device):
                    net(torch.cat((x[:b], parse_faces(parser, x[:b]) / PARSING_DIVISOR), 1), style[:b], d_s=0.5)
                if r:
                    batches[b].append(out[0] / b)
        labels = parse_faces(parser, x[:1]).argmax(1)[0].to(torch.uint8).cpu().numpy()
    mask = head_mask(labels, 0.08 * 256, 64)
    paste = {"reduced on the device": [], "full 1600 px to the host": []}
    for r in range(args.rounds + 1):
        for name in paste:
            out = []
            with timed(out, device):
                if name == "reduced on the device":
                    image, to_image = VToonifyPipeline._reduced(full[0], crop, 255)
                else:
                    image = ((full[0] + 1) * 127.5).permute(1, 2, 0).cpu().numpy()
                    to_image = crop.matrix * 4
                    to_image[:, 2] += 1.5
                paste_heads(frame, [HeadLayer(image, to_image, mask, crop.matrix)])
            if r:
                paste[name].append(out[0])
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "bench": "vtoonify_small_faces", "device": str(device), "crop_scale": round(crop.scale, 3),
        "network_s": med, "saved_by_stopping_early": 1 - med["stopped one layer early (2x)"] / med["full 4x"],
        "psnr_db_early_vs_full_after_reduction (random weights)": quality,
        "per_face_s_by_batch": {b: statistics.median(v) for b, v in batches.items()},
        "paste_s": {k: statistics.median(v) for k, v in paste.items()},
        "threads": args.threads, "torch": torch.__version__,
    }


# ----------------------------------------------------------------- crop


def bench_crop(args) -> dict:
    """The warp against the reference's blur + resize + crop on real frames scaled up to 1080p / 4K."""
    from test_vtoonify_crop import reference_crop
    from engine.faces.align import ffhq_quad
    from engine.faces.landmarks import make_landmarker
    from engine.vtoonify.crop import face_crop, warp_crop
    from toon_ofx.core import media

    detector = make_landmarker("dlib")
    rows = []
    for name, index, up in (("single_face.mp4", 10, 1), ("single_face.mp4", 10, 3), ("single_face.mp4", 40, 6),
                            ("tears_of_steel_clip.mp4", 100, 3)):
        frame = dict(media.read_frames(FIXTURES / name, index, index))[index]
        frame = cv2.resize(frame, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
        face = max(detector.detect(frame), key=lambda f: f.box[2] - f.box[0])
        ref, to_frame, passes = reference_crop(frame, face.landmarks)
        side = min(ref.shape[:2])
        t0 = time.perf_counter()
        mine = warp_crop(frame, to_frame, side, passes, undrift=False)
        warp_s = time.perf_counter() - t0
        diff = np.abs(np.rint(mine) - ref[:side, :side])
        lm = face.landmarks
        ref_scale = 64. / (np.mean(lm[42:48, 0]) - np.mean(lm[36:42, 0]))
        rows.append({"frame": f"{name}#{index} x{up} ({frame.shape[1]}x{frame.shape[0]})", "blur_passes": passes,
                     "max_abs": float(diff.max()), "mean_abs": round(float(diff.mean()), 3),
                     "track_scale / reference_scale": round(face_crop(ffhq_quad(lm)).scale / ref_scale, 3),
                     "warp_s": round(warp_s, 4)})
    return {"bench": "vtoonify_crop", "rows": rows}


def table(report: dict) -> str:
    lines = [f"== {report['bench']} ({report.get('device', 'cpu')}) =="]
    for key, value in report.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines += [f"    {k:<62} {v:.4g}" if isinstance(v, float) else f"    {k:<62} {v}" for k, v in value.items()]
        elif isinstance(value, list):
            lines += [f"    {row}" for row in value]
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="speed", choices=("speed", "small", "crop"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed warm projection steps a round")
    ap.add_argument("--half", action="store_true", help="VToonify in float16 (CUDA), with its parity to float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-path processes for peak memory (CPU)")
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--landmarker", default="auto", choices=("auto", "dlib", "fixed"),
                    help="fixed: the bench frame's face without dlib (auto: where dlib is not installed)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    ap.add_argument("--models", type=Path, help="a folder for the random-weight model files, reused if there")
    args = ap.parse_args(argv)
    report = {"speed": bench_speed, "small": bench_small, "crop": bench_crop}[args.what](args)
    print(table(report))
    print(json.dumps(report, default=float))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
    return report


if __name__ == "__main__":
    main()
