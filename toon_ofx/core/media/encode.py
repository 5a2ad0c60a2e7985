"""`encode_movie`: frame files -> a movie with the source's frame timing (VFR included) and audio.

Each frame keeps its source time through an ffconcat list and
``-fps_mode passthrough``; the movie is encoded to a temp name next to the
output and renamed only when ffmpeg succeeded and the frame count checks out.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from fractions import Fraction
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

from ..errors import Cancelled, UserError
from .files import same_file, temp_sibling
from .formats import audio_args, codec_for, muxer_for, video_args
from .info import MediaInfo, PathLike, check_range
from .probe import probe
from .sequences import pattern_regex, resolve_sequence
from .tools import ffmpeg_exe, file_url, last_lines


def _track_timescale(info: MediaInfo, frame_rate: Fraction) -> int:
    """mp4/mov video timescale in which every frame time is a whole number of ticks."""
    if info.is_vfr:
        return frame_rate.numerator  # frame_rate is 1/time_base
    ts = frame_rate.numerator
    while ts < 10000:
        ts *= 2
    return ts


def _ffconcat_quote(path: str) -> str:
    """`path` as a quoted ffconcat string (a ' becomes '\\'')."""
    return "'" + path.replace("'", "'\\''") + "'"


def _write_ffconcat(list_path: Path, files: List[Path], times: List[float], end: float,
                    frame_rate: Fraction) -> None:
    """ffconcat list: each frame shows until the next one's time (rounded once, no drift)."""
    us = [round(t * 1_000_000) for t in times] + [round(end * 1_000_000)]
    rate = f"{frame_rate.numerator}/{frame_rate.denominator}"
    lines = ["ffconcat version 1.0"]
    for k, f in enumerate(files):
        dur = max(1, us[k + 1] - us[k])
        lines.append(f"file {_ffconcat_quote(str(Path(f).absolute()))}")
        lines.append(f"option framerate {rate}")
        lines.append("duration %d.%06d" % divmod(dur, 1_000_000))
    list_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def encode_movie(sequence: PathLike, output: PathLike, info: MediaInfo, *,
                 first_frame: Optional[int] = None, last_frame: Optional[int] = None,
                 frame_range: Optional[Tuple[int, int]] = None, first_number: int = 0,
                 audio_from: Union[PathLike, MediaInfo, None] = None, codec: Optional[str] = None,
                 alpha: bool = False, crf: int = 16, preset: str = "medium",
                 progress: Optional[Callable[[int, int], None]] = None,
                 cancel: Optional[threading.Event] = None) -> Path:
    """Encode frame files into a movie with the source's timing and audio.

    `sequence` is a printf pattern (``frames/clip.%06d.png``) or a folder
    with one numbered sequence; file number = frame index + `first_number`.
    Frames ``first_frame..last_frame`` (or `frame_range`, inclusive; default
    the whole clip) of `info` are encoded; each keeps its source time
    (VFR included), relative to the first one. Audio from `audio_from` (a
    path or MediaInfo, usually the source) is cut to the same span. H.264
    (yuv420p, CRF `crf`, odd sizes padded by one pixel right/bottom) or
    ProRes 4444 (``alpha=True``, .mov). Written under a temp name next to
    `output` and renamed when ffmpeg succeeded; refuses to overwrite a
    source. Returns the output path.
    """
    output = Path(output)
    codec = codec_for(output, codec, alpha)
    if frame_range is not None:
        first_frame, last_frame = frame_range
    first, last = check_range(info, 0 if first_frame is None else first_frame, last_frame)
    pattern = resolve_sequence(sequence)

    # never write over a source
    audio_info = None
    if isinstance(audio_from, MediaInfo):
        audio_info = audio_from
    elif audio_from is not None:
        audio_info = probe(audio_from)
    protected = [info.path] if not info.is_sequence or info.is_still else []
    if audio_info is not None:
        protected.append(audio_info.path)
    for src in protected:
        if same_file(output, Path(src)):
            raise UserError(f"output {output} is the source {src}; the source is never written to", field="output")
    if info.is_sequence and not info.is_still:
        m = pattern_regex(Path(info.path).name)[0].match(output.name)
        if m and output.parent.resolve() == Path(info.path).parent.resolve():
            raise UserError(f"output {output} is a frame of the source sequence", field="output")

    files = [Path(pattern % (k + first_number)) for k in range(first, last + 1)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise UserError(f"cannot encode {output.name}: frame file {missing[0]}{more} missing", field="frames")
    for f in files:
        if same_file(output, f):
            raise UserError(f"output {output} is one of the frame files", field="output")

    t0 = info.frame_time(first)
    t_end = info.frame_end(last)
    span = t_end - t0
    if info.is_vfr and info.time_base is not None and info.time_base.numerator == 1:
        frame_rate = Fraction(info.time_base.denominator)
    elif info.is_vfr:
        frame_rate = Fraction(90000)
    else:
        frame_rate = info.fps
    times = [info.frame_time(k) - t0 for k in range(first, last + 1)]

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(output, ".partial" + output.suffix)
    with tempfile.TemporaryDirectory(prefix="toon-ofx-enc-") as work:
        list_path = Path(work) / "frames.ffconcat"
        _write_ffconcat(list_path, files, times, span, frame_rate)
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y",
               "-f", "concat", "-safe", "0", "-i", file_url(list_path)]
        has_audio = audio_info is not None and audio_info.has_audio and not audio_info.is_sequence
        if has_audio:
            if t0 > 0:
                cmd += ["-ss", "%.6f" % t0]
            cmd += ["-t", "%.6f" % span, "-i", file_url(audio_info.path)]
        cmd += ["-map", "0:v:0"]
        if has_audio:
            cmd += ["-map", "1:a:0?"]
        cmd += video_args(codec, alpha=alpha, crf=crf, preset=preset, color_from=info)
        cmd += ["-fps_mode", "passthrough", "-enc_time_base", "-1"]
        if has_audio:
            cmd += audio_args(output)
        muxer = muxer_for(output)
        if muxer in ("mp4", "mov"):
            cmd += ["-video_track_timescale", str(_track_timescale(info, frame_rate)), "-movflags", "+faststart"]
        cmd += ["-f", muxer, "-progress", "pipe:1", "-nostats", file_url(tmp)]
        try:
            _run_ffmpeg(cmd, len(files), progress, cancel)
            got = probe(tmp)
            if got.frame_count != len(files):
                raise UserError(f"encoding {output.name} produced {got.frame_count} frames instead of "
                                f"{len(files)}", field="output")
            os.replace(tmp, output)
        except BaseException:
            try:
                tmp.unlink()
            except OSError:
                pass
            raise
    return output


def _run_ffmpeg(cmd: List[str], total: int, progress, cancel) -> None:
    """Run an encode, reporting ``progress(done, total)`` and killing ffmpeg when `cancel` is set."""
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile)
        try:
            for raw in proc.stdout:
                if cancel is not None and cancel.is_set():
                    proc.kill()
                    proc.wait()
                    raise Cancelled("encoding cancelled")
                line = raw.decode("ascii", "replace").strip()
                if progress is not None and line.startswith("frame="):
                    try:
                        progress(min(int(line[6:]), total), total)
                    except ValueError:
                        pass
        finally:
            if proc.poll() is None:
                if cancel is not None and cancel.is_set():
                    proc.kill()
            rc = proc.wait()
            proc.stdout.close()
        if rc != 0:
            errfile.seek(0)
            err = last_lines(errfile.read().decode("utf-8", "replace"))
            raise UserError(f"ffmpeg failed to encode (exit {rc}): {err or 'no message'}", field="output")
