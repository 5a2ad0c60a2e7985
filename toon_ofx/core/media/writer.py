"""`MovieWriter`: pipe RGB(A) frames straight into an ffmpeg encoder.

The picture is encoded while frames arrive; the source's audio, subtitles and
timecode (`streams`) are muxed in when the writer is closed, cut to exactly
the frames written, so every frame written is in the movie whatever the
audio's length (``-shortest`` would end the movie with the shortest stream
and drop the last frames of a clip whose audio ends early).
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ..errors import UserError
from .files import same_file, temp_sibling
from .formats import choose_codec, color_plan, muxer_for, pixel_format_for, video_args
from .images import to_depth
from .info import MediaInfo, PathLike, as_fraction
from .probe import probe
from .streams import carry_streams
from .tools import ffmpeg_exe, file_url, last_lines, run
from .verify import Expected, verify_movie

_INPUT_FORMATS = {(3, 8): "rgb24", (4, 8): "rgba", (3, 16): "rgb48le", (4, 16): "rgba64le"}


class MovieWriter:
    """Pipe frames straight into ffmpeg (constant frame rate, no resume).

    ``with MovieWriter(out, width, height, fps) as w: w.write(rgb)``. The
    movie appears under its name only when `close` succeeded and the file
    read back as promised; on an exception the temp files are deleted.
    `color_from` (usually the source) gives the codec default, colour and
    field order; `audio_from` the streams carried along, from `audio_start`
    seconds on. For VFR sources or resumable renders use `write_frame` +
    `encode_movie`.
    """

    def __init__(self, output: PathLike, width: int, height: int, fps: Union[Fraction, float, str], *,
                 codec: Optional[str] = None, alpha: bool = False, bits: int = 8, crf: int = 16,
                 preset: str = "medium", audio_from: Union[PathLike, MediaInfo, None] = None,
                 audio_start: float = 0.0, color_from: Optional[MediaInfo] = None):
        self.output = Path(output)
        self.width, self.height, self.alpha, self.bits = int(width), int(height), bool(alpha), int(bits)
        self.codec = choose_codec(self.output, codec, color_from, alpha, self.width)
        if self.bits not in (8, 16):
            raise ValueError(f"bits must be 8 or 16, not {bits}")
        self.fps = as_fraction(fps)
        self.frames = 0
        audio = audio_from if isinstance(audio_from, MediaInfo) or audio_from is None else probe(audio_from)
        if audio is not None and same_file(self.output, Path(audio.path)):
            raise UserError(f"output {self.output} is the source; the source is never written to", field="output")
        self._streams_from, self._audio_start = audio, float(audio_start)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_sibling(self.output, ".partial" + self.output.suffix)
        self._video = temp_sibling(self.output, ".video" + self.output.suffix) if audio is not None else self._tmp
        self._fields = color_from.field_order if color_from is not None else "progressive"
        self._pix_fmt = pixel_format_for(self.codec, self.width, self.height,
                                         color_from.chroma if color_from else None, alpha)
        colour = color_plan(self.codec, color_from)
        self._color = colour.expected
        rate = f"{self.fps.numerator}/{self.fps.denominator}"
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y", "-f", "rawvideo",
               "-pix_fmt", _INPUT_FORMATS[(4 if alpha else 3, self.bits)], "-s", f"{self.width}x{self.height}",
               "-framerate", rate, "-i", "pipe:0",
               *video_args(self.codec, self._pix_fmt, colour, self._fields, crf=crf, preset=preset),
               "-f", muxer_for(self.output), file_url(self._video)]
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        self._closed = False

    def write(self, image: np.ndarray) -> None:
        """Append one HxWx3 RGB (or HxWx4 RGBA with alpha=True) frame, uint8 or uint16."""
        image = to_depth(np.asarray(image), self.bits)
        channels = 4 if self.alpha else 3
        if image.ndim == 3 and image.shape[2] == 3 and channels == 4:
            opaque = np.full(image.shape[:2] + (1,), np.iinfo(image.dtype).max, image.dtype)
            image = np.concatenate([image, opaque], axis=2)
        elif image.ndim == 3 and image.shape[2] == 4 and channels == 3:
            image = image[:, :, :3]
        if image.shape != (self.height, self.width, channels):
            raise ValueError(f"frame shape {image.shape} != {(self.height, self.width, channels)}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<")).tobytes())
        except BrokenPipeError:
            self.abort()
            raise UserError(f"ffmpeg stopped while writing {self.output.name}", field="output") from None
        self.frames += 1

    def close(self) -> Path:
        """Finish the movie, mux the source's streams in, check it and move it into place."""
        if self._closed:
            return self.output
        self._closed = True
        self._proc.stdin.close()
        rc = self._proc.wait()
        self._err.seek(0)
        err = last_lines(self._err.read().decode("utf-8", "replace"))
        self._err.close()
        try:
            if rc != 0 or self.frames == 0:
                raise UserError(f"ffmpeg failed to write {self.output.name} (exit {rc}): {err or 'no frames'}",
                                field="output")
            expected = Expected(self.frames, self.width, self.height, self.codec.probe_name, self._pix_fmt,
                                self._color, self._fields)
            if self._streams_from is not None:
                self._mux_streams(expected)
            verify_movie(self._tmp, expected, self.output.name)
            os.replace(self._tmp, self.output)
        finally:
            self._remove_temps()
        return self.output

    def _mux_streams(self, expected: Expected) -> None:
        """Copy the encoded picture and add the source's streams, cut to the frames' span."""
        source = self._streams_from
        span = float(Fraction(self.frames) / self.fps)
        first = int(round(self._audio_start * float(source.fps))) if not source.is_sequence else 0
        streams = carry_streams(source, 1, self.output, self._audio_start, span, first)
        cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", "-i", file_url(self._video), *streams.inputs,
               "-map", "0:v:0", "-c:v", "copy", *streams.outputs, "-f", muxer_for(self.output), file_url(self._tmp)]
        out = run(cmd, f"the streams of {source.path}", field="output")
        if out.returncode != 0:
            raise UserError(f"ffmpeg failed to add the source's streams to {self.output.name}: "
                            f"{last_lines(out.stderr.decode('utf-8', 'replace'))}", field="output")
        expected.audio, expected.subtitles, expected.timecode = streams.audio, streams.subtitles, streams.timecode

    def _remove_temps(self) -> None:
        for path in {self._video, self._tmp}:
            path.unlink(missing_ok=True)

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial files."""
        if self._closed:
            return
        self._closed = True
        try:
            self._proc.kill()
        except OSError:
            pass
        self._proc.wait()
        for fh in (self._proc.stdin, self._err):
            try:
                fh.close()
            except (OSError, ValueError):
                pass
        self._remove_temps()

    def __enter__(self) -> "MovieWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
