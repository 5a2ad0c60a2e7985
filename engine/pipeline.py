"""The per-clip engine: detect, track, align, project, stylise, paste back.

Frames stream in as (index, RGB) pairs (uint8, or uint16 for deep sources: see
engine.pixels) and come out the same way, at the same depth, a few frames later:
the tracking stage smooths each face track over past *and* future frames (zero
lag), so frame t is finished once frame ``t + look_ahead`` has been detected.
The stages, separate so a renderer can interleave several chains:

    track (detect + engine.faces.lookahead) -> prepare (align, warm/cold per chain)
    -> project_faces (batched projection) -> finish (cross-fade, generate, paste)

Determinism across chunks and resume (the argument; engine.temporal has the
arithmetic and docs/ARCHITECTURE.md the contract). Write D(t) for the detections
of frame t, a function of its pixels. Then, for a clip of n frames:

1. The faces of frame t (identities, quads, gap bridging, the key of each face and
   of its predecessor) are a function of D(s) for s in [t - H, t + L] ∩ [0, n - 1]
   (H = plan.history, L = plan.look_ahead): the tracking stage re-runs the
   association from an empty state over exactly that window for every frame.
2. Chain c starts cold at keyframe cK and runs warm to frame (c + 1)K + V - 1. Its
   state at frame t is a function of its state at t - 1 and of the faces of frame
   t; by induction, of the faces of frames cK..t, hence of D on [cK - H, t + L].
   Projection batches never mix chains (tasks are grouped by chain role), and each
   face's seed depends on its frame and position only, so a chain's numbers do not
   depend on which other chains run beside it.
3. Frame t shows chain chain_of(t), and in the first V frames after a keyframe
   also the chain before it: P(t) = plan.projection_start(t) is the oldest of these
   keyframes, and P is non-decreasing in t.
4. A run writing frames A..B decodes from plan.warmup_start(A) = P(A) - H (or 0) to
   plan.decode_end(B) = min(n - 1, B + L) and projects from P(A). For every t in
   [P(A), B] the window of step 1 lies inside what it decoded (or is clipped by the
   clip's own ends, identically in a single pass), so its faces equal a single
   pass's; every chain shown at t in [A, B] started at a keyframe >= P(t) >= P(A),
   inside the run, so by step 2 its states equal a single pass's; hence so does the
   frame. Chains that began before P(A) are missing from the run, and by step 3 no
   written frame shows them.

`on_step(step, steps)`, when set, is called after every projection step: the
product reports progress from it, and stops a render inside a long projection by
raising from it (the exception leaves `project_faces` unchanged).

Inversion (`PipelineConfig.inversion`): "projection" starts each chain's faces
(a keyframe's, and faces new to the chain) from the mean face with `steps`
iterations; "encoder+projection" starts them from a feed-forward encoder and
refines them `refine_steps` iterations; in both, later frames start from the
previous frame's latent and noise maps (`warm_steps`; with `warm_steps` 0 the
encoder path takes the encoder's fresh latent rather than freezing the previous
one, so encoder+projection with no steps at all equals encoder). "encoder" takes
every face of every frame from the encoder: nothing is carried between frames, so
there is no chain to cross-fade and `run` inverts `batch_size` frames at a time.
An encoder batch always holds exactly `batch_size` faces (a short one is padded
by repeating its last face): a face's latent then never depends on the faces it
shares a batch with, which keeps chunks and resumed renders exact.

The single-frame :meth:`ToonPipeline.process` sees no future frames: it is for live
input (with the causal tracking mode) and previews, not for clips.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .chains import FaceState, KeyframeChains, crossfade
from .faces.align import align_face
from .faces.lookahead import LookaheadTracker, TrackFace
from .faces.paste import paste_faces
from .pixels import check_rgb, peak, to_uint8
from .inversion.projection import project
from .temporal import MAX_GAP, TemporalPlan

__all__ = ["PipelineConfig", "ToonPipeline", "FaceState", "FaceTask", "TrackedFrame", "Prepared", "FrameResult",
           "track_frames", "tracked_frame"]


@dataclass
class PipelineConfig:
    """Engine-side settings (the product maps its parameter schema onto these)."""

    steps: int = 500
    warm_steps: int = 100
    latent_space: str = "w+"
    pixel_weight: float = 0.1
    feather: float = 0.08
    color_match: bool = True
    overlay: bool = False
    smoothing: float = 0.5
    smoothing_mode: str = "zero-phase"
    keyframe_interval: int = 48
    keyframe_overlap: int = 12
    max_gap: int = MAX_GAP
    batch_size: int = 1
    seed: int = 0
    inversion: str = "projection"   # "projection" | "encoder" | "encoder+projection"
    refine_steps: int = 50          # encoder+projection: steps from the encoder's latent

    def plan(self) -> TemporalPlan:
        """Which frames a frame depends on (keyframe chains, cross-fade, tracking window)."""
        return TemporalPlan.create(self.keyframe_interval, self.keyframe_overlap, self.smoothing,
                                   self.smoothing_mode, self.max_gap)


INVERSIONS = ("projection", "encoder", "encoder+projection")


def default_batch_size(device, inversion: str = "projection") -> int:
    """Faces per batch that run fastest: projection batches only on a GPU (on a CPU its per-sample
    grouped convolutions make a batch slower per face, bench/bench_projection.py); encoders batch anywhere."""
    if inversion == "encoder":
        return 8
    return 8 if torch.device(device).type == "cuda" else 1


@dataclass
class FaceTask:
    """One face of a prepared frame in one chain: its aligned target (1, 3, S, S), the state it
    warm-starts from (None: cold), its step count and seed; `encode`: it starts from the encoder's
    latent (`start`, filled in by the encoder); `state` is filled in by the projection.
    `fading` marks the old chain's task during a keyframe cross-fade."""

    target: torch.Tensor
    previous: Optional[FaceState]
    steps: int
    seed: int
    state: Optional[FaceState] = None
    encode: bool = False
    start: Optional[torch.Tensor] = None
    fading: bool = False

    @property
    def warm(self) -> bool:
        return self.previous is not None


@dataclass
class TrackedFrame:
    """A decoded frame with its tracked faces (the output of the tracking stage)."""

    index: int
    frame: np.ndarray
    faces: List[TrackFace]
    timings: Dict[str, float] = field(default_factory=dict)


@dataclass
class Prepared:
    """A frame between ToonPipeline.prepare and ToonPipeline.finish."""

    pipeline: Any
    frame: np.ndarray
    index: int
    faces: int = 0
    tracked: List[TrackFace] = field(default_factory=list)
    aligned: List[Any] = field(default_factory=list)
    tasks: List[FaceTask] = field(default_factory=list)
    fading: List[Optional[FaceTask]] = field(default_factory=list)  # per face: the old chain's task
    chains: Tuple[int, Optional[int], float] = (0, None, 1.0)       # new chain, old chain, new weight
    timings: Dict[str, float] = field(default_factory=dict)


@dataclass
class FrameResult:
    image: np.ndarray
    faces: int
    timings: Dict[str, float] = field(default_factory=dict)


def _to_tensor(crops: List[np.ndarray], device, dtype) -> torch.Tensor:
    """uint8/uint16 crops -> (N, 3, S, S) in [-1, 1]."""
    half = peak(crops[0].dtype) / 2
    batch = torch.from_numpy(np.stack(crops).astype(np.float32, copy=False)).to(device=device)
    return (batch.permute(0, 3, 1, 2) / half - 1.0).to(dtype)


def _to_images(batch: torch.Tensor, depth=np.uint8) -> List[np.ndarray]:
    """(N, 3, S, S) in [-1, 1] -> crops of `depth` (uint8, or uint16 for deep frames)."""
    levels = ((batch.float().clamp(-1, 1) + 1) * (peak(depth) / 2)).round()
    images = levels.to(torch.int32).permute(0, 2, 3, 1).cpu().numpy().astype(depth)
    return list(images)




def track_frames(landmarker, tracks: LookaheadTracker, frames: Iterable[Tuple[int, np.ndarray]], start: int,
                 last: Optional[int] = None) -> Iterator[TrackedFrame]:
    """The tracking stage over a stream of consecutive (index, frame) pairs (``tracks`` freshly reset):
    detect every frame, yield the frames from `start` to `last` with their tracked faces, each as soon as
    its look-ahead has been detected (ToonPipeline.track; the VToonify pipeline uses it too)."""
    waiting: deque = deque()
    for index, frame in frames:
        frame = check_rgb(frame)
        t = time.perf_counter()
        tracks.push(index, landmarker.detect(to_uint8(frame)))
        seconds = time.perf_counter() - t
        if index >= start and (last is None or index <= last):
            waiting.append((index, frame, seconds))
        while waiting and tracks.ready(waiting[0][0]):
            yield tracked_frame(tracks, *waiting.popleft())
        if last is not None and index >= last + tracks.look_ahead:
            break
    while waiting:
        yield tracked_frame(tracks, *waiting.popleft())


def tracked_frame(tracks: LookaheadTracker, index: int, frame: np.ndarray, detect_seconds: float) -> TrackedFrame:
    """Frame `index` with its faces from the tracking stage, timed."""
    t = time.perf_counter()
    faces = tracks.faces_at(index)
    return TrackedFrame(index, frame, faces, {"detect": detect_seconds, "track": time.perf_counter() - t})


class ToonPipeline:
    """Toonify the faces of a clip.

    `base` is the real-face generator faces are projected into; `blended` renders
    the projected latents; `perceptual` is the projection's perceptual distance.
    """

    def __init__(self, landmarker, base, blended, perceptual, config: Optional[PipelineConfig] = None,
                 encoder=None):
        self.landmarker = landmarker
        self.base = base
        self.blended = blended
        self.perceptual = perceptual
        self.encoder = encoder
        self.config = cfg = config or PipelineConfig()
        self.size = base.size
        self.on_step: Optional[Callable[[int, int], None]] = None
        if blended.size != base.size or blended.n_latent != base.n_latent:
            raise ValueError(f"base ({base.size}px) and blended ({blended.size}px) generators differ in size")
        if cfg.inversion not in INVERSIONS:
            raise ValueError(f"inversion must be one of {', '.join(INVERSIONS)}, got {cfg.inversion!r}")
        if cfg.inversion != "projection" and encoder is None:
            raise ValueError(f"inversion {cfg.inversion!r} needs an encoder")
        if cfg.inversion != "encoder" and perceptual is None:
            raise ValueError(f"inversion {cfg.inversion!r} needs a perceptual loss")
        self.tracks = LookaheadTracker(cfg.smoothing, cfg.smoothing_mode, cfg.max_gap)
        self.plan = cfg.plan()
        self.chains = KeyframeChains(self.plan)

    def reset(self) -> None:
        """Forget tracks and latents (a new shot or clip)."""
        self.tracks.reset()
        self.chains.reset()

    # -- chunking -------------------------------------------------------------
    @property
    def look_ahead(self) -> int:
        """Frames past the last one wanted that must be decoded (the tracking stage's look-ahead)."""
        return self.plan.look_ahead

    def warmup_start(self, first: int) -> int:
        """First frame to decode so that frame `first` comes out as in a whole-clip render."""
        return self.plan.warmup_start(first)

    # -- a clip ---------------------------------------------------------------
    def run(self, frames: Iterable[Tuple[int, np.ndarray]], first: Optional[int] = None,
            last: Optional[int] = None) -> Iterator[Tuple[int, FrameResult]]:
        """Toonify a stream of consecutive (index, frame) pairs: yields (index, result) for the frames
        from `projection_start(first)` to `last` (all by default). Decode from
        `warmup_start(first)` to `plan.decode_end(last, n)` to get frames first..last exactly as
        a single pass over the clip gives them."""
        group = max(1, self.config.batch_size) if self.config.inversion == "encoder" else 1
        waiting: List[Prepared] = []
        for tracked in self.track(frames, first, last):
            waiting.append(self.prepare(tracked))
            if len(waiting) >= group:  # encoder-only: frames do not depend on each other
                yield from self._finish_all(waiting)
        yield from self._finish_all(waiting)

    def _finish_all(self, waiting: List[Prepared]) -> Iterator[Tuple[int, FrameResult]]:
        if waiting:
            self.project_faces(waiting)
        for prepared in waiting:
            yield prepared.index, self.finish(prepared)
        waiting.clear()

    def track(self, frames: Iterable[Tuple[int, np.ndarray]], first: Optional[int] = None,
              last: Optional[int] = None) -> Iterator[TrackedFrame]:
        """The tracking stage: detect every frame, yield the frames from `projection_start(first)`
        to `last` with their tracked faces, each as soon as its look-ahead has been detected.

        Frames before `projection_start(first)` only feed the tracker; frames after `last`
        only its look-ahead. The stream ending early ends the look-ahead there.
        """
        self.reset()
        start = 0 if first is None else self.plan.projection_start(first)
        yield from track_frames(self.landmarker, self.tracks, frames, start, last)

    # -- one frame ------------------------------------------------------------
    def process(self, frame: np.ndarray, index: int, *, stylise: bool = True) -> FrameResult:
        """Toonify one frame now (H x W x 3 RGB, uint8 or uint16), source frame number `index`.

        Sees only the frames given so far: live input and previews. A clip goes through
        :meth:`run`, which waits for each frame's look-ahead. With stylise=False the frame
        only feeds the tracker. A jump in frame numbers starts over.
        """
        frame = check_rgb(frame)
        if self.tracks.newest is not None and index != self.tracks.newest + 1:
            self.reset()
        t = time.perf_counter()
        self.tracks.push(index, self.landmarker.detect(to_uint8(frame)))
        seconds = time.perf_counter() - t
        if not stylise:
            empty = self._blank_overlay(frame) if self.config.overlay else frame.copy()
            return FrameResult(empty, 0, {"detect": seconds})
        prepared = self.prepare(tracked_frame(self.tracks, index, frame, seconds))
        self.project_faces([prepared])
        return self.finish(prepared)

    def prepare(self, tracked: TrackedFrame) -> Prepared:
        """Align the faces of a tracked frame; decide each face's warm or cold projection in each chain."""
        index, frame = tracked.index, tracked.frame
        prepared = Prepared(self, frame, index, len(tracked.faces), timings=dict(tracked.timings))
        prepared.chains = new, old, _ = self.chains.begin(index)
        if not tracked.faces:
            return prepared

        t = time.perf_counter()
        # Face order by position, not by key: the seeds must not depend on the detector's order.
        prepared.tracked = sorted(tracked.faces, key=lambda tf: (float(tf.quad[:, 0].mean()),
                                                                 float(tf.quad[:, 1].mean())))
        prepared.aligned = [align_face(frame, tf.quad, self.size) for tf in prepared.tracked]
        prepared.timings["align"] = time.perf_counter() - t
        param = next(self.base.parameters())
        targets = _to_tensor([crop for crop, _ in prepared.aligned], param.device, param.dtype)
        cfg = self.config
        for position, tf in enumerate(prepared.tracked):
            # Faces the chain carried from the previous frame are warm-started (latent and noise
            # maps) with fewer steps, others start cold (from the mean face or the encoder: _start);
            # the old chain of a cross-fade only continues the faces it has (encoder-only: none).
            target, seed = targets[position:position + 1], cfg.seed + index * 1009 + position
            previous, steps, encode = self._start(self.chains.state(new, tf.previous))
            prepared.tasks.append(FaceTask(target, previous, steps, seed, encode=encode))
            carried = None
            if old is not None and cfg.inversion != "encoder":
                carried = self.chains.state(old, tf.previous)
            if carried is None:
                prepared.fading.append(None)
            else:
                previous, steps, encode = self._start(carried)
                prepared.fading.append(FaceTask(target, previous, steps, seed, encode=encode, fading=True))
        prepared.tasks += [task for task in prepared.fading if task is not None]
        return prepared

    def _start(self, previous: Optional[FaceState]) -> Tuple[Optional[FaceState], int, bool]:
        """Where a face's inversion starts: (state to warm-start from or None, steps, from the encoder).

        A face its chain carried is warm-started (latent and noise maps) with `warm_steps`;
        others start from the mean face (`steps`) or from the encoder (`refine_steps`). With
        no step to take, the encoder path takes the encoder's latent for this frame rather
        than freezing the previous frame's.
        """
        cfg = self.config
        if cfg.inversion == "encoder":
            return None, 0, True
        if previous is not None and (cfg.warm_steps > 0 or cfg.inversion == "projection"):
            return previous, cfg.warm_steps, False
        if cfg.inversion == "projection":
            return None, cfg.steps, False
        return None, cfg.refine_steps if previous is None else 0, True

    def _encode(self, tasks: Sequence[FaceTask]) -> None:
        """The encoder's latents for `tasks`' faces, in batches of exactly `batch_size` faces (see the
        module docstring: a short batch is padded with its last face)."""
        size = max(1, self.config.batch_size)
        for first in range(0, len(tasks), size):
            batch = tasks[first:first + size]
            targets = [task.target for task in batch]
            targets += targets[-1:] * (size - len(batch))
            with torch.no_grad():
                latents = self.encoder(torch.cat(targets))
            for task, latent in zip(batch, latents):
                task.start = latent.detach().to(device=task.target.device, dtype=task.target.dtype)

    def _own_noises(self) -> List[torch.Tensor]:
        """The base generator's stored noise maps: what a projection from the encoder starts from."""
        return [getattr(self.base.noises, f"noise_{i}") for i in range(self.base.num_layers)]

    def project_faces(self, frames: Sequence[Prepared]) -> None:
        """Invert the faces of `frames` in batches of `batch_size`, grouped by chain role, start
        (warm, cold, encoder) and step count.

        `frames` may come from several pipelines that share this one's base model,
        perceptual loss and projection settings (independent chains, e.g. keyframe
        segments rendered in lockstep). A face's seed depends only on its frame and
        position, and the old chain of a cross-fade is never batched with the new one,
        so a chain's faces are projected the same whether another chain runs beside it.
        """
        cfg = self.config
        tasks = [task for prepared in frames for task in prepared.tasks]
        t = time.perf_counter()
        self._encode([task for task in tasks if task.encode])
        groups: Dict[Tuple[bool, bool, bool, int], List[FaceTask]] = {}
        for task in sorted(tasks, key=lambda task: not task.warm):  # warm first, as before; stable
            groups.setdefault((task.fading, task.warm, task.encode, task.steps), []).append(task)
        for (_, warm, encoded, steps), members in groups.items():
            size = max(1, cfg.batch_size)
            for start in range(0, len(members), size):
                batch = members[start:start + size]
                if steps == 0 and (warm or encoded):
                    for task in batch:
                        task.state = task.previous if warm else FaceState(task.start, self._own_noises())
                    continue
                previous = [task.previous for task in batch] if warm else None
                init = torch.stack([s.latent for s in previous]) if warm else None
                init_noises = [torch.cat(maps) for maps in zip(*(s.noises for s in previous))] if warm else None
                if encoded:
                    init = torch.stack([task.start for task in batch])
                result = project(self.base, torch.cat([task.target for task in batch]), steps=steps,
                                 space=cfg.latent_space, init=init, init_noises=init_noises,
                                 perceptual=self.perceptual, pixel_weight=cfg.pixel_weight,
                                 seed=[task.seed for task in batch], callback=self._step_callback(steps),
                                 evaluate=False)
                for j, task in enumerate(batch):
                    task.state = FaceState(result.latents[j].detach(), [n[j:j + 1].detach() for n in result.noises])
        elapsed = time.perf_counter() - t
        for prepared in frames:  # a shared batch's time is split by faces
            if prepared.tasks:
                prepared.timings["project"] = elapsed * len(prepared.tasks) / len(tasks)

    def _step_callback(self, steps: int):
        hook = self.on_step
        if hook is None:
            return None

        def after_step(step: int, losses) -> bool:
            hook(step + 1, steps)
            return False
        return after_step

    def finish(self, prepared: Prepared) -> FrameResult:
        """Cross-fade the chains, render the faces with the blended model, paste them back, carry the states."""
        if prepared.pipeline is not self:
            raise ValueError("a prepared frame must be finished by the pipeline that prepared it")
        frame, timings = prepared.frame, prepared.timings
        new, old, weight = prepared.chains
        if not prepared.tracked:
            self.chains.carry(new, {})
            empty = self._blank_overlay(frame) if self.config.overlay else frame.copy()
            return FrameResult(empty, prepared.faces, timings)
        if any(task.state is None for task in prepared.tasks):
            raise ValueError(f"frame {prepared.index}: faces not projected (call project_faces first)")
        faces = len(prepared.tracked)
        shown = [task.state if fading is None else crossfade(fading.state, task.state, weight)
                 for task, fading in zip(prepared.tasks[:faces], prepared.fading)]
        self.chains.carry(new, {tf.key: task.state for tf, task in zip(prepared.tracked, prepared.tasks)})
        if old is not None:
            self.chains.carry(old, {tf.key: fading.state for tf, fading in zip(prepared.tracked, prepared.fading)
                                    if fading is not None})
        dtype = next(self.base.parameters()).dtype

        t = time.perf_counter()
        ws = torch.stack([state.latent for state in shown]).to(dtype)
        # The projected noise maps carry the face's fine texture (the high-resolution layers are the
        # base model's); warm starts carry them from frame to frame, so the texture does not flicker.
        noise = [torch.cat(maps).to(dtype) for maps in zip(*(state.noises for state in shown))]
        with torch.no_grad():
            images = self.blended.synthesis(ws, noise=noise)
        timings["generate"] = time.perf_counter() - t
        crops = _to_images(images, frame.dtype)

        t = time.perf_counter()
        image = paste_faces(frame, [(crop, tr) for crop, (_, tr) in zip(crops, prepared.aligned)],
                            feather=self.config.feather, color_match=self.config.color_match,
                            overlay=self.config.overlay)
        timings["paste"] = time.perf_counter() - t
        return FrameResult(image, prepared.faces, timings)

    def _blank_overlay(self, frame: np.ndarray) -> np.ndarray:
        return np.zeros(frame.shape[:2] + (4,), frame.dtype)
