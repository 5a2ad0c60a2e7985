"""Source clips an online edit brings, made with ffmpeg at test time.

Pictures are 16-bit RGB made in numpy: a smooth gradient (thousands of levels,
so a decoder that drops to 8 bits shows) with, optionally, a real face (the
astronaut photo) moving across it. `encode` pipes them into ffmpeg as rgb48le
with whatever codec, colour tags, fields and extra streams a test asks for.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np


def gradient(width: int, height: int, shift: int = 0) -> np.ndarray:
    """A smooth 16-bit RGB gradient: red and green ramp across, blue down (about 10000 levels per ramp)."""
    x = (np.arange(width, dtype=np.float64) + shift) / max(width - 1, 1)
    y = np.arange(height, dtype=np.float64) / max(height - 1, 1)
    red = np.broadcast_to(0.15 + 0.7 * x[None, :], (height, width))
    green = np.broadcast_to(0.8 - 0.6 * x[None, :], (height, width))
    blue = np.broadcast_to(0.2 + 0.6 * y[:, None], (height, width))
    return np.round(np.stack([red, green, blue], axis=2) * 65535).astype(np.uint16)


def with_face(frame: np.ndarray, face: np.ndarray, x: int, y: int, size: int) -> np.ndarray:
    """`frame` with the uint8 RGB photo `face` resized to size x size pasted at (x, y), as 16-bit."""
    import cv2

    out = frame.copy()
    small = cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA).astype(np.uint16) * 257
    out[y:y + size, x:x + size] = small
    return out


def frames(width: int, height: int, count: int, face: Optional[np.ndarray] = None, face_size: int = 0,
           face_x: int = 0, face_y: int = 0, step: int = 2) -> List[np.ndarray]:
    """`count` 16-bit pictures: the gradient, the face (if any) moving `step` pixels right per frame."""
    out = []
    for i in range(count):
        picture = gradient(width, height, shift=i)
        if face is not None:
            picture = with_face(picture, face, face_x + i * step, face_y, face_size)
        out.append(picture)
    return out


def encode(path: Path, pictures: Sequence[np.ndarray], rate: str, video: Iterable[str], *,
           inputs: Iterable[str] = (), output: Iterable[str] = ()) -> Path:
    """Pipe 16-bit RGB (or RGBA) `pictures` into ffmpeg as input 0; `inputs` are further inputs (-f lavfi -i ...),
    `video` the video codec options, `output` any other output options (maps, audio, timecode...)."""
    h, w = pictures[0].shape[:2]
    raw = "rgba64le" if pictures[0].shape[2] == 4 else "rgb48le"   # RGBA pictures: a source with alpha
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", raw, "-s", f"{w}x{h}",
           "-framerate", rate, "-i", "pipe:0", *inputs, *video, *output, str(path)]
    data = b"".join(np.ascontiguousarray(p, dtype="<u2").tobytes() for p in pictures)
    subprocess.run(cmd, input=data, check=True)
    return path


def tags(space: str, primaries: str, transfer: str, matrix: str) -> List[str]:
    """Options converting RGB with `matrix` (bt709, bt601...) and tagging the stream."""
    return ["-vf", f"scale=out_color_matrix={matrix}:out_range=tv", "-colorspace", space,
            "-color_primaries", primaries, "-color_trc", transfer, "-color_range", "tv"]


def subtitles(folder: Path) -> Path:
    """A two-line SubRip file."""
    srt = folder / "subs.srt"
    srt.write_text("1\n00:00:00,000 --> 00:00:00,300\nfirst line\n\n2\n00:00:00,300 --> 00:00:00,600\nsecond\n")
    return srt


def ffprobe(path: Path, entries: str, stream: Optional[str] = None) -> List[dict]:
    """ffprobe's streams (or frames when `entries` starts with "frame=") as dicts."""
    import json

    cmd = ["ffprobe", "-v", "error", "-show_entries", entries, "-of", "json"]
    if stream is not None:
        cmd += ["-select_streams", stream]
    if entries.startswith("frame="):
        cmd += ["-read_intervals", "%+#2"]
    out = subprocess.run(cmd + [str(path)], capture_output=True, check=True).stdout
    data = json.loads(out)
    return data.get("frames" if entries.startswith("frame=") else "streams", [])


def distinct_levels(image: np.ndarray) -> int:
    """Distinct values of the first channel of `image` (a smooth ramp shows its real depth)."""
    return int(np.unique(image[..., 0]).size)


def write_image(path: Path, pixels: np.ndarray, pixel_type: str, **attributes) -> Path:
    """Write `pixels` (H x W x C) with OpenImageIO as `pixel_type` ("uint16", "half", "float"...), with header
    `attributes` (``bits=10`` for 10-bit DPX, ``compression="piz"``, ``timecode="01:00:00:00"``, any OIIO
    attribute name with ":" spelt "__", e.g. ``oiio__ColorSpace="ACEScg"``)."""
    import OpenImageIO as oiio

    h, w, c = pixels.shape
    spec = oiio.ImageSpec(w, h, c, pixel_type)
    if c == 4:
        spec.alpha_channel = 3
    for name, value in attributes.items():
        if name == "bits":
            spec.attribute("oiio:BitsPerSample", int(value))
        elif name == "timecode":
            hh, mm, ss, ff = (int(v) for v in value.split(":"))
            bcd = lambda v: (v // 10) << 4 | (v % 10)  # noqa: E731
            spec.attribute("smpte:TimeCode", oiio.TypeTimeCode, (bcd(hh) << 24 | bcd(mm) << 16 | bcd(ss) << 8 | bcd(ff), 0))
        elif name == "fps":
            spec.attribute("FramesPerSecond", oiio.TypeRational, value)
        else:
            spec.attribute(name.replace("__", ":"), value)
    out = oiio.ImageOutput.create(str(path))
    assert out.open(str(path), spec), oiio.geterror()
    assert out.write_image(np.ascontiguousarray(pixels)), out.geterror()
    out.close()
    return path


def to_acescg(rgb: np.ndarray) -> np.ndarray:
    """An sRGB picture (uint8/uint16) as scene-linear ACEScg float32, through OpenColorIO's ACES studio config."""
    import PyOpenColorIO as ocio

    config = ocio.Config.CreateFromFile("ocio://studio-config-latest")
    linear = np.ascontiguousarray(rgb.astype(np.float32) / np.iinfo(rgb.dtype).max)
    config.getProcessor("srgb_tx", "ACEScg").getDefaultCPUProcessor().applyRGB(linear)
    return linear
