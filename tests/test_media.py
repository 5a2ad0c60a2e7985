"""toon_ofx.core.media on the real fixtures: probe, streaming reads, frame files, encoding."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tracemalloc
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from toon_ofx.core import media
from toon_ofx.core.errors import UserError
from toon_ofx.core.media import files as media_files
from toon_ofx.core.media.images import to_depth

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():
    FIXTURES = Path("/work/shared/fixtures")

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                reason="ffmpeg/ffprobe not installed")

SINGLE = FIXTURES / "single_face.mp4"
NOFACE = FIXTURES / "no_face.mp4"
VFR = FIXTURES / "face_noface.mov"
TEARS = FIXTURES / "tears_of_steel_clip.mp4"
STILL = FIXTURES / "astronaut.png"


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def small(frame, size=(96, 54)):
    import cv2

    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def audio_track(path, rate=8000):
    """Mono PCM from t=0 of the file (leading gap filled with silence)."""
    out = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-map", "0:a:0",
                          "-af", "aresample=async=1:first_pts=0", "-ac", "1", "-ar", str(rate),
                          "-f", "s16le", "pipe:1"], capture_output=True, check=True).stdout
    return np.frombuffer(out, np.int16).astype(np.float64)


def audio_lag(a, b, max_lag):
    """Lag (samples) that best aligns a onto b."""
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    best = max(range(-max_lag, max_lag + 1),
               key=lambda k: float(np.dot(a[max(k, 0):n + min(k, 0)], b[max(-k, 0):n - max(k, 0)])))
    return best


def first_audible(x, rate=8000, thresh=200):
    idx = np.flatnonzero(np.abs(x) > thresh)
    return idx[0] / rate if idx.size else None


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


SUBRANGES = {
    VFR: [(1, 2), (60, 80), (72, 76), (167, 168)],   # HEVC, VFR: both grids and the splice
    NOFACE: [(1, 3), (50, 52), (94, 94)],            # edit-list pre-roll
    SINGLE: [(37, 40), (71, 71)],
}


@functools.lru_cache(maxsize=None)
def full_decode(path):
    """One full read per fixture: (count, {index: full frame} for SUBRANGES, [97x55 frames])."""
    keep = {i for a, b in SUBRANGES.get(path, []) for i in range(a, b + 1)}
    full, smalls, count = {}, [], 0
    for i, frame in media.read_frames(media.probe(path)):
        assert i == count
        count += 1
        if i in keep:
            full[i] = frame
        smalls.append(small(frame, (97, 55)))
    return count, full, smalls


# ----------------------------------------------------------------------------- probe

def test_probe_single_face():
    info = media.probe(SINGLE)
    assert (info.width, info.height) == (640, 360)
    assert info.fps == Fraction(30) and isinstance(info.fps, Fraction)
    assert info.frame_count == 72
    assert info.has_audio and info.audio_codec == "mp3"
    assert not info.is_vfr and info.timestamps is None and not info.is_sequence
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    assert info.duration == pytest.approx(2.4)


def test_probe_no_face_counts_presented_frames():
    # 98 packets, 3 of them edit-list pre-roll (discarded): 95 frames, every 1/24 s.
    info = media.probe(NOFACE)
    assert (info.width, info.height) == (960, 540)
    assert info.frame_count == 95
    assert info.fps == Fraction(24) and not info.is_vfr
    assert info.has_audio
    assert info.duration == pytest.approx(95 / 24)


def test_probe_vfr():
    info = media.probe(VFR)
    assert info.is_vfr and info.codec == "hevc"
    assert info.frame_count == 169  # coded pictures; 192 is ffmpeg's CFR resampling with duplicates
    assert len(info.timestamps) == 169
    assert all(b > a for a, b in zip(info.timestamps, info.timestamps[1:]))
    gaps = np.diff(info.timestamps)
    assert np.isclose(gaps[:72], 1 / 30).all() and np.isclose(gaps[-90:], 1 / 24).all()
    assert isinstance(info.fps, Fraction) and 26 < info.fps < 27
    assert info.has_audio and info.color_space == "bt709"
    assert info.frame_time(168) == info.timestamps[168]


def test_probe_tears():
    info = media.probe(TEARS)
    assert (info.width, info.height, info.fps, info.frame_count, info.has_audio) == (640, 360, 24, 240, False)


def test_frame_counts_match_decoders():
    """probe's count equals the frames ffmpeg (passthrough) and OpenCV actually deliver."""
    cv2 = pytest.importorskip("cv2")
    for path in (NOFACE, VFR):  # the two whose count is disputed (98 vs 95, 192 vs 169)
        info = media.probe(path)
        decoded = full_decode(path)[0]
        cap = cv2.VideoCapture(str(path))
        opencv = 0
        while cap.grab():
            opencv += 1
        cap.release()
        assert decoded == info.frame_count == opencv, path.name


def test_odd_file_names_are_files_not_patterns(tmp_path):
    odd = tmp_path / "take#2 100%done.mp4"
    shutil.copy(SINGLE, odd)
    info = media.probe(odd)
    assert info.frame_count == 72 and not info.is_sequence
    assert media.probe(info) is info


def test_probe_still_and_refusal():
    info = media.probe(STILL)
    assert info.is_still and info.is_sequence and info.frame_count == 1
    assert (info.width, info.height) == (512, 512)
    idx, frame = next(media.read_frames(info))
    assert idx == 0 and frame.shape == (512, 512, 3) and frame.dtype == np.uint8
    with pytest.raises(UserError, match="still image"):
        media.probe(STILL, allow_still=False)


# ----------------------------------------------------------------------------- bad input

def _expect(path, pattern, **kw):
    with pytest.raises(UserError) as err:
        media.probe(path, **kw)
    assert err.value.field == "source"
    msg = err.value.message
    assert pattern in msg.lower(), msg
    assert "\n" not in msg and "Traceback" not in msg
    return msg


def test_bad_input_missing(tmp_path):
    msg = _expect(tmp_path / "nope.mp4", "does not exist")
    assert "nope.mp4" in msg


def test_bad_input_text_file(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("this is not a video\n" * 20)
    _expect(txt, "not a video")
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video either\n" * 20)
    _expect(fake, "not a video")


def test_bad_input_empty_file(tmp_path):
    empty = tmp_path / "empty.mov"
    empty.write_bytes(b"")
    _expect(empty, "empty")


def test_bad_input_truncated(tmp_path):
    data = SINGLE.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # index (moov) is at the end: gone
    _expect(cut, "truncated")
    faststart = tmp_path / "fs.mp4"
    ffmpeg("-i", SINGLE, "-c", "copy", "-movflags", "+faststart", faststart)
    data = faststart.read_bytes()
    cut2 = tmp_path / "cut_fs.mp4"
    cut2.write_bytes(data[: len(data) * 2 // 3])  # index intact, last frames' data gone
    _expect(cut2, "truncated")


def test_bad_input_empty_clip_and_audio_only(tmp_path):
    empty = tmp_path / "zero_frames.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25", "-frames:v", "0", "-c:v", "libx264", empty)
    _expect(empty, "empty clip")
    audio = tmp_path / "voice.m4a"
    ffmpeg("-i", SINGLE, "-vn", "-c:a", "aac", audio)
    _expect(audio, "no video")


def test_bad_input_broken_image(tmp_path):
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    msg = _expect(bad, "not a readable png image")
    assert "damaged" not in msg


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads anything")
def test_bad_input_unreadable(tmp_path):
    locked = tmp_path / "locked.mp4"
    shutil.copy(SINGLE, locked)
    locked.chmod(0)
    try:
        _expect(locked, "permission denied")
    finally:
        locked.chmod(0o644)


def test_bad_frame_range():
    info = media.probe(SINGLE)
    for first, last in ((-1, 3), (10, 5), (70, 72)):
        with pytest.raises(UserError, match="outside the clip") as err:
            next(media.read_frames(info, first, last))
        assert err.value.field == "frames"


# ----------------------------------------------------------------------------- reading

@pytest.mark.parametrize("path", list(SUBRANGES), ids=lambda p: p.name)
def test_subrange_equals_full_read(path):
    info = media.probe(path)
    _, full, _ = full_decode(path)
    for a, b in SUBRANGES[path]:
        got = list(media.read_frames(info, a, b))
        assert [i for i, _ in got] == list(range(a, b + 1))
        for i, frame in got:
            assert frame.shape == (info.height, info.width, 3) and frame.dtype == np.uint8
            assert np.array_equal(frame, full[i]), f"{path.name} frame {i} differs after seek"


@pytest.mark.parametrize("container,opts", [("mp4", ["-video_track_timescale", "30"]), ("mkv", [])])
def test_seek_with_coarse_time_base(tmp_path, container, opts):
    """Time base of one tick per frame (or 1 ms): seeking must not land one frame early."""
    clip = tmp_path / f"coarse.{container}"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=30", "-t", "1", "-c:v", "libx264", "-g", "8", *opts, clip)
    info = media.probe(clip)
    assert info.frame_count == 30 and info.fps == 30 and not info.is_vfr
    full = dict(media.read_frames(info))
    for first in (1, 7, 8, 9, 20, 29):
        got = dict(media.read_frames(info, first, min(first + 1, 29)))
        assert all(np.array_equal(frame, full[i]) for i, frame in got.items()), first


def test_read_frames_streams_lazily():
    info = media.probe(TEARS)
    frame_bytes = info.width * info.height * 3
    gen = media.read_frames(info)
    assert iter(gen) is gen  # an iterator, not a list
    tracemalloc.start()
    try:
        count = 0
        for _index, frame in gen:
            count += 1
            del frame
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 240
    assert peak < 8 * frame_bytes, f"peak {peak} bytes: frames are being buffered"


def test_read_frames_close_early_stops_ffmpeg():
    info = media.probe(TEARS)
    gen = media.read_frames(info, 10)
    index, frame = next(gen)
    assert index == 10 and frame.shape == (360, 640, 3)
    proc = gen.gi_frame.f_locals["proc"]  # the ffmpeg decoding for this iterator
    assert proc.poll() is None
    gen.close()  # kills ffmpeg; must not raise or hang
    assert proc.poll() is not None


# ----------------------------------------------------------------------------- frame files

def test_sequence_naming(tmp_path):
    assert media.sequence_path(tmp_path, "clip", 123) == tmp_path / "clip.000123.png"
    assert media.sequence_pattern(tmp_path, "clip") % 7 == str(tmp_path / "clip.000007.png")


def test_write_frame_atomic_and_formats(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    deep = rng.integers(0, 65536, (20, 30, 3), dtype=np.uint16)
    media.write_frame(media.sequence_path(tmp_path, "a", 0), rgb)
    media.write_frame(media.sequence_path(tmp_path, "a", 1), rgba)
    media.write_frame(media.sequence_path(tmp_path, "a", 2), deep, bits=16)
    media.write_frame(media.sequence_path(tmp_path, "a", 3), rgb, bits=16)
    assert sorted(os.listdir(tmp_path)) == ["a.000000.png", "a.000001.png", "a.000002.png", "a.000003.png"]
    import cv2

    back = cv2.imread(str(tmp_path / "a.000000.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(back[:, :, ::-1], rgb)
    back = cv2.imread(str(tmp_path / "a.000001.png"), cv2.IMREAD_UNCHANGED)
    assert back.shape == (20, 30, 4) and np.array_equal(cv2.cvtColor(back, cv2.COLOR_BGRA2RGBA), rgba)
    back = cv2.imread(str(tmp_path / "a.000002.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back[:, :, ::-1], deep)
    back = cv2.imread(str(tmp_path / "a.000003.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back[:, :, ::-1], rgb.astype(np.uint16) * 257)
    assert np.array_equal(media.read_image(tmp_path / "a.000002.png"), to_depth(deep, 8))
    mode = (tmp_path / "a.000000.png").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # a normal file, not a private temp file


def test_write_frame_failure_leaves_nothing(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(media_files.os, "replace", boom)
    with pytest.raises(OSError):
        media.write_frame(tmp_path / "x.000001.png", np.zeros((4, 4, 3), np.uint8))
    assert os.listdir(tmp_path) == []


def test_existing_frames(tmp_path):
    for i in (3, 1, 2, 10):
        media.write_frame(media.sequence_path(tmp_path, "shot", i), np.zeros((4, 4, 3), np.uint8), fsync=False)
    (tmp_path / ".shot.000004.png.123-abcd.tmp").write_bytes(b"partial")   # unfinished write
    (tmp_path / "shot.000005.png").write_bytes(b"")                         # empty: not a frame
    media.write_frame(media.sequence_path(tmp_path, "other", 7), np.zeros((4, 4, 3), np.uint8), fsync=False)
    assert media.existing_frames(tmp_path, "shot") == [1, 2, 3, 10]
    assert media.existing_frames(tmp_path / "missing", "shot") == []


def test_image_sequence_source(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(5)]
    folder = tmp_path / "seq"
    for k, f in enumerate(frames):
        media.write_frame(folder / f"shot.{1001 + k:04d}.png", f, fsync=False)
    for src in (folder / "shot.%04d.png", folder / "shot.####.png", folder):
        info = media.probe(src, fps="25")
        assert info.is_sequence and not info.is_still
        assert (info.frame_count, info.first_number, info.width, info.height) == (5, 1001, 32, 24)
        assert info.fps == 25 and not info.has_audio
        got = list(media.read_frames(info, 1, 3))
        assert [i for i, _ in got] == [1, 2, 3]
        assert all(np.array_equal(f, frames[i]) for i, f in got)
    (folder / "shot.1003.png").unlink()
    with pytest.raises(UserError, match="gap"):
        media.probe(folder)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no numbered images"):
        media.probe(tmp_path / "empty_dir")
    with pytest.raises(UserError, match="no image matches"):
        media.probe(folder / "nothing.%04d.png")


# ----------------------------------------------------------------------------- encoding

def _decode_to_frames(info, folder, resize=None, first=0, last=None):
    pattern = media.sequence_pattern(folder, "f")
    if resize == (97, 55) and info.path in SUBRANGES:  # reuse the cached full decode
        smalls = full_decode(info.path)[2]
        last = len(smalls) - 1 if last is None else last
        for i in range(first, last + 1):
            media.write_frame(pattern % i, smalls[i], fsync=False)
        return pattern
    for i, frame in media.read_frames(info, first, last):
        media.write_frame(pattern % i, small(frame, resize) if resize else frame, fsync=False)
    return pattern


def test_round_trip_keeps_fps_count_size_audio(tmp_path):
    info = media.probe(SINGLE)
    pattern = _decode_to_frames(info, tmp_path / "frames")
    out = media.encode_movie(pattern, tmp_path / "out.mp4", info, audio_from=SINGLE, preset="ultrafast")
    assert out == tmp_path / "out.mp4"
    got = media.probe(out)
    assert (got.width, got.height, got.fps, got.frame_count) == (640, 360, Fraction(30), 72)
    assert got.has_audio and not got.is_vfr
    assert got.duration == pytest.approx(info.duration)
    src = dict(media.read_frames(info, 30, 31))
    for i, frame in media.read_frames(got, 30, 31):
        assert psnr(frame, src[i]) > 35  # colour matrix and levels round-trip
    a, b = audio_track(out), audio_track(SINGLE)
    assert abs(len(a) - len(b)) < 8000 * 0.05
    assert abs(audio_lag(a, b, 160)) <= 16  # within 2 ms
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames", "out.mp4"]  # no temp left


def test_vfr_round_trip_keeps_timestamps_and_audio_sync(tmp_path):
    info = media.probe(VFR)
    pattern = _decode_to_frames(info, tmp_path / "frames", resize=(97, 55))  # odd size on purpose
    out = media.encode_movie(pattern, tmp_path / "vfr.mp4", info, audio_from=info)
    got = media.probe(out)
    assert got.frame_count == 169 and got.is_vfr
    assert (got.width, got.height) == (97, 55)  # exact size (issue 14): an odd size is written 4:4:4, not padded
    assert np.allclose(got.timestamps, info.timestamps, atol=1e-6)
    assert got.fps == info.fps
    a, b = audio_track(out), audio_track(VFR)
    assert first_audible(a) == pytest.approx(first_audible(b), abs=0.03)  # audio starts 2.43 s in
    assert abs(audio_lag(a, b, 400)) <= 40  # within 5 ms


def test_vfr_subrange_encode_trims_audio(tmp_path):
    info = media.probe(VFR)
    first, last = 50, 120
    pattern = _decode_to_frames(info, tmp_path / "frames", resize=(97, 55), first=first, last=last)
    out = media.encode_movie(pattern, tmp_path / "part.mp4", info, first_frame=first, last_frame=last,
                             audio_from=VFR)
    got = media.probe(out)
    assert got.frame_count == last - first + 1
    expected = np.array(info.timestamps[first:last + 1]) - info.timestamps[first]
    assert np.allclose(got.timestamps, expected, atol=1e-6)
    a = audio_track(out)
    b = audio_track(VFR)[int(round(info.timestamps[first] * 8000)):]
    assert first_audible(a) == pytest.approx(first_audible(b), abs=0.03)
    assert len(a) / 8000 == pytest.approx(info.frame_end(last) - info.frame_time(first), abs=0.05)


@pytest.mark.parametrize("rate", ["24000/1001", "30000/1001"])
def test_ntsc_rates_kept_exactly(tmp_path, rate):
    clip = tmp_path / "ntsc.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size=96x64:rate={rate}", "-f", "lavfi",
           "-i", "sine=frequency=440:sample_rate=48000", "-t", "1.5", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-c:a", "aac", "-shortest", clip)
    info = media.probe(clip)
    assert info.fps == Fraction(rate) and not info.is_vfr
    pattern = _decode_to_frames(info, tmp_path / "frames")
    out = media.encode_movie(pattern, tmp_path / "out.mp4", info, audio_from=clip, preset="ultrafast")
    got = media.probe(out)
    assert got.fps == Fraction(rate) and got.frame_count == info.frame_count and got.has_audio
    part = media.encode_movie(pattern, tmp_path / "part.mov", info, frame_range=(5, 20), audio_from=clip)
    got = media.probe(part)
    assert got.fps == Fraction(rate) and got.frame_count == 16 and got.has_audio


def test_prores_alpha(tmp_path):
    info = media.probe(TEARS)
    rng = np.random.default_rng(2)
    for i in range(3):
        rgba = rng.integers(0, 256, (32, 48, 4), dtype=np.uint8)
        media.write_frame(media.sequence_path(tmp_path / "ov", "o", i), rgba, fsync=False)
    out = media.encode_movie(tmp_path / "ov", tmp_path / "overlay.mov", info, last_frame=2, alpha=True)
    got = media.probe(out)
    assert got.codec == "prores" and got.alpha and got.frame_count == 3 and got.fps == 24
    with pytest.raises(UserError, match="alpha"):
        media.encode_movie(tmp_path / "ov", tmp_path / "overlay.mp4", info, last_frame=2, alpha=True,
                           codec="h264")


def test_encode_refuses_source_and_missing_frames(tmp_path):
    src = tmp_path / "src.mp4"
    shutil.copy(SINGLE, src)
    before = src.read_bytes()
    info = media.probe(src)
    pattern = _decode_to_frames(info, tmp_path / "frames", resize=(64, 36), last=9)
    with pytest.raises(UserError, match="source"):
        media.encode_movie(pattern, src, info, last_frame=9, audio_from=src)
    with pytest.raises(UserError, match="source"):
        media.encode_movie(pattern, tmp_path / "frames" / ".." / "src.mp4", info, last_frame=9)
    link = tmp_path / "link.mp4"
    link.symlink_to(src)
    with pytest.raises(UserError, match="source"):
        media.encode_movie(pattern, link, info, last_frame=9)
    other = tmp_path / "other.mp4"
    shutil.copy(SINGLE, other)
    with pytest.raises(UserError, match="source"):  # the audio source is protected too
        media.encode_movie(pattern, other, info, last_frame=9, audio_from=other)
    assert src.read_bytes() == before
    with pytest.raises(UserError, match="missing"):
        media.encode_movie(pattern, tmp_path / "out.mp4", info, last_frame=10)
    assert not (tmp_path / "out.mp4").exists()


def test_failed_encode_leaves_no_partial_file(tmp_path):
    info = media.probe(SINGLE)
    pattern = _decode_to_frames(info, tmp_path / "frames", resize=(64, 36), last=4)
    Path(pattern % 3).write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # a damaged frame file
    out = tmp_path / "movie" / "out.mp4"
    with pytest.raises(UserError):
        media.encode_movie(pattern, out, info, last_frame=4)
    assert not out.parent.exists() or os.listdir(out.parent) == []


def test_movie_writer(tmp_path):
    out = tmp_path / "w.mp4"
    with media.MovieWriter(out, 64, 48, Fraction(25)) as w:
        for i in range(10):
            w.write(np.full((48, 64, 3), i * 20, np.uint8))
    info = media.probe(out)
    assert (info.frame_count, info.fps, info.width, info.height) == (10, 25, 64, 48)
    bad = tmp_path / "bad.mp4"
    with pytest.raises(RuntimeError):
        with media.MovieWriter(bad, 64, 48, 25) as w:
            w.write(np.zeros((48, 64, 3), np.uint8))
            raise RuntimeError("render crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.mp4"]
