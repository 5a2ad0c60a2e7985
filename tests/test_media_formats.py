"""Media an online editor accepts: depth, codec and profile, exact size, every stream, timecode, colour, fields.

Sources are made with ffmpeg at test time (see media_sources) and every claim is
read back with ffprobe or measured on decoded pixels.
"""
from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import media_sources as ms
from toon_ofx.core import media
from toon_ofx.core.errors import UserError
from toon_ofx.core.media.timecode import offset_timecode

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg/ffprobe not installed")

NTSC_FILM = "24000/1001"
W, H = 641, 361    # odd on purpose: no 4:2:0 codec can hold it
PW, PH = 640, 360  # ffmpeg's ProRes 4:2:2 loses an odd width's last chroma column (see the odd-width test)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("online")


@pytest.fixture(scope="module")
def prores(work) -> Path:
    """ProRes 422 HQ 10-bit, 640x360 at 23.976, BT.709 tagged, two audio streams, a subtitle, timecode
    01:00:00:00 and a reel name: 12 frames."""
    srt = ms.subtitles(work)
    return ms.encode(
        work / "a001c003.mov", ms.frames(PW, PH, 12), NTSC_FILM,
        ["-c:v", "prores_ks", "-profile:v", "3", "-vendor", "apl0", "-pix_fmt", "yuv422p10le",
         *ms.tags("bt709", "bt709", "bt709", "bt709"),
         "-bsf:v", "prores_metadata=color_primaries=bt709:color_trc=bt709:colorspace=bt709"],
        inputs=["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=0.5",
                "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=48000:duration=0.5", "-i", str(srt)],
        output=["-map", "0", "-map", "1", "-map", "2", "-map", "3", "-c:a:0", "pcm_s24le", "-c:a:1", "aac",
                "-c:s", "mov_text", "-timecode", "01:00:00:00", "-metadata:s:v:0", "reel_name=A001C003"])


@pytest.fixture(scope="module")
def hevc10(work) -> Path:
    """HEVC Main 10, BT.601 (smpte170m) tagged, 8 frames at 24 fps."""
    return ms.encode(work / "phone.mp4", ms.frames(320, 240, 8), "24",
                     ["-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error",
                      *ms.tags("smpte170m", "smpte170m", "smpte170m", "bt601")])


@pytest.fixture(scope="module")
def dnxhr(work) -> Path:
    """DNxHR HQX (10-bit 4:2:2), 6 frames at 25 fps."""
    return ms.encode(work / "avid.mov", ms.frames(W, H, 6), "25",
                     ["-c:v", "dnxhd", "-profile:v", "dnxhr_hqx", "-pix_fmt", "yuv422p10le",
                      *ms.tags("bt709", "bt709", "bt709", "bt709")])


@pytest.fixture(scope="module")
def interlaced(work) -> Path:
    """H.264, top field first, 6 frames at 25 fps (50 fields)."""
    return ms.encode(work / "broadcast.mov", ms.frames(320, 240, 6), "25",
                     ["-vf", "scale=out_color_matrix=bt709:out_range=tv,setfield=tff", "-c:v", "libx264",
                      "-flags", "+ildct+ilme", "-pix_fmt", "yuv420p", "-colorspace", "bt709",
                      "-color_primaries", "bt709", "-color_trc", "bt709"])


def _frames_of(info, folder: Path, bits: int, first: int = 0, last=None) -> str:
    pattern = str(folder / "f.%06d.png")
    for i, frame in media.read_frames(info, first, last, bits=bits):
        media.write_frame(pattern % info.frame_number(i), frame, bits=bits, fsync=False)
    return pattern


def _psnr16(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(65535.0 ** 2 / mse)


# ----------------------------------------------------------------------------- probe and decode

def test_probe_reads_depth_profile_streams_and_timecode(prores):
    info = media.probe(prores)
    assert (info.codec, info.profile, info.bit_depth, info.chroma) == ("prores", "HQ", 10, "422")
    assert (info.width, info.height, info.fps, info.frame_count) == (PW, PH, Fraction(24000, 1001), 12)
    assert [(s.kind, s.codec) for s in info.streams if s.tag != "tmcd"] == [
        ("audio", "pcm_s24le"), ("audio", "aac"), ("subtitle", "mov_text")]
    assert (info.timecode, info.reel_name, info.field_order) == ("01:00:00:00", "A001C003", "progressive")
    assert (info.color_space, info.color_primaries, info.color_transfer) == ("bt709", "bt709", "bt709")
    assert not info.alpha and media.source_bits(info) == 16


def test_deep_source_decodes_at_16_bits(prores):
    info = media.probe(prores)
    (_, deep), = media.read_frames(info, 3, 3)
    (_, flat), = media.read_frames(info, 3, 3, bits=8)
    assert deep.dtype == np.uint16 and flat.dtype == np.uint8 and deep.shape == (PH, PW, 3)
    assert ms.distinct_levels(deep[PH // 2]) > 300   # one row of the ramp: 640 columns, 10-bit precise
    assert ms.distinct_levels(flat[PH // 2]) <= 256
    assert ms.distinct_levels(deep) > 4000           # far above 256 over the picture
    # the 8-bit decode (ffmpeg's rgb24 path, unchanged) agrees with the 16-bit one to a level or two: the same
    # matrix and range (a wrong matrix or range would be tens of levels off)
    diff = np.abs(deep.astype(np.int64) / 257.0 - flat)
    assert diff.max() <= 6 and diff.mean() < 2


def test_field_order_from_the_frames(interlaced, hevc10):
    assert media.probe(interlaced).field_order == "tff"
    assert media.probe(hevc10).field_order == "progressive"


def test_pal8_is_not_alpha():
    from toon_ofx.core.media.pixfmt import pixel_format

    assert not pixel_format("pal8").alpha and pixel_format("yuva444p10le").alpha
    assert (pixel_format("p010le").bits, pixel_format("p010le").chroma) == (10, "420")
    assert (pixel_format("rgb48le").bits, pixel_format("rgb48le").chroma) == (16, None)


# ----------------------------------------------------------------------------- round trips

def test_prores_round_trip_keeps_profile_depth_size_streams_timecode_and_colour(prores, tmp_path):
    info = media.probe(prores)
    pattern = _frames_of(info, tmp_path / "frames", 16)
    encoded = media.encode_frames(pattern, tmp_path / "toon.mov", info, audio_from=info)
    assert encoded.codec.name == "prores-422hq" and encoded.notes == []
    got = media.probe(encoded.path)
    assert (got.codec, got.profile, got.bit_depth, got.chroma) == ("prores", "HQ", 10, "422")
    assert (got.width, got.height, got.fps, got.frame_count) == (PW, PH, info.fps, 12)
    assert [(s.kind, s.codec) for s in got.streams if s.tag != "tmcd"] == [
        ("audio", "pcm_s24le"), ("audio", "aac"), ("subtitle", "mov_text")]   # copied as they were
    assert (got.timecode, got.reel_name) == ("01:00:00:00", "A001C003")
    assert (got.color_space, got.color_primaries, got.color_transfer, got.color_range) == (
        "bt709", "bt709", "bt709", "tv")
    (_, src), = media.read_frames(info, 5, 5)
    (_, out), = media.read_frames(got, 5, 5)
    assert out.dtype == np.uint16 and ms.distinct_levels(out) > 4000
    assert _psnr16(out, src) > 50   # a 10-bit re-encode of 10-bit pictures, not an 8-bit one


def test_subrange_starts_at_its_own_timecode(prores, tmp_path):
    info = media.probe(prores)
    pattern = _frames_of(info, tmp_path / "frames", 16, 6, 11)
    got = media.probe(media.encode_movie(pattern, tmp_path / "part.mov", info, first_frame=6, audio_from=info))
    assert got.frame_count == 6 and got.timecode == "01:00:00:06"
    assert sum(s.kind == "audio" for s in got.streams) == 2


def test_hevc_main10_round_trip_keeps_depth_and_bt601_tags(hevc10, tmp_path):
    info = media.probe(hevc10)
    assert (info.codec, info.profile, info.bit_depth, info.color_space) == ("hevc", "Main 10", 10, "smpte170m")
    pattern = _frames_of(info, tmp_path / "frames", 16)
    got = media.probe(media.encode_movie(pattern, tmp_path / "toon.mp4", info))
    assert (got.codec, got.profile, got.bit_depth, got.pix_fmt) == ("hevc", "Main 10", 10, "yuv420p10le")
    assert (got.color_space, got.color_primaries, got.color_transfer) == ("smpte170m", "smpte170m", "smpte170m")
    (_, src), = media.read_frames(info, 4, 4)
    (_, out), = media.read_frames(got, 4, 4)
    assert _psnr16(out, src) > 45 and ms.distinct_levels(out) > 2000


def test_dnxhr_round_trip_keeps_profile_and_odd_size(dnxhr, tmp_path):
    info = media.probe(dnxhr)
    assert (info.profile, info.bit_depth) == ("DNXHR HQX", 10)
    pattern = _frames_of(info, tmp_path / "frames", 16)
    got = media.probe(media.encode_movie(pattern, tmp_path / "toon.mov", info))
    assert (got.codec, got.profile, got.bit_depth, got.width, got.height) == ("dnxhd", "DNXHR HQX", 10, W, H)


def test_interlaced_output_keeps_field_order(interlaced, tmp_path):
    info = media.probe(interlaced)
    pattern = _frames_of(info, tmp_path / "frames", 8)
    out = media.encode_movie(pattern, tmp_path / "toon.mov", info)
    assert media.probe(out).field_order == "tff"
    flags = ms.ffprobe(out, "frame=interlaced_frame,top_field_first", "v:0")
    assert all(f["interlaced_frame"] == 1 and f["top_field_first"] == 1 for f in flags)
    prores = media.encode_movie(pattern, tmp_path / "toon_hq.mov", info, codec="prores-422hq")
    assert media.probe(prores).field_order == "tff"
    for codec in ("dnxhr-hqx", "hevc"):
        with pytest.raises(UserError, match="interlaced"):
            media.encode_movie(pattern, tmp_path / f"{codec}.mov", info, codec=codec)


def test_odd_size_is_kept_exactly(tmp_path):
    """641x361 8-bit frames of an H.264 source: 4:2:0 cannot hold the size, so 4:4:4 does; never padding."""
    clip = ms.encode(tmp_path / "odd.mkv", ms.frames(W, H, 3), "24",
                     ["-c:v", "libx264", "-pix_fmt", "yuv444p"])
    info = media.probe(clip)
    pattern = _frames_of(info, tmp_path / "frames", 8)
    got = media.probe(media.encode_movie(pattern, tmp_path / "odd.mp4", info))
    assert (got.codec, got.width, got.height, got.chroma) == ("h264", W, H, "444")


def test_odd_width_prores_keeps_its_last_column(tmp_path):
    """ffmpeg's ProRes 4:2:2 garbles an odd width's last chroma column: 4444 by default, 422 refused."""
    clip = ms.encode(tmp_path / "odd.mov", ms.frames(W, H, 2), "24",
                     ["-c:v", "prores_ks", "-profile:v", "4", "-pix_fmt", "yuv444p10le"])
    info = media.probe(clip)
    pattern = _frames_of(info, tmp_path / "frames", 16)
    encoded = media.encode_frames(pattern, tmp_path / "toon.mov", info, codec=None)
    assert encoded.codec.name == "prores-4444"
    (_, src), = media.read_frames(info, 1, 1)
    (_, out), = media.read_frames(encoded.path, 1, 1)
    assert (out.shape[1], out.shape[0]) == (W, H)
    assert np.abs(out[:, -4:].astype(int) - src[:, -4:].astype(int)).max() < 1500   # the right edge is intact
    with pytest.raises(UserError, match="odd-width"):
        media.encode_movie(pattern, tmp_path / "hq.mov", info, codec="prores-422hq")


# ----------------------------------------------------------------------------- codec choice

def test_codec_follows_the_source_and_the_container(prores, hevc10, dnxhr, interlaced):
    p, h, d, i = (media.probe(x) for x in (prores, hevc10, dnxhr, interlaced))
    assert media.default_codec(p).name == "prores-422hq" and media.default_codec(d).name == "dnxhr-hqx"
    assert media.default_codec(h).name == "hevc-10bit" and media.default_codec(i).name == "h264"
    assert media.default_codec(p, alpha=True).name == "prores-4444"
    # a container that cannot hold the source's codec gets the nearest one it can
    assert media.choose_codec(Path("x.mp4"), None, p).name == "hevc-10bit"
    assert media.movie_suffix(p) == ".mov" and media.movie_suffix(h) == ".mp4"
    with pytest.raises(UserError, match=r"ProRes 422 HQ goes in a \.mov, not \.mp4"):
        media.choose_codec(Path("x.mp4"), "prores-422hq", p)
    with pytest.raises(UserError, match=r"ProRes 422 HQ goes in a \.mov, not \.mkv"):
        media.choose_codec(Path("x.mkv"), "prores-422hq", p)
    with pytest.raises(UserError, match="unknown codec"):
        media.choose_codec(Path("x.mov"), "cinepak", p)
    with pytest.raises(UserError, match="alpha"):
        media.choose_codec(Path("x.mov"), "h264", p, alpha=True)


def test_containers_that_refuse_a_stream_get_it_converted_and_say_so(prores, tmp_path):
    info = media.probe(prores)
    pattern = _frames_of(info, tmp_path / "frames", 16, 0, 3)
    mp4 = media.encode_frames(pattern, tmp_path / "toon.mp4", info, last_frame=3, audio_from=info)
    assert mp4.codec.name == "hevc-10bit"
    assert [(s.kind, s.codec) for s in media.probe(mp4.path).streams if s.tag != "tmcd"] == [
        ("audio", "aac"), ("audio", "aac"), ("subtitle", "mov_text")]
    assert any("pcm_s24le" in n and "aac" in n for n in mp4.notes), mp4.notes
    mkv = media.encode_frames(pattern, tmp_path / "toon.mkv", info, last_frame=3, audio_from=info)
    assert [(s.kind, s.codec) for s in media.probe(mkv.path).streams] == [
        ("audio", "pcm_s24le"), ("audio", "aac"), ("subtitle", "subrip")]
    assert media.probe(mkv.path).timecode == "01:00:00:00"
    assert any("mov_text" in n and "srt" in n for n in mkv.notes), mkv.notes


def test_a_tag_lost_in_writing_fails_the_encode(prores, tmp_path, monkeypatch):
    """Without the prores_metadata filter prores_ks writes no colour: the read-back must catch it."""
    import importlib

    from toon_ofx.core.media import formats

    encode_module = importlib.import_module("toon_ofx.core.media.encode")

    def plan_without_bsf(codec, source):
        plan = formats.color_plan(codec, source)
        plan.bsf = None
        return plan

    monkeypatch.setattr(encode_module, "color_plan", plan_without_bsf)
    info = media.probe(prores)
    pattern = _frames_of(info, tmp_path / "frames", 16, 0, 1)
    out = tmp_path / "out" / "toon.mov"
    with pytest.raises(UserError, match="reads back with color space untagged instead of bt709"):
        media.encode_movie(pattern, out, info, last_frame=1)
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_full_range_source(tmp_path):
    clip = ms.encode(tmp_path / "jpeg_range.mp4", ms.frames(64, 48, 2), "25",
                     ["-vf", "scale=out_color_matrix=bt709:out_range=pc", "-c:v", "libx264", "-pix_fmt", "yuvj420p",
                      "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "pc"])
    info = media.probe(clip)
    assert info.color_range == "pc"
    pattern = _frames_of(info, tmp_path / "frames", 8)
    assert media.probe(media.encode_movie(pattern, tmp_path / "same.mp4", info)).color_range == "pc"
    prores = media.probe(media.encode_movie(pattern, tmp_path / "pro.mov", info, codec="prores-422hq"))
    assert prores.color_range == "tv"   # ProRes is limited range: converted, and tagged so
    (_, a), = media.read_frames(info, 1, 1, bits=8)
    (_, b), = media.read_frames(prores, 1, 1, bits=8)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.5   # the same picture


def test_hdr_source_is_refused_with_a_clear_message(tmp_path):
    clip = ms.encode(tmp_path / "hdr.mp4", ms.frames(64, 48, 2), "25",
                     ["-c:v", "libx265", "-pix_fmt", "yuv420p10le", "-x265-params", "log-level=error",
                      *ms.tags("bt2020nc", "bt2020", "smpte2084", "bt2020")])
    info = media.probe(clip)
    assert info.hdr == "PQ (SMPTE ST 2084)"
    with pytest.raises(UserError) as err:
        media.check_renderable(info)
    assert "HDR" in err.value.message and "SDR" in err.value.message and "\n" not in err.value.message


# ----------------------------------------------------------------------------- MovieWriter

def test_movie_writer_keeps_every_frame_when_the_audio_is_shorter(tmp_path):
    short = tmp_path / "short_audio.mov"
    ms.encode(short, ms.frames(64, 48, 20), "25", ["-c:v", "libx264", "-pix_fmt", "yuv420p"],
              inputs=["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=0.2"],
              output=["-map", "0", "-map", "1", "-c:a", "pcm_s16le"])
    info = media.probe(short)
    out = tmp_path / "w.mov"
    with media.MovieWriter(out, 64, 48, Fraction(25), audio_from=info, color_from=info) as w:
        for _, frame in media.read_frames(info):
            w.write(frame)
    got = media.probe(out)
    assert got.frame_count == 20 and [s.kind for s in got.streams] == ["audio"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short_audio.mov", "w.mov"]


def test_movie_writer_16_bit_frames_reach_a_10_bit_encoder(tmp_path):
    out = tmp_path / "deep.mov"
    with media.MovieWriter(out, PW, PH, Fraction(24), codec="prores-422hq", bits=16) as w:
        for picture in ms.frames(PW, PH, 2):
            w.write(picture)
    (_, frame), = media.read_frames(out, 1, 1)
    assert frame.dtype == np.uint16 and ms.distinct_levels(frame) > 4000


# ----------------------------------------------------------------------------- pipes, stalls

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_fifo_source_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "clip.mov"
    os.mkfifo(fifo)
    errors = []
    worker = threading.Thread(target=lambda: errors.append(_error_of(lambda: media.probe(fifo))), daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "probing a FIFO blocked"
    assert "named pipe" in errors[0]
    seq = tmp_path / "seq"
    seq.mkdir()
    media.write_frame(seq / "shot.1001.png", np.zeros((8, 8, 3), np.uint8), fsync=False)
    os.mkfifo(seq / "shot.1002.png")
    info = media.probe(seq / "shot.%04d.png")
    assert info.frame_count == 2
    with pytest.raises(UserError, match="named pipe"):
        list(media.read_frames(info))


def _error_of(call) -> str:
    try:
        call()
    except UserError as exc:
        return exc.message
    return "no error"


def _hanging_tool(tmp_path: Path) -> str:
    script = tmp_path / "hang.sh"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stands in for a hanging tool")
def test_a_probe_that_hangs_is_stopped(tmp_path, monkeypatch):
    monkeypatch.setenv("TOON_OFX_FFPROBE", _hanging_tool(tmp_path))
    monkeypatch.setenv("TOON_OFX_MEDIA_TIMEOUT", "1")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    t = time.monotonic()
    with pytest.raises(UserError, match="longer than 1 s"):
        media.probe(clip)
    assert time.monotonic() - t < 10


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stands in for a hanging tool")
def test_a_decoder_that_stalls_is_stopped(tmp_path, monkeypatch, hevc10):
    info = media.probe(hevc10)
    monkeypatch.setenv("TOON_OFX_FFMPEG", _hanging_tool(tmp_path))
    monkeypatch.setenv("TOON_OFX_MEDIA_TIMEOUT", "1")
    t = time.monotonic()
    with pytest.raises(UserError, match="stalled"):
        list(media.read_frames(info))
    assert time.monotonic() - t < 10


# ----------------------------------------------------------------------------- timecode, numbering

@pytest.mark.parametrize("start,frames,rate,expected", [
    ("01:00:00:00", 24, "24000/1001", "01:00:01:00"),
    ("00:59:59:23", 1, "24", "01:00:00:00"),
    ("23:59:59:23", 2, "24", "00:00:00:01"),
    ("00:00:59;29", 1, "30000/1001", "00:01:00;02"),     # drop-frame skips ;00 and ;01
    ("00:09:59;29", 1, "30000/1001", "00:10:00;00"),     # ... except every tenth minute
    ("00:00:00;00", 17982, "30000/1001", "00:10:00;00"),
    ("10:00:00:00", 50, "25", "10:00:02:00"),
])
def test_timecode_offsets(start, frames, rate, expected):
    assert offset_timecode(start, frames, Fraction(rate)) == expected


def test_sequence_numbering(tmp_path):
    for n in range(1011, 1014):
        media.write_frame(tmp_path / f"shot.{n}.png", np.zeros((4, 4, 3), np.uint8), fsync=False)
    info = media.probe(tmp_path)
    assert (info.stem, info.number_format, info.first_number, info.frame_number(2)) == ("shot", "%04d", 1011, 1013)
    movie = media.probe(ms.encode(tmp_path / "clip.mp4", ms.frames(16, 16, 2), "24", ["-c:v", "libx264"]))
    assert (movie.stem, movie.number_format, movie.frame_number(1)) == ("clip", "%06d", 1)


def test_the_picture_stream_is_the_default_one_not_the_first(tmp_path):
    """A small preview track first and the picture second (flagged default): the picture is what counts."""
    clip = ms.encode(tmp_path / "two_tracks.mkv", ms.frames(320, 240, 4), "25", ["-c:v", "libx264"],
                     inputs=["-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=0.16"],
                     output=["-map", "1", "-map", "0", "-disposition:v:0", "0", "-disposition:v:1", "default"])
    info = media.probe(clip)
    assert (info.width, info.height, info.stream_index, info.frame_count) == (320, 240, 1, 4)
    (_, frame), = media.read_frames(info, 2, 2)
    assert frame.shape == (240, 320, 3)


def test_codec_help_names_every_codec():
    """options.py is stdlib-only, so it spells the codec names out: they must be media's."""
    import argparse

    from toon_ofx.core.options import add_codec_option

    parser = argparse.ArgumentParser()
    add_codec_option(parser)
    import re

    listed = set(re.findall(r"\b(?:h264|hevc|prores|dnxhr|xdcam)[\w-]*", parser._actions[-1].help))
    assert listed == set(media.codec_names())


# ----------------------------------------------------------------------------- issue 21: the last media gaps

def _stream_durations(path: Path) -> dict:
    import json
    import subprocess

    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type,duration,codec_tag_string",
                          "-of", "json", str(path)], capture_output=True, check=True).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


@pytest.mark.parametrize("suffix,codec", [(".mp4", None), (".mov", "prores-422hq")])
def test_vfr_last_frame_keeps_its_duration(tmp_path, suffix, codec):
    """VFR: a frame's duration is the time to the next one; the last one's used to be one tick."""
    durations = [0.05, 0.125, 0.0833, 0.2, 0.0417, 0.1, 0.15]
    times = np.concatenate([[0.0], np.cumsum(durations[:-1])])
    source = tmp_path / "vfr.mkv"
    listing = tmp_path / "list.ffconcat"
    lines = ["ffconcat version 1.0"]
    for k, picture in enumerate(ms.frames(64, 48, len(durations))):
        media.write_frame(tmp_path / f"src.{k}.png", picture, bits=16, fsync=False)
        lines += [f"file src.{k}.png", f"duration {durations[k]:.4f}"]
    listing.write_text("\n".join(lines) + "\n")
    ffmpeg = shutil.which("ffmpeg")
    import subprocess

    subprocess.run([ffmpeg, "-v", "error", "-f", "concat", "-safe", "0", "-i", str(listing), "-fps_mode", "vfr",
                    "-c:v", "ffv1", "-pix_fmt", "yuv444p10le", str(source)], check=True)
    info = media.probe(source)
    assert info.is_vfr and info.frame_count == len(durations)
    pattern = _frames_of(info, tmp_path / "frames", 16)
    out = media.encode_movie(pattern, tmp_path / f"out{suffix}", info, codec=codec)
    got = media.probe(out)
    assert np.allclose(got.timestamps, info.timestamps, atol=1e-4)
    assert float(_stream_durations(out)["video"]["duration"]) == pytest.approx(info.duration, abs=1e-4)
    assert got.frame_duration(got.frame_count - 1) == pytest.approx(info.frame_duration(info.frame_count - 1),
                                                                     abs=1e-4)


def test_an_rgb_coded_source_encodes_to_ycbcr(tmp_path):
    """FFV1/PNG-in-MOV sources are tagged with the "gbr" matrix, which no YCbCr encoder takes."""
    rgb = ms.encode(tmp_path / "rgb.mkv", ms.frames(64, 48, 2), "25", ["-c:v", "ffv1", "-pix_fmt", "gbrp10le"])
    info = media.probe(rgb)
    assert info.color_space == "gbr"
    pattern = _frames_of(info, tmp_path / "frames", 16)
    assert media.probe(media.encode_movie(pattern, tmp_path / "out.mp4", info)).codec == "hevc"


def test_hevc_in_mp4_and_mov_is_tagged_hvc1(hevc10, tmp_path):
    info = media.probe(hevc10)
    pattern = _frames_of(info, tmp_path / "frames", 16, 0, 1)
    for suffix in (".mp4", ".mov"):
        out = media.encode_movie(pattern, tmp_path / f"x{suffix}", info, last_frame=1)
        assert _stream_durations(out)["video"]["codec_tag_string"] == "hvc1", suffix


def test_subtitles_are_cut_to_the_frame_range(prores, tmp_path):
    import subprocess

    info = media.probe(prores)   # 12 frames at 23.976; cues 0-0.3 s and 0.3-0.6 s
    first, last = 2, 5
    pattern = _frames_of(info, tmp_path / "frames", 16, first, last)
    out = media.encode_movie(pattern, tmp_path / "part.mov", info, frame_range=(first, last), audio_from=info)
    span = info.frame_end(last) - info.frame_time(first)
    got = _stream_durations(out)
    assert float(got["subtitle"]["duration"]) == pytest.approx(span, abs=2e-3)
    cues = subprocess.run(["ffmpeg", "-v", "error", "-i", str(out), "-map", "0:s", "-f", "srt", "-"],
                          capture_output=True, text=True, check=True).stdout
    assert "00:00:00,000 --> 00:00:00,167" in cues and "second" not in cues   # the first cue, cut at 0.167 s


def test_mxf_source_is_written_back_as_mxf(work, tmp_path):
    mxf = ms.encode(work / "avid.mxf", ms.frames(PW, PH, 5), "25",
                    ["-c:v", "dnxhd", "-profile:v", "dnxhr_hq", "-pix_fmt", "yuv422p",
                     *ms.tags("bt709", "bt709", "bt709", "bt709")],
                    inputs=["-f", "lavfi", "-i", "sine=sample_rate=48000:duration=0.2"],
                    output=["-map", "0", "-map", "1", "-c:a", "pcm_s24le", "-timecode", "10:00:00:00"])
    info = media.probe(mxf)
    assert media.movie_suffix(info) == ".mxf" and media.default_codec(info).name == "dnxhr-hq"
    pattern = _frames_of(info, tmp_path / "frames", 8)
    out = media.encode_frames(pattern, tmp_path / "toon.mxf", info, audio_from=info)
    got = media.probe(out.path)
    assert (got.codec, got.profile, got.frame_count, got.timecode) == ("dnxhd", "DNXHR HQ", 5, "10:00:00:00")
    assert [s.kind for s in got.streams] == ["audio"] and out.notes == []
    xdcam = ms.encode(work / "xdcam.mxf", ms.frames(PW, PH, 5), "25",
                      ["-c:v", "mpeg2video", "-pix_fmt", "yuv422p", "-b:v", "50M", "-qmax", "28"])
    assert media.default_codec(media.probe(xdcam)).name == "xdcam-hd422"
    part = media.encode_frames(pattern, tmp_path / "xd.mxf", media.probe(xdcam))
    assert media.probe(part.path).codec == "mpeg2video"
    for codec, output in ((None, "h264.mxf"), ("prores-422hq", "p.mxf"), ("h264", "h.mxf")):
        source = media.probe(ms.encode(work / "h264.mp4", ms.frames(64, 48, 2), "25", ["-c:v", "libx264"])) \
            if codec != "prores-422hq" else info
        message = _error_of(lambda: media.encode_frames(pattern, tmp_path / output, source, codec=codec))
        assert "cannot go in an MXF file" in message and f"{Path(output).stem}.mov" in message, message
        assert "\n" not in message and not (tmp_path / output).exists()


def test_codec_switches_are_said(prores, tmp_path):
    info = media.probe(prores)
    codec, warnings = media.codec_choice(tmp_path / "x.mp4", None, info)
    assert codec.name == "hevc-10bit" and len(warnings) == 1
    assert "instead of the ProRes 422 HQ" in warnings[0] and "x.mov" in warnings[0]
    odd = media.probe(ms.encode(tmp_path / "odd.mov", ms.frames(W, H, 2), "25",
                                ["-c:v", "prores_ks", "-profile:v", "3", "-pix_fmt", "yuv422p10le"]))
    codec, warnings = media.codec_choice(tmp_path / "y.mov", None, odd)
    assert codec.name == "prores-4444" and "odd-width (641 px)" in warnings[0]
    codec, warnings = media.codec_choice(tmp_path / "z.mp4", "h264", odd)
    assert codec.name == "h264" and "4:4:4" in warnings[0] and "641x361" in warnings[0]
    assert media.codec_choice(tmp_path / "same.mov", None, info)[1] == []


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stands in for a hanging tool")
def test_an_encoder_that_stalls_is_stopped(tmp_path, monkeypatch, hevc10):
    info = media.probe(hevc10)
    pattern = _frames_of(info, tmp_path / "frames", 16, 0, 1)
    monkeypatch.setenv("TOON_OFX_FFMPEG", _hanging_tool(tmp_path))
    monkeypatch.setenv("TOON_OFX_MEDIA_TIMEOUT", "1")
    t = time.monotonic()
    message = _error_of(lambda: media.encode_frames(pattern, tmp_path / "out.mp4", info, last_frame=1))
    assert "encoding stalled" in message and "TOON_OFX_MEDIA_TIMEOUT" in message
    assert time.monotonic() - t < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "hang.sh"]   # no movie, no partial file


@pytest.mark.skipif(sys.platform == "win32", reason="shell script stands in for a hanging tool")
def test_a_cancel_stops_the_encoder_at_once(tmp_path, monkeypatch, hevc10):
    from toon_ofx.core.errors import Cancelled

    info = media.probe(hevc10)
    pattern = _frames_of(info, tmp_path / "frames", 16, 0, 1)
    monkeypatch.setenv("TOON_OFX_FFMPEG", _hanging_tool(tmp_path))   # silent: no progress line ever comes
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    t = time.monotonic()
    with pytest.raises(Cancelled):
        media.encode_frames(pattern, tmp_path / "out.mp4", info, last_frame=1, cancel=cancel)
    assert time.monotonic() - t < 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "hang.sh"]
