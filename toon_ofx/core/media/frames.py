"""Rendered frame files: ``stem.000123.png`` naming, the resume scan, atomic `write_frame`."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..errors import UserError
from .files import atomic_write_bytes
from .images import check_writable, holds_float, to_depth, write_with_oiio, writes_with_oiio
from .info import FRAME_DIGITS, PathLike

DEEP_EXTS = (".png", ".tif", ".tiff", ".dpx", ".exr")


def sequence_path(folder: PathLike, stem: str, index: int, ext: str = "png", digits: int = FRAME_DIGITS) -> Path:
    """``folder/stem.000123.png`` for frame `index`."""
    return Path(folder) / f"{stem}.{int(index):0{digits}d}.{ext.lstrip('.')}"


def sequence_pattern(folder: PathLike, stem: str, ext: str = "png", digits: int = FRAME_DIGITS) -> str:
    """printf pattern of `sequence_path` names: ``folder/stem.%06d.png``."""
    return str(Path(folder) / f"{stem}.%0{digits}d.{ext.lstrip('.')}")


def existing_frames(folder: PathLike, stem: str, ext: str = "png") -> List[int]:
    """Sorted frame numbers of the finished ``stem.NNNNNN.ext`` files in `folder` (for resume).

    Temp files of unfinished writes (hidden ``.stem...tmp`` names) and empty
    files are not frames.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    regex = re.compile("^" + re.escape(stem) + r"\.(\d+)\." + re.escape(ext.lstrip(".")) + "$")
    found = []
    with os.scandir(folder) as it:
        for entry in it:
            m = regex.match(entry.name)
            if m and entry.is_file() and entry.stat().st_size > 0:
                found.append(int(m.group(1)))
    return sorted(found)


def write_frame(path: PathLike, image: np.ndarray, bits: int = 8, *, fsync: bool = True,
                like: Optional[PathLike] = None) -> Path:
    """Write an image atomically (temp file in the same folder, then rename); readers never see a partial file.

    `image` is HxW, HxWx3 RGB, HxWx4 RGBA (or more channels, for OpenEXR), uint8, uint16 or float: written at
    `bits` 8 or 16 (16 for .png, .tif, .dpx, .exr), floats kept as floats where the format holds them (.exr,
    .tif), else taken as [0, 1]. PNG goes through OpenCV, every other format through OpenImageIO; `like`
    (an image file, for a plate: its source frame) gives the file's header: format, bit depth,
    compression, orientation and metadata (see `images`).
    """
    import cv2

    path = Path(path)
    if bits not in (8, 16):
        raise UserError(f"bits must be 8 or 16, not {bits}", field="bits")
    ext = path.suffix.lower()
    check_writable(ext)
    if bits == 16 and ext not in DEEP_EXTS:
        raise UserError(f"16-bit frames need .png, .tif, .dpx or .exr, not {ext}", field="bits")
    image = np.asarray(image)
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4) and ext != ".exr"):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.dtype.kind == "f" and not holds_float(path):
        image = to_depth(image, bits)
    if writes_with_oiio(path):
        write_with_oiio(path, image if image.ndim == 3 else image[:, :, None], bits,
                        Path(like) if like is not None else None, fsync)
        return path
    image = to_depth(image, bits)
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(image))
    if not ok:
        raise UserError(f"could not encode {path.name}", field="output")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.tobytes(), fsync=fsync)
    return path
