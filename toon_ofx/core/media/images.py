"""Image files as pixels, through OpenImageIO: PNG, JPEG, TIFF, DPX, OpenEXR and the other stills and plates.

Reading keeps what the file holds (colour values as stored: OIIO is told not
to premultiply a PNG's or TIFF's alpha): its pixel type (uint8; uint16, which is
also how OIIO presents 10- and 12-bit DPX, scaled to the full 16-bit range;
float16 for half EXR; float32), every channel in file order (grey becomes
RGB), turned upright by its EXIF orientation. `ImageFormat` describes a file
from its header alone: format, pixel type, bits, channels, compression,
colour space attribute, orientation, pixel aspect, timecode and frame rate.

Writing: PNG frames go through OpenCV (measured twice as fast as OIIO's PNG
writer, bench/bench_media.py); every other format goes through OIIO, and a
frame written *like* a source file takes that file's whole header (format,
bit depth, compression, orientation and every attribute OIIO carries: DPX and
EXR header fields, timecode, pixel aspect), with its pixels turned back to the
file's own orientation. Writes are atomic (`files.atomic_write_bytes` for
PNG, a temp sibling renamed into place for OIIO).
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

from ..errors import UserError
from .files import check_regular, into_place, temp_sibling
from .info import FLOAT_TYPES, IMAGE_EXTS, ImageFormat, PathLike

#: formats read, for messages (OIIO reads more; these are what a render is tested with)
READ_FORMATS = "PNG, JPEG, TIFF, DPX, OpenEXR, BMP, WebP, Targa"
_WRITE_DTYPE = {"uint8": np.uint8, "uint16": np.uint16, "half": np.float16, "float": np.float32}
FLOAT_EXTS = (".exr", ".tif", ".tiff")   # image files that hold float pixels


def _oiio():
    import OpenImageIO as oiio

    return oiio


def _open(p: Path):
    """An OIIO ImageInput on `p`; UserError naming the file and the reason when it cannot be read."""
    oiio = _oiio()
    check_regular(p)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise UserError(f"cannot read {p}: {exc.strerror or exc}", field="source") from None
    if size == 0:
        raise UserError(f"{p} is empty (0 bytes)", field="source")
    if not os.access(p, os.R_OK):
        raise UserError(f"cannot read {p}: permission denied", field="source")
    hints = oiio.ImageSpec()
    hints.attribute("oiio:UnassociatedAlpha", 1)   # a PNG's or TIFF's colour as stored, never premultiplied
    inp = oiio.ImageInput.open(str(p), hints)
    if inp is None:
        reason = " ".join(oiio.geterror().split())
        if "could not find a format reader" in reason or "not a recognized" in reason.lower():
            raise UserError(f"{p.name} is not in an image format toon-ofx reads (it reads {READ_FORMATS} "
                            "images and sequences)", field="source")
        kind = _format_label(p)
        raise UserError(f"{p.name} is not a readable {kind} image: {reason or 'no reason given'}", field="source")
    return inp


def _format_label(p: Path) -> str:
    ext = p.suffix.lower().lstrip(".")
    return {"exr": "OpenEXR", "tif": "TIFF", "tiff": "TIFF", "jpg": "JPEG", "jpeg": "JPEG"}.get(ext, ext.upper() or
                                                                                               "image")


def _describe(spec, format_name: str) -> ImageFormat:
    pixel_type = str(spec.format)
    if pixel_type not in _WRITE_DTYPE:
        pixel_type = "float" if pixel_type in FLOAT_TYPES else "uint16"
    bits = spec.get_int_attribute("oiio:BitsPerSample", 0) or {"uint8": 8, "uint16": 16, "half": 16,
                                                               "float": 32}[pixel_type]
    names = tuple(spec.channelnames) or tuple("RGBA"[:spec.nchannels])
    if spec.nchannels <= 2:  # grey (and grey + alpha) are read as RGB(A)
        names = ("R", "G", "B") + (("A",) if spec.nchannels == 2 else ())
    elif spec.alpha_channel >= 0 and names[spec.alpha_channel] != "A":
        names = names[:spec.alpha_channel] + ("A",) + names[spec.alpha_channel + 1:]
    orientation = spec.get_int_attribute("Orientation", 1)
    orientation = orientation if 1 <= orientation <= 8 else 1
    width, height = (spec.height, spec.width) if orientation >= 5 else (spec.width, spec.height)
    fps = spec.getattribute("FramesPerSecond")
    if isinstance(fps, tuple) and len(fps) == 2 and fps[0] > 0 and fps[1] > 0:
        fps = Fraction(int(fps[0]), int(fps[1]))
    else:
        rate = spec.get_float_attribute("dpx:FrameRate", 0.0)
        fps = Fraction(rate).limit_denominator(1001) if 0 < rate <= 1000 else None
    timecode = spec.get_string_attribute("smpte:TimeCode") or None
    colorspace = spec.get_string_attribute("oiio:ColorSpace") or spec.get_string_attribute("colorInteropID") or None
    return ImageFormat(format_name, pixel_type, bits, names, width, height,
                       compression=spec.get_string_attribute("compression"), colorspace=colorspace,
                       orientation=orientation, pixel_aspect=spec.get_float_attribute("PixelAspectRatio", 1.0) or 1.0,
                       timecode=timecode, fps=fps)


def image_format(path: PathLike) -> ImageFormat:
    """What the image file at `path` holds, from its header; UserError when it cannot be read."""
    p = Path(path)
    inp = _open(p)
    try:
        return _describe(inp.spec(), inp.format_name())
    finally:
        inp.close()


def read_pixels(path: PathLike) -> Tuple[np.ndarray, ImageFormat]:
    """The pixels of an image file as they are (its type, every channel; grey as RGB), upright."""
    p = Path(path)
    inp = _open(p)
    try:
        spec = inp.spec()
        fmt = _describe(spec, inp.format_name())
        pixels = inp.read_image(0, 0, 0, spec.nchannels, fmt.pixel_type)
        if pixels is None:
            reason = " ".join(inp.geterror().split())
            raise UserError(f"{p.name} is not a readable {_format_label(p)} image: {reason or 'no reason given'}",
                            field="source")
    finally:
        inp.close()
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] <= 2:  # grey -> RGB, grey + alpha -> RGBA
        pixels = np.concatenate([np.repeat(pixels[:, :, :1], 3, axis=2), pixels[:, :, 1:]], axis=2)
    return np.ascontiguousarray(upright(pixels, fmt.orientation)), fmt


def image_size(p: Path) -> Tuple[int, int]:
    """(width, height) of an image file, upright, from its header."""
    fmt = image_format(p)
    return fmt.width, fmt.height


def read_image(path: PathLike, bits: int = 8) -> np.ndarray:
    """One image file as HxWx3 RGB, uint8 (`bits` 8) or uint16 (`bits` 16); alpha and other channels dropped,
    float pixels clipped to [0, 1] (no colour management: see toon_ofx.core.colour)."""
    pixels, fmt = read_pixels(path)
    return to_rgb(pixels, bits, fmt)


def to_rgb(pixels: np.ndarray, bits: int = 8, fmt: Optional[ImageFormat] = None) -> np.ndarray:
    """`read_pixels` pixels as HxWx3 RGB at `bits` (8: uint8, 16: uint16)."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] < 3:
        pixels = np.repeat(pixels[:, :, :1], 3, axis=2)
    index = list(fmt.rgb) if fmt is not None else [0, 1, 2]
    return np.ascontiguousarray(to_depth(pixels[:, :, index], bits))


def to_depth(image: np.ndarray, bits: int) -> np.ndarray:
    """uint8/uint16/float [0, 1]/bool pixels as uint8 (`bits` 8) or uint16 (`bits` 16), channels unchanged."""
    if image.dtype in (np.float32, np.float64, np.float16):
        scale = 65535.0 if bits == 16 else 255.0
        clipped = np.clip(image.astype(np.float32, copy=False), 0.0, 1.0)
        return (clipped * scale + 0.5).astype(np.uint16 if bits == 16 else np.uint8)
    if image.dtype == np.uint8:
        return image.astype(np.uint16) * 257 if bits == 16 else image
    if image.dtype == np.uint16:
        return image if bits == 16 else ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255 if bits == 8 else image.astype(np.uint16) * 65535
    raise ValueError(f"unsupported image dtype {image.dtype}")


# ----------------------------------------------------------------------------- orientation

def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels stored with EXIF `orientation` (1-8) as they are meant to be seen."""
    turns = {1: lambda p: p, 2: lambda p: p[:, ::-1], 3: lambda p: p[::-1, ::-1], 4: lambda p: p[::-1],
             5: lambda p: p.swapaxes(0, 1), 6: lambda p: np.rot90(p, -1),
             7: lambda p: p.swapaxes(0, 1)[::-1, ::-1], 8: lambda p: np.rot90(p, 1)}
    return turns.get(orientation, turns[1])(pixels)


def stored(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Upright pixels turned back to how a file with EXIF `orientation` stores them (inverse of `upright`)."""
    inverse = {6: 8, 8: 6}.get(orientation, orientation)  # the others are their own inverse
    return upright(pixels, inverse)


# ----------------------------------------------------------------------------- writing

def writes_with_oiio(path: Path) -> bool:
    """Whether a frame file of this name is written by OIIO (every format but PNG)."""
    return path.suffix.lower() != ".png"


def holds_float(path: Path) -> bool:
    """Whether an image file of this name can hold float pixels (OpenEXR, TIFF)."""
    return path.suffix.lower() in FLOAT_EXTS


def write_with_oiio(path: Path, image: np.ndarray, bits: int, like: Optional[Path], fsync: bool) -> None:
    """Write `image` (channels as given) atomically with OIIO, with the header of the file `like` when given."""
    oiio = _oiio()
    ext = path.suffix.lower()
    out = oiio.ImageOutput.create(path.name)
    if out is None:
        raise UserError(f"cannot write {ext} images: {' '.join(oiio.geterror().split())}", field="output")
    h, w, channels = image.shape
    if like is not None:
        inp = _open(Path(like))
        try:
            spec = oiio.ImageSpec(inp.spec())
            orientation = _describe(spec, inp.format_name()).orientation
        finally:
            inp.close()
        image = stored(image, orientation)
        h, w = image.shape[:2]
        spec.width, spec.height, spec.full_width, spec.full_height = w, h, w, h
        if spec.nchannels != channels:  # an overlay over a plate, or a grey plate written as RGB
            spec.nchannels = channels
            spec.channelnames = ("R", "G", "B", "A")[:channels] if channels <= 4 else spec.channelnames
            spec.alpha_channel = 3 if channels == 4 else -1
            spec.channelformats = ()
        if not image.dtype.kind == "f" and str(spec.format) in FLOAT_TYPES:
            spec.set_format(oiio.TypeDesc("uint16" if image.dtype == np.uint16 else "uint8"))
        elif image.dtype == np.uint16 and str(spec.format) == "uint8":
            spec.set_format(oiio.TypeDesc("uint16"))   # --16bit on an 8-bit source
            spec.erase_attribute("oiio:BitsPerSample")
    else:
        pixel = ("half" if image.dtype == np.float16 else "float") if image.dtype.kind == "f" else \
            ("uint16" if bits == 16 else "uint8")
        spec = oiio.ImageSpec(w, h, channels, pixel)
        if channels == 4:
            spec.alpha_channel = 3
    if image.dtype.kind == "f" and not holds_float(path):
        raise UserError(f"{ext} images cannot hold float pixels: write .exr or .tif", field="output")
    if image.dtype.kind != "f":
        image = to_depth(image, 16 if str(spec.format) == "uint16" else 8)
    if channels == 4 and not out.supports("alpha"):
        raise UserError(f"{ext} images cannot hold alpha: write RGBA frames as .png, .tif or .exr", field="output")
    path.parent.mkdir(parents=True, exist_ok=True)
    with into_place(temp_sibling(path, ".tmp" + ext), path) as tmp:
        if not out.open(str(tmp), spec) or not out.write_image(np.ascontiguousarray(image)) or not out.close():
            raise UserError(f"could not write {path.name}: {' '.join(out.geterror().split())}", field="output")
        if fsync:
            fd = os.open(str(tmp), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def check_writable(ext: str) -> None:
    """UserError unless frames can be written as `ext`."""
    if ext not in IMAGE_EXTS or ext in (".cin",):
        raise UserError(f"cannot write frames as {ext or 'files without extension'}: use .png, .tif, .exr or .dpx",
                        field="output")
