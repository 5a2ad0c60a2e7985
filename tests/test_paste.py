"""Paste-back: feathered mask, identity round trip (exact outside the mask), RGBA overlay,
colour matching, several faces."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from engine.faces.align import align_face, ffhq_quad
from engine.faces.landmarks import DlibLandmarker
from engine.faces.paste import face_mask, match_colors, paste_faces

FIXTURES = Path(os.environ.get("TOON_OFX_FIXTURES",
                              Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"))


def read_rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(FIXTURES / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def read_frame(name: str, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(FIXTURES / name))
    try:
        for _ in range(index + 1):
            ok, fr = cap.read()
            assert ok, f"{name}: no frame {index}"
    finally:
        cap.release()
    return cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def dlib_lm():
    return DlibLandmarker(weak_score=None)


@pytest.fixture(scope="module")
def astro_case(dlib_lm):
    img = read_rgb("astronaut.png")
    (face,) = dlib_lm.detect(img)
    return img, ffhq_quad(face.landmarks)


@pytest.fixture(scope="module")
def video_case(dlib_lm):
    img = read_frame("single_face.mp4", 10)
    (face,) = dlib_lm.detect(img)
    return img, ffhq_quad(face.landmarks)


def composite(frame: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    a = rgba[..., 3:].astype(np.float64) / 255.0
    return frame * (1 - a) + rgba[..., :3] * a


def test_face_mask_shape_and_feather():
    m = face_mask(256, 0.08)
    assert m.dtype == np.float32 and m.shape == (256, 256)
    assert m.min() == 0.0 and m.max() == pytest.approx(1.0)
    # no box edges: zero all along the border
    assert m[0].max() == 0 and m[-1].max() == 0 and m[:, 0].max() == 0 and m[:, -1].max() == 0
    assert m[133, 128] == 1.0  # the face centre is fully covered
    # eyes and mouth of an FFHQ crop are fully inside
    for x, y in [(0.375, 0.47), (0.625, 0.47), (0.5, 0.72)]:
        assert m[int(y * 256), int(x * 256)] == 1.0
    # soft: the ramp spans about feather x size pixels along a row through the centre
    row = m[133]
    ramp = np.count_nonzero((row > 0) & (row < 1)) / 2
    assert 0.06 * 256 < ramp < 0.1 * 256
    assert np.all(np.diff(row[:128]) >= 0)
    hard = face_mask(256, 0.0)
    assert set(np.unique(hard)) == {0.0, 1.0}
    m.fill(0)  # returned masks are copies
    assert face_mask(256, 0.08).max() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        face_mask(256, 0.9)


@pytest.mark.parametrize("case,size", [("astro_case", 1024), ("astro_case", 512), ("video_case", 1024)])
def test_identity_round_trip(case, size, request):
    frame, quad = request.getfixturevalue(case)
    crop, t = align_face(frame, quad, size)
    out = paste_faces(frame, [(crop, t)])
    assert out.dtype == np.uint8 and out.shape == frame.shape
    rgba = paste_faces(frame, [(crop, t)], overlay=True)
    alpha = rgba[..., 3]
    # exactly the original wherever the warped mask is zero
    outside = alpha == 0
    assert outside.mean() > 0.5
    np.testing.assert_array_equal(out[outside], frame[outside])
    changed = np.any(out != frame, axis=2)
    assert not np.any(changed & outside)
    # within a grey level inside the face (measured: 0.39 / 0.57 astronaut, 0.05 video)
    inside = alpha == 255
    assert inside.sum() > 5000
    err = np.abs(out.astype(np.float64) - frame)
    assert err[inside].mean() < 1.0
    assert err[alpha > 0].mean() < 1.0


def test_overlay_composites_to_full_frame(astro_case):
    frame, quad = astro_case
    crop, t = align_face(frame, quad, 512)
    styled = np.ascontiguousarray(255 - crop)  # a "stylisation" very unlike the original
    full = paste_faces(frame, [(styled, t)])
    rgba = paste_faces(frame, [(styled, t)], overlay=True)
    assert rgba.shape == frame.shape[:2] + (4,) and rgba.dtype == np.uint8
    assert np.all(rgba[rgba[..., 3] == 0] == 0)  # transparent black elsewhere
    diff = np.abs(composite(frame, rgba) - full)
    assert diff.max() <= 1.5 and diff.mean() < 0.05
    # the face really changed, the rest did not
    inside = rgba[..., 3] == 255
    assert np.abs(full[inside].astype(float) - frame[inside]).mean() > 50
    np.testing.assert_array_equal(full[rgba[..., 3] == 0], frame[rgba[..., 3] == 0])


def test_color_match_restores_original_colours(astro_case):
    frame, quad = astro_case
    crop, t = align_face(frame, quad, 512)
    cast = np.clip(crop.astype(np.int16) + [45, 0, -40], 0, 255).astype(np.uint8)
    plain = paste_faces(frame, [(cast, t)])
    for mode in (True, "rgb"):
        matched = paste_faces(frame, [(cast, t)], color_match=mode)
        inside = paste_faces(frame, [(cast, t)], overlay=True)[..., 3] == 255
        d_plain = np.abs(plain[inside].mean(0) - frame[inside].mean(0)).max()
        d_match = np.abs(matched[inside].mean(0) - frame[inside].mean(0)).max()
        assert d_plain > 25 and d_match < 4, (mode, d_plain, d_match)
    # the helper on its own: weights select the region whose statistics are matched
    w = face_mask(512)
    fixed = match_colors(cast, crop, w)
    assert np.abs(fixed[w > 0.5].mean(0) - crop[w > 0.5].mean(0)).max() < 3
    with pytest.raises(ValueError):
        match_colors(cast, crop, w, space="hsv")


def test_several_faces_other_sizes_and_edges(dlib_lm):
    frame = read_rgb("multi_face.jpg")
    faces = dlib_lm.detect(frame)
    assert len(faces) >= 4
    pairs = [align_face(frame, ffhq_quad(f.landmarks), 512) for f in faces]
    out = paste_faces(frame, pairs)
    rgba = paste_faces(frame, pairs, overlay=True)
    alpha = rgba[..., 3]
    np.testing.assert_array_equal(out[alpha == 0], frame[alpha == 0])
    assert np.abs(out.astype(float) - frame)[alpha == 255].mean() < 1.0
    assert np.abs(composite(frame, rgba) - out).max() <= 1.5
    # every face got covered
    for f in faces:
        el = f.landmarks[36:42].mean(0).round().astype(int)
        assert alpha[el[1], el[0]] == 255
    # a 256 px crop (e.g. a smaller generator) on a 512 px alignment lands on the same quad
    crop512, t512 = pairs[0]
    crop256 = cv2.resize(crop512, (256, 256), interpolation=cv2.INTER_AREA)
    out2 = paste_faces(frame, [(crop256, t512)])
    inside = paste_faces(frame, [(crop512, t512)], overlay=True)[..., 3] == 255
    assert np.abs(out2.astype(float) - frame)[inside].mean() < 4.0
    # a face running off the frame edge, and no faces at all
    astro = read_rgb("astronaut.png")
    (fa,) = dlib_lm.detect(astro)
    cut = np.ascontiguousarray(astro[60:, 170:])
    crop, t = align_face(cut, ffhq_quad(fa.landmarks - [170, 60]), 256)
    edge = paste_faces(cut, [(crop, t)])
    assert edge.shape == cut.shape
    np.testing.assert_array_equal(paste_faces(frame, []), frame)
    assert not paste_faces(frame, [], overlay=True).any()
    with pytest.raises(ValueError):
        paste_faces(frame.astype(np.float32), pairs)
    with pytest.raises(ValueError):
        paste_faces(frame, [(crop512[:, :300], t512)])
    with pytest.raises(TypeError):
        paste_faces(frame, [(crop512, np.eye(2, 3))])
