"""Pixel depths the engine takes: RGB frames as uint8 (8-bit sources) or uint16 (deeper sources).

A uint16 frame uses the full 0-65535 scale. Alignment, paste-back and the
generator's input and output work in float, so a 16-bit frame keeps its
precision end to end; face detection, which needs no more than 8 bits, sees
the frame rounded to uint8.
"""
from __future__ import annotations

import numpy as np

DEPTHS = (np.uint8, np.uint16)


def peak(dtype) -> int:
    """The white level of an engine pixel type: 255 (uint8) or 65535 (uint16)."""
    dtype = np.dtype(dtype)
    if dtype not in DEPTHS:
        raise ValueError(f"pixels must be uint8 or uint16, not {dtype}")
    return int(np.iinfo(dtype).max)


def check_rgb(image, what: str = "frame") -> np.ndarray:
    """`image` as an array if it is H x W x 3 uint8 or uint16; ValueError otherwise."""
    image = np.asarray(image)
    if image.dtype not in DEPTHS or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be H x W x 3 uint8 or uint16, got {image.dtype} {image.shape}")
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 as is; uint16 rounded to the nearest 8-bit level."""
    if image.dtype == np.uint8:
        return image
    return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def to_dtype(image: np.ndarray, dtype) -> np.ndarray:
    """uint8/uint16 pixels rescaled to `dtype` (uint8 or uint16), rounding to the nearest level."""
    dtype = np.dtype(dtype)
    if image.dtype == dtype:
        return image
    if dtype == np.uint8:
        return to_uint8(image)
    return image.astype(np.uint16) * 257
