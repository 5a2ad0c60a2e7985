"""Face detection and 68-point landmarks (iBUG 300-W scheme).

Two backends share one small interface, ``Landmarker.detect(image) -> list[Face]``:

* :class:`DlibLandmarker` -- the offline default. dlib's HOG frontal detector (weak
  detections are confirmed by dlib's CNN/MMOD detector on a crop) and dlib's 68-point
  shape predictor, both shipped in the ``face-recognition-models`` wheel.
  **Licence:** the 68-point model was trained on iBUG 300-W, whose terms exclude
  commercial use. Say so where the user picks it.
* :class:`FaceAlignmentLandmarker` -- the ``face-alignment`` package (FAN 2D, 68
  points; more accurate, heavier). Its weights must be in a local folder (the model
  store puts them there); it never downloads.

Images are ``H x W x 3`` uint8 RGB. Coordinates are pixels with the centre of pixel
(0, 0) at (0, 0) (the convention of dlib, OpenCV and the FFHQ recipe's landmarks).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = [
    "Face",
    "Landmarker",
    "ModelFilesMissing",
    "DlibLandmarker",
    "FaceAlignmentLandmarker",
    "make_landmarker",
    "as_rgb_uint8",
    "dlib_model_dir",
    "LANDMARKER_NAMES",
]

LANDMARKER_NAMES = ("dlib", "face-alignment")


class ModelFilesMissing(FileNotFoundError):
    """Model weights that a landmarker needs are not on disk (nothing is downloaded)."""

    def __init__(self, message: str, files: Sequence[str] = (), folder: str | None = None):
        super().__init__(message)
        self.files = list(files)
        self.folder = folder


@dataclass
class Face:
    """One detected face: box (x0, y0, x1, y1), detector score, 68 landmarks (iBUG order)."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        self.score = float(self.score)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(68, 2)

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2])


@runtime_checkable
class Landmarker(Protocol):
    """Anything that finds faces and their 68 landmarks in an RGB uint8 image."""

    def detect(self, image: np.ndarray) -> list[Face]:  # pragma: no cover - protocol
        ...


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate an image and return it as a C-contiguous H x W x 3 uint8 array.

    Grey (H x W) images are expanded; an alpha channel is dropped.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"image must be H x W x 3 (RGB), got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    if image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def _sort_faces(faces: list[Face]) -> list[Face]:
    return sorted(faces, key=lambda f: (-f.area, f.box[0], f.box[1]))


def _as_boxes(boxes) -> np.ndarray:
    """Given boxes as (N, 4) or (N, 5) (last column a score) -> float64 (N, 5)."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 5))
    arr = arr.reshape(-1, arr.shape[-1])
    if arr.shape[1] == 4:
        arr = np.concatenate([arr, np.ones((len(arr), 1))], axis=1)
    if arr.shape[1] != 5:
        raise ValueError(f"boxes must be (N, 4) or (N, 5), got {arr.shape}")
    return arr


# --------------------------------------------------------------------------- dlib


def dlib_model_dir() -> Path:
    """Folder holding dlib's model files from the ``face-recognition-models`` wheel."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesMissing(
            "dlib's face models are not installed: install the 'face-recognition-models' "
            "package (pip install face-recognition-models)",
            files=["shape_predictor_68_face_landmarks.dat"],
        )
    return Path(list(spec.submodule_search_locations)[0]) / "models"


class DlibLandmarker:
    """dlib face detector + 68-point shape predictor (offline default).

    Licence: the 68-point model was trained on iBUG 300-W, whose terms exclude
    commercial use.

    ``detector="hog"`` (default) scans with dlib's HOG frontal detector at ``upsample``
    (each step doubles the image, finding faces down to ~40 px instead of ~80 px).
    Detections scoring at least ``min_score`` are accepted; HOG also fires weakly on
    non-faces and scores real three-quarter faces low, so detections between
    ``weak_score`` and ``min_score`` are re-checked by dlib's CNN (MMOD) detector on a
    small crop around the box (about 0.1-0.5 s each) and kept only if it finds a face
    there with confidence >= ``confirm_score`` (``weak_score=None`` turns that off).
    ``detector="cnn"`` runs the MMOD detector on the whole image (slow on CPU, better
    on turned faces; ``min_score`` then applies to its confidence, ~1.0 for clear
    faces). Images larger than ``max_side`` are scanned at reduced size; landmarks are
    always fitted at full resolution. dlib returns whole-pixel landmark positions.
    """

    name = "dlib"
    licence_note = (
        "dlib's 68-point landmark model was trained on iBUG 300-W, whose licence excludes "
        "commercial use."
    )

    def __init__(
        self,
        min_score: float = 0.5,
        upsample: int = 1,
        detector: str = "hog",
        weak_score: float | None = -0.5,
        confirm_score: float = 0.0,
        max_side: int | None = 1280,
        model_dir: str | os.PathLike | None = None,
    ):
        import dlib  # local: keep `import engine.faces.landmarks` light

        if detector not in ("hog", "cnn"):
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        if int(upsample) < 0:
            raise ValueError("upsample must be >= 0")
        self.min_score = float(min_score)
        self.upsample = int(upsample)
        self.detector = detector
        self.weak_score = None if weak_score is None else float(weak_score)
        self.confirm_score = float(confirm_score)
        self.max_side = None if max_side is None else int(max_side)
        folder = Path(model_dir) if model_dir is not None else dlib_model_dir()
        shape_file = folder / "shape_predictor_68_face_landmarks.dat"
        cnn_file = folder / "mmod_human_face_detector.dat"
        need = [shape_file]
        if detector == "cnn" or self.weak_score is not None:
            need.append(cnn_file)
        missing = [p.name for p in need if not p.is_file()]
        if missing:
            raise ModelFilesMissing(
                f"dlib model file(s) {', '.join(missing)} not found in {folder}; reinstall the "
                "'face-recognition-models' package",
                files=missing,
                folder=str(folder),
            )
        self._dlib = dlib
        self._predictor = dlib.shape_predictor(str(shape_file))
        self._hog = dlib.get_frontal_face_detector()
        self._cnn = dlib.cnn_face_detection_model_v1(str(cnn_file)) if cnn_file in need else None

    # -- detection -------------------------------------------------------------

    def _scan_image(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Image to scan (maybe reduced to max_side) and the factor back to full size."""
        h, w = image.shape[:2]
        if self.max_side is not None and max(h, w) > self.max_side:
            import cv2

            f = self.max_side / max(h, w)
            small = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))),
                               interpolation=cv2.INTER_AREA)
            return np.ascontiguousarray(small), w / small.shape[1]
        return image, 1.0

    def _confirm(self, image: np.ndarray, box: np.ndarray) -> bool:
        """Confirm a weak HOG box with the CNN detector run on a crop around it."""
        import cv2

        x0, y0, x1, y1 = box
        side = max(x1 - x0, y1 - y0, 1.0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        half = 0.8 * side
        h, w = image.shape[:2]
        ax0, ay0 = int(max(0, np.floor(cx - half))), int(max(0, np.floor(cy - half)))
        ax1, ay1 = int(min(w, np.ceil(cx + half))), int(min(h, np.ceil(cy + half)))
        if ax1 - ax0 < 8 or ay1 - ay0 < 8:
            return False
        crop = image[ay0:ay1, ax0:ax1]
        f = 110.0 / side  # MMOD's window is ~80 px: put the face at ~110 px
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f))),
                          interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
        dets = self._cnn(np.ascontiguousarray(crop), 0)
        for d in dets:
            if d.confidence < self.confirm_score:
                continue
            r = d.rect
            bx = np.array([r.left(), r.top(), r.right(), r.bottom()], float) / f + [ax0, ay0, ax0, ay0]
            if _iou(bx, box) > 0.3:
                return True
        return False

    def detect_boxes(self, image: np.ndarray) -> np.ndarray:
        """Face boxes only: float64 (N, 5) rows x0, y0, x1, y1, score (unsorted)."""
        image = as_rgb_uint8(image)
        scan, back = self._scan_image(image)
        out = []
        if self.detector == "cnn":
            for d in self._cnn(scan, self.upsample):
                if d.confidence >= self.min_score:
                    r = d.rect
                    out.append([r.left() * back, r.top() * back, r.right() * back, r.bottom() * back,
                                d.confidence])
            return np.asarray(out, dtype=np.float64).reshape(-1, 5)
        floor = self.min_score if self.weak_score is None else min(self.weak_score, self.min_score)
        rects, scores, _ = self._hog.run(scan, self.upsample, floor)
        for r, s in zip(rects, scores):
            box = np.array([r.left(), r.top(), r.right(), r.bottom()], float) * back
            if s >= self.min_score or (self._cnn is not None and self._confirm(image, box)):
                out.append([*box, float(s)])
        return np.asarray(out, dtype=np.float64).reshape(-1, 5)

    def landmarks_for_box(self, image: np.ndarray, box) -> np.ndarray:
        """68 landmarks (float32 (68, 2)) fitted inside one box."""
        x0, y0, x1, y1 = (int(round(v)) for v in np.asarray(box, float)[:4])
        shape = self._predictor(image, self._dlib.rectangle(x0, y0, x1, y1))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)

    def detect(self, image: np.ndarray, boxes=None) -> list[Face]:
        """Faces in an RGB uint8 image, largest first. ``boxes`` (N, 4|5) skips detection."""
        image = as_rgb_uint8(image)
        found = self.detect_boxes(image) if boxes is None else _as_boxes(boxes)
        faces = [Face(b[:4], b[4], self.landmarks_for_box(image, b)) for b in found]
        return _sort_faces(faces)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


# ----------------------------------------------------------------- face-alignment


class FaceAlignmentLandmarker:
    """face-alignment's FAN (2D, 68 points) with S3FD or dlib face boxes; never downloads.

    Weights are looked up in ``weights_dir`` (directly, or in its ``hub/checkpoints``
    sub-folder, the layout face-alignment uses under ``$TORCH_HOME``); with no
    ``weights_dir``, in torch's hub folder (``$TORCH_HOME/hub/checkpoints``). Missing
    files raise :class:`ModelFilesMissing` naming them and the command that fetches
    them. ``detector="s3fd"`` (face-alignment's detector, needs its weights),
    ``"dlib"`` (boxes from :class:`DlibLandmarker`'s detector) or ``"none"`` (boxes
    must be passed to :meth:`detect`). ``min_score`` filters S3FD boxes. ``fan_path`` /
    ``s3fd_path`` name the files directly (e.g. as the model store resolved them) and
    take precedence over ``weights_dir``. Landmarks are decoded as face-alignment does
    but kept at sub-pixel precision (it truncates them to integers).
    """

    name = "face-alignment"
    FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
    S3FD_FILE = "s3fd-619a316812.pth"
    PULL_HINT = "toon-ofx models pull face-alignment"

    def __init__(
        self,
        device: str = "cpu",
        weights_dir: str | os.PathLike | None = None,
        detector: str = "s3fd",
        min_score: float = 0.5,
        flip_input: bool = True,
        dlib_kwargs: dict | None = None,
        fan_path: str | os.PathLike | None = None,
        s3fd_path: str | os.PathLike | None = None,
    ):
        if detector not in ("s3fd", "dlib", "none"):
            raise ValueError(f"detector must be 's3fd', 'dlib' or 'none', got {detector!r}")
        self.device = str(device)
        self.detector = detector
        self.min_score = float(min_score)
        self.flip_input = bool(flip_input)
        self.weights_dir = self._weights_root(weights_dir)
        needed = [self.FAN_FILE] + ([self.S3FD_FILE] if detector == "s3fd" else [])
        explicit = {self.FAN_FILE: fan_path, self.S3FD_FILE: s3fd_path}
        found = {name: self._find(name, explicit[name]) for name in needed}
        missing = [n for n, p in found.items() if p is None]
        if missing:
            given = [str(explicit[n]) for n in missing if explicit[n] is not None]
            raise ModelFilesMissing(
                f"face-alignment weights missing: {', '.join(missing)} (looked in "
                + (f"{', '.join(given)}, " if given else "")
                + f"{self.weights_dir} and {self.weights_dir / 'hub' / 'checkpoints'}). "
                f"Run `{self.PULL_HINT}` to fetch them (or copy the files there); "
                "nothing is downloaded at run time.",
                files=missing,
                folder=str(self.weights_dir),
            )
        import torch

        self._torch = torch
        self.fan = self._load_fan(found[self.FAN_FILE])
        self._s3fd = None
        self._dlib = None
        if detector == "s3fd":
            from face_alignment.detection.sfd.sfd_detector import SFDDetector

            self._s3fd = SFDDetector(self.device, path_to_detector=str(found[self.S3FD_FILE]),
                                     filter_threshold=self.min_score)
        elif detector == "dlib":
            self._dlib = DlibLandmarker(**(dlib_kwargs or {}))

    @staticmethod
    def _weights_root(weights_dir) -> Path:
        if weights_dir is not None:
            return Path(weights_dir)
        import torch.hub

        return Path(torch.hub.get_dir()).parent  # $TORCH_HOME

    def _find(self, name: str, explicit=None) -> Path | None:
        if explicit is not None:
            return Path(explicit) if Path(explicit).is_file() else None
        for cand in (self.weights_dir / name, self.weights_dir / "hub" / "checkpoints" / name,
                     self.weights_dir / "checkpoints" / name):
            if cand.is_file():
                return cand
        return None

    def _load_fan(self, path: Path):
        from face_alignment.models import FAN

        net = FAN(4)
        state = self._torch.load(str(path), map_location=self.device, weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        net.load_state_dict(state)
        return net.to(self.device).eval()

    def detect_boxes(self, image: np.ndarray) -> np.ndarray:
        """Face boxes: float64 (N, 5) rows x0, y0, x1, y1, score."""
        image = as_rgb_uint8(image)
        if self._s3fd is not None:
            boxes = self._s3fd.detect_from_image(image.copy())
            return _as_boxes([np.asarray(b, float)[:5] for b in boxes])
        if self._dlib is not None:
            return self._dlib.detect_boxes(image)
        raise ValueError("this FaceAlignmentLandmarker has detector='none': pass boxes to detect()")

    def landmarks_for_boxes(self, image: np.ndarray, boxes) -> np.ndarray:
        """68 landmarks per box: float32 (N, 68, 2) (face-alignment's crop and heatmap decoding)."""
        from face_alignment.utils import CENTER_Y_OFFSET, REFERENCE_SCALE, crop, flip

        torch = self._torch
        image = as_rgb_uint8(image)
        boxes = _as_boxes(boxes)
        out = np.zeros((len(boxes), 68, 2), np.float32)
        for i, d in enumerate(boxes):
            center = np.array([(d[0] + d[2]) / 2.0, (d[1] + d[3]) / 2.0])
            center[1] -= (d[3] - d[1]) * CENTER_Y_OFFSET
            scale = (d[2] - d[0] + d[3] - d[1]) / REFERENCE_SCALE
            patch = crop(image, center, scale).transpose(2, 0, 1).astype(np.float32) / 255.0
            inp = torch.from_numpy(patch)[None].to(self.device)
            with torch.no_grad():
                hm = self.fan(inp)
                hm = (hm[-1] if isinstance(hm, (list, tuple)) else hm).detach()
                if self.flip_input:
                    hf = self.fan(flip(inp))
                    hf = (hf[-1] if isinstance(hf, (list, tuple)) else hf).detach()
                    hm = hm + flip(hf, is_label=True)
            out[i] = _heatmap_points(hm.to("cpu", torch.float32).numpy()[0], center, scale)
        return out

    def detect(self, image: np.ndarray, boxes=None) -> list[Face]:
        """Faces in an RGB uint8 image, largest first. ``boxes`` (N, 4|5) skips detection."""
        image = as_rgb_uint8(image)
        found = self.detect_boxes(image) if boxes is None else _as_boxes(boxes)
        if len(found) == 0:
            return []
        lms = self.landmarks_for_boxes(image, found)
        return _sort_faces([Face(b[:4], b[4], lm) for b, lm in zip(found, lms)])


def _heatmap_points(hm: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """Decode FAN heatmaps (68, 64, 64) to image points as face-alignment does
    (arg-max, quarter-pixel nudge towards the higher neighbour, back through the crop),
    vectorised (no numba JIT) and without its final rounding to integers."""
    n, hh, ww = hm.shape
    flat = hm.reshape(n, -1)
    idx = flat.argmax(axis=1)
    px, py = idx % ww, idx // ww
    pts = np.stack([px, py], axis=1).astype(np.float64) + 0.5
    inner = (px > 0) & (px < ww - 1) & (py > 0) & (py < hh - 1)
    j = np.nonzero(inner)[0]
    dx = hm[j, py[j], px[j] + 1] - hm[j, py[j], px[j] - 1]
    dy = hm[j, py[j] + 1, px[j]] - hm[j, py[j] - 1, px[j]]
    pts[j] += 0.25 * np.sign(np.stack([dx, dy], axis=1))
    h = 200.0 * scale  # face-alignment's crop side in image pixels (SCALE_FACTOR * scale)
    return ((pts - ww / 2.0) * (h / ww) + np.asarray(center, float)).astype(np.float32)


def make_landmarker(name: str = "dlib", **kw) -> Landmarker:
    """Build a landmarker by name: ``"dlib"`` or ``"face-alignment"`` (kwargs go to its class)."""
    key = str(name).strip().lower().replace("_", "-")
    if key in ("dlib", "dlib-68"):
        return DlibLandmarker(**kw)
    if key in ("face-alignment", "fan", "facealignment"):
        return FaceAlignmentLandmarker(**kw)
    raise ValueError(f"unknown landmarker {name!r}; choose one of {', '.join(LANDMARKER_NAMES)}")
