"""FaceTracker: face identities across frames and causal one-euro smoothing of the alignment quad."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.faces.align import ffhq_quad, quad_params
from engine.faces.landmarks import Face
from engine.faces.tracking import FaceTracker, OneEuroFilter, TrackedFace, box_iou

FIXTURES = Path(os.environ.get("TOON_OFX_FIXTURES",
                              Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"))

# A real 68-point face shape (dlib on astronaut.png), centred on the origin: eye distance
# ~43 px, so the FFHQ half-side |x| is ~90 px.
_ASTRO = np.array([
    [177, 104], [178, 116], [180, 128], [182, 140], [187, 150], [194, 159], [203, 166],
    [213, 170], [225, 172], [237, 171], [248, 167], [258, 161], [265, 152], [269, 141],
    [271, 129], [273, 117], [274, 105], [187, 92], [193, 88], [201, 87], [209, 88],
    [216, 91], [232, 92], [240, 89], [248, 89], [256, 90], [262, 94], [224, 100],
    [224, 107], [224, 114], [224, 121], [214, 128], [219, 129], [225, 130], [230, 129],
    [235, 128], [195, 102], [200, 99], [207, 99], [212, 103], [207, 104], [200, 104],
    [237, 104], [242, 100], [249, 100], [254, 103], [249, 106], [243, 106], [201, 139],
    [210, 136], [218, 135], [225, 136], [232, 135], [240, 137], [246, 141], [240, 150],
    [232, 153], [225, 154], [218, 153], [209, 150], [205, 140], [218, 141], [225, 141],
    [232, 141], [243, 141], [232, 143], [225, 144], [218, 143]], dtype=np.float64)
SHAPE = _ASTRO - _ASTRO.mean(0)


def make_face(center, angle=0.0, scale=1.0, noise=0.0, rng=None) -> Face:
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    lm = SHAPE @ rot.T * scale + center
    if noise:
        lm = lm + rng.normal(0, noise, lm.shape)
    box = np.r_[lm.min(0) - 5, lm.max(0) + 5]
    return Face(box, 1.0, lm)


def test_one_euro_filter_basics():
    f = OneEuroFilter(min_cutoff=0.02, beta=0.0)
    assert np.allclose(f([5.0, 5.0]), [5, 5])
    for _ in range(5):
        out = f([5.0, 5.0])
    np.testing.assert_allclose(out, [5, 5])
    # a step is followed gradually (low-pass), monotonically, without overshoot
    vals = [f([15.0, 5.0])[0] for _ in range(60)]
    assert 5 < vals[0] < 7 and np.all(np.diff(vals) > 0) and vals[-1] < 15
    f.reset()
    assert np.allclose(f([1.0, 2.0]), [1, 2])
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)


def synthetic_track(n=140, noise=1.0, seed=0):
    """Still for 40 frames, then 4 px/frame to the right for 40, then a vertical
    sinusoid while rotating slowly; landmarks jittered by `noise` px."""
    rng = np.random.default_rng(seed)
    true, noisy = [], []
    for t in range(n):
        c = np.array([300.0, 220.0])
        c[0] += 4.0 * np.clip(t - 40, 0, 40)
        ang = 0.0
        if t >= 80:
            c[1] += 30 * np.sin(2 * np.pi * (t - 80) / 40)
            ang = 0.12 * np.sin(2 * np.pi * (t - 80) / 60)
        true.append(make_face(c, ang))
        noisy.append(make_face(c, ang, noise=noise, rng=rng))
    return true, noisy


def run(tracker, frames):
    out = []
    for faces in frames:
        out.append(tracker.update(faces))
    return out


def test_smoothing_off_gives_raw_quads():
    _, noisy = synthetic_track(n=20)
    res = run(FaceTracker(smoothing=0.0), [[f] for f in noisy])
    for f, r in zip(noisy, res):
        assert len(r) == 1 and isinstance(r[0], TrackedFace)
        np.testing.assert_array_equal(r[0].quad, ffhq_quad(f.landmarks))
        assert r[0].face is f and r[0].track_id == 0


def test_smoothing_cuts_jitter_and_follows_motion():
    true, noisy = synthetic_track()
    res = run(FaceTracker(smoothing=0.5), [[f] for f in noisy])
    sm = np.array([quad_params(r[0].quad) for r in res])  # (T, 2, 2): centre, half-side vector
    raw = np.array([quad_params(ffhq_quad(f.landmarks)) for f in noisy])
    gt = np.array([quad_params(ffhq_quad(f.landmarks)) for f in true])

    # jitter while still: frame-to-frame movement of the quad's corners
    still = slice(10, 40)

    def wobble(q):
        corners = np.array([q[:, 0] - q[:, 1], q[:, 0] + q[:, 1]])  # two corners suffice
        return np.sqrt((np.diff(corners[:, still], axis=1) ** 2).sum(-1).mean())

    assert wobble(sm) < 0.35 * wobble(raw)  # measured 0.27
    # follows real motion with small lag: 4 px/frame -> error well under one frame of motion
    moving = slice(50, 80)
    err_c = np.linalg.norm(sm[moving, 0] - gt[moving, 0], axis=1).mean()
    assert err_c < 1.5
    # sinusoid + rotation: stays close to the truth
    wavy = slice(90, 140)
    assert np.linalg.norm(sm[wavy, 0] - gt[wavy, 0], axis=1).mean() < 3.0
    assert np.linalg.norm(sm[wavy, 1] - gt[wavy, 1], axis=1).mean() < 2.0
    # stronger smoothing: less jitter still
    res_hi = run(FaceTracker(smoothing=0.9), [[f] for f in noisy])
    sm_hi = np.array([quad_params(r[0].quad) for r in res_hi])
    assert wobble(sm_hi) < wobble(sm)


def test_two_faces_crossing_keep_their_ids():
    frames, faces_a, faces_b = [], [], []
    for t in range(30):
        # fast and close: when they pass, each face's new position is nearer to where the
        # *other* face was -- only the constant-velocity prediction keeps them apart
        a = make_face([200.0 + 30 * t, 200.0])  # left -> right
        b = make_face([1085.0 - 30 * t, 210.0])  # right -> left, crossing at t~15
        faces_a.append(a)
        faces_b.append(b)
        frames.append([a, b] if t % 2 else [b, a])  # detector order must not matter
    res = run(FaceTracker(smoothing=0.5), frames)
    a_id = next(r.track_id for r in res[0] if r.face is faces_a[0])
    b_id = next(r.track_id for r in res[0] if r.face is faces_b[0])
    assert {a_id, b_id} == {0, 1}
    for t, r in enumerate(res):
        by_id = {x.track_id: x for x in r}
        assert set(by_id) == {0, 1}
        assert by_id[a_id].face is faces_a[t] and by_id[b_id].face is faces_b[t]
        # each smoothed quad stays on its own face
        ca = quad_params(ffhq_quad(faces_a[t].landmarks))[0]
        assert np.linalg.norm(quad_params(by_id[a_id].quad)[0] - ca) < 15


def test_face_leaving_and_reentering():
    tracker = FaceTracker(smoothing=0.5, max_missing=5)
    face = make_face([300.0, 200.0])
    ids = [tracker.update([face])[0].track_id for _ in range(5)]
    assert ids == [0] * 5
    for _ in range(3):  # short drop-out (detector miss): same identity afterwards
        assert tracker.update([]) == []
    assert tracker.active_tracks == [0]
    assert tracker.update([face])[0].track_id == 0
    for _ in range(6):  # gone longer than max_missing: dropped
        tracker.update([])
    assert tracker.active_tracks == []
    back = tracker.update([make_face([310.0, 205.0])])
    assert back[0].track_id == 1
    # a second face appearing far away gets its own id, the first keeps its own
    two = tracker.update([make_face([310.0, 205.0]), make_face([700.0, 300.0])])
    assert sorted(x.track_id for x in two) == [1, 2]
    tracker.reset()
    assert tracker.update([face])[0].track_id == 0


def test_hold_bridges_dropouts_and_jumps_start_new_tracks():
    tracker = FaceTracker(smoothing=0.5, max_missing=5, hold=2)
    face = make_face([300.0, 200.0])
    first = tracker.update([face])[0]
    held = [tracker.update([]) for _ in range(3)]
    assert [len(h) for h in held] == [1, 1, 0]
    assert held[0][0].missed == 1 and held[1][0].missed == 2
    np.testing.assert_allclose(held[0][0].quad, first.quad)
    # a face appearing far away (a cut) is not glued onto the old track
    far = tracker.update([make_face([900.0, 600.0])])
    assert far[0].track_id == 1
    with pytest.raises(ValueError):
        FaceTracker(smoothing=1.5)


def read_frames(name: str, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(FIXTURES / name))
    frames = []
    try:
        while len(frames) < count:
            ok, fr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(fr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    return frames


def test_real_video_one_track_and_steadier_crop():
    from engine.faces.landmarks import DlibLandmarker

    lm = DlibLandmarker(weak_score=None)
    frames = read_frames("single_face.mp4", 40)
    assert len(frames) == 40
    dets = [lm.detect(f) for f in frames]
    assert all(len(d) == 1 for d in dets)
    raw_tr, sm_tr = FaceTracker(smoothing=0.0), FaceTracker(smoothing=0.5)
    raw, sm = [], []
    for d in dets:
        r, s = raw_tr.update(d), sm_tr.update(d)
        assert [x.track_id for x in s] == [0]
        raw.append(quad_params(r[0].quad))
        sm.append(quad_params(s[0].quad))
    raw, sm = np.array(raw), np.array(sm)
    # jitter = second differences of the half-side vector (scale/rotation wobble) and centre
    j_raw = np.sqrt((np.diff(raw, 2, axis=0) ** 2).sum(-1).mean(0))
    j_sm = np.sqrt((np.diff(sm, 2, axis=0) ** 2).sum(-1).mean(0))
    assert j_sm[1] < 0.5 * j_raw[1]
    assert j_sm[0] < 0.8 * j_raw[0]
    # and stays on the face: smoothed centre within a few px of the raw one
    assert np.abs(sm[:, 0] - raw[:, 0]).max() < 0.05 * np.hypot(*raw[0, 1])
