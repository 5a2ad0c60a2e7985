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
   the first frame's code for the whole video; here a face is encoded on its sample
   frames — every ``STYLE_STRIDE``-th frame (absolute index), and where a walk back
   along its track ends (the track starts, or the tracker's link broke) — and its code
   at frame t is the tent-weighted mean (weights ``min(a + 1, W - a)`` at age a) of its
   own track's sample codes over the last W = ``plan.style_window`` frames, found by
   following the tracker's links back. Every window holds a sample (W >= stride, and
   a walk that stops early stops at one); new samples enter with the smallest weight,
   so the code glides.
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
tracking stage's window and the faces of the last W frames (links, sample codes). A
frame's faces depend on the detections of ``[t - H, t + L]``; whether a face of frame
s is a sample, on its own frame's faces and frame s - 1's; a sample's code on its own
frame; frame t's style on the links and codes of ``(t - W, t]``. A run writing A..B
therefore encodes from ``style_start(A) = A - W + 1``, links faces from
``track_start(A) = style_start(A) - 1``, decodes from ``warmup_start(A) =
track_start(A) - H`` (all clipped at 0) to ``decode_end(B) = B + L``; every frame it
writes then sees exactly what a single pass sees (tests/test_vtoonify_render.py).
"""
from __future__ import annotations

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
from ..temporal import MAX_GAP, STYLE_STRIDE, VToonifyPlan, style_window  # noqa: F401 - re-exported
from .crop import CropGeometry, FaceCrop, crop_image, face_crop
from .paste import HeadLayer, head_mask, paste_heads
from .stylize import PARSING_DIVISOR, parse_faces, style_code

__all__ = ["VToonifyConfig", "VToonifyPlan", "VToonifyPipeline", "StyleWindow", "style_window",
           "default_batch_size"]

Key = Tuple[int, int, int]


def default_batch_size(device) -> int:
    """Faces per VToonify pass: 4 on a GPU (the reference's frame batch), 1 on a CPU (memory: a 400 px
    crop's 1600 px activations take about 1 GB)."""
    return 4 if torch.device(device).type == "cuda" else 1


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
    """The faces of the last W + 1 frames: each one's link to the previous frame and, on its sample
    frames, its style code."""

    def __init__(self, window: int, stride: int = 1):
        self.window, self.stride = max(1, int(window)), max(1, int(stride))
        self._frames: Dict[int, Dict[Key, list]] = {}

    def reset(self) -> None:
        self._frames.clear()

    def link(self, key: Key, previous: Optional[Key]) -> bool:
        """Record a face (its key's first element is its frame); True when it is a sample that needs a
        code: on the stride's grid, or where a walk back along its track ends (no record of its
        previous key: the track starts here, or the tracker's link broke)."""
        index = key[0]
        sample = index % self.stride == 0 or previous is None or previous not in self._frames.get(index - 1, {})
        self._frames.setdefault(index, {})[key] = [previous, None]
        return sample

    def forget_before(self, index: int) -> None:
        """Drop the frames no style from frame `index` on can reach (kept: index - W and later)."""
        for old in [i for i in self._frames if i < index - self.window]:
            del self._frames[old]

    def set_code(self, key: Key, code: torch.Tensor) -> None:
        self._frames[key[0]][key][1] = code

    def smoothed(self, key: Key) -> torch.Tensor:
        """The tent-weighted mean (weight min(a + 1, W - a) at age a) of the face's sample codes over its
        track's last W frames, following its links."""
        total, weights = None, 0.0
        age, at = 0, key
        while age < self.window and at is not None:
            record = self._frames.get(at[0], {}).get(at)
            if record is None:
                break
            previous, code = record
            if code is not None:
                w = float(min(age + 1, self.window - age))
                total = code * w if total is None else total + code * w
                weights += w
            age, at = age + 1, previous
        if total is None:
            raise KeyError(f"no style code for face {key} within {self.window} frames")
        return total / weights


@dataclass
class _Face:
    frame: int
    tracked: TrackFace
    crop: FaceCrop
    aligned: Optional[np.ndarray] = None   # the FFHQ-aligned face, on the frames that take its style code
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
        self.styles = StyleWindow(self.plan.style_window, self.plan.style_stride)
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
        for tracked in track_frames(self.landmarker, self.tracks, frames, self.plan.track_start(first), last):
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
        """Link every face of `group` into the style window, encode the samples from style_start(first) on,
        stylise the frames from `first` on."""
        if not group:
            return []
        timings: Dict[str, float] = defaultdict(float)
        t = time.perf_counter()
        encode_from = self.plan.style_start(first)
        faces: Dict[int, List[_Face]] = {}
        samples: List[_Face] = []
        size = self.encoder.input_size
        for tracked in group:
            # face order by position, not by key: the batches must not depend on the detector's order
            ordered = sorted(tracked.faces, key=lambda tf: (float(tf.quad[:, 0].mean()), float(tf.quad[:, 1].mean())))
            faces[tracked.index] = [_Face(tracked.index, tf, face_crop(tf.quad, self.geometry)) for tf in ordered]
            for face in faces[tracked.index]:
                if self.styles.link(face.tracked.key, face.tracked.previous) and tracked.index >= encode_from:
                    face.aligned = align_face(tracked.frame, face.tracked.quad, size)[0]
                    samples.append(face)
        timings["align"] += time.perf_counter() - t

        t = time.perf_counter()
        self._encode(samples, group[0].frame.dtype)
        for face in samples:
            self.styles.set_code(face.tracked.key, face.code)
        for tracked in group:
            if tracked.index >= first:
                for face in faces[tracked.index]:
                    face.style = self.styles.smoothed(face.tracked.key)
        self.styles.forget_before(group[-1].index + 1)   # after the whole group: its first frame looks back W
        timings["encode"] += time.perf_counter() - t

        shown = [tracked for tracked in group if tracked.index >= first]
        todo = [face for tracked in shown for face in faces[tracked.index]]
        frames = {tracked.index: tracked.frame for tracked in shown}
        self._stylise(todo, frames, timings)

        out = []
        shared = max(1, len(todo))
        for tracked in shown:
            mine = faces[tracked.index]
            t = time.perf_counter()
            image = paste_heads(tracked.frame, [f.layer for f in mine], self.config.color_match, self.config.overlay)
            frame_timings = dict(tracked.timings)
            for stage, seconds in timings.items():   # the group's shared work, split by faces
                frame_timings[stage] = seconds * len(mine) / shared
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
            crops = [crop_image(frames[f.frame], f.crop) for f in batch[:count]]
            x = self._to_tensor(crops + crops[-1:] * (len(batch) - count), dtype)
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
