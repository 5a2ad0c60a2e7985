"""Renders of the media an online edit brings, end to end with the tiny models and a real face.

A 10-bit ProRes clip stays 10-bit ProRes with its size, streams, timecode and colour;
an interlaced clip is stylised field by field and stays interlaced; an image sequence
keeps its own frame numbers; a still renders to one image; HDR is refused.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import media_sources as ms
from toon_ofx.core import media
from toon_ofx.core.render import RenderRequest, Renderer, render

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

FAST = {"steps": 3, "warm_steps": 1}
W, H = 640, 360   # odd sizes: test_media_formats (ffmpeg's ProRes 4:2:2 cannot keep an odd width)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "toon_ofx", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=dict(os.environ), timeout=600)


@pytest.fixture(scope="module")
def face_frames(astronaut):
    """16-bit pictures: a real face moving over a smooth gradient; the left 150 columns never see the face."""
    return ms.frames(W, H, 6, face=astronaut, face_size=300, face_x=200, face_y=30, step=3)


@pytest.fixture(scope="module")
def deep_clip(tmp_path_factory, face_frames) -> Path:
    """ProRes 422 HQ 10-bit, 640x360 at 23.976, BT.709, two audio streams, a subtitle, timecode 01:00:00:00."""
    folder = tmp_path_factory.mktemp("deep")
    return ms.encode(
        folder / "a001c003.mov", face_frames, "24000/1001",
        ["-c:v", "prores_ks", "-profile:v", "3", "-vendor", "apl0", "-pix_fmt", "yuv422p10le",
         *ms.tags("bt709", "bt709", "bt709", "bt709"),
         "-bsf:v", "prores_metadata=color_primaries=bt709:color_trc=bt709:colorspace=bt709"],
        inputs=["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=0.25",
                "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=48000:duration=0.25",
                "-i", str(ms.subtitles(folder))],
        output=["-map", "0", "-map", "1", "-map", "2", "-map", "3", "-c:a", "pcm_s24le", "-c:s", "mov_text",
                "-timecode", "01:00:00:00"])


def test_deep_prores_renders_to_deep_prores_that_conforms(deep_clip, tmp_path, tiny_params):
    work = tmp_path / "frames"
    out = tmp_path / "toon.mov"
    result = render(RenderRequest(deep_clip, out, dict(tiny_params, **FAST), work_dir=work, keep_frames=True))
    assert result.codec == "ProRes 422 HQ" and result.notes == []
    src, got = media.probe(deep_clip), media.probe(out)
    assert (got.codec, got.profile, got.bit_depth) == ("prores", "HQ", 10)
    assert (got.width, got.height, got.fps, got.frame_count) == (W, H, src.fps, 6)
    assert [(s.kind, s.codec) for s in got.streams if s.tag != "tmcd"] == [
        ("audio", "pcm_s24le"), ("audio", "pcm_s24le"), ("subtitle", "mov_text")]
    assert got.timecode == "01:00:00:00"
    assert (got.color_space, got.color_primaries, got.color_transfer) == ("bt709", "bt709", "bt709")
    import cv2

    for i, source in media.read_frames(src, 0, 5, bits=16):
        frame = cv2.imread(str(work / f"a001c003.{i:06d}.png"), cv2.IMREAD_UNCHANGED)[:, :, ::-1]
        assert frame.dtype == np.uint16   # the intermediate frames hold 16 bits
        changed = (frame != source).any(axis=2)
        assert 0.005 < changed.mean() < 0.5, "the face was not stylised, or more than the face changed"
        assert not changed[:, :150].any()   # outside the face: the 16-bit decode of the source, exactly
    (_, movie_frame), = media.read_frames(got, 3, 3)
    assert ms.distinct_levels(movie_frame[:, :150]) > 1000   # the gradient kept far more than 256 levels


@pytest.fixture(scope="module")
def interlaced_clip(tmp_path_factory, face_frames) -> Path:
    folder = tmp_path_factory.mktemp("interlaced")
    return ms.encode(folder / "tff.mov", face_frames[:4], "25",
                     ["-vf", "scale=out_color_matrix=bt709:out_range=tv,setfield=tff", "-c:v", "libx264", "-crf", "8",
                      "-flags", "+ildct+ilme", "-pix_fmt", "yuv420p", "-colorspace", "bt709",
                      "-color_primaries", "bt709", "-color_trc", "bt709"])


def test_interlaced_clip_is_stylised_per_field_and_stays_interlaced(interlaced_clip, tmp_path, tiny_params,
                                                                    monkeypatch):
    from engine.pipeline import ToonPipeline

    seen = []
    real = ToonPipeline.prepare

    def spy(self, tracked):
        seen.append(tracked.index)
        return real(self, tracked)

    monkeypatch.setattr(ToonPipeline, "prepare", spy)
    out = tmp_path / "toon.mov"
    work = tmp_path / "frames"
    render(RenderRequest(interlaced_clip, out, dict(tiny_params, **FAST), work_dir=work, keep_frames=True))
    assert seen == list(range(8))   # 4 frames, 8 fields, in time order
    got = media.probe(out)
    assert got.field_order == "tff" and got.frame_count == 4
    src = dict(media.read_frames(interlaced_clip))
    for i in range(4):
        frame = media.read_image(work / f"tff.{i:06d}.png")
        changed = (frame != src[i]).any(axis=2)
        assert changed.any() and not changed[:, :150].any()
    # a chunk of frames 2-3 (fields 4-7) gives the same pixels as the whole render
    chunk = tmp_path / "chunk"
    render(RenderRequest(interlaced_clip, chunk, dict(tiny_params, **FAST), frames=(2, 3)))
    for i in (2, 3):
        assert np.array_equal(media.read_image(chunk / f"tff_toon.{i:06d}.png"),
                              media.read_image(work / f"tff.{i:06d}.png")), i


@pytest.fixture(scope="module")
def shot_sequence(tmp_path_factory, face_frames) -> Path:
    """shot.1011.png .. shot.1016.png, 16-bit, 320x180."""
    folder = tmp_path_factory.mktemp("plates")
    for k, picture in enumerate(face_frames):
        media.write_frame(folder / f"shot.{1011 + k}.png", picture[::2, ::2][:180, :320], bits=16, fsync=False)
    return folder


def test_sequence_keeps_its_frame_numbers(shot_sequence, tmp_path, tiny_params):
    out = tmp_path / "out"
    result = render(RenderRequest(shot_sequence / "shot.####.png", out, dict(tiny_params, **FAST), frames=(2, 3)))
    assert result.pattern == str(out / "shot_toon.%04d.png") and result.first_number == 1011
    assert (result.first_frame, result.last_frame) == (2, 3)   # ranges stay 0-based indices
    assert sorted(os.listdir(out)) == ["shot_toon.1013.png", "shot_toon.1014.png"]
    import cv2

    assert cv2.imread(str(out / "shot_toon.1013.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    movie = render(RenderRequest(shot_sequence, tmp_path / "shot.mov", dict(tiny_params, **FAST)))
    got = media.probe(movie.output)
    assert got.frame_count == 6 and got.bit_depth == 10 and (got.width, got.height) == (320, 180)


def test_a_still_renders_to_one_image_of_its_format(tmp_path, tiny_params, astronaut):
    import cv2

    jpg = tmp_path / "photo.jpg"
    cv2.imwrite(str(jpg), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    result = render(RenderRequest(jpg, tmp_path / "out", dict(tiny_params, **FAST)))
    assert result.kind == "image" and result.output == tmp_path / "out" / "photo_toon.jpg"
    assert os.listdir(tmp_path / "out") == ["photo_toon.jpg"]
    png16 = tmp_path / "photo16.png"
    media.write_frame(png16, astronaut.astype(np.uint16) * 257, bits=16, fsync=False)
    result = render(RenderRequest(png16, tmp_path / "photo_toon.png", dict(tiny_params, **FAST)))
    out = cv2.imread(str(result.output), cv2.IMREAD_UNCHANGED)
    assert out.dtype == np.uint16 and out.shape == (512, 512, 3)
    assert not (tmp_path / ".photo_toon.png.frames").exists()


def test_cli_codec_option_and_refusals(tmp_path, astronaut_clip, tiny_params, tiny_models_dir):
    model = ["--model", tiny_params["model"], "--base-model", tiny_params["base_model"], "--swap-res", "16",
             "--steps", "2", "--warm-steps", "1", "--device", "cpu", "--frames", "0-1"]
    out = tmp_path / "hq.mov"
    proc = run_cli("render", astronaut_clip, "-o", out, "--codec", "prores-422hq", *model)
    assert proc.returncode == 0, proc.stderr
    assert "ProRes 422 HQ" in proc.stderr and media.probe(out).profile == "HQ"
    hdr = ms.encode(tmp_path / "hdr.mp4", ms.frames(64, 48, 2), "25",
                    ["-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error",
                     *ms.tags("bt2020nc", "bt2020", "arib-std-b67", "bt2020")])
    for args, message in (([astronaut_clip, "-o", tmp_path / "x.mp4", "--codec", "prores-422hq"], "goes in a .mov"),
                          ([astronaut_clip, "-o", tmp_path / "x.mov", "--codec", "vp9"], "unknown codec"),
                          ([astronaut_clip, "-o", tmp_path / "seq", "--codec", "h264"], "movie outputs"),
                          ([hdr, "-o", tmp_path / "x.mov"], "HDR (HLG")):
        proc = run_cli("render", *args, *model)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
        assert not (tmp_path / "x.mp4").exists() and not (tmp_path / "x.mov").exists()


def test_service_jobs_name_frames_like_their_source(shot_sequence, tmp_path):
    from toon_ofx.service.errors import RequestError
    from toon_ofx.service.requests import parse_submission

    def submit(**output):
        body = {"source": str(shot_sequence / "shot.%04d.png"), "output": {"folder": str(tmp_path), **output}}
        return parse_submission(body, device_check=lambda d: "cpu")

    spec = submit()
    out = spec.output_for(spec.stem, None, "job")
    assert out["pattern"] == str(tmp_path / "shot_toon.%04d.png") and out["first_number"] == 1011
    movie = submit(kind="movie", codec="prores-422hq")
    assert movie.output_for(movie.stem, tmp_path / "w", "job")["path"].endswith("shot_toon.mov")
    for output, field in (({"kind": "movie", "codec": "mpeg1"}, "output.codec"),
                          ({"codec": "h264"}, "output.codec")):
        with pytest.raises(RequestError) as err:
            submit(**output)
        assert err.value.field == field
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "live.mov"
        os.mkfifo(fifo)
        with pytest.raises(RequestError, match="named pipe"):
            parse_submission({"source": str(fifo), "output": {"folder": str(tmp_path)}},
                             device_check=lambda d: "cpu")


def test_farm_assemble_reads_sequence_numbers(shot_sequence, tmp_path):
    from toon_ofx.core.errors import UserError
    from toon_ofx.farm.assemble import assemble

    frames = tmp_path / "frames"
    for n in range(1011, 1017):
        shutil.copy(shot_sequence / f"shot.{n}.png", tmp_path / "x.png")
        media.write_frame(frames / f"shot_toon.{n}.png", media.read_image(tmp_path / "x.png", bits=16), bits=16,
                          fsync=False)
    encoded = assemble(frames / "shot_toon.%04d.png", shot_sequence, tmp_path / "shot.mov", (1, 4))
    assert media.probe(encoded.path).frame_count == 4
    (frames / "shot_toon.1013.png").unlink()
    with pytest.raises(UserError, match=r"file numbers 1013"):
        assemble(frames / "shot_toon.%04d.png", shot_sequence, tmp_path / "again.mov", (1, 4))


# ----------------------------------------------------------------------------- issue 22 item 1: cancel while encoding

@pytest.fixture
def gradient_sequence(tmp_path) -> Path:
    """Three 64x48 PNG frames without a face (read by OIIO: no ffmpeg before the encode)."""
    for k, picture in enumerate(ms.frames(64, 48, 3)):
        media.write_frame(tmp_path / "seq" / f"wall.{k:04d}.png", picture, bits=16, fsync=False)
    return tmp_path / "seq"


def _movie_job(queue, folder, source, tiny_params):
    from toon_ofx.service.requests import parse_submission

    body = {"source": str(source), "params": dict(tiny_params, **FAST),
            "output": {"folder": str(folder), "kind": "movie", "codec": "h264"}}
    return queue.submit(parse_submission(body, device_check=lambda d: "cpu"))["id"]


def _wait(store, job_id, done, timeout=60.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get(job_id)
        if done(job):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} is {store.get(job_id)['state']} / {store.get(job_id)['progress']}")


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script stands in for a hanging ffmpeg")
def test_a_job_cancelled_while_encoding_ends_cancelled_with_its_frames_kept(gradient_sequence, tmp_path,
                                                                         tiny_params, monkeypatch):
    from toon_ofx.service.store import JobStore
    from toon_ofx.service.workers import JobQueue

    hang = tmp_path / "ffmpeg.sh"   # the encoder never finishes (nor says anything): only a cancel ends it
    hang.write_text("#!/bin/sh\nexec sleep 120\n")
    hang.chmod(0o755)
    monkeypatch.setenv("TOON_OFX_FFMPEG", str(hang))
    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    queue = JobQueue(store)          # the real renderer
    queue.start()
    try:
        job_id = _movie_job(queue, tmp_path / "out", gradient_sequence, tiny_params)
        _wait(store, job_id, lambda job: job["progress"].get("stage") == "encoding")
        queue.cancel(job_id)
        job = _wait(store, job_id, lambda job: job["state"] not in ("running", "cancelling", "queued"), 20)
    finally:
        queue.stop()
    assert job["state"] == "cancelled", job
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []   # no movie, no partial file
    frames = sorted(p.name for p in (tmp_path / "data" / "work" / job_id).rglob("*.png"))
    assert frames == ["wall.0000.png", "wall.0001.png", "wall.0002.png"]           # kept for a retry
    store.close()


def test_a_cancel_that_comes_as_the_render_ends_still_cancels_the_job(tmp_path):
    """The runner: a render that finishes although a cancel came in ends `cancelled`, its movie dropped."""
    import threading
    from types import SimpleNamespace

    from toon_ofx.service.outputs import partial_movie
    from toon_ofx.service.requests import JobSpec
    from toon_ofx.service.runner import JobRunner
    from toon_ofx.service.store import JobStore

    store = JobStore(tmp_path / "data" / "jobs.sqlite3")
    (tmp_path / "out").mkdir()

    def render(request, progress=None, cancel=None):
        Path(request.output).write_bytes(b"a finished movie")
        cancel.set()   # the user's cancel arrives while the movie is being finished
        return SimpleNamespace(fps=24.0, first_frame=0, last_frame=2, pattern=None)

    job = store.add(JobSpec(source=str(tmp_path / "clip.mov"), frames=(0, 2), params={"device": "cpu"}, kind="movie",
                            folder=str(tmp_path / "out"), stem="clip_toon", explicit_name=False, device="cpu",
                            fps=24.0, frame_count=3, codec="h264"))
    JobRunner(store, render).run(store.claim_next("cpu"), threading.Event())
    job = store.get(job["id"])
    assert job["state"] == "cancelled"
    assert not Path(job["output"]["path"]).exists() and not Path(partial_movie(job["output"]["path"])).exists()
    store.close()


def test_warnings_reach_stderr_with_quiet_and_json_as_a_field(tmp_path, tiny_params, tiny_models_dir):
    import json

    model = ["--model", tiny_params["model"], "--base-model", tiny_params["base_model"], "--swap-res", "16",
             "--steps", "2", "--warm-steps", "1", "--device", "cpu", "--inversion", "projection"]
    wall = media.write_frame(tmp_path / "wall.png", ms.frames(96, 64, 1)[0], bits=16)
    proc = run_cli("render", wall, "-o", tmp_path / "out", "-q", *model)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "toon-ofx: warning: no face found in wall.png: it was written unchanged\n", proc.stderr
    odd = ms.encode(tmp_path / "odd.mov", ms.frames(97, 64, 2), "25",
                    ["-c:v", "prores_ks", "-profile:v", "3", "-pix_fmt", "yuv422p10le"])
    proc = run_cli("render", odd, "-o", tmp_path / "toon.mov", "--json", *model)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    said = [e["warning"] for e in events if e.get("warning")]
    assert len(said) == 1 and "instead of the ProRes 422 HQ" in said[0] and "odd-width (97 px)" in said[0]
    assert f"toon-ofx: warning: {said[0]}" in proc.stderr
    assert all("warning" in e for e in events)   # the JSON form gained the field on every event


def test_a_colour_managed_interlaced_clip_keeps_every_untouched_pixel(interlaced_clip, tmp_path, tiny_params):
    """A movie in another colour space (here Gamma 2.4 Rec.709): the fields go to the engine converted, the
    frames come back woven from the source's own pixels wherever the faces did not change them."""
    work = tmp_path / "frames"
    params = dict(tiny_params, **FAST, input_colorspace="Gamma 2.4 Encoded Rec.709")
    render(RenderRequest(interlaced_clip, tmp_path / "toon.mov", params, work_dir=work, keep_frames=True,
                         frames=(0, 1)))
    src = dict(media.read_frames(interlaced_clip, 0, 1))   # an 8-bit clip: 8-bit frames
    for i in range(2):
        frame = media.read_pixels(work / f"tff.{i:06d}.png")[0]
        changed = (frame != src[i]).any(axis=2)
        assert changed.any() and not changed[:, :150].any()
