"""`read_frames`: stream RGB frames of a movie (through an ffmpeg pipe) or an image sequence.

Depth: frames are uint8 (``rgb24``) for 8-bit sources and uint16
(``rgb48``, full 0-65535 scale) for deeper ones (10-bit ProRes, HEVC Main
10, 16-bit PNG), unless the caller asks for 8 or 16 bits. Interlaced movies
come out as whole frames, both fields woven (see `fields` to split them).

Seeking: `read_frames` starts ffmpeg with ``-ss`` a quarter tick before the
wanted frame (ffmpeg rounds the seek to the stream's time base and its
accurate seek drops earlier frames), so frame N has the same pixels whether
read from 0 or from a seek, also with coarse time bases (1/30, 1 ms).
Streams without timestamps (``MediaInfo.seekable`` False) are read from the
start.

Colour: decoding uses the stream's tagged YCbCr matrix and range (ffmpeg's
defaults, BT.601 limited range, when untagged; encoding uses the same, so
the pictures round-trip).

Stalls: each frame must arrive within the media timeout (`tools.Watchdog`);
a decoder that hangs is killed and the read ends in a UserError.

`read_native` gives what a source holds rather than what the engine takes: a
movie's frames with their alpha plane when it has one, an image file's own
pixels (every channel; float plates stay float), for the colour-managed path
(`toon_ofx.core.pictures`).
"""
from __future__ import annotations

import subprocess
import tempfile
from typing import Iterator, Optional, Tuple, Union

import numpy as np

from ..errors import UserError
from .images import read_pixels, to_depth, to_rgb
from .info import MediaInfo, PathLike, check_range
from .probe import probe
from .tools import Watchdog, ffmpeg_exe, file_url, last_lines


_RAW = {(3, 8): "rgb24", (3, 16): "rgb48le", (4, 8): "rgba", (4, 16): "rgba64le"}


def source_bits(info: MediaInfo) -> int:
    """The depth frames of `info` are read at by default: 16 for sources deeper than 8 bits, else 8."""
    return 16 if info.bit_depth > 8 else 8


def read_frames(source: Union[PathLike, MediaInfo], first: int = 0, last: Optional[int] = None, *,
                bits: Optional[int] = None) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(index, HxWx3 RGB)`` for frames ``first..last`` (inclusive), lazily.

    `bits` 8 gives uint8, 16 gives uint16; None follows the source
    (`source_bits`). Movies stream through an ffmpeg pipe (one frame in
    memory at a time) and seek to the frame before `first`, so frame N has
    the same pixels whether read from 0 or from a seek. Closing the iterator
    early stops ffmpeg.
    """
    info = source if isinstance(source, MediaInfo) else probe(source)
    first, last = check_range(info, first, last)
    bits = source_bits(info) if bits is None else bits
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, not {bits}")
    if info.is_sequence:
        return _read_sequence(info, first, last, bits, native=False)
    return _read_movie(info, first, last, bits)


def read_native(info: MediaInfo, first: int = 0, last: Optional[int] = None, *,
                bits: int = 16) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield ``(index, H x W x C)`` frames as the source holds them: a movie's RGB or RGBA (with its alpha
    plane) at `bits`; an image file's every channel, integers at `bits`, float pixels as they are."""
    first, last = check_range(info, first, last)
    if info.is_sequence:
        return _read_sequence(info, first, last, bits, native=True)
    return _read_movie(info, first, last, bits, channels=4 if info.alpha else 3)


def _read_sequence(info: MediaInfo, first: int, last: int, bits: int,
                   native: bool) -> Iterator[Tuple[int, np.ndarray]]:
    for index in range(first, last + 1):
        pixels, fmt = read_pixels(info.file_for(index))
        if pixels.shape[:2] != (info.height, info.width):
            raise UserError(f"{info.file_for(index).name} is {pixels.shape[1]}x{pixels.shape[0]}, but the "
                            f"sequence is {info.width}x{info.height}", field="source")
        if not native:
            yield index, to_rgb(pixels, bits, fmt)
        else:
            yield index, pixels if fmt.is_float else to_depth(pixels, bits)


def _read_movie(info: MediaInfo, first: int, last: int, bits: int,
                channels: int = 3) -> Iterator[Tuple[int, np.ndarray]]:
    skip = 0 if info.seekable else first  # streams without timestamps: decode from the start
    count = last - first + 1 + skip
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error"]
    if first > 0 and info.seekable:
        cmd += ["-ss", "%.6f" % _seek_point(info, first)]
    cmd += ["-i", file_url(info.path), "-map", f"0:{info.stream_index if info.stream_index is not None else 'v:0'}",
            "-an", "-sn", "-dn", "-fps_mode", "passthrough", "-enc_time_base", "-1",
            "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", _RAW[(channels, bits)], "pipe:1"]
    dtype = np.dtype("<u2") if bits == 16 else np.dtype(np.uint8)
    frame_bytes = info.width * info.height * channels * dtype.itemsize
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile,
                                bufsize=0)
        watchdog = Watchdog(proc)
        got = 0
        try:
            while got < count:
                frame = np.empty((info.height, info.width, channels), dtype=dtype)
                watchdog.arm()  # the consumer's time between frames is not the decoder's
                complete = _read_exact(proc.stdout, memoryview(frame).cast("B"), frame_bytes)
                watchdog.disarm()
                if not complete:
                    break
                got += 1
                if got > skip:
                    yield first + got - 1 - skip, frame if bits == 8 else frame.astype(np.uint16, copy=False)
        finally:
            watchdog.stop()
            if proc.poll() is None and got < count:
                proc.kill()
            proc.stdout.close()
            rc = proc.wait()
        if watchdog.fired:
            raise UserError(f"decoding {info.path.name} stalled: frame {first + got - skip} did not arrive within "
                            f"{watchdog.limit:g} s, so the decoder was stopped (TOON_OFX_MEDIA_TIMEOUT sets the "
                            "limit)", field="source")
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
