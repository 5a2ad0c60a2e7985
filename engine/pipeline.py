"""The per-clip engine: detect, track, align, project, stylise, paste back.

Frames go in one at a time (numpy RGB, uint8 or uint16 for deep sources: see
engine.pixels) and come out the same way, at the same depth. The
pipeline keeps what a clip needs between frames: face tracks with their
smoothed landmarks, and each track's latent for the next frame's warm start.

Determinism across farm chunks: a chunk starting mid-clip must produce the
same pixels as a render of the whole clip. Two things carry history between
frames, and both are bounded here so a short warm-up reproduces them exactly:
- the warm-start chain restarts (cold projection) at every keyframe, frame
  indices that are multiples of `keyframe_interval`, like a video GOP; this
  also stops drift from accumulating in long shots;
- landmark smoothing uses a finite window (see engine.faces.tracking).
`warmup_start(first)` says where a chunk has to start processing so that its
first written frame sees the same history as in a single-pass render.

`process` is three stages: `prepare` (detect, track, align, warm/cold and seed
per face), `project_faces` and `finish` (generate, paste, carry latents).
`on_step(step, steps)`, when set, is called after every projection step: the
product reports progress from it, and stops a render inside a long projection
by raising from it (the exception leaves `process`/`project_faces` unchanged). A
renderer can run several independent chains (keyframe segments) in lockstep and
project their faces in one batch; a face's seed depends only on its frame index
and position, never on the batch it lands in.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .faces.align import align_face
from .faces.paste import paste_faces
from .pixels import check_rgb, peak, to_uint8
from .inversion.projection import project
from .faces.tracking import FaceTracker


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
    keyframe_interval: int = 48
    batch_size: int = 1
    seed: int = 0


@dataclass
class FaceState:
    """What a face carries to the next frame: its projected latent (n_latent, D) and noise maps."""

    latent: torch.Tensor
    noises: List[torch.Tensor]


@dataclass
class FaceTask:
    """One face of a prepared frame: its aligned target (1, 3, S, S), the state it warm-starts
    from (None: cold), its step count and seed; `state` is filled in by the projection."""

    target: torch.Tensor
    previous: Optional[FaceState]
    steps: int
    seed: int
    state: Optional[FaceState] = None

    @property
    def warm(self) -> bool:
        return self.previous is not None


@dataclass
class Prepared:
    """A frame between ToonPipeline.prepare and ToonPipeline.finish."""

    pipeline: Any
    frame: np.ndarray
    index: int
    faces: int = 0
    tracked: List[Any] = field(default_factory=list)
    aligned: List[Any] = field(default_factory=list)
    tasks: List[FaceTask] = field(default_factory=list)
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


class ToonPipeline:
    """Toonify the faces of a clip, frame by frame.

    `base` is the real-face generator faces are projected into; `blended` renders
    the projected latents; `perceptual` is the projection's perceptual distance.
    """

    def __init__(self, landmarker, base, blended, perceptual, config: Optional[PipelineConfig] = None):
        self.landmarker = landmarker
        self.base = base
        self.blended = blended
        self.perceptual = perceptual
        self.config = config or PipelineConfig()
        self.size = base.size
        self.on_step: Optional[Callable[[int, int], None]] = None
        if blended.size != base.size or blended.n_latent != base.n_latent:
            raise ValueError(f"base ({base.size}px) and blended ({blended.size}px) generators differ in size")
        self.reset()

    def reset(self) -> None:
        """Forget tracks and latents (a new shot or clip)."""
        self.tracker = FaceTracker(smoothing=self.config.smoothing)
        self._latents: Dict[int, FaceState] = {}
        self._last_index: Optional[int] = None

    # -- chunking -------------------------------------------------------------
    def is_keyframe(self, index: int) -> bool:
        k = self.config.keyframe_interval
        return k > 0 and index % k == 0

    def warmup_start(self, first: int) -> int:
        """First frame to process so that frame `first` comes out as in a whole-clip render."""
        k = self.config.keyframe_interval
        if k <= 0:
            return 0  # one unbroken chain: only a render from the start reproduces it
        keyframe = first - first % k
        return max(0, min(keyframe, first - self.tracker.memory))

    def needs_projection(self, index: int, first: int) -> bool:
        """Frames before the keyframe preceding `first` only feed the tracker."""
        k = self.config.keyframe_interval
        return k <= 0 or index >= first - first % k

    # -- one frame ------------------------------------------------------------
    def process(self, frame: np.ndarray, index: int, *, stylise: bool = True) -> FrameResult:
        """Toonify every face in `frame` (H x W x 3 RGB, uint8 or uint16), source frame number `index`.

        With stylise=False the frame only advances the tracker (warm-up frames
        whose output is not needed and whose latents are not carried).
        The three stages (prepare, project_faces, finish) can be interleaved
        across pipelines to project the faces of several frames together.
        """
        prepared = self.prepare(frame, index, stylise=stylise)
        self.project_faces([prepared])
        return self.finish(prepared)

    def prepare(self, frame: np.ndarray, index: int, *, stylise: bool = True) -> "Prepared":
        """Detect, track and align the faces of a frame; decide each face's warm or cold projection."""
        frame = check_rgb(frame)
        if self._last_index is not None and index != self._last_index + 1:
            self.reset()  # a jump in time breaks tracks and warm starts
        self._last_index = index
        prepared = Prepared(self, frame, index)

        t = time.perf_counter()
        faces = self.landmarker.detect(to_uint8(frame))
        tracked = self.tracker.update(faces)
        prepared.timings["detect"] = time.perf_counter() - t
        prepared.faces = len(tracked)

        if self.is_keyframe(index):
            self._latents.clear()
        live = {tf.track_id for tf in tracked}
        self._latents = {tid: w for tid, w in self._latents.items() if tid in live}
        if not stylise:
            self._latents.clear()
        if not stylise or not tracked:
            return prepared

        t = time.perf_counter()
        # Face order by position, not track id: ids depend on where a render started.
        prepared.tracked = sorted(tracked, key=lambda tf: (float(tf.quad[:, 0].mean()), float(tf.quad[:, 1].mean())))
        prepared.aligned = [align_face(frame, tf.quad, self.size) for tf in prepared.tracked]
        prepared.timings["align"] = time.perf_counter() - t
        param = next(self.base.parameters())
        targets = _to_tensor([crop for crop, _ in prepared.aligned], param.device, param.dtype)
        cfg = self.config
        for position, tf in enumerate(prepared.tracked):
            # Faces seen on the previous frame are warm-started (latent and noise maps) with fewer steps.
            previous = self._latents.get(tf.track_id)
            prepared.tasks.append(FaceTask(targets[position:position + 1], previous,
                                           cfg.warm_steps if previous is not None else cfg.steps,
                                           cfg.seed + index * 1009 + position))
        return prepared

    def project_faces(self, frames: Sequence["Prepared"]) -> None:
        """Project the faces of `frames` in batches of `batch_size`, grouped by warm/cold and step count.

        `frames` may come from several pipelines that share this one's base model,
        perceptual loss and projection settings (independent chains, e.g. keyframe
        segments rendered in lockstep). A face's seed depends only on its frame and
        position, so it is projected the same whatever batch it lands in.
        """
        cfg = self.config
        tasks = [task for prepared in frames for task in prepared.tasks]
        groups: Dict[Tuple[bool, int], List[FaceTask]] = {}
        for task in sorted(tasks, key=lambda task: not task.warm):  # warm first, as before; stable
            groups.setdefault((task.warm, task.steps), []).append(task)
        t = time.perf_counter()
        for (warm, steps), members in groups.items():
            for start in range(0, len(members), cfg.batch_size):
                batch = members[start:start + cfg.batch_size]
                if warm and steps == 0:
                    for task in batch:
                        task.state = task.previous
                    continue
                previous = [task.previous for task in batch] if warm else None
                init = torch.stack([s.latent for s in previous]) if warm else None
                init_noises = [torch.cat(maps) for maps in zip(*(s.noises for s in previous))] if warm else None
                result = project(self.base, torch.cat([task.target for task in batch]), steps=steps,
                                 space=cfg.latent_space, init=init, init_noises=init_noises,
                                 perceptual=self.perceptual, pixel_weight=cfg.pixel_weight,
                                 seed=[task.seed for task in batch], callback=self._step_callback(steps))
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

    def finish(self, prepared: "Prepared") -> FrameResult:
        """Render the projected faces with the blended model, paste them back, carry their latents."""
        if prepared.pipeline is not self:
            raise ValueError("a prepared frame must be finished by the pipeline that prepared it")
        frame, timings = prepared.frame, prepared.timings
        if not prepared.tasks:
            empty = self._blank_overlay(frame) if self.config.overlay else frame.copy()
            return FrameResult(empty, prepared.faces, timings)
        found = [task.state for task in prepared.tasks]
        if any(state is None for state in found):
            raise ValueError(f"frame {prepared.index}: faces not projected (call project_faces first)")
        dtype = next(self.base.parameters()).dtype

        t = time.perf_counter()
        ws = torch.stack([state.latent for state in found]).to(dtype)
        # The projected noise maps carry the face's fine texture (the high-resolution layers are the
        # base model's); warm starts carry them from frame to frame, so the texture does not flicker.
        noise = [torch.cat(maps).to(dtype) for maps in zip(*(state.noises for state in found))]
        with torch.no_grad():
            images = self.blended.synthesis(ws, noise=noise)
        timings["generate"] = time.perf_counter() - t
        for tf, state in zip(prepared.tracked, found):
            self._latents[tf.track_id] = state
        crops = _to_images(images, frame.dtype)

        t = time.perf_counter()
        image = paste_faces(frame, [(crop, tr) for crop, (_, tr) in zip(crops, prepared.aligned)],
                            feather=self.config.feather, color_match=self.config.color_match,
                            overlay=self.config.overlay)
        timings["paste"] = time.perf_counter() - t
        return FrameResult(image, prepared.faces, timings)

    def _blank_overlay(self, frame: np.ndarray) -> np.ndarray:
        return np.zeros(frame.shape[:2] + (4,), frame.dtype)
