"""`read_frames`: stream RGB frames of a movie (through an ffmpeg pipe) or an image sequence.

Seeking: `read_frames` starts ffmpeg with ``-ss`` a quarter tick before the
wanted frame (ffmpeg rounds the seek to the stream's time base and its
accurate seek drops earlier frames), so frame N has the same pixels whether
read from 0 or from a seek, also with coarse time bases (1/30, 1 ms).
Streams without timestamps (``MediaInfo.seekable`` False) are read from the
start.

Colour: decoding uses the stream's tagged YCbCr matrix (ffmpeg's default,
BT.601, when untagged).
"""
from __future__ import annotations

import subprocess
import tempfile
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from ..errors import UserError
from .images import decode_image, to_rgb8
from .info import MediaInfo, PathLike, check_range
from .probe import probe
from .tools import ffmpeg_exe, file_url, last_lines


def read_frames(source: Union[PathLike, MediaInfo], first: int = 0, last: Optional[int] = None
                ) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(index, HxWx3 uint8 RGB)`` for frames ``first..last`` (inclusive), lazily.

    Movies stream through an ffmpeg pipe (one frame in memory at a time) and
    seek to the frame before `first`, so frame N has the same pixels whether
    read from 0 or from a seek. Closing the iterator early stops ffmpeg.
    """
    info = source if isinstance(source, MediaInfo) else probe(source)
    first, last = check_range(info, first, last)
    if info.is_sequence:
        return _read_sequence(info, first, last)
    return _read_movie(info, first, last)


def _read_sequence(info: MediaInfo, first: int, last: int) -> Iterator[Tuple[int, np.ndarray]]:
    for index in range(first, last + 1):
        image = to_rgb8(decode_image(info.file_for(index)))
        if image.shape[:2] != (info.height, info.width):
            raise UserError(f"{info.file_for(index).name} is {image.shape[1]}x{image.shape[0]}, but the sequence "
                            f"is {info.width}x{info.height}", field="source")
        yield index, image


def _read_movie(info: MediaInfo, first: int, last: int) -> Iterator[Tuple[int, np.ndarray]]:
    skip = 0 if info.seekable else first  # streams without timestamps: decode from the start
    count = last - first + 1 + skip
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error"]
    if first > 0 and info.seekable:
        cmd += ["-ss", "%.6f" % _seek_point(info, first)]
    cmd += ["-i", file_url(info.path), "-map", f"0:{info.stream_index if info.stream_index is not None else 'v:0'}",
            "-an", "-sn", "-dn", "-fps_mode", "passthrough", "-enc_time_base", "-1",
            "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1"]
    frame_bytes = info.width * info.height * 3
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile,
                                bufsize=0)
        got = 0
        try:
            while got < count:
                frame = np.empty((info.height, info.width, 3), dtype=np.uint8)
                if not _read_exact(proc.stdout, memoryview(frame).cast("B"), frame_bytes):
                    break
                got += 1
                if got > skip:
                    yield first + got - 1 - skip, frame
        finally:
            if proc.poll() is None and got < count:
                proc.kill()
            proc.stdout.close()
            rc = proc.wait()
        if got < count:
            errfile.seek(0)
            err = last_lines(errfile.read().decode("utf-8", "replace"))
            raise UserError(f"could not decode frame {first + got - skip} of {info.path.name} (got {got} of {count} "
                            f"frames; ffmpeg exit {rc}){': ' + err if err else ''}; the file may be truncated "
                            "or damaged", field="source")


def _seek_point(info: MediaInfo, index: int) -> float:
    """An ``-ss`` time that makes ffmpeg's accurate seek start exactly at frame `index`.

    ffmpeg rounds the seek offset to the stream's time base and drops frames
    before it, so aim a quarter tick (at least 2 us, the printed precision)
    before the frame, but never earlier than midway from the previous frame.
    """
    t = info.frame_time(index)
    tick = float(info.time_base) if info.time_base else 1 / 90000
    midway = (info.frame_time(index - 1) + t) / 2
    return max(midway, t - max(tick / 4, 2e-6))


def _read_exact(stream, view: memoryview, size: int) -> bool:
    pos = 0
    while pos < size:
        n = stream.readinto(view[pos:])
        if not n:
            return False
        pos += n
    return True
