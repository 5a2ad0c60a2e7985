"""`encode_movie`: frame files -> a movie that conforms to its source.

Each frame keeps its source time through an ffconcat list and
``-fps_mode passthrough`` (VFR included); the picture is encoded with the
codec that follows the source (`formats`) at the frames' full depth (16-bit
PNGs feed a 10-bit encoder at 16 bits), in the source's colour and field
order; the source's audio, subtitles, timecode and reel name come along
(`streams`). The movie is written to a temp name next to the output, read
back (`verify`) and renamed only when everything checks out.

A VFR clip's last frame keeps its own duration: the encoder writes no
B-frames then (so the last packet is the last picture) and a `setts` filter
gives that packet the frame's duration (an image demuxer gives it one tick).
HEVC in MP4/MOV is tagged ``hvc1`` (what QuickTime and Final Cut read). A
source's pixel aspect ratio is written as the movie's sample aspect ratio.

The encoder runs under a stall deadline: no progress line for the media
timeout (``TOON_OFX_MEDIA_TIMEOUT``, 300 s) stops it with a UserError; a set
`cancel` event stops it at once (Cancelled). Either way no movie is left.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

from ..errors import Cancelled, UserError
from .files import same_file, temp_sibling
from .formats import Codec, choose_codec, color_plan, muxer_for, pixel_format_for, video_args
from .images import image_size
from .info import MediaInfo, PathLike, check_range
from .probe import probe
from .sequences import pattern_regex, resolve_sequence
from .streams import StreamPlan, carry_streams
from .tools import Watchdog, ffmpeg_exe, file_url, last_lines
from .verify import Expected, verify_movie


@dataclass
class Encoded:
    """What `encode_movie` wrote: the path, the codec it chose and notes on converted or omitted streams."""

    path: Path
    codec: Codec
    pix_fmt: str
    notes: List[str]


def encode_movie(sequence: PathLike, output: PathLike, info: MediaInfo, **options) -> Path:
    """`encode_frames` returning just the movie's path."""
    return encode_frames(sequence, output, info, **options).path


def encode_frames(sequence: PathLike, output: PathLike, info: MediaInfo, *, first_frame: Optional[int] = None,
           last_frame: Optional[int] = None, frame_range: Optional[Tuple[int, int]] = None,
           first_number: Optional[int] = None, audio_from: Union[PathLike, MediaInfo, None] = None,
           codec: Optional[str] = None, alpha: bool = False, crf: int = 16, preset: str = "medium",
           progress: Optional[Callable[[int, int], None]] = None,
           cancel: Optional[threading.Event] = None) -> Encoded:
    """Encode frame files into a movie with the source's timing, look and streams.

    `sequence` is a printf pattern (``frames/clip.%06d.png``) or a folder
    with one numbered sequence; file number = frame index + `first_number`
    (default: the source's own numbering, 0 for movies). Frames
    ``first_frame..last_frame`` (or `frame_range`, inclusive; default the
    whole clip) of `info` are encoded, each at its source time relative to
    the first one. `audio_from` (a path or MediaInfo, usually the source)
    gives the audio, subtitle and data streams, cut to the same span, and the
    start timecode. `codec` is a ``--codec`` name (default: follow the
    source, see `formats`); ``alpha=True`` writes ProRes 4444 with alpha.
    Refuses to overwrite a source. Returns what was written (`Encoded`).
    """
    output = Path(output)
    choose_codec(output, codec, info, alpha)  # a codec the output cannot take fails before anything is read
    if frame_range is not None:
        first_frame, last_frame = frame_range
    first, last = check_range(info, 0 if first_frame is None else first_frame, last_frame)
    streams_from = audio_from if isinstance(audio_from, MediaInfo) or audio_from is None else probe(audio_from)
    files = _frame_files(resolve_sequence(sequence), output, info, streams_from, first, last,
                         info.first_number if first_number is None else first_number)

    t0, span = info.frame_time(first), info.frame_end(last) - info.frame_time(first)
    frame_rate = _concat_rate(info)
    width, height = image_size(files[0])
    chosen = choose_codec(output, codec, info, alpha, width)
    pix_fmt = pixel_format_for(chosen, width, height, info.chroma, alpha)
    colour = color_plan(chosen, info)
    streams = carry_streams(streams_from, 1, output, t0, span, first)
    expected = Expected(len(files), width, height, chosen.probe_name, pix_fmt, colour.expected,
                        info.field_order, streams.audio, streams.subtitles, streams.timecode)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(output, ".partial" + output.suffix)
    with tempfile.TemporaryDirectory(prefix="toon-ofx-enc-") as work:
        list_path = Path(work) / "frames.ffconcat"
        _write_ffconcat(list_path, files, [info.frame_time(k) - t0 for k in range(first, last + 1)], span,
                        frame_rate)
        video = _exact(video_args(chosen, pix_fmt, colour, info.field_order, crf=crf, preset=preset), chosen,
                       output, info, [info.frame_time(k) - t0 for k in range(first, last + 1)], span)
        cmd = _command(list_path, tmp, output, streams, video, _track_timescale(info, frame_rate))
        try:
            _run_ffmpeg(cmd, len(files), progress, cancel)
            verify_movie(tmp, expected, output.name)
            os.replace(tmp, output)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return Encoded(output, chosen, pix_fmt, streams.notes)


def _frame_files(pattern: str, output: Path, info: MediaInfo, streams_from: Optional[MediaInfo], first: int,
                 last: int, first_number: int) -> List[Path]:
    """The frame files of ``first..last``; UserError if one is missing or the output would overwrite a source."""
    protected = [info.path] if not info.is_sequence or info.is_still else []
    if streams_from is not None:
        protected.append(streams_from.path)
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
    return files


def _command(list_path: Path, tmp: Path, output: Path, streams: StreamPlan, video: List[str],
             timescale: int) -> List[str]:
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y",
           "-f", "concat", "-safe", "0", "-i", file_url(list_path), *streams.inputs,
           "-map", "0:v:0", *video, "-fps_mode", "passthrough", "-enc_time_base", "-1", *streams.outputs]
    muxer = muxer_for(output)
    if muxer in ("mp4", "mov"):
        cmd += ["-video_track_timescale", str(timescale), "-movflags", "+faststart"]
    return cmd + ["-f", muxer, "-progress", "pipe:1", "-nostats", file_url(tmp)]


def _exact(video: List[str], codec: Codec, output: Path, info: MediaInfo, times: List[float],
           span: float) -> List[str]:
    """Video options made exact: the last frame's duration of a VFR clip, HEVC's hvc1 tag, the pixel aspect."""
    video = list(video)
    if info.is_vfr:
        if codec.encoder in ("libx264", "mpeg2video"):
            video += ["-bf", "0"]
        elif codec.encoder == "libx265":
            k = video.index("-x265-params") + 1
            video[k] += ":bframes=0"
        previous = times[-2] if len(times) > 1 else times[-1] - (span - times[-1])
        after = "%.6f" % ((previous + times[-1]) / 2)   # between the last two frames: only the last packet
        end = "%.6f" % (span - times[-1])
        setts = f"setts=duration=if(gte(PTS*TB\\,{after})\\,round({end}/TB)\\,DURATION)"
        _add_filter(video, "-bsf:v", setts)
    if codec.encoder == "libx265" and muxer_for(output) in ("mp4", "mov"):
        video += ["-tag:v", "hvc1"]
    if abs(info.pixel_aspect - 1.0) > 1e-6:
        sar = Fraction(info.pixel_aspect).limit_denominator(10000)
        _add_filter(video, "-vf", f"setsar={sar.numerator}/{sar.denominator}")
    return video


def _add_filter(args: List[str], option: str, value: str) -> None:
    """Append `value` to the comma-separated chain of `option` in `args` (adding the option if absent)."""
    if option in args:
        k = args.index(option) + 1
        args[k] += "," + value
    else:
        args += [option, value]


def _concat_rate(info: MediaInfo) -> Fraction:
    """The rate the ffconcat list declares: the clip's fps, or for VFR 1/time base (90 kHz if unknown)."""
    if info.is_vfr and info.time_base is not None and info.time_base.numerator == 1:
        return Fraction(info.time_base.denominator)
    return Fraction(90000) if info.is_vfr else info.fps


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


def _run_ffmpeg(cmd: List[str], total: int, progress, cancel) -> None:
    """Run an encode, reporting ``progress(done, total)``; a set `cancel` kills ffmpeg (Cancelled), and so
    does no progress line within the media timeout (UserError)."""
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile)
        watchdog = Watchdog(proc)
        stop = threading.Event()
        cancelled = threading.Event()

        def watch_cancel() -> None:  # a cancel must not wait for ffmpeg's next progress line
            while not stop.wait(0.1):
                if cancel.is_set():
                    cancelled.set()
                    proc.kill()
                    return

        watcher = threading.Thread(target=watch_cancel, name="encode-cancel", daemon=True)
        if cancel is not None:
            watcher.start()
        try:
            while True:
                watchdog.arm()
                raw = proc.stdout.readline()
                watchdog.disarm()
                if not raw:
                    break
                line = raw.decode("ascii", "replace").strip()
                if progress is not None and line.startswith("frame="):
                    try:
                        progress(min(int(line[6:]), total), total)
                    except ValueError:
                        pass
        finally:
            stop.set()
            watchdog.stop()
            if proc.poll() is None and (cancelled.is_set() or watchdog.fired or (cancel is not None and cancel.is_set())):
                proc.kill()
            rc = proc.wait()
            proc.stdout.close()
            if watcher.is_alive():
                watcher.join()
        if cancelled.is_set() or (cancel is not None and cancel.is_set()):
            raise Cancelled("encoding cancelled")
        if watchdog.fired:
            raise UserError(f"encoding stalled: ffmpeg reported no progress for {watchdog.limit:g} s and was "
                            "stopped (TOON_OFX_MEDIA_TIMEOUT sets the limit)", field="output")
        if rc != 0:
            errfile.seek(0)
            err = last_lines(errfile.read().decode("utf-8", "replace"))
            raise UserError(f"ffmpeg failed to encode (exit {rc}): {err or 'no message'}", field="output")
