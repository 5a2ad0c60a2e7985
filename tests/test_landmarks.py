"""Face detection + 68 landmarks on real photos and video frames (dlib, offline), and the
face-alignment backend's offline behaviour (missing weights, random-weight FAN)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.faces.landmarks import (
    DlibLandmarker,
    Face,
    FaceAlignmentLandmarker,
    Landmarker,
    ModelFilesMissing,
    make_landmarker,
)

FIXTURES = Path(os.environ.get("TOON_OFX_FIXTURES",
                              Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"))


def read_rgb(name: str) -> np.ndarray:
    img = cv2.imread(str(FIXTURES / name), cv2.IMREAD_COLOR)
    assert img is not None, name
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_frames(name: str, indices) -> dict[int, np.ndarray]:
    """Decode the given frame indices (sequential read: exact frame numbers)."""
    want = set(indices)
    cap = cv2.VideoCapture(str(FIXTURES / name))
    out, n = {}, 0
    try:
        while want - out.keys():
            ok, fr = cap.read()
            if not ok:
                break
            if n in want:
                out[n] = cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)
            n += 1
    finally:
        cap.release()
    assert set(out) == want, f"{name}: could not decode frames {sorted(want - set(out))}"
    return out


def eye_mouth(face: Face):
    lm = face.landmarks.astype(np.float64)
    return lm[36:42].mean(0), lm[42:48].mean(0), lm[48], lm[54]


@pytest.fixture(scope="module")
def dlib_lm() -> DlibLandmarker:
    return DlibLandmarker()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return read_rgb("astronaut.png")


def test_face_dataclass_and_protocol(dlib_lm):
    f = Face([1, 2, 11, 22], 0.5, np.zeros((68, 2)))
    assert f.box.dtype == np.float64 and f.box.shape == (4,)
    assert f.landmarks.dtype == np.float32 and f.landmarks.shape == (68, 2)
    assert f.width == 10 and f.height == 20 and f.area == 200
    np.testing.assert_allclose(f.center, [6, 12])
    assert isinstance(dlib_lm, Landmarker)


def test_astronaut_one_face_points_on_eyes_and_mouth(dlib_lm, astronaut):
    faces = dlib_lm.detect(astronaut)
    assert len(faces) == 1  # HOG also fires at 0.12 on the suit's patch: rejected
    f = faces[0]
    assert f.landmarks.dtype == np.float32 and f.landmarks.shape == (68, 2)
    assert f.score > 0.5
    el, er, ml, mr = eye_mouth(f)
    # hand-checked positions on the photo (pixel centres): irises and mouth corners
    np.testing.assert_allclose(el, [203.5, 101.5], atol=4)
    np.testing.assert_allclose(er, [246.5, 104.0], atol=4)
    np.testing.assert_allclose(ml, [201, 139], atol=5)
    np.testing.assert_allclose(mr, [246, 141], atol=5)
    # eyes are darker than the cheeks below them
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY).astype(float)

    def patch(p, r=2):
        x, y = int(round(p[0])), int(round(p[1]))
        return grey[y - r:y + r + 1, x - r:x + r + 1].mean()

    for eye in (el, er):
        assert patch(eye) < patch(eye + [0, 22]) - 30
    # all points inside a slightly enlarged box
    x0, y0, x1, y1 = f.box
    pad = 0.25 * f.width
    assert np.all((f.landmarks[:, 0] > x0 - pad) & (f.landmarks[:, 0] < x1 + pad))
    assert np.all((f.landmarks[:, 1] > y0 - pad) & (f.landmarks[:, 1] < y1 + pad))


def test_multi_face_photo(dlib_lm):
    img = read_rgb("multi_face.jpg")
    faces = dlib_lm.detect(img)
    # five people; the one in sunglasses scores low on HOG and is confirmed by the CNN
    assert len(faces) == 5
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)
    for f in faces:
        el, er, ml, mr = eye_mouth(f)
        x0, y0, x1, y1 = f.box
        for p in (el, er, ml, mr):
            assert x0 - 5 <= p[0] <= x1 + 5 and y0 - 5 <= p[1] <= y1 + 15
        assert er[0] - el[0] > 0.25 * f.width  # left/right order, plausible spacing
        assert ml[1] > el[1] + 0.2 * f.height and mr[1] > er[1] + 0.2 * f.height
    centres = np.array([f.center for f in faces])
    assert len({(round(c[0] / 50), round(c[1] / 50)) for c in centres}) == 5  # distinct faces
    # HOG alone (no CNN confirmation) misses the sunglasses face
    assert len(DlibLandmarker(weak_score=None).detect(img)) == 4


def test_video_frames_and_no_face_footage(dlib_lm):
    frames = read_frames("single_face.mp4", [0, 36, 71])
    dists = []
    for img in frames.values():
        faces = dlib_lm.detect(img)
        assert len(faces) == 1
        el, er, ml, mr = eye_mouth(faces[0])
        assert el[0] < er[0] and ml[1] > el[1] and mr[1] > er[1]
        dists.append(np.hypot(*(er - el)))
    assert max(dists) / min(dists) < 1.2
    # weak HOG false positives on footage without faces are rejected
    (img,) = read_frames("no_face.mp4", [36]).values()
    assert dlib_lm.detect(img) == []


def test_given_boxes_and_image_checks(dlib_lm, astronaut):
    auto = dlib_lm.detect(astronaut)[0]
    given = dlib_lm.detect(astronaut, boxes=[auto.box])
    assert len(given) == 1 and given[0].score == 1.0
    np.testing.assert_allclose(given[0].landmarks, auto.landmarks, atol=1.0)
    grey = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    assert len(dlib_lm.detect(grey, boxes=np.zeros((0, 4)))) == 0
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    assert len(dlib_lm.detect(rgba, boxes=[auto.box])) == 1
    with pytest.raises(ValueError):
        dlib_lm.detect(astronaut.astype(np.float32))
    with pytest.raises(ValueError):
        dlib_lm.detect(np.zeros((10, 10, 2), np.uint8))


def test_make_landmarker_names(tmp_path):
    assert isinstance(make_landmarker("dlib", weak_score=None), DlibLandmarker)
    with pytest.raises(ValueError, match="unknown landmarker"):
        make_landmarker("nope")
    with pytest.raises(ValueError):
        DlibLandmarker(detector="mtcnn")


def test_face_alignment_missing_weights_is_clear(tmp_path):
    with pytest.raises(ModelFilesMissing) as info:
        make_landmarker("face-alignment", weights_dir=tmp_path)
    err = info.value
    assert isinstance(err, FileNotFoundError)
    msg = str(err)
    assert FaceAlignmentLandmarker.FAN_FILE in msg and FaceAlignmentLandmarker.S3FD_FILE in msg
    assert "toon-ofx models pull face-alignment" in msg and str(tmp_path) in msg
    assert set(err.files) == {FaceAlignmentLandmarker.FAN_FILE, FaceAlignmentLandmarker.S3FD_FILE}
    # with dlib boxes only FAN's file is needed
    with pytest.raises(ModelFilesMissing) as info:
        FaceAlignmentLandmarker(weights_dir=tmp_path, detector="dlib")
    assert info.value.files == [FaceAlignmentLandmarker.FAN_FILE]
    with pytest.raises(ModelFilesMissing, match="nope.pth"):
        FaceAlignmentLandmarker(fan_path=tmp_path / "nope.pth", detector="none")


@pytest.fixture(scope="module")
def random_fan_dir(tmp_path_factory):
    """A weights folder in face-alignment's TORCH_HOME layout, holding random-weight nets."""
    import torch
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    root = tmp_path_factory.mktemp("fa_weights")
    ckpt = root / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), ckpt / FaceAlignmentLandmarker.FAN_FILE)
    torch.save(s3fd().state_dict(), ckpt / FaceAlignmentLandmarker.S3FD_FILE)
    return root


def test_face_alignment_code_path_with_random_weights(random_fan_dir, astronaut, dlib_lm):
    box = dlib_lm.detect(astronaut)[0].box
    fan_file = random_fan_dir / "hub" / "checkpoints" / FaceAlignmentLandmarker.FAN_FILE
    fa = FaceAlignmentLandmarker(fan_path=fan_file, detector="none", flip_input=True)
    faces = fa.detect(astronaut, boxes=[box])
    assert len(faces) == 1
    lm = faces[0].landmarks
    assert lm.shape == (68, 2) and lm.dtype == np.float32 and np.isfinite(lm).all()
    # heatmap peaks map back into FAN's crop around the box (200 * scale px wide)
    side = 200 * (box[2] - box[0] + box[3] - box[1]) / 195
    centre = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2 - 0.12 * (box[3] - box[1])])
    assert np.all(np.abs(lm - centre) <= side / 2 + 2)
    np.testing.assert_allclose(faces[0].box, box)
    with pytest.raises(ValueError, match="pass boxes"):
        fa.detect(astronaut)


def test_face_alignment_with_dlib_boxes_and_s3fd_weights(random_fan_dir, astronaut):
    fa = FaceAlignmentLandmarker(weights_dir=random_fan_dir / "hub" / "checkpoints", detector="dlib",
                                 flip_input=False)
    faces = fa.detect(astronaut)
    assert len(faces) == 1 and faces[0].landmarks.shape == (68, 2)
    assert 170 < faces[0].box[0] < 185  # dlib's box
    # S3FD weights load from path_to_detector (never downloaded); given boxes skip it
    fa3 = FaceAlignmentLandmarker(weights_dir=random_fan_dir, detector="s3fd", flip_input=False)
    assert len(fa3.detect(astronaut, boxes=[[175, 76, 265, 166, 0.9]])) == 1
    boxes = fa3.detect_boxes(np.zeros((32, 32, 3), np.uint8))
    assert boxes.ndim == 2 and boxes.shape[1] == 5
