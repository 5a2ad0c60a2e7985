"""The source's other streams in an output: every audio stream, subtitles, data, timecode and reel name.

Each stream is copied as it is when the output's container accepts it: ffmpeg's
own muxer is asked, with a one-second trial copy of that stream, so no table
here can disagree with it. When the container refuses a stream:
- audio is converted, losslessly where the container allows: PCM 24-bit in a
  .mov, FLAC in a .mkv; AAC 256 kb/s in an .mp4 (lossy: choose .mov or .mkv to
  keep PCM or other audio bit for bit);
- text subtitles become the container's text format (mov_text in .mov/.mp4,
  SubRip in .mkv); picture subtitles (DVD, Blu-ray, DVB) are left out;
- data streams are left out; a QuickTime timecode track is not copied but
  written anew from the start timecode (below).
Every conversion or omission is named in `StreamPlan.notes`.

The start timecode of the output is the source's timecode plus the first
frame's offset (`timecode.offset_timecode`); it is written as a timecode track
(.mov/.mp4) or tag (.mkv), with the source's reel name. The source's container
metadata (creation time, camera tags) is copied too.

Audio, subtitles and data are cut to the frames' span; a copied compressed
audio stream starts at the packet that holds the first frame's time and the
container's edit list trims it to the sample. A subtitle cue that starts before
the span or runs past it is cut to it (a `setts` filter: a copied cue keeps its
duration otherwise, and the container's duration with it). An MXF output takes
48 kHz PCM audio only (others are converted) and no subtitles. An image
sequence's timecode (DPX/EXR header) becomes the movie's.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .formats import muxer_for
from .info import MediaInfo, Stream
from .timecode import offset_timecode
from .tools import ffmpeg_exe, file_url, run

_TEXT_SUBTITLES = {"subrip", "srt", "ass", "ssa", "webvtt", "mov_text", "text"}
_AUDIO_FALLBACK = {"mov": ("pcm_s24le", None), "matroska": ("flac", None), "mp4": ("aac", "256k"),
                   "mxf": ("pcm_s24le", None)}  # codec, bit rate (MXF: at 48 kHz, all it takes)
_TEXT_FORMAT = {"mov": "mov_text", "mp4": "mov_text", "matroska": "srt"}


@dataclass
class StreamPlan:
    """ffmpeg arguments that carry a source's streams into an output, and what they promise."""

    inputs: List[str] = field(default_factory=list)    # "-ss T -t D -i SOURCE" (empty: nothing to carry)
    outputs: List[str] = field(default_factory=list)   # maps, codecs, metadata, timecode
    notes: List[str] = field(default_factory=list)     # what was converted or left out, and why
    audio: int = 0                                     # audio streams the output will hold
    subtitles: int = 0
    timecode: Optional[str] = None


def carry_streams(source: Optional[MediaInfo], input_index: int, output: Path, start: float, span: float,
                  first_frame: int = 0) -> StreamPlan:
    """Arguments carrying `source`'s audio, subtitles, data, timecode and metadata into `output`.

    The streams are cut to ``start .. start + span`` seconds of the source;
    `input_index` is the ffmpeg input number the source will get; the output
    starts at the source's frame `first_frame` (for its timecode).
    """
    plan = StreamPlan()
    if source is None:
        return plan
    if source.is_sequence:  # a plate's timecode (DPX/EXR header) starts the movie's
        if source.timecode and not source.is_still:
            plan.timecode = offset_timecode(source.timecode, first_frame, source.fps)
            plan.outputs += ["-timecode", plan.timecode]
        return plan
    muxer = muxer_for(output)
    k = input_index
    counts: Dict[str, int] = {"a": 0, "s": 0, "d": 0}
    for stream in source.streams:
        spec = {"audio": "a", "subtitle": "s", "data": "d"}[stream.kind]
        args = _stream_codec(source.path, stream, muxer, spec, counts[spec], plan.notes)
        if args is None:
            continue
        if spec == "s":  # a cue that starts before the span or ends after it is cut to it (copies keep durations)
            args += [f"-bsf:s:{counts[spec]}", _cut_cues(span)]
        plan.outputs += ["-map", f"{k}:{stream.index}"] + args
        counts[spec] += 1
    plan.audio, plan.subtitles = counts["a"], counts["s"]
    plan.outputs += ["-map_metadata", str(k)]
    if source.timecode:
        plan.timecode = offset_timecode(source.timecode, first_frame, source.fps)
        plan.outputs += ["-timecode", plan.timecode]
    if source.reel_name:
        plan.outputs += ["-metadata:s:v:0", f"reel_name={source.reel_name}"]
    if start > 0:
        plan.inputs += ["-ss", "%.6f" % start]
    plan.inputs += ["-t", "%.6f" % span, "-i", file_url(source.path)]
    return plan


def _stream_codec(path: Path, stream: Stream, muxer: str, spec: str, n: int, notes: List[str]) -> Optional[List[str]]:
    """Codec options for output stream `n` of its kind (`spec` a/s/d), or None when it is left out."""
    where = f"{stream.kind} stream {stream.index} ({stream.codec})"
    if stream.tag == "tmcd":
        return None  # the timecode track is written anew from the start timecode
    if muxer == "mxf":   # MXF takes 48 kHz PCM and no subtitles (a trial copy cannot tell: it needs a picture)
        copyable = stream.codec in ("pcm_s16le", "pcm_s24le") and stream.sample_rate == 48000
    else:
        copyable = _copyable(path, stream.index, stream.codec, stream.tag, muxer)
    if copyable:
        return [f"-c:{spec}:{n}", "copy"]
    if stream.kind == "audio":
        codec, rate = _AUDIO_FALLBACK[muxer]
        notes.append(f"{where} re-encoded to {codec}: the {muxer} container cannot hold it as it is")
        return [f"-c:a:{n}", codec] + ([f"-b:a:{n}", rate] if rate else []) + \
            ([f"-ar:a:{n}", "48000"] if muxer == "mxf" else [])
    if stream.kind == "subtitle" and stream.codec in _TEXT_SUBTITLES and muxer in _TEXT_FORMAT:
        notes.append(f"{where} converted to {_TEXT_FORMAT[muxer]} for the {muxer} container")
        return [f"-c:s:{n}", _TEXT_FORMAT[muxer]]
    notes.append(f"{where} left out: the {muxer} container cannot hold it")
    return None


def _cut_cues(span: float) -> str:
    """A `setts` filter that cuts each subtitle packet to ``0 .. span`` seconds of the output: a cue that
    began before the first frame starts with it, one that runs past the last frame ends with it."""
    end = "%.6f" % span
    return (f"setts=ts=max(TS\\,0):duration=round(max(0\\,min((PTS+DURATION)*TB\\,{end})"
            f"-max(PTS*TB\\,0))/TB)")


_ACCEPTED: Dict[Tuple[str, str, str], bool] = {}


def _copyable(path: Path, index: int, codec: str, tag: str, muxer: str) -> bool:
    """Whether ffmpeg's `muxer` accepts stream `index` of `path` as it is (a one-second trial copy),
    remembered per codec, codec tag and muxer."""
    key = (codec, tag, muxer)
    if key not in _ACCEPTED:
        _ACCEPTED[key] = _trial_copy(path, index, muxer)
    return _ACCEPTED[key]


def _trial_copy(path: Path, index: int, muxer: str) -> bool:
    with tempfile.TemporaryDirectory(prefix="toon-ofx-mux-") as work:
        out = run([ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", file_url(path), "-map", f"0:{index}",
                   "-c", "copy", "-t", "1", "-f", muxer, file_url(Path(work) / "trial")], f"stream {index} of {path}")
    return out.returncode == 0
