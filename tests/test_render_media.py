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
