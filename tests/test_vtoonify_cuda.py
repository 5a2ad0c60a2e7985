"""The VToonify path on a CUDA GPU (marked `cuda`; skipped without one; bench/gpu_check.sh runs them):
the same numbers as on the CPU within float tolerance, chunks exact on the GPU too, float16 close to float32.

No dlib needed (the GPU machine has none): faces come from tests/fixed_landmarker.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.vtoonify import load_face_parser, load_style_encoder, load_vtoonify
from engine.vtoonify.video import VToonifyConfig, VToonifyPipeline
from fixed_landmarker import FixedLandmarker
from conftest import panning_frames
from tiny_vtoonify import write_tiny_set

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

COUNT = 24   # longer than the style window (13) and the tracking window (14 + 6)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tiny_set(tmp_path_factory.mktemp("vt_cuda"), "toonify", seed=0)


@pytest.fixture(scope="module")
def frames(astronaut):
    return list(enumerate(panning_frames(astronaut, COUNT)))


def offsets():
    return [(-(60 + 3 * i), -(10 + 3 * i // 2)) for i in range(COUNT)]   # panning_frames' crop origins


def run(files, frames, device, first=0, **config):
    net = load_vtoonify(files["model"], device)
    pipe = VToonifyPipeline(FixedLandmarker(offsets=offsets()[frames[0][0]:]), net,
                            load_face_parser(files["parser"], device), load_style_encoder(files["encoder"], device),
                            VToonifyConfig(**config))
    return {i: r.image for i, r in pipe.run(frames, first=first)}


def test_cuda_matches_the_cpu_within_a_grey_level(files, frames):
    cpu = run(files, frames[:4], "cpu")
    gpu = run(files, frames[:4], "cuda")
    for i in cpu:
        diff = np.abs(cpu[i].astype(int) - gpu[i].astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05, (i, diff.max(), diff.mean())


def test_chunks_on_the_gpu_equal_the_single_pass(files, frames):
    single = run(files, frames, "cuda", batch_size=4)
    plan = VToonifyConfig().plan()
    for first, last in ((5, 9), (13, 18), (19, 23)):
        start = plan.warmup_start(first)
        chunk = run(files, frames[start:last + 1 + plan.look_ahead], "cuda", first=first, batch_size=4)
        for i in range(first, last + 1):
            assert np.array_equal(chunk[i], single[i]), i


def test_float16_stays_close_to_float32(files, frames):
    full = run(files, frames[:3], "cuda")
    half = run(files, frames[:3], "cuda", half=True)
    for i in full:
        diff = np.abs(full[i].astype(int) - half[i].astype(int))
        assert diff.mean() < 2.0, (i, diff.max(), diff.mean())
