"""Temporal quality on the real fixture clips: face-track jitter and lag, latent continuity at keyframes.

    python bench/bench_temporal.py tracks      [--clips ...]   # quads: raw vs causal vs zero-phase
    python bench/bench_temporal.py shake       [--clip ...]    # a fast head shake: error vs truth
    python bench/bench_temporal.py continuity  [--clips ...] [--inversion encoder+projection]
                                               # ||w(t+1) - w(t)|| at keyframes vs elsewhere

**tracks**: dlib's quads on every detected frame, smoothed by the tracking stage
(engine.faces.lookahead) in causal mode (one-euro) and zero-phase mode at several
strengths. Per clip, as a percentage of the face size (the FFHQ quad's side):

* jitter: RMS over frames and corners of the corners' second difference
  ``|c(t+1) - 2 c(t) + c(t-1)|`` (frames whose neighbours are detected too);
  centre jitter and size jitter: the same for the quad's centre and its side length;
* lag: mean offset of the smoothed centre behind a zero-phase reference along the
  direction of motion (positive = trailing), on frames moving > 0.5 px/frame. The
  reference is a local quadratic (Savitzky-Golay) fit over +-6 frames of the raw
  track: non-causal, and unlike the smoothers under test;
* delay: the shift (frames) of the reference that best matches the smoothed track
  (runs of 20+ detected frames);
* deviation: mean distance of the smoothed centre from the reference: noise left plus
  the shape a wider kernel flattens (its minimum marks the best strength).

A clip named ``name@0.5`` is the fixture scaled (area) to half size: the same footage with a smaller face.

**shake**: fast motion made of real footage (`shaken_clip`): the frames of ``--clip``
scaled so the face is ``--face`` px and seen through a window panned sideways by
``--amplitude * sin(2 pi t / --period)`` px (whole pixels), once with one frame held
(`one frame`) and once with the clip's own motion under it (`moving clip`); dlib on
every panned frame. Reported per setting: the largest corner distance of the tracked
quad from where the face is, % of the face size (max and mean over frames, frames over
1%). Where the face is (`true_quads`): the per-coordinate median of dlib's quads on each
frame panned five more ways (shifted back), fitted with a quadratic over +-6 frames.
Defaults: face_noface.mov (no test uses it), a 163 px face, +-60 px, 16 frames a period.

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
    """(index, RGB) frames of a fixture clip; "clip.mov@0.5" scales them (area) to half size."""
    from toon_ofx.core import media

    base, _, scale = name.partition("@")
    frames = list(media.read_frames(media.probe(FIXTURES / base)))
    if scale:
        import cv2

        frames = [(i, cv2.resize(f, None, fx=float(scale), fy=float(scale), interpolation=cv2.INTER_AREA))
                  for i, f in frames]
    return frames


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
    """jitter (corners, centre, size), lag and deviation (% of the face size) and delay (frames) of
    quads[which] (0 raw, 1 smoothed)."""
    jitter, centre_jitter, size_jitter, lag, deviation, delays, sizes = [], [], [], [], [], [], []
    for track in tracks:
        frames = sorted(track)
        size = np.mean([np.linalg.norm(track[f][0][3] - track[f][0][0]) for f in frames])
        sizes.append(size)
        for f in frames:
            if f - 1 in track and f + 1 in track:
                d2 = track[f + 1][which] - 2 * track[f][which] + track[f - 1][which]
                jitter.extend(np.linalg.norm(d2, axis=1) / size)
                (c0, x0), (c1, x1), (c2, x2) = (quad_params(track[g][which]) for g in (f - 1, f, f + 1))
                centre_jitter.append(np.linalg.norm(c2 - 2 * c1 + c0) / size)
                size_jitter.append(2 * (np.linalg.norm(x2) - 2 * np.linalg.norm(x1) + np.linalg.norm(x0)) / size)
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
    def rms(values):
        return 100 * float(np.sqrt(np.mean(np.square(values))))

    return {"jitter": rms(jitter), "centre jitter": rms(centre_jitter), "size jitter": rms(size_jitter),
            "lag": 100 * float(np.mean(lag)),
            "deviation": 100 * float(np.mean(deviation)), "size": float(np.mean(sizes)),
            "delay": float(np.mean(delays)) if delays else float("nan")}


def bench_tracks(args) -> None:
    variants = [("raw", None), ("causal 0.5", ("causal", 0.5))] + [
        (f"zero-phase {s:g}", ("zero-phase", s)) for s in args.strengths]
    print("| clip | face size | smoothing | jitter % | centre jitter % | size jitter % | lag % | delay (frames) "
          "| deviation % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.clips:
        _, dets = detections(name, clip_frames(name))
        for label, setting in variants:
            mode, strength = setting or ("zero-phase", 0.5)
            tracks = detected_tracks(run_tracker(LookaheadTracker(strength, mode), dets))
            m = track_metrics(tracks, 0 if setting is None else 1)
            print(f"| {name} | {m['size']:.0f} px | {label} | {m['jitter']:.3f} | {m['centre jitter']:.3f} | "
                  f"{m['size jitter']:.3f} | {m['lag']:+.3f} | {m['delay']:+.2f} | {m['deviation']:.3f} |")


# -- fast motion: a head shake made of real footage -------------------------------------------------------
PROBES = (-45, -15, 15, 45)   # px: extra pans of each frame that tell where its face is


def shaken_clip(name: str, first: int, count: int, face: float, amplitude: float, period: float,
                still: bool = False):
    """Real frames scaled so the face's quad is `face` px, seen through a window panned sideways by
    round(amplitude * sin(2 pi t / period)) px: the face shakes the other way. `still`: frame `first`
    throughout. Returns (frames, shifts, window) with window(t, dx): frame t panned by dx px."""
    import cv2

    frames = clip_frames(name)
    _, dets = detections(name, frames)
    quads = [ffhq_quad(d[0].landmarks) for d in dets[first:first + count] if d]
    scale = face / np.mean([np.linalg.norm(q[3] - q[0]) for q in quads])
    centre = np.mean([quad_params(q)[0] for q in quads], axis=0) * scale
    source = [frames[first if still else first + t][1] for t in range(count)]
    source = [cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) for f in source]
    reach = max(amplitude, *np.abs(PROBES))
    half = int(min(centre[0], source[0].shape[1] - centre[0]) - reach) - 1
    x0 = int(round(centre[0])) - half

    def window(t, dx):
        return np.ascontiguousarray(source[t][:, x0 + dx: x0 + dx + 2 * half])

    shifts = np.rint(amplitude * np.sin(2 * np.pi * np.arange(count) / period)).astype(int)
    return [window(t, dx) for t, dx in enumerate(shifts)], shifts, window


def true_quads(landmarker, window, shifts, still: bool, half: int = 6) -> dict:
    """Where the face is in each frame: the median (per corner coordinate) of dlib's quads on the frame
    panned by 0, the shake's shift and each of PROBES, shifted back; `still`: over every frame, else
    fitted over +-half frames with a quadratic (a face does not jump for one frame: dlib does, on a
    blink, whatever the pan)."""
    samples = {}
    for t, shift in enumerate(shifts):
        for dx in {0, int(shift), *PROBES}:
            faces = landmarker.detect(window(t, dx))
            if len(faces) == 1:
                samples.setdefault(t, []).append(ffhq_quad(faces[0].landmarks) + [dx, 0])
    if still:
        every = np.median([q for qs in samples.values() for q in qs], axis=0)
        return {t: every for t in range(len(shifts))}
    medians = {t: np.median(qs, axis=0) for t, qs in samples.items() if len(qs) >= 3}
    at = np.array(sorted(medians))
    corners = np.array([medians[t].reshape(-1) for t in at])
    out = {}
    for t in at:
        near = np.abs(at - t) <= half
        out[int(t)] = np.polynomial.polynomial.polyfit(at[near] - t, corners[near], 2)[0].reshape(4, 2)
    return out


def bench_shake(args) -> None:
    """Tracked quad vs where the face is (`true_quads`), on a head shake of real footage: the largest
    corner distance, % of the face size."""
    variants = [("raw", None), ("causal 0.5", ("causal", 0.5))] + [
        (f"zero-phase {s:g}", ("zero-phase", s)) for s in args.strengths]
    landmarker = CachedLandmarker(RESULTS / "detections-shake.pkl")
    print(f"head shake: {args.clip} frames {args.first}-{args.first + args.count - 1}, face {args.face:g} px, "
          f"+-{args.amplitude:g} px sideways, period {args.period:g} frames (peak "
          f"{2 * np.pi * args.amplitude / args.period:.1f} px/frame); goal: <= 1% at every frame")
    print("| footage | smoothing | max error % | mean error % | frames over 1% |")
    print("| --- | --- | --- | --- | --- |")
    for still in (True, False):
        shaken, shifts, window = shaken_clip(args.clip, args.first, args.count, args.face, args.amplitude,
                                             args.period, still)
        dets = [landmarker.detect(f) for f in shaken]
        truth = true_quads(landmarker, window, shifts, still)
        landmarker.save()
        for label, setting in variants:
            mode, strength = setting or ("zero-phase", 0.5)
            errors = shake_errors(run_tracker(LookaheadTracker(strength, mode), dets), truth, shifts, setting is None)
            print(f"| {'one frame' if still else 'moving clip'} ({len(errors)} frames) | {label} | "
                  f"{errors.max():.2f} | {errors.mean():.2f} | {int((errors > 1).sum())} |")


def shake_errors(out: dict, truth: dict, shifts, raw: bool = False) -> np.ndarray:
    """Per frame with one face: its quad's (`raw`: the detection's) largest corner distance from the truth."""
    errors = []
    for t, faces in sorted(out.items()):
        quad = faces[0].raw_quad if raw and len(faces) == 1 else faces[0].quad if len(faces) == 1 else None
        if quad is None or t not in truth:
            continue
        size = np.linalg.norm(truth[t][3] - truth[t][0])
        errors.append(100 * np.linalg.norm(quad + [shifts[t], 0] - truth[t], axis=1).max() / size)
    return np.array(errors)


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
    ap.add_argument("what", choices=("tracks", "shake", "continuity"))
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
    ap.add_argument("--clip", default="face_noface.mov", help="shake: the footage")
    ap.add_argument("--first", type=int, default=0, help="shake: first frame")
    ap.add_argument("--count", type=int, default=72, help="shake: frames")
    ap.add_argument("--face", type=float, default=163, help="shake: face size (px) after scaling")
    ap.add_argument("--amplitude", type=float, default=60, help="shake: px each side")
    ap.add_argument("--period", type=float, default=16, help="shake: frames")
    args = ap.parse_args(argv)
    {"tracks": bench_tracks, "shake": bench_shake, "continuity": bench_continuity}[args.what](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
