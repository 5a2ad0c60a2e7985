"""Colour management with OpenColorIO: a source's pictures into the engine's working space, and exactly back.

The face models were trained on display-referred sRGB/Rec.709 pictures, so the
engine works on those. The working space is the config's "sRGB Encoded Rec.709
(sRGB)" (alias ``srgb_tx``): linear Rec.709 through the sRGB curve, no tone
mapping, so the transform has an exact inverse. A scene-linear plate (ACEScg
EXR) goes into it, is stylised, and the pixels the engine changed come back
through the inverse; every other pixel keeps its original value
(`toon_ofx.core.pictures`), so outside the faces a plate returns as it came,
values above 1.0 and negative ones included. Inside the changed pixels, values
outside the working space's [0, 1] (highlights above display white, negative
colours) are clipped to it before the engine sees them, and the stylised result
comes back within the range that [0, 1] maps to (in ACEScg: up to the
linear value of display white).

The input colour space (the ``input_colorspace`` parameter) is a name or alias
the config knows, or "auto":
- movies: ordinary Rec.709/sRGB video, already the working space (nothing is
  converted and OpenColorIO is not even loaded);
- image files: the file's colour space attribute (an EXR's ``colorInteropID``,
  OIIO's ``oiio:ColorSpace``) when the config knows it; else the config's file
  rules when a rule other than the default one names a scene-referred space
  (the ACES studio config: ``*.exr`` is ACES2065-1); else sRGB (the working
  space).

The config is ``$OCIO`` (the CLI's ``--ocio-config`` sets it), else the ACES
studio config built into OpenColorIO (``ocio://studio-config-latest``).
"""
from __future__ import annotations

import difflib
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, List, Optional

import numpy as np

from .errors import UserError

BUILTIN_CONFIG = "ocio://studio-config-latest"
WORKING_NAMES = ("sRGB Encoded Rec.709 (sRGB)", "srgb_tx", "sRGB - Texture", "Utility - sRGB - Texture")
AUTO = "auto"
_CHUNK_ROWS = 64   # rows per piece when a picture is converted on several threads


@dataclass
class Colour:
    """How a source's pictures reach the working space: `to_working` and its inverse `from_working`
    (float32 RGB arrays, converted in place and returned); `identity` when there is nothing to convert."""

    name: str                     # the input colour space as the config names it (the working space: identity)
    working: str
    how: str                      # "video", "file", "rule", "default" or "given"
    _forward: Any = field(default=None, repr=False)     # lossless CPU processors, float32 -> float32
    _inverse: Any = field(default=None, repr=False)
    _processor: Any = field(default=None, repr=False)   # the forward OCIO Processor (for `to_engine`)
    _to_codes: dict = field(default_factory=dict, repr=False)

    @property
    def identity(self) -> bool:
        return self._forward is None

    def to_working(self, rgb: np.ndarray) -> np.ndarray:
        return self._apply(self._forward, rgb)

    def from_working(self, rgb: np.ndarray) -> np.ndarray:
        return self._apply(self._inverse, rgb)

    def to_engine(self, rgb: np.ndarray, bits: int) -> np.ndarray:
        """Source RGB (H x W x 3: float16, float32, or uint8/uint16 codes of [0, 1]) straight to the engine's
        integer codes (uint8/uint16) in the working space, clipped and rounded by OpenColorIO's default
        kernels: within one code of quantising `to_working` (measured), at a third of its cost, and with no
        conversion of the pixels in Python (bench/bench_media.py)."""
        out_dtype = np.uint16 if bits == 16 else np.uint8
        if self.identity:
            if rgb.dtype.kind != "f":
                from .media.images import to_depth

                return np.ascontiguousarray(to_depth(rgb, bits))
            scale = 65535.0 if bits == 16 else 255.0
            return (np.clip(rgb.astype(np.float32), 0.0, 1.0) * scale + 0.5).astype(out_dtype)
        ocio = _ocio()
        depths = {np.dtype(np.float16): ocio.BIT_DEPTH_F16, np.dtype(np.float32): ocio.BIT_DEPTH_F32,
                  np.dtype(np.uint16): ocio.BIT_DEPTH_UINT16, np.dtype(np.uint8): ocio.BIT_DEPTH_UINT8}
        rgb = np.ascontiguousarray(rgb if rgb.dtype in depths else rgb.astype(np.float32))
        key = (rgb.dtype, bits)
        if key not in self._to_codes:
            self._to_codes[key] = self._processor.getOptimizedCPUProcessor(
                depths[rgb.dtype], depths[np.dtype(out_dtype)], ocio.OPTIMIZATION_DEFAULT)
        processor = self._to_codes[key]
        h, w = rgb.shape[:2]
        out = np.empty((h, w, 3), out_dtype)

        def desc(array: np.ndarray):
            size = array.dtype.itemsize
            return ocio.PackedImageDesc(array, w, array.shape[0], ocio.CHANNEL_ORDERING_RGB, depths[array.dtype],
                                        size, 3 * size, 3 * size * w)

        def rows(piece: slice) -> None:
            processor.apply(desc(rgb[piece]), desc(out[piece]))

        step = max(1, _CHUNK_ROWS * 1024 // max(w, 1))
        list(_pool().map(rows, [slice(y, y + step) for y in range(0, h, step)]))
        return out

    @staticmethod
    def _apply(processor, rgb: np.ndarray) -> np.ndarray:
        if processor is None:
            return rgb
        rgb = np.ascontiguousarray(rgb, dtype=np.float32)
        flat = rgb.reshape(-1, 3)
        if flat.shape[0] <= _CHUNK_ROWS * 1024:
            processor.applyRGB(flat)
        else:  # OpenColorIO lets go of the GIL: pieces of a picture convert on every core
            list(_pool().map(processor.applyRGB, np.array_split(flat, max(2, flat.shape[0] // (_CHUNK_ROWS * 1024)))))
        return rgb


IDENTITY_VIDEO = Colour("Rec.709 video", "sRGB Encoded Rec.709 (sRGB)", "video")


def plan_colour(info, requested: str = AUTO) -> Colour:
    """The colour path of the source `info` (a media.MediaInfo) for `input_colorspace` = `requested`.

    UserError (field input_colorspace) for a name the config does not know, listing the close ones."""
    requested = (requested or AUTO).strip()
    image = getattr(info, "image", None)
    if requested.lower() == AUTO and image is None:
        return IDENTITY_VIDEO
    config = load_config()
    working = working_space(config)
    if requested.lower() != AUTO:
        return _path(config, _known(config, requested), working, "given")
    if image.colorspace and config.getColorSpace(image.colorspace) is not None:
        return _path(config, config.getColorSpace(image.colorspace).getName(), working, "file")
    sample = str(info.file_for(0))
    if not config.filepathOnlyMatchesDefaultRule(sample):
        ruled = config.getColorSpace(config.getColorSpaceFromFilepath(sample)[0])  # (name, rule index)
        if ruled is not None and ruled.getReferenceSpaceType() == _ocio().REFERENCE_SPACE_SCENE:
            return _path(config, ruled.getName(), working, "rule")
    return Colour(working, working, "default")


def _path(config, name: str, working: str, how: str) -> Colour:
    if config.getCanonicalName(name) == config.getCanonicalName(working):
        return Colour(name, working, how)
    forward = config.getProcessor(name, working)
    if forward.isNoOp():
        return Colour(name, working, how)
    # lossless kernels both ways (the default ones approximate pow and log to ~1e-3), so one is the other's
    # exact inverse to float rounding; pictures convert on every core (`Colour._apply`)
    return Colour(name, working, how, _lossless(forward), _lossless(config.getProcessor(working, name)), forward)


def _lossless(processor):
    ocio = _ocio()
    return processor.getOptimizedCPUProcessor(ocio.BIT_DEPTH_F32, ocio.BIT_DEPTH_F32, ocio.OPTIMIZATION_LOSSLESS)


def _known(config, name: str) -> str:
    space = config.getColorSpace(name)
    if space is not None:
        return space.getName()
    names = colour_space_names(config)
    lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lower), n=5, cutoff=0.5)
    hint = f"; close names: {', '.join(lower[c] for c in close)}" if close else ""
    raise UserError(f"input colour space {name!r} is not in the OCIO config {config_name()}{hint} "
                    "(or use auto)", field="input_colorspace")


def colour_space_names(config=None) -> List[str]:
    """Every colour space name and alias of the config."""
    config = config or load_config()
    names: List[str] = []
    for space in config.getColorSpaces():
        names.append(space.getName())
        names.extend(space.getAliases())
    return names


def working_space(config) -> str:
    for name in WORKING_NAMES:
        space = config.getColorSpace(name)
        if space is not None:
            return space.getName()
    raise UserError(f"the OCIO config {config_name()} has no sRGB-encoded Rec.709 colour space (looked for "
                    f"{', '.join(WORKING_NAMES)}): the face models work in it", field="input_colorspace")


def config_name() -> str:
    """The OCIO config in use: $OCIO, else the built-in ACES studio config."""
    return os.environ.get("OCIO") or BUILTIN_CONFIG


def load_config():
    """The OCIO config (`config_name`), loaded once per name; UserError when it cannot be read."""
    return _load(config_name())


@lru_cache(maxsize=4)
def _load(name: str):
    ocio = _ocio()
    try:
        return ocio.Config.CreateFromFile(name)
    except Exception as exc:  # OCIO raises its own Exception type with the reason
        reason = " ".join(str(exc).split())
        raise UserError(f"the OCIO config {name} cannot be read: {reason}", field="input_colorspace") from None


def _ocio():
    import PyOpenColorIO

    return PyOpenColorIO


_POOL: Optional[ThreadPoolExecutor] = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="ocio")
        return _POOL
