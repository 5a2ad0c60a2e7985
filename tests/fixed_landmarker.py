"""A landmarker that needs no dlib: the astronaut photo's face as dlib found it (tests/astronaut_face.json),
moved the way a frame was made from the photo. For machines without dlib (the GPU check) and benches."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from engine.faces.landmarks import Face

FACE = json.loads((Path(__file__).with_name("astronaut_face.json")).read_text())


class FixedLandmarker:
    """``detect`` returns the astronaut's face scaled by `scale` then shifted by `offset` (x, y) pixels;
    `offsets` (one per call, cycling) for a moving camera."""

    name = "fixed"

    def __init__(self, scale: float = 1.0, offset=(0.0, 0.0), offsets=None):
        self.scale, self.offsets, self.calls = float(scale), list(offsets or [offset]), 0

    def detect(self, image) -> list:
        dx, dy = self.offsets[self.calls % len(self.offsets)]
        self.calls += 1
        shift = np.array([dx, dy], np.float64)
        box = np.array(FACE["box"]) * self.scale + np.tile(shift, 2)
        landmarks = (np.array(FACE["landmarks"], np.float64) * self.scale + shift).astype(np.float32)
        return [Face(box, float(FACE["score"]), landmarks)]
