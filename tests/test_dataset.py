"""`toon-ofx dataset build`: aligned face crops from real footage, skips, resume, bad input."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import fixture_path
from toon_ofx import cli
from toon_ofx.core import media
from toon_ofx.training.dataset import (
    DatasetBuilder,
    DatasetOptions,
    HashIndex,
    dhash,
    hash_distance,
    load_dataset_images,
    outside_fraction,
)
from toon_ofx.core.errors import UserError

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def rows(folder: Path) -> list:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def landmarker():
    from engine.faces.landmarks import make_landmarker

    return make_landmarker("dlib")


@pytest.fixture(scope="module")
def clip() -> Path:
    return fixture_path("single_face.mp4")


@pytest.fixture(scope="module")
def frame0(clip) -> np.ndarray:
    return next(iter(media.read_frames(clip, 0, 0)))[1]


class Interrupt:
    """The real landmarker, but Ctrl-C arrives during the n-th frame."""

    def __init__(self, inner, after: int):
        self.inner, self.after, self.calls = inner, after, 0

    def detect(self, image):
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return self.inner.detect(image)


class Queue:
    """Stand-in landmarker that returns prepared faces, one list per image, in order."""

    def __init__(self, faces):
        self.faces = list(faces)

    def detect(self, image):
        return self.faces.pop(0)


def test_build_from_clip_writes_aligned_crops_and_rerun_adds_nothing(tmp_path, clip, capsys):
    out = tmp_path / "ds"
    argv = ["dataset", "build", str(clip), "-o", str(out), "--size", "32", "--every", "6", "-q"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "12 frames" in err  # 72 frames, one in 6
    got = rows(out)
    assert len(got) >= 2, err  # a talking head: a few distinct crops ...
    assert "0 near-duplicates" not in err  # ... and the rest of the shot skipped as near-duplicates
    for row in got:
        image = cv2.imread(str(out / row["file"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (32, 32, 3)
        assert row["frame"] % 6 == 0 and row["size"] == 32
        assert len(row["quad"]) == 4 and row["sharpness"] >= 50
        assert Path(row["source"]) == clip
    # The crop is the same FFHQ alignment rendering uses.
    from engine.faces.align import align_face

    first = got[0]
    frame = dict(media.read_frames(clip, first["frame"], first["frame"]))[first["frame"]]
    expected, _ = align_face(frame, np.array(first["quad"]), 32)
    stored = media.read_image(out / first["file"])
    assert np.abs(stored.astype(int) - expected.astype(int)).mean() < 2.0
    assert json.loads((out / "state.json").read_text())["sources"][str(clip.resolve())]["complete"]

    manifest = (out / "manifest.jsonl").read_bytes()
    files = sorted(p.name for p in (out / "images").iterdir())
    assert cli.main(argv) == 0
    assert "0 new faces kept" in capsys.readouterr().err
    assert (out / "manifest.jsonl").read_bytes() == manifest
    assert sorted(p.name for p in (out / "images").iterdir()) == files


def test_interrupted_build_resumes_to_the_same_dataset(tmp_path, clip, landmarker):
    options = DatasetOptions(size=32, every=12)
    ref = tmp_path / "ref"
    DatasetBuilder(ref, options, landmarker=landmarker).build([clip], progress=False)

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        DatasetBuilder(out, options, landmarker=Interrupt(landmarker, after=3)).build([clip], progress=False)
    state = json.loads((out / "state.json").read_text())["sources"][str(clip.resolve())]
    assert state["next"] == 25 and not state.get("complete")  # frames 0, 12, 24 done
    again = Interrupt(landmarker, after=99)
    DatasetBuilder(out, options, landmarker=again).build([clip], progress=False)
    assert again.calls == 3  # frames 36, 48, 60 only
    assert (out / "manifest.jsonl").read_text() == (ref / "manifest.jsonl").read_text()

    # A crash after a crop was recorded but before the progress was saved: nothing is added twice.
    (out / "state.json").unlink()
    with open(out / "manifest.jsonl", "a") as f:
        f.write('{"file": "images/torn')  # and a torn last line
    counts = DatasetBuilder(out, options, landmarker=landmarker).build([clip], progress=False)
    assert counts["kept"] == 0
    assert (out / "manifest.jsonl").read_text() == (ref / "manifest.jsonl").read_text()


def test_tiny_cut_off_blurred_and_near_duplicate_faces_are_skipped(tmp_path, frame0, landmarker, astronaut):
    face = landmarker.detect(frame0)[0]
    other = landmarker.detect(astronaut)[0]
    src = tmp_path / "photos"
    src.mkdir()

    def scaled(f, s, dx=0.0):
        from engine.faces.landmarks import Face

        return Face(f.box * s + [dx, 0, dx, 0], f.score, f.landmarks * s + [dx, 0])

    h, w = frame0.shape[:2]
    bright = np.clip(frame0.astype(int) + 8, 0, 255).astype(np.uint8)
    shifted = np.zeros_like(frame0)
    shifted[:, :w - 300] = frame0[:, 300:]  # the face now hangs off the left edge
    images = {
        "1_original.png": (frame0, [face]),
        "2_copy.png": (frame0.copy(), [face]),                                   # identical
        "3_brighter.jpg": (bright, [face]),                                      # re-encoded, brighter
        "4_blurred.png": (cv2.GaussianBlur(frame0, (0, 0), 3.0), [face]),        # out of focus
        "5_small.png": (cv2.resize(frame0, (w * 3 // 10, h * 3 // 10), interpolation=cv2.INTER_AREA),
                        [scaled(face, 0.3)]),                                    # crop square ~84 px
        "6_cut_off.png": (shifted, [scaled(face, 1.0, -300.0)]),
        "7_someone_else.png": (astronaut, [other]),
    }
    for name, (image, _) in images.items():
        media.write_frame(src / name, image)
    options = DatasetOptions(size=32, min_face=100)
    out = tmp_path / "ds"
    counts = DatasetBuilder(out, options, landmarker=Queue(f for _, f in images.values())).build(
        [src], progress=False)
    assert counts == {"frames": 7, "faces": 7, "kept": 2, "tiny": 1, "outside": 1, "blurred": 1, "duplicate": 2}
    kept = [Path(r["source"]).name for r in rows(out)]
    assert kept == ["1_original.png", "7_someone_else.png"]


def test_duplicate_hash_tells_people_apart(frame0, astronaut, landmarker):
    from engine.faces.align import align_face, ffhq_quad

    a = align_face(frame0, ffhq_quad(landmarker.detect(frame0)[0].landmarks), 128)[0]
    b = align_face(astronaut, ffhq_quad(landmarker.detect(astronaut)[0].landmarks), 128)[0]
    index = HashIndex()
    assert index.nearest(dhash(a)) > 256
    index.add(dhash(a))
    assert index.nearest(dhash(a)) == 0
    assert index.nearest(dhash(b)) > 32  # aligned faces share a layout, yet differ in many bits
    assert int(hash_distance(dhash(a), dhash(np.ascontiguousarray(a[:, ::-1])))) > 16


def test_outside_fraction():
    square = np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float)
    assert outside_fraction(square, 20, 20) == pytest.approx(0.0)
    assert outside_fraction(square - [5, 0], 20, 20) == pytest.approx(0.5)
    assert outside_fraction(square + [100, 100], 20, 20) == pytest.approx(1.0)


def test_load_dataset_images(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no training images"):
        load_dataset_images(tmp_path / "empty")
    ds = tmp_path / "ds"
    for i in range(3):
        media.write_frame(ds / "images" / f"f{i}.png", np.full((8, 8, 3), i, np.uint8))
    (ds / "manifest.jsonl").write_text("".join(json.dumps({"file": f"images/f{i}.png"}) + "\n" for i in (2, 0, 1)))
    assert [p.name for p in load_dataset_images(ds)] == ["f2.png", "f0.png", "f1.png"]
    (ds / "images" / "f0.png").unlink()  # curated by hand
    assert [p.name for p in load_dataset_images(ds)] == ["f2.png", "f1.png"]
    (ds / "manifest.jsonl").unlink()  # a plain folder of images
    assert [p.name for p in load_dataset_images(ds)] == ["f1.png", "f2.png"]


@pytest.mark.parametrize("case", ["missing", "not_video", "inside_source", "empty_folder", "size_change"])
def test_bad_input_is_one_clear_message(tmp_path, capsys, case, clip):
    src = tmp_path / "src"
    src.mkdir()
    out = tmp_path / "out"
    argv = {"missing": [str(tmp_path / "nope.mp4"), "-o", str(out)],
            "not_video": [str(tmp_path / "notes.mp4"), "-o", str(out)],
            "inside_source": [str(src), "-o", str(src / "ds")],
            "empty_folder": [str(src), "-o", str(out)],
            "size_change": [str(src), "-o", str(out), "--size", "64"]}[case]
    (tmp_path / "notes.mp4").write_text("not a movie")
    media.write_frame(src / "a.png", np.zeros((8, 8, 3), np.uint8)) if case in ("inside_source", "size_change") \
        else None
    if case == "size_change":
        (out).mkdir()
        (out / "state.json").write_text(json.dumps({"size": 32, "sources": {}}))
    assert cli.main(["dataset", "build", *argv, "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("toon-ofx: error: "), err
    assert not (src / "ds").exists()


def test_cli_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toon_ofx", "dataset", "build", str(tmp_path / "nope.mov"),
                           "-o", str(tmp_path / "ds")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "does not exist" in proc.stderr
