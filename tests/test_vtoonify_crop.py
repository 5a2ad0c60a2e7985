"""The VToonify path's crop (engine/vtoonify/crop.py), head mask and paste-back (engine/vtoonify/paste.py).

The crop is checked against the reference's own recipe (blur the whole frame, resize it, slice the box) on a
real frame, the mask on label maps drawn here, the paste on real frames.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from engine.faces.align import ffhq_quad
from engine.faces.landmarks import make_landmarker
from engine.vtoonify.crop import CropGeometry, FaceCrop, blur_passes, crop_image, face_crop, warp_crop
from engine.vtoonify.paste import HEAD_LABELS, LABELS, HeadLayer, head_mask, paste_heads
from toon_ofx.core import media

from conftest import fixture_path

KERNEL = np.array([[0.125], [0.375], [0.375], [0.125]])


def reference_crop(frame: np.ndarray, landmarks: np.ndarray, padding: int = 200):
    """VToonify's style_transfer.py --scale_image on one frame (uint8), and its crop -> frame map."""
    scale = 64. / (np.mean(landmarks[42:48, 0]) - np.mean(landmarks[36:42, 0]))
    center = ((np.mean(landmarks[42:48], 0) + np.mean(landmarks[36:42], 0)) / 2) * scale
    h, w = round(frame.shape[0] * scale), round(frame.shape[1] * scale)
    left, right = max(round(center[0] - padding), 0) // 8 * 8, min(round(center[0] + padding), w) // 8 * 8
    top, bottom = max(round(center[1] - padding), 0) // 8 * 8, min(round(center[1] + padding), h) // 8 * 8
    passes = int(scale <= 0.75) + int(scale <= 0.375)
    for _ in range(passes):
        frame = cv2.sepFilter2D(frame, -1, KERNEL, KERNEL)
    crop = cv2.resize(frame, (w, h))[top:bottom, left:right]
    H, W = frame.shape[:2]
    to_frame = np.array([[W / w, 0, (left + 0.5) * W / w - 0.5], [0, H / h, (top + 0.5) * H / h - 0.5]])
    return crop, to_frame, passes


@pytest.fixture(scope="module")
def big_face():
    """A real frame at 1080p with a large face (scale about 0.3: two blur passes) and its landmarks."""
    frame = dict(media.read_frames(fixture_path("single_face.mp4"), 10, 10))[10]
    frame = cv2.resize(frame, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)
    face = max(make_landmarker("dlib").detect(frame), key=lambda f: f.box[2] - f.box[0])
    return frame, face.landmarks


def test_the_warp_reproduces_the_references_blur_resize_and_crop(big_face):
    frame, landmarks = big_face
    ref, to_frame, passes = reference_crop(frame, landmarks)
    assert passes == 2
    side = min(ref.shape[:2])
    mine = warp_crop(frame, to_frame, side, passes, undrift=False)
    diff = np.abs(np.rint(mine) - ref[:side, :side])
    assert diff.max() <= 2 and diff.mean() < 0.1   # measured: max 2, mean 0.066 (OpenCV's fixed-point warp)


def test_the_crop_follows_the_eyes_at_the_model_scale(big_face):
    frame, landmarks = big_face
    crop = face_crop(ffhq_quad(landmarks))
    assert crop.size == 400 and crop.blur == 2.0
    eyes = np.stack([landmarks[36:42].mean(0), landmarks[42:48].mean(0)])
    in_crop = eyes @ crop.matrix[:, :2].T + crop.matrix[:, 2]
    centre = in_crop.mean(0)
    assert np.abs(centre - 199.5).max() < 4                         # the eye centre in the middle
    assert 0.9 * 64 < in_crop[1, 0] - in_crop[0, 0] < 1.02 * 64      # eyes about 64 px apart (a quarter quad)
    assert crop_image(frame, crop).shape == (400, 400, 3)


def test_a_model_of_another_input_size_scales_the_recipe():
    assert CropGeometry.for_model(256) == CropGeometry(64.0, 200, 8)
    geometry = CropGeometry.for_model(64)
    assert (geometry.eye_distance, geometry.size, geometry.size % 2) == (16.0, 100, 0)


def test_the_blur_fades_in_above_each_threshold_and_does_not_move_the_picture():
    assert [blur_passes(s) for s in (1.0, 0.825, 0.75, 0.5, 0.4125, 0.375, 0.1)] == [0, 0, 1, 1, 1, 2, 2]
    assert 0 < blur_passes(0.8) < 1 and 1 < blur_passes(0.39) < 2
    yy, xx = np.mgrid[:300, :300]
    blob = np.exp(-((yy - 150.0) ** 2 + (xx - 150.0) ** 2) / (2 * 3.0 ** 2))   # smooth: no aliasing at any scale
    dot = np.repeat(np.rint(blob * 65535).astype(np.uint16)[..., None], 3, axis=2)
    for scale in (0.5, 0.3, 0.8):
        crop = FaceCrop((150.0, 150.0), scale, 64, blur_passes(scale))
        image = crop_image(dot, crop)[..., 0]
        ys, xs = np.mgrid[:64, :64]
        centroid = ((image * xs).sum() / image.sum(), (image * ys).sum() / image.sum())
        assert np.allclose(centroid, 31.5, atol=0.02), (scale, centroid)


# ---------------------------------------------------------------- the head mask


def labels_with_heads(size=200):
    """Background; this face's head (skin disc, hair cap, neck) in the middle over clothes; another head in a corner."""
    labels = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    labels[yy > c + 50] = LABELS.index("cloth")
    labels[((yy - c) ** 2 + (xx - c) ** 2 < 50 ** 2) & (yy < c - 20)] = LABELS.index("hair")
    labels[(yy - c) ** 2 + (xx - c) ** 2 < 38 ** 2] = LABELS.index("skin")
    labels[(np.abs(xx - c) < 15) & (yy > c + 30) & (yy < c + 60)] = LABELS.index("neck")
    labels[(yy - 15) ** 2 + (xx - 15) ** 2 < 12 ** 2] = LABELS.index("skin")   # someone else
    return labels


def test_the_mask_is_the_whole_head_and_its_edge_lies_outside_it():
    labels = labels_with_heads()
    mask = head_mask(labels, feather=10, centre_radius=16)
    head = np.isin(labels, HEAD_LABELS)
    assert HEAD_LABELS == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 18)
    assert (mask[head & (np.arange(200)[:, None] > 40)] == 1).all()   # this head, hair and neck: pasted whole
    assert (mask[:40, :40] == 0).all()                                # the other person's head: not
    dist = cv2.distanceTransform((~head).astype(np.uint8), cv2.DIST_L2, 5)
    assert (mask[dist >= 10] == 0).all() and (mask[(dist > 0) & (dist < 8)] > 0).any()
    assert mask[0].max() == 0 and mask[-1].max() == 0 and mask[:, 0].max() == 0


def test_no_head_near_the_centre_pastes_nothing():
    labels = np.zeros((100, 100), np.uint8)
    labels[:10, :10] = LABELS.index("skin")
    assert head_mask(labels, 5, 10).max() == 0


# ---------------------------------------------------------------- paste


@pytest.mark.parametrize("depth", [np.uint8, np.uint16])
def test_paste_touches_only_the_masked_head_and_the_overlay_composites_back(depth, astronaut):
    frame = astronaut if depth == np.uint8 else astronaut.astype(np.uint16) * 257
    quad = ffhq_quad(make_landmarker("dlib").detect(astronaut)[0].landmarks)
    crop = face_crop(quad, CropGeometry.for_model(64))
    rng = np.random.default_rng(0)
    white = float(np.iinfo(depth).max)
    styled = rng.uniform(0, white, (crop.size * 4, crop.size * 4, 3)).astype(np.float32)
    to_image = crop.matrix * 4
    to_image[:, 2] += 1.5
    mask = head_mask(labels_with_heads(crop.size), 6, 10)
    layer = HeadLayer(styled, to_image, mask, crop.matrix)
    full = paste_heads(frame, [layer], color_match=False)
    assert full.dtype == depth
    changed = (full != frame).any(-1)
    ys, xs = np.nonzero(changed)
    x0, y0, x1, y1 = crop.box()
    assert changed.sum() > 500 and xs.min() >= x0 - 1 and xs.max() <= x1 + 1 and ys.min() >= y0 - 1
    inverse = np.linalg.inv(np.vstack([crop.matrix, [0, 0, 1]]))[:2]
    assert not changed[int(round(inverse[1, 2])), int(round(inverse[0, 2]))]  # the crop's corner: background
    overlay = paste_heads(frame, [layer], color_match=False, overlay=True)
    alpha = overlay[..., 3:].astype(np.float64) / white
    over = overlay[..., :3] * alpha + frame * (1 - alpha)
    assert np.abs(over - full).max() <= 1.5 * (257 if depth == np.uint16 else 1)   # alpha and colour rounded
    assert (overlay[~changed & (overlay[..., 3] == 0)] == 0).all()
