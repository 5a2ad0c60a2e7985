"""VToonify-D's extrinsic style codes (``exstyle_code.npy``), read without running code from the file.

DualStyleGAN's ``destylize.py`` writes them with ``np.save(path, dict)``: a
``.npy`` whose single element is a pickled ``{style image name: (1, 18, 512)
float32 Z+ code}``. ``np.load(allow_pickle=True)`` would unpickle anything;
:func:`read_exstyles` parses the ``.npy`` header itself and unpickles the body
with a restricted unpickler that resolves NumPy's array and dtype
reconstructors only (strings, dicts and lists need no globals), then checks
that what came out is a dict of numeric arrays. The reference picks a style by
its position in the dict (``list(exstyles.keys())[style_id]``); the order is
kept.

:func:`find_exstyles` locates the codes that belong to a VToonify-D
checkpoint: ``<checkpoint stem>_exstyle_code.npy`` beside it (the model store's
names), else ``exstyle_code.npy`` beside it (the reference's folder layout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.generator.safe_pickle import CheckpointError, RestrictedUnpickler

__all__ = ["read_exstyles", "find_exstyles", "EXSTYLE_FILE"]

EXSTYLE_FILE = "exstyle_code.npy"
_NPY_MAGIC = b"\x93NUMPY"
# What a pickled dict of NumPy arrays references; everything else is refused.
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),  # how protocol-2 pickles store bytes
}


class _ArrayUnpickler(RestrictedUnpickler):
    """The engine's restricted unpickler narrowed to NumPy arrays and dtypes."""

    def find_class(self, module, name):
        if (module, name) not in _NUMPY_GLOBALS:
            raise CheckpointError(f"{self._label}: refusing to load, the pickle references {module}.{name}, "
                                  "which is not a NumPy array type (it could run code)")
        return super().find_class(module, name)


def _header(f, name: str):
    if f.read(6) != _NPY_MAGIC:
        raise CheckpointError(f"{name} is not a NumPy .npy file")
    version = tuple(f.read(2))
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise CheckpointError(f"{name}: unsupported .npy format version {version}")
    try:
        return readers[version](f)
    except ValueError as e:
        raise CheckpointError(f"{name}: malformed .npy header ({e})") from None


def read_exstyles(path) -> dict[str, np.ndarray]:
    """``{style name: (1, n_latent, 512) float32 Z+ code}`` from an ``exstyle_code.npy``; CheckpointError if unusable."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise CheckpointError(f"style codes not found: {path}")
    expected = "a dict of style codes saved with np.save (DualStyleGAN's exstyle_code.npy)"
    with open(path, "rb") as f:
        shape, _, dtype = _header(f, name)
        if not dtype.hasobject:
            raise CheckpointError(f"{name} holds a plain {dtype} array of shape {shape}, not {expected}")
        try:
            obj = _ArrayUnpickler(f, name).load()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{name} is truncated or corrupt ({type(e).__name__}: {e})") from None
    item = obj.item() if isinstance(obj, np.ndarray) and obj.shape == () and obj.dtype.hasobject else obj
    if not isinstance(item, dict) or not item:
        raise CheckpointError(f"{name} holds a {type(item).__name__}, not {expected}")
    out: dict[str, np.ndarray] = {}
    for key, value in item.items():
        if not isinstance(key, str):
            raise CheckpointError(f"{name}: style name {key!r} is not a string")
        if not isinstance(value, np.ndarray) or value.dtype.hasobject or value.dtype.kind not in "fiu":
            what = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise CheckpointError(f"{name}: the code of style {key!r} is a {what}, not a numeric array")
        if value.ndim != 3 or value.shape[0] != 1:
            raise CheckpointError(f"{name}: the code of style {key!r} has shape {value.shape}, "
                                  "expected (1, n_latent, 512)")
        out[key] = value.astype(np.float32, copy=False)
    return out


def find_exstyles(checkpoint) -> Path:
    """The extrinsic style codes of a VToonify-D checkpoint (see the module doc); CheckpointError if absent."""
    checkpoint = Path(checkpoint)
    candidates = [checkpoint.with_name(f"{checkpoint.stem}_{EXSTYLE_FILE}"), checkpoint.with_name(EXSTYLE_FILE)]
    for c in candidates:
        if c.is_file():
            return c
    raise CheckpointError(f"{checkpoint.name} is a VToonify-D model and needs its style codes: put "
                          f"{candidates[0].name} (or {EXSTYLE_FILE}) beside it")
