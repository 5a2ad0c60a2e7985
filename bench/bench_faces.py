"""Time the face stages per frame: detect + landmarks, tracking, align, paste-back.

    python bench/bench_faces.py [video] [--frames N] [--size 1024] [--upsample 1]

Decodes frames with OpenCV (bench only; the engine never reads media). The "paste"
stage pastes the aligned crop itself back (identity stylisation) and reports the
round-trip error inside the face, a check that alignment and paste-back agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.faces.align import align_face  # noqa: E402
from engine.faces.landmarks import DlibLandmarker  # noqa: E402
from engine.faces.paste import paste_faces  # noqa: E402
from engine.faces.tracking import FaceTracker  # noqa: E402

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "single_face.mp4"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", nargs="?", default=str(DEFAULT_VIDEO))
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--upsample", type=int, default=1)
    ap.add_argument("--smoothing", type=float, default=0.5)
    args = ap.parse_args(argv)

    lm = DlibLandmarker(upsample=args.upsample)
    tracker = FaceTracker(smoothing=args.smoothing)
    cap = cv2.VideoCapture(args.video)
    times = {"detect": [], "track": [], "align": [], "paste": [], "overlay": []}
    errs, n_faces, n = [], 0, 0
    while n < args.frames:
        ok, bgr = cap.read()
        if not ok:
            break
        frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        n += 1
        t0 = time.perf_counter()
        faces = lm.detect(frame)
        t1 = time.perf_counter()
        tracked = tracker.update(faces)
        t2 = time.perf_counter()
        pairs = [align_face(frame, tf.quad, args.size) for tf in tracked]
        t3 = time.perf_counter()
        out = paste_faces(frame, pairs)
        t4 = time.perf_counter()
        rgba = paste_faces(frame, pairs, overlay=True)
        t5 = time.perf_counter()
        for k, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            times[k].append(dt)
        n_faces += len(tracked)
        inside = rgba[..., 3] == 255
        if inside.any():
            errs.append(float(np.abs(out.astype(float) - frame)[inside].mean()))
    cap.release()
    if not n:
        print(f"no frames decoded from {args.video}")
        return 1
    print(f"{args.video}: {n} frames {frame.shape[1]}x{frame.shape[0]}, {n_faces} faces, crop {args.size}")
    for k, v in times.items():
        print(f"  {k:8s} {1000 * np.mean(v):8.1f} ms/frame (max {1000 * np.max(v):.1f})")
    if errs:
        print(f"  identity round trip: mean abs error inside faces {np.mean(errs):.3f} grey levels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
