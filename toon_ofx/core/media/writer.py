"""`MovieWriter`: pipe RGB(A) frames straight into an ffmpeg encoder."""
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
from .formats import audio_args, codec_for, muxer_for, video_args
from .images import to_depth
from .info import MediaInfo, PathLike, as_fraction
from .probe import probe
from .tools import ffmpeg_exe, file_url, last_lines


class MovieWriter:
    """Pipe frames straight into ffmpeg (constant frame rate, no resume).

    ``with MovieWriter(out, width, height, fps) as w: w.write(rgb)``. The
    movie appears under its name only when `close` succeeded; on an
    exception the temp file is deleted. For VFR sources or resumable renders
    use `write_frame` + `encode_movie`.
    """

    def __init__(self, output: PathLike, width: int, height: int, fps: Union[Fraction, float, str], *,
                 codec: Optional[str] = None, alpha: bool = False, crf: int = 16, preset: str = "medium",
                 audio_from: Union[PathLike, MediaInfo, None] = None, audio_start: float = 0.0,
                 color_from: Optional[MediaInfo] = None):
        self.output = Path(output)
        self.codec = codec_for(self.output, codec, alpha)
        self.width, self.height, self.alpha = int(width), int(height), bool(alpha)
        self.fps = as_fraction(fps)
        self.frames = 0
        audio = audio_from if isinstance(audio_from, MediaInfo) or audio_from is None else probe(audio_from)
        if audio is not None and same_file(self.output, Path(audio.path)):
            raise UserError(f"output {self.output} is the source; the source is never written to", field="output")
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_sibling(self.output, ".partial" + self.output.suffix)
        rate = f"{self.fps.numerator}/{self.fps.denominator}"
        in_fmt = "rgba" if alpha else "rgb24"
        cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", in_fmt, "-s", f"{self.width}x{self.height}", "-framerate", rate,
               "-i", "pipe:0"]
        self._has_audio = audio is not None and audio.has_audio and not audio.is_sequence
        if self._has_audio:
            if audio_start > 0:
                cmd += ["-ss", "%.6f" % audio_start]
            cmd += ["-i", file_url(audio.path), "-map", "0:v:0", "-map", "1:a:0?", "-shortest"]
        cmd += video_args(self.codec, alpha=alpha, crf=crf, preset=preset, color_from=color_from)
        if self._has_audio:
            cmd += audio_args(self.output)
        cmd += ["-f", muxer_for(self.output), file_url(self._tmp)]
        self._err = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._err)
        self._closed = False

    def write(self, image: np.ndarray) -> None:
        """Append one HxWx3 RGB (or HxWx4 RGBA with alpha=True) uint8 frame."""
        image = np.asarray(image)
        channels = 4 if self.alpha else 3
        if image.dtype != np.uint8:
            image = to_depth(image, 8)
        if image.ndim == 3 and image.shape[2] == 3 and channels == 4:
            image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
        elif image.ndim == 3 and image.shape[2] == 4 and channels == 3:
            image = image[:, :, :3]
        if image.shape != (self.height, self.width, channels):
            raise ValueError(f"frame shape {image.shape} != {(self.height, self.width, channels)}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(image).tobytes())
        except BrokenPipeError:
            self.abort()
            raise UserError(f"ffmpeg stopped while writing {self.output.name}", field="output") from None
        self.frames += 1

    def close(self) -> Path:
        """Finish the movie and move it into place."""
        if self._closed:
            return self.output
        self._closed = True
        self._proc.stdin.close()
        rc = self._proc.wait()
        self._err.seek(0)
        err = last_lines(self._err.read().decode("utf-8", "replace"))
        self._err.close()
        if rc != 0 or self.frames == 0:
            self._tmp.unlink(missing_ok=True)
            raise UserError(f"ffmpeg failed to write {self.output.name} (exit {rc}): {err or 'no frames'}",
                            field="output")
        os.replace(self._tmp, self.output)
        return self.output

    def abort(self) -> None:
        """Stop ffmpeg and delete the partial file."""
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
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "MovieWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
