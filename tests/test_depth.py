"""The engine at 16 bits: uint16 frames keep their precision through alignment, paste-back and the pipeline."""
from __future__ import annotations

import numpy as np
import pytest

from engine.faces.align import align_face, ffhq_quad
from engine.faces.landmarks import DlibLandmarker
from engine.faces.paste import paste_faces
from engine.pixels import to_uint8


@pytest.fixture(scope="module")
def face_quad(astronaut):
    faces = DlibLandmarker().detect(astronaut)
    assert faces
    return ffhq_quad(faces[0].landmarks)


def test_align_keeps_depth_and_matches_8_bit(astronaut, face_quad):
    deep = astronaut.astype(np.uint16) * 257
    crop16, t16 = align_face(deep, face_quad, 64)
    crop8, t8 = align_face(astronaut, face_quad, 64)
    assert crop16.dtype == np.uint16 and crop8.dtype == np.uint8
    assert np.allclose(t16.matrix, t8.matrix)
    assert np.abs(crop16 / 257.0 - crop8).max() <= 1.0   # same warp, finer levels


def test_lanczos_overshoot_is_clipped_not_wrapped():
    """A hard edge shrunk with Lanczos rings below 0 and above white: uint16 must clip, not wrap."""
    edge = np.zeros((256, 256, 3), np.uint16)
    edge[:, 128:] = 65535
    quad = np.array([[0, 0], [0, 256], [256, 256], [256, 0]], np.float64) - 0.5
    crop, _ = align_face(edge, quad, 32)
    row = crop[16, :, 0].astype(np.int64)
    assert row[:12].max() < 2000 and row[-12:].min() > 63000   # dark stays dark, white stays white
    assert np.all(np.diff(row[12:20]) >= -2000)                 # no wrap-around spike at the edge


def test_paste_back_at_16_bits_leaves_the_rest_bit_identical(astronaut, face_quad):
    deep = astronaut.astype(np.uint16) * 257 + 100   # not a multiple of 257: real 16-bit values
    crop, t = align_face(deep, face_quad, 64)
    styled = (65535 - crop).astype(np.uint16)       # a very different face
    out = paste_faces(deep, [(styled, t)], feather=0.08, color_match=True)
    assert out.dtype == np.uint16
    changed = (out != deep).any(axis=2)
    assert 0.01 < changed.mean() < 0.5
    assert np.array_equal(out[~changed], deep[~changed])
    overlay = paste_faces(deep, [(styled, t)], feather=0.08, overlay=True)
    assert overlay.dtype == np.uint16 and overlay[..., 3].max() == 65535 and overlay[0, 0, 3] == 0
    mixed = paste_faces(deep, [(to_uint8(styled), t)], feather=0.08, color_match=True)   # 8-bit crop: rescaled
    assert mixed.dtype == np.uint16 and np.abs(mixed.astype(int) - out.astype(int)).max() <= 3 * 257


def test_pipeline_takes_uint16_frames(astronaut, tiny_params):
    from toon_ofx.core.render import Renderer

    renderer = Renderer(tiny_params)
    frame8 = np.ascontiguousarray(astronaut[100:400, 100:420])
    frame16 = frame8.astype(np.uint16) * 257
    out16 = renderer.pipeline(dict(tiny_params, steps=3)).process(frame16, 0)
    out8 = renderer.pipeline(dict(tiny_params, steps=3)).process(frame8, 0)
    assert out16.faces == out8.faces == 1
    assert out16.image.dtype == np.uint16 and out8.image.dtype == np.uint8
    changed = (out16.image != frame16).any(axis=2)
    assert 0.005 < changed.mean() < 0.6 and np.array_equal(out16.image[~changed], frame16[~changed])
    # the same face, stylised at finer precision
    assert np.abs(out16.image / 257.0 - out8.image)[changed].mean() < 6
    with pytest.raises(ValueError, match="uint8 or uint16"):
        renderer.pipeline(tiny_params).process(frame8.astype(np.float32), 0)
