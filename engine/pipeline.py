"""The per-clip engine: detect, track, align, project, stylise, paste back.

Frames go in one at a time (numpy RGB uint8) and come out the same way. The
pipeline keeps what a clip needs between frames: face tracks with their
smoothed landmarks, and each track's latent for the next frame's warm start.

Determinism across farm chunks: a chunk starting mid-clip must produce the
same pixels as a render of the whole clip. Two things carry history between
frames, and both are bounded here so a short warm-up reproduces them exactly:
- the warm-start chain restarts (cold projection) at every keyframe, frame
  indices that are multiples of `keyframe_interval`, like a video GOP; this
  also stops drift from accumulating in long shots;
- landmark smoothing uses a finite window (see engine.tracking).
`warmup_start(first)` says where a chunk has to start processing so that its
first written frame sees the same history as in a single-pass render.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from .align import align_face
from .paste import paste_faces
from .projection import project
from .tracking import FaceTracker


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
class FrameResult:
    image: np.ndarray
    faces: int
    timings: Dict[str, float] = field(default_factory=dict)


def _to_tensor(crops: List[np.ndarray], device, dtype) -> torch.Tensor:
    batch = torch.from_numpy(np.stack(crops)).to(device=device, dtype=torch.float32)
    return (batch.permute(0, 3, 1, 2) / 127.5 - 1.0).to(dtype)


def _to_images(batch: torch.Tensor) -> List[np.ndarray]:
    images = ((batch.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return list(images.permute(0, 2, 3, 1).cpu().numpy())


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
        """Toonify every face in `frame` (H x W x 3 uint8 RGB), source frame number `index`.

        With stylise=False the frame only advances the tracker (warm-up frames
        whose output is not needed and whose latents are not carried).
        """
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an H x W x 3 uint8 frame, got {frame.shape} {frame.dtype}")
        if self._last_index is not None and index != self._last_index + 1:
            self.reset()  # a jump in time breaks tracks and warm starts
        self._last_index = index
        timings: Dict[str, float] = {}

        t = time.perf_counter()
        faces = self.landmarker.detect(frame)
        tracked = self.tracker.update(faces)
        timings["detect"] = time.perf_counter() - t

        if self.is_keyframe(index):
            self._latents.clear()
        live = {tf.track_id for tf in tracked}
        self._latents = {tid: w for tid, w in self._latents.items() if tid in live}

        if not stylise or not tracked:
            if not stylise:
                self._latents.clear()
            empty = self._blank_overlay(frame) if self.config.overlay else frame.copy()
            return FrameResult(empty, len(tracked), timings)

        t = time.perf_counter()
        # Face order by position, not track id: ids depend on where a render started.
        tracked = sorted(tracked, key=lambda tf: (float(tf.quad[:, 0].mean()), float(tf.quad[:, 1].mean())))
        aligned = [align_face(frame, tf.quad, self.size) for tf in tracked]
        timings["align"] = time.perf_counter() - t

        crops = self._stylise(index, tracked, [crop for crop, _ in aligned], timings)

        t = time.perf_counter()
        image = paste_faces(frame, [(crop, tr) for crop, (_, tr) in zip(crops, aligned)],
                            feather=self.config.feather, color_match=self.config.color_match,
                            overlay=self.config.overlay)
        timings["paste"] = time.perf_counter() - t
        return FrameResult(image, len(tracked), timings)

    def _blank_overlay(self, frame: np.ndarray) -> np.ndarray:
        return np.zeros(frame.shape[:2] + (4,), np.uint8)

    def _stylise(self, index, tracked, crops, timings) -> List[np.ndarray]:
        cfg = self.config
        param = next(self.base.parameters())
        device, dtype = param.device, param.dtype
        targets = _to_tensor(crops, device, dtype)
        # Faces seen on the previous frame are warm-started (latent and noise maps) with fewer steps.
        groups: Dict[bool, List[int]] = {True: [], False: []}
        for i, tf in enumerate(tracked):
            groups[tf.track_id in self._latents].append(i)
        found: List[Optional[FaceState]] = [None] * len(tracked)
        t = time.perf_counter()
        for warm, members in groups.items():
            steps = cfg.warm_steps if warm else cfg.steps
            for start in range(0, len(members), cfg.batch_size):
                batch = members[start:start + cfg.batch_size]
                previous = [self._latents[tracked[i].track_id] for i in batch] if warm else None
                if warm and steps == 0:
                    states = previous
                else:
                    init = torch.stack([s.latent for s in previous]) if warm else None
                    init_noises = ([torch.cat(maps) for maps in zip(*(s.noises for s in previous))]
                                   if warm else None)
                    result = project(self.base, targets[batch], steps=steps, space=cfg.latent_space,
                                     init=init, init_noises=init_noises, perceptual=self.perceptual,
                                     pixel_weight=cfg.pixel_weight, seed=cfg.seed + index * 1009 + batch[0])
                    states = [FaceState(result.latents[j].detach(), [n[j:j + 1].detach() for n in result.noises])
                              for j in range(len(batch))]
                for i, state in zip(batch, states):
                    found[i] = state
        timings["project"] = time.perf_counter() - t

        t = time.perf_counter()
        ws = torch.stack([state.latent for state in found]).to(dtype)
        # The projected noise maps carry the face's fine texture (the high-resolution layers are the
        # base model's); warm starts carry them from frame to frame, so the texture does not flicker.
        noise = [torch.cat(maps).to(dtype) for maps in zip(*(state.noises for state in found))]
        with torch.no_grad():
            images = self.blended.synthesis(ws, noise=noise)
        timings["generate"] = time.perf_counter() - t
        for tf, state in zip(tracked, found):
            self._latents[tf.track_id] = state
        return _to_images(images)
