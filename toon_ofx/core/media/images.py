"""One image file as pixels: decoding with OpenCV, RGB at 8 or 16 bits, depth conversion."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Tuple

import numpy as np

from ..errors import UserError
from .files import check_regular
from .info import PathLike


def decode_image(p: Path) -> np.ndarray:
    """cv2 decode with IMREAD_UNCHANGED (BGR/BGRA/gray, uint8/uint16); UserError if unreadable."""
    import cv2

    check_regular(p)
    try:
        data = np.fromfile(str(p), dtype=np.uint8)  # works with non-ASCII paths on Windows
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror or exc}", field="source") from None
    if data.size == 0:
        raise UserError(f"{p} is empty (0 bytes)", field="source")
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise UserError(f"{p} is not an image that can be read (damaged or unsupported format)", field="source")
    if image.dtype not in (np.uint8, np.uint16):
        if image.dtype in (np.float32, np.float64):
            image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
        else:
            image = image.astype(np.uint8)
    return image


def image_size(p: Path) -> Tuple[int, int]:
    """(width, height) of an image file: from a PNG's header, else by decoding it."""
    with open(p, "rb") as fh:
        head = fh.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    image = decode_image(p)
    return image.shape[1], image.shape[0]


def read_image(path: PathLike, bits: int = 8) -> np.ndarray:
    """One image file as HxWx3 RGB, uint8 (`bits` 8: 16-bit files rounded) or uint16 (`bits` 16); alpha dropped."""
    return to_rgb(decode_image(Path(path)), bits)


def to_rgb(image: np.ndarray, bits: int = 8) -> np.ndarray:
    """A `decode_image` result (BGR/BGRA/gray, 8/16-bit) as HxWx3 RGB at `bits` (8: uint8, 16: uint16)."""
    import cv2

    image = to_depth(image, bits)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 2:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_depth(image: np.ndarray, bits: int) -> np.ndarray:
    """uint8/uint16/float [0, 1]/bool pixels as uint8 (`bits` 8) or uint16 (`bits` 16), channels unchanged."""
    if image.dtype in (np.float32, np.float64, np.float16):
        scale = 65535.0 if bits == 16 else 255.0
        return (np.clip(image, 0.0, 1.0) * scale + 0.5).astype(np.uint16 if bits == 16 else np.uint8)
    if image.dtype == np.uint8:
        return image.astype(np.uint16) * 257 if bits == 16 else image
    if image.dtype == np.uint16:
        return image if bits == 16 else ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255 if bits == 8 else image.astype(np.uint16) * 65535
    raise ValueError(f"unsupported image dtype {image.dtype}")
