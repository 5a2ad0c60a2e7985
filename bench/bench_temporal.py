"""Temporal quality on the real fixture clips: face-track jitter and lag, latent continuity at keyframes.

    python bench/bench_temporal.py tracks      [--clips ...]   # quads: raw vs causal vs zero-phase
    python bench/bench_temporal.py continuity  [--clips ...] [--inversion encoder+projection]
                                               # ||w(t+1) - w(t)|| at keyframes vs elsewhere

**tracks**: dlib's quads on every detected frame, smoothed by the tracking stage
(engine.faces.lookahead) in causal mode (one-euro) and zero-phase mode at several
strengths. Per clip, as a percentage of the face size (the FFHQ quad's side):

* jitter: RMS over frames and corners of the corners' second difference
  ``|c(t+1) - 2 c(t) + c(t-1)|`` (frames whose neighbours are detected too);
* lag: mean offset of the smoothed centre behind a zero-phase reference along the
  direction of motion (positive = trailing), on frames moving > 0.5 px/frame. The
  reference is a local quadratic (Savitzky-Golay) fit over +-6 frames of the raw
  track: non-causal, and unlike the smoothers under test;
* delay: the shift (frames) of the reference that best matches the smoothed track
  (runs of 20+ detected frames);
* deviation: mean distance of the smoothed centre from the reference: noise left plus
  the shape a wider kernel flattens (its minimum marks the best strength).

**continuity**: the pipeline (random-weight 64 px StyleGAN2 and random-weight
LPIPS: no trained weights are available here, so the figures show the mechanism,
not a trained model's numbers) on the real aligned crops of the clips, keyframes
every ``--keyframe-interval`` frames. One run with the old chain kept for
``max(--overlaps)`` frames past each keyframe records every chain's latents, from
which each overlap V (0 = hard switch) is evaluated. Reported: mean step
``|w(t+1) - w(t)|`` (W+, flattened) over steps that touch a switch (t + 1 in
[K, K + V]) vs over all other steps of the same face, their ratio (goal <= 1.5),
the largest switch step / mean elsewhere, and the extra projections (V / K).
``--inversion encoder+projection`` starts each chain (keyframes, new faces) from
a random-weight e4e of the public architecture plus ``--refine-steps``, as the
product's default does, instead of from the mean face.

Detections are cached in bench/results/ (dlib needs ~0.3-1 s a frame here).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.faces.align import ffhq_quad, quad_params  # noqa: E402
from engine.faces.lookahead import LookaheadTracker  # noqa: E402

FIXTURES = Path(os.environ.get("TOON_OFX_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
CLIPS = ("single_face.mp4", "face_noface.mov", "tears_of_steel_clip.mp4")
RESULTS = Path(__file__).resolve().parent / "results"


# -- detections ---------------------------------------------------------------------------------
class CachedLandmarker:
    """dlib, with its detections kept on disk by frame content."""

    def __init__(self, path: Path):
        self.path = path
        self.cache = pickle.loads(path.read_bytes()) if path.exists() else {}
        self._dlib = None

    def detect(self, image):
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        if key not in self.cache:
            if self._dlib is None:
                from engine.faces.landmarks import DlibLandmarker

                self._dlib = DlibLandmarker()
            self.cache[key] = self._dlib.detect(image)
        return self.cache[key]

    def save(self) -> None:
        self.path.parent.mkdir(exist_ok=True)
        self.path.write_bytes(pickle.dumps(self.cache))


def clip_frames(name: str):
    from toon_ofx.core import media

    return list(media.read_frames(media.probe(FIXTURES / name)))


def detections(name: str, frames) -> tuple:
    landmarker = CachedLandmarker(RESULTS / f"detections-{name}.pkl")
    dets = [landmarker.detect(frame) for _, frame in frames]
    landmarker.save()
    return landmarker, dets


def run_tracker(tracker: LookaheadTracker, dets) -> dict:
    """{frame: faces} over a whole clip."""
    out = {}
    for index, faces in enumerate(dets):
        tracker.push(index, faces)
        if index >= tracker.look_ahead:
            out[index - tracker.look_ahead] = tracker.faces_at(index - tracker.look_ahead)
    for index in range(max(0, len(dets) - tracker.look_ahead), len(dets)):
        out[index] = tracker.faces_at(index)
    return out


# -- track metrics ---------------------------------------------------------------------------------
def detected_tracks(out: dict) -> list:
    """Per track, {frame: (raw quad, smoothed quad)} on its detected frames (tracks follow `previous`)."""
    tracks, by_key = [], {}
    for t in sorted(out):
        for face in out[t]:
            track = by_key.pop(face.previous, None) if face.previous else None
            if track is None:
                track = {}
                tracks.append(track)
            by_key[face.key] = track
            if face.raw_quad is not None:
                track[t] = (face.raw_quad, face.quad)
    return [t for t in tracks if len(t) >= 10]


def savgol_centres(raw: dict, half: int = 6) -> dict:
    """Zero-phase reference: local quadratic fit of the raw centres over +-half frames."""
    frames = np.array(sorted(raw))
    centres = np.array([quad_params(raw[f])[0] for f in frames])
    out = {}
    for f in frames:
        near = np.abs(frames - f) <= half
        d = frames[near] - f
        coef = np.polynomial.polynomial.polyfit(d, centres[near], 2 if near.sum() > 3 else 1)
        out[int(f)] = coef[0]
    return out


def runs(frames: list, minimum: int = 20) -> list:
    """Maximal runs of consecutive frames at least `minimum` long."""
    out, start = [], 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or frames[i] != frames[i - 1] + 1:
            if i - start >= minimum:
                out.append(frames[start:i])
            start = i
    return out


def track_metrics(tracks: list, which: int) -> dict:
    """jitter, lag and deviation (% of the face size) and delay (frames) of quads[which] (0 raw, 1 smoothed)."""
    jitter, lag, deviation, delays, sizes = [], [], [], [], []
    for track in tracks:
        frames = sorted(track)
        size = np.mean([np.linalg.norm(track[f][0][3] - track[f][0][0]) for f in frames])
        sizes.append(size)
        for f in frames:
            if f - 1 in track and f + 1 in track:
                d2 = track[f + 1][which] - 2 * track[f][which] + track[f - 1][which]
                jitter.extend(np.linalg.norm(d2, axis=1) / size)
        ref = savgol_centres({f: track[f][0] for f in frames})
        for f in frames:
            offset = quad_params(track[f][which])[0] - ref[f]
            deviation.append(np.linalg.norm(offset) / size)
            if f - 1 in ref and f + 1 in ref:
                v = (ref[f + 1] - ref[f - 1]) / 2
                speed = np.linalg.norm(v)
                if speed > 0.5:
                    lag.append(-(offset @ v) / speed / size)
        for run in runs(frames):  # the shift of the reference that best matches the smoothed centres
            centres = np.array([quad_params(track[f][which])[0] for f in run])
            refs = np.array([ref[f] for f in run])
            steps = np.arange(len(run))
            shifts = np.arange(-3, 3.01, 0.125)
            err = [np.mean(np.linalg.norm(centres[4:-4] - np.stack(
                [np.interp(steps[4:-4] - s, steps, refs[:, k]) for k in range(2)], axis=1), axis=1))
                for s in shifts]
            delays.append(shifts[int(np.argmin(err))])
    return {"jitter": 100 * float(np.sqrt(np.mean(np.square(jitter)))), "lag": 100 * float(np.mean(lag)),
            "deviation": 100 * float(np.mean(deviation)), "size": float(np.mean(sizes)),
            "delay": float(np.mean(delays)) if delays else float("nan")}


def bench_tracks(args) -> None:
    variants = [("raw", None), ("causal 0.5", ("causal", 0.5))] + [
        (f"zero-phase {s:g}", ("zero-phase", s)) for s in args.strengths]
    print("| clip | face size | smoothing | jitter % | lag % | delay (frames) | deviation % |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.clips:
        _, dets = detections(name, clip_frames(name))
        for label, setting in variants:
            mode, strength = setting or ("zero-phase", 0.5)
            tracks = detected_tracks(run_tracker(LookaheadTracker(strength, mode), dets))
            m = track_metrics(tracks, 0 if setting is None else 1)
            print(f"| {name} | {m['size']:.0f} px | {label} | {m['jitter']:.3f} | {m['lag']:+.3f} | "
                  f"{m['delay']:+.2f} | {m['deviation']:.3f} |")


# -- latent continuity ----------------------------------------------------------------------------
def random_encoder(base):
    """A random-weight e4e (the public architecture) for `base`, through the checkpoint loader."""
    import tempfile

    import torch

    from engine.inversion.encoders import load_encoder
    from engine.inversion.encoders.architectures import GradualStyleEncoder
    from engine.inversion.encoders.backbones import Layout

    torch.manual_seed(1)
    encoder = GradualStyleEncoder(Layout(n_styles=base.n_latent), progressive=True)
    path = Path(tempfile.mkdtemp()) / "random_e4e.pt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                "latent_avg": base.latent_avg.detach().repeat(base.n_latent, 1),
                "opts": {"encoder_type": "Encoder4Editing", "input_nc": 3, "stylegan_size": base.size,
                         "start_from_latent_avg": True, "dataset_type": "ffhq_encode"}}, path)
    return load_encoder(path, expect_size=base.size)


def bench_continuity(args) -> None:
    import torch

    from bench_projection import random_generator
    from engine.generator.blend import blend_generators
    from engine.inversion.lpips import LPIPS
    from engine.pipeline import PipelineConfig, ToonPipeline

    torch.manual_seed(0)
    base = random_generator(args.size, seed=0, channels=args.channels)
    toon = random_generator(args.size, seed=1, channels=args.channels)
    blended = blend_generators(base, toon, args.size // 4)
    perceptual = LPIPS().eval()
    k, vmax = args.keyframe_interval, max(args.overlaps)
    records: dict = {}

    class Recorder(ToonPipeline):
        def finish(self, prepared):
            faces = len(prepared.tracked)
            for tf, task, fading in zip(prepared.tracked, prepared.tasks[:faces], prepared.fading):
                records[(name, tf.key)] = (tf.previous, task.state.latent.flatten().clone(),
                                           None if fading is None else fading.state.latent.flatten().clone())
            return super().finish(prepared)

    encoder = None
    if args.inversion != "projection":
        encoder = random_encoder(base)
    for name in args.clips:
        frames = clip_frames(name)
        landmarker, _ = detections(name, frames)
        config = PipelineConfig(steps=args.steps, warm_steps=args.warm_steps, keyframe_interval=k,
                                keyframe_overlap=vmax, seed=0, inversion=args.inversion,
                                refine_steps=args.refine_steps)
        for _ in Recorder(landmarker, base, blended, perceptual, config, encoder=encoder).run(iter(frames)):
            pass
    start = (f"from the mean, {args.steps} steps" if args.inversion == "projection" else
             f"from a random e4e, {args.refine_steps} refinement steps")
    print(f"model: random {args.size} px generator; chains start {start}, {args.warm_steps} warm steps a frame; "
          f"keyframes every {k}; {len(records)} face-frames")
    print("| overlap V | switch steps | mean at switches | mean elsewhere | ratio | max switch / mean elsewhere "
          "| extra projections |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for v in args.overlaps:
        at, elsewhere = [], []
        for (name, key), (previous, new, old) in records.items():
            if previous is None or (name, previous) not in records:
                continue
            t = key[0]
            step = float((shown(t, new, old, v, k) - shown(t - 1, *records[(name, previous)][1:], v, k)).norm())
            (at if k and t >= k and t % k <= v else elsewhere).append(step)
        mean_at, mean_else = np.mean(at), np.mean(elsewhere)
        print(f"| {v} | {len(at)} | {mean_at:.3f} | {mean_else:.3f} | {mean_at / mean_else:.2f} | "
              f"{max(at) / mean_else:.2f} | {v / k:.0%} |")


def shown(t: int, new, old, v: int, k: int):
    """The latent frame t shows with overlap v (the run kept the old chain for max overlap frames)."""
    j = t % k if k else t
    if old is None or t < k or j >= v:
        return new
    a = (j + 1) / (v + 1)
    return (1 - a) * old + a * new


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("tracks", "continuity"))
    ap.add_argument("--clips", nargs="+", default=list(CLIPS))
    ap.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.375, 0.5, 0.75, 1.0])
    ap.add_argument("--keyframe-interval", type=int, default=48)
    ap.add_argument("--overlaps", type=int, nargs="+", default=[0, 4, 8, 12, 16, 24])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warm-steps", type=int, default=20)
    ap.add_argument("--inversion", choices=("projection", "encoder+projection"), default="projection")
    ap.add_argument("--refine-steps", type=int, default=50)
    args = ap.parse_args(argv)
    (bench_tracks if args.what == "tracks" else bench_continuity)(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
