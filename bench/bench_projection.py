"""Projection: the cost of one step (side by side with NVIDIA's and rosinality's) and warm starts on real video.

    python bench/bench_projection.py step [--size 512] [--rounds 3] [--steps 4]
    python bench/bench_projection.py warm [--frames 4] [--cold-steps 200] [--margin 0.05]
        [--base ffhq.pt --vgg vgg16-397923af.pth --lin vgg.pth] [--encoder e4e_ffhq_encode.pt]

``step``: per-step seconds of toon-ofx's W+ projection on a config-f generator
(random weights: time does not depend on them) next to NVIDIA's
stylegan2-ada-pytorch ``projector.py`` and rosinality's ``projector.py`` run
on the same generator and perceptual network, interleaved in one run, as
ratios. The reference projectors run through a harness that is not in git (it
drives other projects' code): ``bench/.reference/harness.py`` exposing
``nvidia_runner(g, lpips)`` and ``rosinality_runner(g, lpips)``, each
returning ``run(target, steps, on_step)``, beside their unchanged
``projector.py`` files; without it only toon-ofx's figures are printed. Also
measured: the step as it was before the target's features were cached (target
and render through VGG16 in one batch), a batch of 4 faces per face, the final
render + loss evaluation that ``evaluate=False`` skips (in steps), and what
the generator's layers above the loss size (256) cost and change: the step
through a generator cut at 256, the share of the latent gradient that reaches
only those layers, and the LPIPS between the 256 downsample of the full render
and the cut render.

``warm``: real consecutive frames of a fixture clip are detected, tracked and
FFHQ-aligned as the pipeline does. Frame 0 is projected cold; for each later
frame a cold projection of ``--cold-steps`` gives the reference LPIPS, and a
warm start from the previous frame's result (latent + noise maps) runs a ladder
of budgets until its LPIPS is within ``--margin`` (relative) of the cold one.
The chain continues from the warm result, as in a render. With ``--encoder`` the
same ladder runs from the encoder's latents (refinement steps), and the
encoder's own LPIPS is printed. The figures tell how many steps real video
needs only with real weights (``--base``, ``--vgg``, ``--lin``, ``--encoder``);
with random weights they exercise the code path and say nothing about faces.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.generator.stylegan2 import Generator  # noqa: E402
from engine.inversion.lpips import LPIPS, load_lpips, normalize_channels  # noqa: E402
from engine.inversion.projection import latent_stats, project  # noqa: E402

LADDER = (0, 1, 2, 3, 5, 8, 12, 20, 30, 50, 80, 120, 200, 300, 500)
FIXTURES = Path(os.environ.get("TOON_OFX_FIXTURES", REPO.parent / "shared" / "fixtures"))
LIN_WEIGHTS = REPO / ".lpips-reference" / "lpips" / "weights" / "v0.1" / "vgg.pth"


def random_generator(size: int, seed: int = 0, channels: int | None = None) -> Generator:
    """A random-weight config-f generator of `size` px (or one with `channels` channels at every
    resolution), with trained-like noise strengths and its own latent average. Time and memory do not
    depend on the weights; the other benches build theirs here too."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if channels:
            g = Generator(size, channel_multiplier=1,
                          channels={2 ** i: channels for i in range(2, int(math.log2(size)) + 1)})
        else:
            g = Generator(size)
        with torch.no_grad():
            for name, p in g.named_parameters():
                if name.endswith("noise.weight"):
                    p.fill_(0.05)  # trained networks have non-zero noise strengths
            g.latent_avg.copy_(g.mapping(torch.randn(2048, 512)).mean(0))
    return g.eval().requires_grad_(False)


def perceptual_network(vgg: Path | None, lin: Path | None, seed: int = 0) -> tuple[LPIPS, str]:
    """Real LPIPS when both files are given; else a random trunk with the real heads if the lpips wheel is unpacked."""
    if vgg and lin:
        return load_lpips(vgg, lin, resize=None), "lpips-vgg16 (real weights)"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lp = LPIPS()
    if LIN_WEIGHTS.is_file():
        sd = torch.load(LIN_WEIGHTS, map_location="cpu", weights_only=True)
        with torch.no_grad():
            for i, head in enumerate(lp.lins):
                head.model[1].weight.copy_(sd[f"lin{i}.model.1.weight"])
        return lp.eval(), "lpips-vgg16 (random trunk, real heads)"
    with torch.no_grad():
        for head in lp.lins:
            head.model[1].weight.uniform_(0.0, 0.1)
    return lp.eval(), "lpips-vgg16 (random weights)"


class Concatenated(torch.nn.Module):
    """LPIPS as computed before bind_target: target and render through the trunk as one batch, every step."""

    def __init__(self, lpips: LPIPS):
        super().__init__()
        self.lpips = lpips

    def forward(self, x, y):
        lp, n = self.lpips, x.shape[0]
        both = (torch.cat([x, y]) - lp.shift) / lp.scale
        total = 0
        for lin, f in zip(lp.lins, lp.net(both)):
            f = normalize_channels(f)
            total = total + lin((f[:n] - f[n:]) ** 2).mean(dim=(1, 2, 3))
        return total


def cut_generator(g: Generator, size: int) -> Generator:
    """The same weights, synthesis stopped at `size` (what a projection 'only as far as the loss needs' renders)."""
    cut = Generator(size, channel_multiplier=g.channel_multiplier)
    own = cut.state_dict()
    cut.load_state_dict({k: v for k, v in g.state_dict().items() if k in own and v.shape == own[k].shape})
    cut.latent_avg.copy_(g.latent_avg)
    return cut.eval().requires_grad_(False)


# --------------------------------------------------------------------- step


def _stamps(run, target, steps):
    stamps = [time.perf_counter()]
    run(target, steps, lambda: stamps.append(time.perf_counter()))
    # the first interval includes each projector's set-up (w stats, target features)
    return [b - a for a, b in zip(stamps[1:], stamps[2:])]


def ours_runner(g, perceptual, batch=1, **kw):
    def run(target, steps, on_step):
        project(g, target.expand(batch, -1, -1, -1), steps=steps, perceptual=perceptual,
                callback=lambda i, losses: on_step(), n_mean_latent=1000, evaluate=False, **kw)
    return run


def load_harness(directory: Path):
    path = directory / "harness.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("reference_harness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def upper_layers(g: Generator, lpips: LPIPS, loss_size: int) -> dict:
    """What the layers above `loss_size` contribute to the loss image and its latent gradient."""
    if g.size <= loss_size:
        return {}
    cut = cut_generator(g, loss_size)
    gen = torch.Generator().manual_seed(5)
    w = g.mapping(torch.randn(1, 512, generator=gen)).unsqueeze(1).repeat(1, g.n_latent, 1)
    w = w + 0.5 * torch.randn(w.shape, generator=gen)  # distinct per-layer styles, as W+ projections give
    target = g.synthesis(g.mapping(torch.randn(1, 512, generator=gen))[:, None].repeat(1, g.n_latent, 1))
    target = F.interpolate(target, size=(loss_size, loss_size), mode="area")
    w.requires_grad_(True)
    full = F.interpolate(g.synthesis(w), size=(loss_size, loss_size), mode="area")
    lpips(full, target).sum().backward()
    grad = w.grad.norm(dim=2)[0]
    with torch.no_grad():
        short = cut.synthesis(w[:, :cut.n_latent].detach())
        return {"latents_only_above": list(range(cut.n_latent, g.n_latent)),
                "gradient_share_only_above": round(float(grad[cut.n_latent:].norm() / grad.norm()), 4),
                "lpips_full_downsampled_vs_cut": round(float(lpips(full.detach(), short)), 4),
                "lpips_full_vs_target": round(float(lpips(full.detach(), target)), 4)}


def bench_step(args) -> dict:
    g = random_generator(args.size)
    lpips, perceptual_name = perceptual_network(args.vgg, args.lin)
    target = g.synthesis(g.mapping(torch.randn(1, 512))[:, None].repeat(1, g.n_latent, 1)).detach()
    latent_stats(g, n=1000)
    runners = {"toon-ofx": ours_runner(g, lpips),
               "toon-ofx before (target through VGG every step)": ours_runner(g, Concatenated(lpips)),
               f"toon-ofx batch {args.batch} (per face)": ours_runner(g, lpips, batch=args.batch)}
    if g.size > 256:
        runners["toon-ofx through a generator cut at 256"] = ours_runner(cut_generator(g, 256), lpips)
    harness = load_harness(args.reference)
    if harness is not None:
        runners["nvidia"] = harness.nvidia_runner(g, lpips)
        runners["rosinality"] = harness.rosinality_runner(g, lpips)
    steps: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.rounds):  # interleaved: machine noise hits every projector alike
        for name, run in runners.items():
            steps[name] += _stamps(run, target, args.steps + 1)
    median = {name: statistics.median(v) for name, v in steps.items()}
    median[f"toon-ofx batch {args.batch} (per face)"] /= args.batch
    ours = median["toon-ofx"]

    t = time.perf_counter()
    project(g, target, steps=0, perceptual=lpips, n_mean_latent=1000, evaluate=True)
    with_eval = time.perf_counter() - t
    t = time.perf_counter()
    project(g, target, steps=0, perceptual=lpips, n_mean_latent=1000, evaluate=False)
    final_eval = with_eval - (time.perf_counter() - t)
    return {
        "bench": "projection_step", "size": args.size, "space": "w+ (NVIDIA's projector: w)",
        "perceptual": perceptual_name, "rounds": args.rounds, "steps_per_round": args.steps,
        "seconds_per_step": {k: round(v, 3) for k, v in median.items()},
        "ratio_to_toon_ofx": {k: round(v / ours, 3) for k, v in median.items()},
        "final_evaluation_in_steps": round(final_eval / ours, 3),
        "upper_layers": upper_layers(g, lpips, 256),
        "reference_harness": str(args.reference / "harness.py") if harness else None,
    }


# --------------------------------------------------------------------- warm


def aligned_frames(clip: Path, frames: int, size: int, first: int = 0) -> torch.Tensor:
    """The first tracked face of `frames` consecutive frames, FFHQ-aligned as the pipeline aligns it."""
    from engine.faces.align import align_face
    from engine.faces.landmarks import make_landmarker
    from engine.faces.tracking import FaceTracker
    from toon_ofx.core import media

    landmarker, tracker, crops = make_landmarker("dlib"), FaceTracker(smoothing=0.5), []
    for _, frame in media.read_frames(media.probe(clip), first, first + frames - 1):
        tracked = tracker.update(landmarker.detect(frame))
        if not tracked:
            raise SystemExit(f"no face in frame {len(crops) + first} of {clip}")
        crop, _ = align_face(frame, tracked[0].quad, size)
        crops.append(torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(crops)


def _ladder(threshold, run):
    """Smallest budget on LADDER whose LPIPS is within threshold, as (steps, result) (None if none is)."""
    for k in LADDER:
        result = run(k)
        if float(result.losses["perceptual"]) <= threshold:
            return k, result
    return None, result


def bench_warm(args) -> dict:
    from engine.generator.checkpoints import load_generator

    g = load_generator(args.base) if args.base else random_generator(args.size)
    g = g.eval().requires_grad_(False)
    lpips, perceptual_name = perceptual_network(args.vgg, args.lin)
    clip = args.clip
    crops = aligned_frames(clip, args.frames, g.size, args.first)
    encoder = None
    if args.encoder:
        from engine.inversion.encoders import load_encoder
        encoder = load_encoder(args.encoder)
    kw = dict(perceptual=lpips, pixel_weight=args.pixel_weight, seed=0)
    K = args.cold_steps
    prev = project(g, crops[:1], steps=K, **kw)
    rows = []
    for f in range(1, args.frames):
        target = crops[f:f + 1]
        cold = project(g, target, steps=K, **kw)
        threshold = float(cold.losses["perceptual"]) * (1 + args.margin)
        row = {"frame": args.first + f, "cold_lpips": round(float(cold.losses["perceptual"]), 4),
               "threshold": round(threshold, 4)}
        k, warm = _ladder(threshold, lambda k: project(
            g, target, steps=k, init=prev.latents, init_noises=prev.noises, **kw))
        row.update(warm_steps=k, warm_lpips=round(float(warm.losses["perceptual"]), 4))
        if encoder is not None:
            with torch.no_grad():
                start = encoder(target)
            k_enc, refined = _ladder(threshold, lambda k: project(g, target, steps=k, init=start, **kw))
            row.update(encoder_steps=k_enc, encoder_lpips=round(float(
                project(g, target, steps=0, init=start, **kw).losses["perceptual"]), 4),
                refined_lpips=round(float(refined.losses["perceptual"]), 4))
        rows.append(row)
        prev = warm if k is not None else cold  # the chain goes on as a render's would
    needed = [r["warm_steps"] for r in rows]
    summary = {
        "bench": "projection_warm_start_real_frames", "clip": clip.name, "frames": rows,
        "generator": "real: " + str(args.base) if args.base else f"random config-f {args.size}px",
        "perceptual": perceptual_name, "cold_steps": K, "margin": args.margin,
        "warm_steps_needed_max": None if None in needed else max(needed),
        "all_reached": None not in needed,
    }
    if encoder is not None:
        enc = [r["encoder_steps"] for r in rows]
        summary["encoder_steps_needed_max"] = None if None in enc else max(enc)
    return summary


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    step = sub.add_parser("step", help="per-step time, side by side with the reference projectors")
    step.add_argument("--size", type=int, default=512)
    step.add_argument("--rounds", type=int, default=3)
    step.add_argument("--steps", type=int, default=4, help="timed steps per projector and round")
    step.add_argument("--batch", type=int, default=4)
    step.add_argument("--reference", type=Path, default=REPO / "bench" / ".reference")
    warm = sub.add_parser("warm", help="warm-start / refinement steps on real consecutive frames")
    warm.add_argument("--clip", type=Path, default=FIXTURES / "single_face.mp4")
    warm.add_argument("--frames", type=int, default=4)
    warm.add_argument("--first", type=int, default=0)
    warm.add_argument("--size", type=int, default=256, help="random generator size (without --base)")
    warm.add_argument("--cold-steps", type=int, default=200)
    warm.add_argument("--margin", type=float, default=0.05, help="relative LPIPS margin over the cold result")
    warm.add_argument("--pixel-weight", type=float, default=0.1)
    warm.add_argument("--base", type=Path, help="real base generator (rosinality .pt or NVIDIA .pkl)")
    warm.add_argument("--encoder", type=Path, help="pSp / e4e / ReStyle checkpoint for the refinement ladder")
    for p in (step, warm):
        p.add_argument("--vgg", type=Path, help="torchvision vgg16-397923af.pth")
        p.add_argument("--lin", type=Path, help="lpips weights/v0.1/vgg.pth")
        p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = bench_step(args) if args.command == "step" else bench_warm(args)
    report.update(threads=args.threads, torch=torch.__version__, machine=platform.machine())
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
