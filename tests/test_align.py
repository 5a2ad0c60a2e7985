"""FFHQ alignment: the quad recipe, the transform, and crops compared with a Pillow
re-implementation of the recipe's resampling."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from engine.faces.align import (
    FFHQ_EYE_LEFT,
    FFHQ_EYE_RIGHT,
    AlignTransform,
    align_face,
    ffhq_quad,
    quad_from_params,
    quad_params,
    warp_affine,
)
from engine.faces.landmarks import DlibLandmarker

FIXTURES = Path(os.environ.get("TOON_OFX_FIXTURES",
                              Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"))


def read_rgb(name: str) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(FIXTURES / name), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def dlib_lm():
    return DlibLandmarker()


@pytest.fixture(scope="module")
def astronaut():
    return read_rgb("astronaut.png")


@pytest.fixture(scope="module")
def astro_landmarks(dlib_lm, astronaut):
    faces = dlib_lm.detect(astronaut)
    assert len(faces) == 1
    return faces[0].landmarks


def synthetic_landmarks(eye_l, eye_r, mouth_l, mouth_r) -> np.ndarray:
    lm = np.zeros((68, 2))
    lm[36:42] = eye_l
    lm[42:48] = eye_r
    lm[48:60] = (np.asarray(mouth_l) + mouth_r) / 2
    lm[48] = mouth_l
    lm[54] = mouth_r
    return lm


def recipe_reference(img: np.ndarray, quad: np.ndarray, output_size: int) -> np.ndarray:
    """The ffhq-dataset recipe's shrink / crop / pad / QUAD transform / resize, with Pillow's
    LANCZOS for the removed ANTIALIAS and plain reflection padding (the recipe also blurs
    the padded area and fades it to the median colour)."""
    transform_size = 4 * output_size
    quad = quad.astype(np.float64).copy()
    pil = Image.fromarray(img)
    qsize = np.hypot(*(quad[3] - quad[0]))
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(pil.size[0]) / shrink)), int(np.rint(float(pil.size[1]) / shrink)))
        pil = pil.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
            int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, pil.size[0]), min(crop[3] + border, pil.size[1]))
    if crop[2] - crop[0] < pil.size[0] or crop[3] - crop[1] < pil.size[1]:
        pil = pil.crop(crop)
        quad -= crop[0:2]
    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
           int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
           max(pad[2] - pil.size[0] + border, 0), max(pad[3] - pil.size[1] + border, 0))
    if max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.asarray(pil), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        pil = Image.fromarray(arr, "RGB")
        quad += pad[:2]
    pil = pil.transform((transform_size, transform_size), Image.Transform.QUAD, (quad + 0.5).flatten(),
                        Image.Resampling.BILINEAR)
    pil = pil.resize((output_size, output_size), Image.Resampling.LANCZOS)
    return np.asarray(pil)


def test_ffhq_quad_hand_computed():
    lm = synthetic_landmarks([100, 100], [140, 100], [105, 150], [135, 150])
    # eye_to_eye (40, 0), eye_to_mouth (0, 50): x = (40, 0) + (50, 0) -> |x| = max(80, 90)
    q = ffhq_quad(lm)
    assert q.dtype == np.float64 and q.shape == (4, 2)
    np.testing.assert_allclose(q, [[30, 15], [30, 195], [210, 195], [210, 15]], atol=1e-9)
    # eye distance dominating: |x| = 2 * eye distance
    lm = synthetic_landmarks([100, 100], [160, 100], [110, 130], [150, 130])
    c, x = quad_params(ffhq_quad(lm))
    np.testing.assert_allclose(np.hypot(*x), 120.0)
    np.testing.assert_allclose(c, [130, 103])


def test_ffhq_quad_rotation_equivariant(astro_landmarks):
    lm = astro_landmarks.astype(np.float64)
    q = ffhq_quad(lm)
    ang = np.deg2rad(25.0)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    piv = np.array([256.0, 256.0])
    q_rot = ffhq_quad((lm - piv) @ rot.T + piv)
    np.testing.assert_allclose(q_rot, (q - piv) @ rot.T + piv, atol=1e-6)
    with pytest.raises(ValueError):
        ffhq_quad(np.zeros((5, 2)))


def test_quad_params_roundtrip(astro_landmarks):
    q = ffhq_quad(astro_landmarks)
    c, x = quad_params(q)
    np.testing.assert_allclose(quad_from_params(c, x), q, atol=1e-9)


def test_align_transform_geometry(astro_landmarks):
    q = ffhq_quad(astro_landmarks)
    size = 256
    t = AlignTransform.from_quad(q, size)
    assert t.matrix.shape == (2, 3) and t.size == size
    s = size - 0.5
    np.testing.assert_allclose(t.apply(q), [[-0.5, -0.5], [-0.5, s], [s, s], [s, -0.5]], atol=1e-7)
    np.testing.assert_allclose(t.quad, q, atol=1e-7)
    pts = np.random.default_rng(0).uniform(0, 512, (10, 2))
    np.testing.assert_allclose(t.apply_inverse(t.apply(pts)), pts, atol=1e-7)
    inv = t.inverse()
    assert inv.shape == (2, 3)
    np.testing.assert_allclose(pts @ t.matrix[:, :2].T + t.matrix[:, 2], t.apply(pts))
    np.testing.assert_allclose(t.apply(pts) @ inv[:, :2].T + inv[:, 2], pts, atol=1e-7)
    np.testing.assert_allclose(t.scale, size / np.hypot(*(q[3] - q[0])), rtol=1e-9)
    t2 = t.resized(1024)
    np.testing.assert_allclose(t2.quad, q, atol=1e-7)
    np.testing.assert_allclose(t2.scale, 4 * t.scale, rtol=1e-9)


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_crop_matches_recipe_reference(astronaut, astro_landmarks, size):
    q = ffhq_quad(astro_landmarks)
    ref = recipe_reference(astronaut, q, size).astype(np.float64)
    crop, t = align_face(astronaut, q, size, interpolation="linear")
    assert crop.dtype == np.uint8 and crop.shape == (size, size, 3)
    assert np.abs(crop - ref).mean() < 1.0  # measured ~0.5-0.6
    sharp, t_sharp = align_face(astronaut, q, size)  # default: Lanczos
    np.testing.assert_allclose(t_sharp.matrix, t.matrix)
    assert np.abs(sharp - ref).mean() < 2.5  # measured 0.75-1.7: same geometry, crisper


def test_crop_matches_recipe_with_padding(astronaut, astro_landmarks):
    # cut the photo so the quad leaves the image on the top and left: reflected padding
    img = np.ascontiguousarray(astronaut[60:, 170:])
    lm = astro_landmarks - [170, 60]
    q = ffhq_quad(lm)
    assert q[:, 0].min() < 0 and q[:, 1].min() < 0
    ref = recipe_reference(img, q, 256).astype(np.float64)
    crop, _ = align_face(img, q, 256, interpolation="linear")
    assert np.abs(crop - ref).mean() < 1.5


def test_aligned_crop_upright_and_centred(dlib_lm, astronaut, astro_landmarks):
    size = 256
    crop, t = align_face(astronaut, ffhq_quad(astro_landmarks), size)
    eyes = t.apply(np.stack([astro_landmarks[36:42].mean(0), astro_landmarks[42:48].mean(0)])) / size
    np.testing.assert_allclose(eyes[0], FFHQ_EYE_LEFT, atol=0.015)
    np.testing.assert_allclose(eyes[1], FFHQ_EYE_RIGHT, atol=0.015)
    # landmarks found again on the crop itself agree
    faces = dlib_lm.detect(crop)
    assert len(faces) == 1
    el, er = faces[0].landmarks[36:42].mean(0) / size, faces[0].landmarks[42:48].mean(0) / size
    np.testing.assert_allclose(el, FFHQ_EYE_LEFT, atol=0.03)
    np.testing.assert_allclose(er, FFHQ_EYE_RIGHT, atol=0.03)
    # a tilted photo gives an upright crop
    rot = cv2.getRotationMatrix2D((256, 256), 20, 1.0)
    tilted = cv2.warpAffine(astronaut, rot, (512, 512), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    (tf,) = dlib_lm.detect(tilted)
    e = tf.landmarks[42:48].mean(0) - tf.landmarks[36:42].mean(0)
    assert np.degrees(np.arctan2(e[1], e[0])) < -14  # the eye line is tilted in the photo
    crop2, _ = align_face(tilted, ffhq_quad(tf.landmarks), size)
    (f2,) = dlib_lm.detect(crop2)
    e = f2.landmarks[42:48].mean(0) - f2.landmarks[36:42].mean(0)
    assert abs(np.degrees(np.arctan2(e[1], e[0]))) < 2.0  # and level in the crop (measured 0.1)


def test_warp_affine_downscale_is_pillow_lanczos(astronaut):
    for k in (2, 3):
        n = 512 // k * k
        src = np.ascontiguousarray(astronaut[:n, :n])
        ref = Image.fromarray(src).resize((n // k, n // k), Image.Resampling.LANCZOS)
        ref = np.asarray(ref).astype(float)
        m = np.array([[k, 0, (k - 1) / 2], [0, k, (k - 1) / 2]], float)
        out = warp_affine(src, m, (n // k, n // k))
        assert np.abs(out - ref)[8:-8, 8:-8].mean() < 0.3


def test_warp_affine_channels_borders_and_far_quads(astronaut):
    mask = np.ones((64, 64), np.float32)
    out = warp_affine(mask, np.array([[1, 0, -10], [0, 1, -10]], float), (32, 32), border="constant")
    assert out.shape == (32, 32) and out.dtype == np.float32
    assert out[:8, :8].max() == 0 and out[-5:, -5:].min() == pytest.approx(1.0)
    # a quad far outside the image still gives a (reflected) crop
    q = np.array([[-900.0, -900], [-900, -700], [-700, -700], [-700, -900]])
    crop, _ = align_face(astronaut, q, 64)
    assert crop.shape == (64, 64, 3) and crop.std() > 1
    with pytest.raises(ValueError):
        align_face(astronaut.astype(np.float32), q, 64)
    with pytest.raises(ValueError):
        align_face(astronaut, q, 0)
