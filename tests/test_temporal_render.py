"""Resume, frame ranges and chunks equal a single pass, frame by frame, across keyframes (default interval
48, with the cross-fade), on real footage; faces that drop out, leave and return.

The clip: single_face.mp4 (72 frames), 16 frames of face_noface.mov's title card (no face), single_face.mp4
again: 160 frames at 480x270 in which a real face is there, leaves (a cut) and returns, with keyframes 48,
96 and 144 inside the face. (face_noface.mov's face does not come back within the 169 frames it decodes
to, single_face.mp4 alone is shorter than two intervals, and dlib takes ~1 s a frame on
tears_of_steel_clip.mp4's three-quarter faces: that clip is used below only for its detector drop-outs.)

dlib's detections are memoised by frame content (sha1 of the pixels) and shared by the test processes,
and projection uses the small TinyPerceptual instead of VGG16-LPIPS (10x faster here): dlib is
deterministic on identical pixels, and the perceptual network is a plug-in of the projection; the code
under test is everything between and around them.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from engine.faces.align import quad_params
from engine.faces.lookahead import LookaheadTracker
from toon_ofx.core import media
from engine.inversion.lpips import TinyPerceptual
from toon_ofx.core.render import Renderer, RenderRequest

from conftest import fixture_path

FAST = {"steps": 2, "warm_steps": 1}  # keyframe_interval, keyframe_overlap, smoothing: the defaults
FRAMES = 160


def shared_dir(tmp_path_factory) -> Path:
    """A folder every xdist worker of this run sees (the base temp folder's parent under xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


class MemoLandmarker:
    """dlib, memoised by frame content."""

    def __init__(self, landmarker, cache: dict):
        self.landmarker, self.cache = landmarker, cache

    def detect(self, image, *args, **kwargs):
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        if key not in self.cache:
            self.cache[key] = self.landmarker.detect(image, *args, **kwargs)
        return self.cache[key]


def detections_for(clip: Path, store: Path, landmarker) -> dict:
    """Every frame's detections (by frame sha1), computed once per test run under a file lock."""
    from filelock import FileLock

    with FileLock(str(store) + ".lock"):
        if store.exists():
            return pickle.loads(store.read_bytes())
        memo = MemoLandmarker(landmarker, {})
        for _, frame in media.read_frames(clip):
            memo.detect(frame)
        store.write_bytes(pickle.dumps(memo.cache))
        return memo.cache


@pytest.fixture(scope="session")
def spliced_clip(tmp_path_factory) -> Path:
    """The 160-frame clip described above (made once per test run). Lossless, so the face's second
    appearance decodes to the same pixels as its first and dlib runs on 88 distinct frames only."""
    from filelock import FileLock

    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg not installed")
    face, title = fixture_path("single_face.mp4"), fixture_path("face_noface.mov")
    clip = shared_dir(tmp_path_factory) / "face_leaves_and_returns.mp4"
    with FileLock(str(clip) + ".lock"):
        if not clip.exists():
            part = "trim=start_frame=0:end_frame=72,setpts=PTS-STARTPTS,scale=480:270,setsar=1,fps=30"
            graph = (f"[0:v]{part}[a];[1:v]select=between(n\\,100\\,115),setpts=N/30/TB,scale=480:270,setsar=1[t];"
                     f"[0:v]{part}[b];[a][t][b]concat=n=3:v=1:a=0[v]")
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(face), "-i", str(title), "-filter_complex",
                            graph, "-map", "[v]", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-qp", "0",
                            "-r", "30", str(clip.with_suffix(".tmp.mp4"))], check=True)
            clip.with_suffix(".tmp.mp4").rename(clip)
    assert media.probe(clip).frame_count == FRAMES
    return clip


@pytest.fixture(scope="session")
def params(tiny_params) -> dict:
    values = dict(tiny_params, **FAST)
    del values["keyframe_interval"]  # the default, 48
    return values


@pytest.fixture(scope="session")
def renderer(tmp_path_factory, spliced_clip, params):
    """This module's own Renderer (not the process-wide one): memoised dlib, TinyPerceptual."""
    renderer = Renderer(params)
    store = shared_dir(tmp_path_factory) / "face_leaves_and_returns.dets"
    renderer.landmarker = MemoLandmarker(renderer.landmarker, detections_for(spliced_clip, store, renderer.landmarker))
    renderer.perceptual = TinyPerceptual().eval().requires_grad_(False)
    return renderer


@pytest.fixture(scope="session")
def memo(renderer) -> dict:
    return renderer.landmarker.cache


@pytest.fixture(scope="session")
def single_pass(tmp_path_factory, spliced_clip, params, renderer):
    """The whole clip in one pass: {frame: image} (rendered by one test process, read by the others:
    the comparisons then also hold across processes)."""
    from filelock import FileLock

    out = shared_dir(tmp_path_factory) / "single_pass"
    with FileLock(str(out) + ".lock"):
        if not (out / "done").exists():
            result = renderer.render(RenderRequest(spliced_clip, out, params))
            assert result.written == FRAMES
            (out / "done").touch()
    pattern = str(out / "face_leaves_and_returns_toon.%06d.png")
    return {i: media.read_image(pattern % i) for i in range(FRAMES)}


def assert_frames_equal(pattern: str, single: dict, frames) -> None:
    for i in frames:
        assert np.array_equal(media.read_image(pattern % i), single[i]), f"frame {i} differs from the single pass"


def test_the_single_pass_toonifies_the_face_and_passes_the_rest(spliced_clip, single_pass):
    """Guards the comparisons below from being vacuous: faces are stylised in 144 frames, the title is not."""
    source = dict(media.read_frames(spliced_clip))
    changed = [bool((single_pass[i] != source[i]).any()) for i in range(FRAMES)]
    assert changed == [not 72 <= i < 88 for i in range(FRAMES)]


@pytest.mark.parametrize("position", [
    48,   # on a keyframe
    49,   # just after (inside the cross-fade from the chain of keyframe 0)
    47,   # just before
    56,   # the first frame after the cross-fade (a chunk boundary on the grid)
    70,   # mid-segment
    88,   # the face returns
    100,  # inside the cross-fade after keyframe 96
    157,  # near the end: the look-ahead is cut by the clip's end
])
def test_resume_from_any_frame_equals_the_single_pass(tmp_path, position, spliced_clip, params, renderer,
                                                    single_pass):
    """A render killed after `position` frames and run again writes the rest exactly as one pass does."""
    out = tmp_path / "seq"
    out.mkdir()
    pattern = str(out / "face_leaves_and_returns_toon.%06d.png")
    for i in range(position):  # what the killed render left on disk
        media.write_frame(pattern % i, single_pass[i])
    last = min(position + 5, FRAMES - 1)
    again = renderer.render(RenderRequest(spliced_clip, out, params, frames=(0, last)))
    assert (again.written, again.skipped) == (last - position + 1, position)
    assert_frames_equal(pattern, single_pass, range(position, last + 1))


@pytest.mark.parametrize("frames", [(47, 47), (96, 103), (140, 159)])
def test_frame_ranges_equal_the_single_pass(tmp_path, frames, spliced_clip, params, renderer, single_pass):
    result = renderer.render(RenderRequest(spliced_clip, tmp_path / "seq", params, frames=frames))
    assert result.written == frames[1] - frames[0] + 1
    assert_frames_equal(result.pattern, single_pass, range(frames[0], frames[1] + 1))


@pytest.mark.parametrize("size, span", [
    (5, (52, 61)),     # the end of keyframe 48's cross-fade, the chunk grid point 56 inside a chunk
    (7, (86, 112)),    # the face's return, keyframe 96, its cross-fade
    (29, (90, 159)),   # long chunks across keyframes 96 and 144, one cut inside a cross-fade, to the end
])
def test_chunks_of_odd_sizes_equal_the_single_pass(tmp_path, size, span, spliced_clip, params, renderer,
                                                   single_pass):
    """Chunks on no particular grid (shorter than the keyframe interval, or crossing keyframes and
    cross-fades), each rendered as a farm task would be, into one sequence."""
    out = tmp_path / "seq"
    for first in range(span[0], span[1] + 1, size):
        renderer.render(RenderRequest(spliced_clip, out, params, frames=(first, min(first + size - 1, span[1]))))
    pattern = str(out / "face_leaves_and_returns_toon.%06d.png")
    assert_frames_equal(pattern, single_pass, range(span[0], span[1] + 1))


def tracked(memo: dict, clip: Path, first: int = 0, last=None):
    """The tracking stage over real detections: {frame: faces}."""
    tracker = LookaheadTracker()
    frames = list(media.read_frames(clip, first, last))
    out = {}
    for index, frame in frames:
        tracker.push(index, MemoLandmarker(None, memo).detect(frame))
        if tracker.ready(index - tracker.look_ahead) and index - tracker.look_ahead >= first:
            out[index - tracker.look_ahead] = tracker.faces_at(index - tracker.look_ahead)
    for index in range(max(first, frames[-1][0] - tracker.look_ahead + 1), frames[-1][0] + 1):
        out[index] = tracker.faces_at(index)
    return out


def test_a_face_that_returns_is_a_new_track_without_a_slide(spliced_clip, memo):
    """The face leaves at the cut (frame 72) and returns at 88: gone longer than a drop-out, so it is a new
    track there (cold projection, no predecessor), and its quad is its own, not pulled from where the
    old track ended."""
    faces = tracked(memo, spliced_clip)
    assert [len(faces[i]) for i in range(FRAMES)] == [0 if 72 <= i < 88 else 1 for i in range(FRAMES)]
    assert all(faces[i][0].previous == faces[i - 1][0].key for i in range(1, 72))
    back = faces[88][0]
    assert back.previous is None
    centre, half = quad_params(back.quad)
    raw_centre, _ = quad_params(back.raw_quad)
    old_centre, _ = quad_params(faces[71][0].quad)
    size = np.hypot(*half)
    assert np.linalg.norm(centre - raw_centre) < 0.05 * size < np.linalg.norm(centre - old_centre)


def test_detector_drop_outs_are_bridged_on_real_footage():
    """tears_of_steel_clip.mp4: dlib misses the (turning) face on frames 159-160; the face is still rendered
    there, on a path as smooth as around it, and its warm-start chain runs through."""
    from engine.faces.landmarks import DlibLandmarker

    landmarker = DlibLandmarker()
    tracker, frames = LookaheadTracker(), dict(media.read_frames(fixture_path("tears_of_steel_clip.mp4"), 155, 164))
    detected = {}
    for index, frame in frames.items():
        detected[index] = landmarker.detect(frame)
        tracker.push(index, detected[index])
    assert [i for i in frames if not detected[i]] == [159, 160]
    faces = {i: tracker.faces_at(i) for i in range(155, 165)}
    assert all(len(faces[i]) == 1 for i in faces)
    assert [faces[i][0].missed for i in (158, 159, 160, 161)] == [0, 1, 2, 0]
    assert all(faces[i][0].previous == faces[i - 1][0].key for i in range(156, 165))
    corners = np.array([faces[i][0].quad for i in range(155, 165)])
    jerk = np.linalg.norm(np.diff(corners, 2, axis=0), axis=2).max(axis=1)  # frames 156..163
    size = np.hypot(*quad_params(corners[0])[1])
    at_gap = jerk[159 - 156:161 - 156 + 1]
    assert at_gap.max() < 0.03 * size and at_gap.max() <= 2.0 * np.median(jerk)
