"""The per-clip VToonify engine: track -> crop -> style code -> one pass -> paste.

Frames stream in as (index, RGB uint8/uint16) pairs and come out the same way,
like :class:`engine.pipeline.ToonPipeline` (the renderer drives both alike: ``run``,
``warmup_start``, ``plan.decode_end``, ``process``):

1. **Track**: the StyleGAN path's tracking stage (detect + ``LookaheadTracker``),
   so a face's smoothed quad at frame t is a function of the detections of
   ``t - history .. t + look_ahead``.
2. **Crop** (``crop.py``): the reference's crop, following the face: a fixed-size
   crop (400 px for the public models) around the eye centre at 64 px eye distance.
3. **Style code**: the Z+ style encoder on the FFHQ-aligned face (256 px), mapped to
   W+ (``style_code``; VToonify-D mixes in its extrinsic style). The reference takes
   the first frame's code for the whole video; here each face-frame is encoded and a
   face's code at frame t is the tent-weighted mean (weights ``min(a + 1, W - a)`` at
   age a) of its own track's codes over the last W = ``plan.style_window`` frames,
   found by following the tracker's links back (a broken link ends the walk).
4. **One pass** at the model's own output scale (4x): the face parser on the crop,
   then VToonify on the crop and parsing map. Faces are batched ``batch_size`` at a
   time, a short batch padded with its last face, so a face's numbers never depend on
   its batch mates; frames are grouped on absolute indices (frame t belongs to group
   ``t // batch_size``).
5. **Paste** (``paste.py``): the head only, through a mask from the parsing map
   whose soft edge lies outside the head, colour-matched, full frame or RGBA overlay.
   When the output is larger than the frame region it covers it is first reduced on
   the device (antialiased), so only the pixels the frame can show cross to the host.

Determinism across chunks and resume. Nothing passes between frames except the
tracking stage's window and the style codes of the last W frames. A frame's faces
depend on the detections of ``[t - H, t + L]``; its codes on those of its own frame;
its style on the codes and links of ``(t - W, t]``. A run writing A..B therefore
encodes from ``style_start(A) = A - W + 1`` and tracks from ``warmup_start(A) =
style_start(A) - H`` (both clipped at 0) to ``decode_end(B) = B + L``; every frame
it writes then sees exactly what a single pass sees (tests/test_vtoonify_render.py).
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..faces.align import align_face
from ..faces.lookahead import LookaheadTracker, TrackFace
from ..pipeline import FrameResult, TrackedFrame, track_frames, tracked_frame
from ..pixels import check_rgb, peak, to_uint8
from ..temporal import MAX_GAP, RADIUS_SIGMAS, smoothing_sigma, tracking_extent
from .crop import CropGeometry, FaceCrop, crop_image, face_crop
from .paste import HeadLayer, head_mask, paste_heads
from .stylize import PARSING_DIVISOR, parse_faces, style_code

__all__ = ["VToonifyConfig", "VToonifyPlan", "VToonifyPipeline", "StyleWindow", "style_window",
           "default_batch_size"]

Key = Tuple[int, int, int]


def style_window(smoothing: float) -> int:
    """Frames a style code is averaged over: the zero-phase smoother's span (2 x 3 sigma + 1; 1 = off)."""
    return 2 * math.ceil(RADIUS_SIGMAS * smoothing_sigma(smoothing)) + 1


def default_batch_size(device) -> int:
    """Faces per VToonify pass: 4 on a GPU (the reference's frame batch), 1 on a CPU (memory: a 400 px
    crop's 1600 px activations take about 1 GB)."""
    return 4 if torch.device(device).type == "cuda" else 1


@dataclass(frozen=True)
class VToonifyPlan:
    """Which frames a frame depends on: the style window W and the tracking stage's reach."""

    style_window: int = 1
    history: int = 0
    look_ahead: int = 0

    @classmethod
    def create(cls, smoothing: float, mode: str = "zero-phase", max_gap: int = MAX_GAP) -> "VToonifyPlan":
        _, ahead, history = tracking_extent(smoothing, mode, max_gap)
        return cls(style_window(smoothing), history, ahead)

    def style_start(self, first: int) -> int:
        """First frame whose style code frame `first` reads."""
        return max(0, first - self.style_window + 1)

    def warmup_start(self, first: int) -> int:
        """First frame to decode so that frame `first` comes out as in a single pass."""
        return max(0, self.style_start(first) - self.history)

    def decode_end(self, last: int, frame_count: int) -> int:
        return min(frame_count - 1, last + self.look_ahead)


@dataclass
class VToonifyConfig:
    """Engine-side settings (the product maps its parameter schema onto these)."""

    feather: float = 0.08          # the soft edge, as a fraction of the face's FFHQ crop (4 eye distances)
    color_match: bool = True
    overlay: bool = False
    smoothing: float = 0.5
    smoothing_mode: str = "zero-phase"
    max_gap: int = MAX_GAP
    batch_size: int = 1
    style_degree: float = 0.5      # VToonify-D's d_s (VToonify-T ignores it)
    color_transfer: bool = False   # VToonify-D: the whole code from the extrinsic style
    half: bool = False             # float16 on CUDA (autocast)

    def plan(self) -> VToonifyPlan:
        return VToonifyPlan.create(self.smoothing, self.smoothing_mode, self.max_gap)


class StyleWindow:
    """Each face-frame's style code and its link to the previous frame, for the last W frames."""

    def __init__(self, window: int):
        self.window = max(1, int(window))
        self._frames: Dict[int, Dict[Key, Tuple[Optional[Key], torch.Tensor]]] = {}

    def reset(self) -> None:
        self._frames.clear()

    def add(self, index: int, faces: Sequence[Tuple[Key, Optional[Key], torch.Tensor]]) -> None:
        self._frames[index] = {key: (previous, code) for key, previous, code in faces}
        for old in [i for i in self._frames if i <= index - self.window]:
            del self._frames[old]

    def smoothed(self, index: int, key: Key) -> torch.Tensor:
        """The tent-weighted mean of the face's codes over (index - W, index], following its links."""
        total, weights = None, 0.0
        age, at = 0, key   # a key's first element is its frame
        while age < self.window and at is not None:
            record = self._frames.get(at[0], {}).get(at)
            if record is None:
                break
            previous, code = record
            w = float(min(age + 1, self.window - age))
            total = code * w if total is None else total + code * w
            weights += w
            age, at = age + 1, previous
        if total is None:
            raise KeyError(f"no style code for face {key} of frame {index}")
        return total / weights


@dataclass
class _Face:
    frame: int
    tracked: TrackFace
    crop: FaceCrop
    aligned: np.ndarray
    code: Optional[torch.Tensor] = None
    style: Optional[torch.Tensor] = None
    layer: Optional[HeadLayer] = None


class VToonifyPipeline:
    """Toonify the faces of a clip with a VToonify model.

    ``net``: ``engine.vtoonify.VToonify``; ``parser``: the BiSeNet face parser; ``encoder``:
    the Z+ ``StyleEncoder``; ``exstyle``: VToonify-D's extrinsic style, (1, L, 512) W+.
    """

    def __init__(self, landmarker, net, parser, encoder, config: Optional[VToonifyConfig] = None,
                 exstyle: Optional[torch.Tensor] = None):
        self.landmarker, self.net, self.parser, self.encoder = landmarker, net, parser, encoder
        self.config = cfg = config or VToonifyConfig()
        if net.backbone == "dualstylegan" and exstyle is None:
            raise ValueError("a VToonify-D model needs an extrinsic style code")
        self.exstyle = exstyle
        self.geometry = CropGeometry.for_model(net.in_size)
        self.plan = cfg.plan()
        self.tracks = LookaheadTracker(cfg.smoothing, cfg.smoothing_mode, cfg.max_gap)
        self.styles = StyleWindow(self.plan.style_window)
        self.on_batch: Optional[Callable[[], None]] = None   # called before every network batch (cancel)
        self.device = next(net.parameters()).device

    def reset(self) -> None:
        """Forget tracks and style codes (a new shot or clip)."""
        self.tracks.reset()
        self.styles.reset()

    @property
    def look_ahead(self) -> int:
        return self.plan.look_ahead

    def warmup_start(self, first: int) -> int:
        return self.plan.warmup_start(first)

    # -- a clip ---------------------------------------------------------------
    def run(self, frames: Iterable[Tuple[int, np.ndarray]], first: Optional[int] = None,
            last: Optional[int] = None) -> Iterator[Tuple[int, FrameResult]]:
        """Toonify consecutive (index, frame) pairs: yields (index, result) for frames `first`..`last`
        (all by default). Decode from `warmup_start(first)` to `plan.decode_end(last, n)` to get them
        exactly as a single pass over the clip gives them."""
        self.reset()
        first = 0 if first is None else first
        size = max(1, self.config.batch_size)
        group: List[TrackedFrame] = []
        for tracked in track_frames(self.landmarker, self.tracks, frames, self.plan.style_start(first), last):
            if group and tracked.index // size != group[0].index // size:
                yield from self._frames(group, first)
                group = []
            group.append(tracked)
        yield from self._frames(group, first)

    def process(self, frame: np.ndarray, index: int) -> FrameResult:
        """Toonify one frame now (live input, previews): no look-ahead; style codes of the frames given
        just before it are kept (a jump in frame numbers starts over)."""
        frame = check_rgb(frame)
        if self.tracks.newest is not None and index != self.tracks.newest + 1:
            self.reset()
        t = time.perf_counter()
        self.tracks.push(index, self.landmarker.detect(to_uint8(frame)))
        tracked = tracked_frame(self.tracks, index, frame, time.perf_counter() - t)
        return self._frames([tracked], index)[0][1]

    # -- a group of frames ----------------------------------------------------
    def _frames(self, group: List[TrackedFrame], first: int) -> List[Tuple[int, FrameResult]]:
        """Style codes for every frame of `group`, stylised results for those from `first` on."""
        if not group:
            return []
        timings: Dict[str, float] = defaultdict(float)
        t = time.perf_counter()
        faces: Dict[int, List[_Face]] = {}
        size = self.encoder.input_size
        for tracked in group:
            # face order by position, not by key: the batches must not depend on the detector's order
            ordered = sorted(tracked.faces, key=lambda tf: (float(tf.quad[:, 0].mean()), float(tf.quad[:, 1].mean())))
            faces[tracked.index] = [_Face(tracked.index, tf, face_crop(tf.quad, self.geometry),
                                          align_face(tracked.frame, tf.quad, size)[0]) for tf in ordered]
        timings["align"] += time.perf_counter() - t

        t = time.perf_counter()
        every = [face for tracked in group for face in faces[tracked.index]]
        self._encode(every, group[0].frame.dtype)
        for tracked in group:
            self.styles.add(tracked.index, [(f.tracked.key, f.tracked.previous, f.code) for f in faces[tracked.index]])
            for f in faces[tracked.index]:
                f.style = self.styles.smoothed(tracked.index, f.tracked.key)
        timings["encode"] += time.perf_counter() - t

        shown = [tracked for tracked in group if tracked.index >= first]
        todo = [face for tracked in shown for face in faces[tracked.index]]
        frames = {tracked.index: tracked.frame for tracked in shown}
        self._stylise(todo, frames, timings)

        out = []
        total = max(1, len(todo))
        for tracked in shown:
            t = time.perf_counter()
            mine = faces[tracked.index]
            if mine:
                image = paste_heads(tracked.frame, [f.layer for f in mine], self.config.color_match,
                                    self.config.overlay)
            elif self.config.overlay:
                image = np.zeros(tracked.frame.shape[:2] + (4,), tracked.frame.dtype)
            else:
                image = tracked.frame.copy()
            frame_timings = dict(tracked.timings)
            for stage, seconds in timings.items():   # a group's shared work is split by faces
                frame_timings[stage] = seconds * len(mine) / total if stage != "align" else seconds / len(group)
            frame_timings["paste"] = frame_timings.get("paste", 0.0) + time.perf_counter() - t
            out.append((tracked.index, FrameResult(image, len(mine), frame_timings)))
        return out

    def _batches(self, items: Sequence) -> Iterator[Tuple[List, int]]:
        """`items` in batches of exactly batch_size (a short one padded with its last item): (batch, real count)."""
        size = max(1, self.config.batch_size)
        for start in range(0, len(items), size):
            batch = list(items[start:start + size])
            yield batch + batch[-1:] * (size - len(batch)), len(batch)

    def _to_tensor(self, images: Sequence[np.ndarray], dtype) -> torch.Tensor:
        half = peak(dtype) / 2
        batch = torch.from_numpy(np.stack(images).astype(np.float32, copy=False)).to(self.device)
        return batch.permute(0, 3, 1, 2) / half - 1.0

    def _encode(self, faces: Sequence[_Face], dtype) -> None:
        """Every face's own W+ style code."""
        for batch, count in self._batches(faces):
            with torch.no_grad():
                codes = style_code(self.net, self.encoder, self._to_tensor([f.aligned for f in batch], dtype),
                                   self.exstyle, self.config.color_transfer)
            for face, code in zip(batch[:count], codes):
                face.code = code

    def _stylise(self, faces: Sequence[_Face], frames: Dict[int, np.ndarray], timings: Dict[str, float]) -> None:
        """Parse, stylise and prepare the paste of every face (``face.layer``)."""
        cfg, geometry = self.config, self.geometry
        half = cfg.half and self.device.type == "cuda"
        feather = cfg.feather * 4 * geometry.eye_distance
        for batch, count in self._batches(faces):
            if self.on_batch is not None:
                self.on_batch()
            t = time.perf_counter()
            dtype = frames[batch[0].frame].dtype
            crops = [crop_image(frames[f.frame], f.crop) for f in batch]
            x = self._to_tensor(crops, dtype)
            styles = torch.stack([f.style for f in batch])
            timings["crop"] += time.perf_counter() - t
            t = time.perf_counter()
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=half):
                parsing = parse_faces(self.parser, x)
                out = self.net(torch.cat((x, parsing / PARSING_DIVISOR), dim=1), styles, d_s=cfg.style_degree)
                out = out.float().clamp(-1, 1)
                labels = parsing.argmax(dim=1).to(torch.uint8).cpu().numpy()
            timings["generate"] += time.perf_counter() - t
            t = time.perf_counter()
            for j, face in enumerate(batch[:count]):
                white = peak(frames[face.frame].dtype)
                image, to_image = self._reduced(out[j], face.crop, white)
                mask = head_mask(labels[j], feather, geometry.eye_distance)
                face.layer = HeadLayer(image, to_image, mask, face.crop.matrix)
            timings["paste"] += time.perf_counter() - t

    @staticmethod
    def _reduced(image: torch.Tensor, crop: FaceCrop, white: int) -> Tuple[np.ndarray, np.ndarray]:
        """One output (3, O, O) in [-1, 1] as frame levels on the host, reduced on the device to about the
        frame's own resolution when larger: (H x W x 3 float32, 2x3 frame -> image)."""
        side, size = image.shape[-1], crop.size
        per_frame_pixel = side / size * crop.scale
        if per_frame_pixel > 1.0:
            side = max(1, int(round(image.shape[-1] / per_frame_pixel)))
            image = F.interpolate(image[None], size=(side, side), mode="bilinear", antialias=True,
                                  align_corners=False)[0]
        k = side / size   # image pixels per crop pixel: U = (u + 0.5) k - 0.5
        to_image = crop.matrix * k
        to_image[:, 2] += 0.5 * k - 0.5
        levels = ((image + 1.0) * (white / 2.0)).permute(1, 2, 0).contiguous().cpu().numpy()
        return levels, to_image
