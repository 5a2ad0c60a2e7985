"""The preview endpoint's answer: one frame before and after, as PNG (standard library only).

The preview itself (toon_ofx.core.render.preview) is imported when the first preview is asked for.
"""
from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path
from typing import Any, Dict


def encode_png(image: Any) -> bytes:
    """PNG bytes of an H x W (x 1|3|4) uint8 array (numpy or anything with .shape and .tobytes())."""
    shape = tuple(image.shape)
    if len(shape) == 2:
        shape = shape + (1,)
    height, width, channels = shape
    if str(getattr(image, "dtype", "uint8")) != "uint8":
        raise ValueError(f"encode_png needs uint8 pixels, got {image.dtype}")
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    data = image.tobytes() if hasattr(image, "tobytes") else bytes(image)
    stride = width * channels
    raw = b"".join(b"\x00" + data[y * stride:(y + 1) * stride] for y in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def default_preview(source, frame, params):
    """toon_ofx.core.render.preview: (original, stylised, faces) of one frame."""
    from ..core.render import preview

    return preview(Path(source), frame, params)


def _faces_json(faces: Any) -> Any:
    if faces is None:
        return 0
    if isinstance(faces, (int, float)) and not isinstance(faces, bool):
        return int(faces)
    try:
        return len(faces)
    except TypeError:
        return int(faces)


def preview_answer(frame: int, original: Any, stylised: Any, faces: Any) -> Dict[str, Any]:
    """The POST /v1/preview answer: the frame, the face count and both images as base64 PNG."""
    return {"frame": frame, "faces": _faces_json(faces),
            "original_png": base64.b64encode(encode_png(original)).decode("ascii"),
            "stylised_png": base64.b64encode(encode_png(stylised)).decode("ascii")}
