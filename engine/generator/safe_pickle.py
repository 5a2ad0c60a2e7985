"""Read pickled checkpoint files without running any code they contain.

Two readers, both returning the raw unpickled object:

* :func:`read_torch_file` for ``torch.save`` files (``.pt``/``.pth``, zip or
  legacy): ``torch.load(weights_only=True)``, which allows tensors and plain
  containers only (plus ``argparse.Namespace``, which rosinality's training
  checkpoints carry in ``args``).
* :func:`read_pickle` for plain pickles (NVIDIA's ``.pkl``): a
  :class:`RestrictedUnpickler` that resolves only an explicit allow-list of
  globals. NVIDIA's own classes are replaced by inert stand-ins that keep the
  pickled state and never execute the Python source embedded in the file:
  :class:`PersistentObject` (``torch_utils.persistence``) and
  :class:`TFNetwork` (``dnnlib.tflib.network.Network``).

:func:`sniff` tells the kinds apart. Every problem is one :class:`CheckpointError`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "TORCH_ZIP",
    "TORCH_LEGACY",
    "PICKLE",
    "sniff",
    "read_torch_file",
    "torch_zip_problem",
    "read_pickle",
    "RestrictedUnpickler",
    "PersistentObject",
    "TFNetwork",
    "few",
    "state_mismatch",
]

TORCH_ZIP, TORCH_LEGACY, PICKLE = "torch-zip", "torch-legacy", "pickle"

# Legacy (pre-zip) torch.save files start with a protocol-2 pickle of this number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint could not be used; the message says why, in one sentence."""


class OtherKind(CheckpointError):
    """A file that reads fine but is not the kind of checkpoint asked for (e.g. a generator read as an
    encoder): a caller probing kinds moves on, where other CheckpointErrors (refused, corrupt) are final."""


# ------------------------------------------------------------------ file kinds


def sniff(path: Path) -> str | None:
    """What kind of file ``path`` is: TORCH_ZIP, TORCH_LEGACY, PICKLE or None (something else).

    Raises CheckpointError when it is missing, a folder, unreadable or empty.
    """
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint path is a folder, not a file: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    if not head:
        raise CheckpointError(f"checkpoint file is empty: {path}")
    if head.startswith(_ZIP_MAGIC):
        return TORCH_ZIP
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return TORCH_LEGACY
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return PICKLE
    return None


# ----------------------------------------------------------- torch.save files


def read_torch_file(path: Path) -> Any:
    """The object in a ``torch.save`` file (zip or legacy), loaded on the CPU with ``weights_only``.

    Refuses (CheckpointError) files holding Python objects other than tensors
    and plain containers, and truncated or corrupt files.
    """
    kind = sniff(path)
    if kind not in (TORCH_ZIP, TORCH_LEGACY):
        raise CheckpointError(f"{path.name} is not a torch checkpoint (.pt/.pth)")
    zipped = kind == TORCH_ZIP
    problem = torch_zip_problem(path) if zipped else None
    if problem:
        raise CheckpointError(problem)
    try:
        return _torch_load(path, mmap=zipped)
    except Exception as e:  # torch raises many types for corrupt input
        msg = str(e)
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        if m or re.search(r"Unsupported (global|class)|not an allowed global", msg):
            what = f" ({m.group(1)})" if m else ""
            raise CheckpointError(
                f"{path.name} contains Python objects other than tensors{what}; "
                "refusing to unpickle it (it could run code)") from None
        raise CheckpointError(
            f"{path.name} is truncated or corrupt ({type(e).__name__}: {_first_line(msg)})") from None


def torch_zip_problem(path: Path) -> str | None:
    """Why a zip file (TORCH_ZIP by its first bytes) is not a ``torch.save`` file: not readable as a zip, or
    no ``data.pkl`` in it; None when it is one. Reads only the zip's directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        return f"{path.name} is truncated or corrupt ({_first_line(str(e))})"
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return f"{path.name} is a zip archive but not a torch checkpoint"
    return None


def _torch_load(path: Path, mmap: bool):
    kwargs: dict[str, Any] = dict(map_location="cpu", weights_only=True)
    if mmap:
        kwargs["mmap"] = True
    safe = getattr(torch.serialization, "safe_globals", None)
    # rosinality's training checkpoints carry their argparse Namespace in "args".
    ctx = safe([argparse.Namespace]) if safe is not None else contextlib.nullcontext()
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, **kwargs)


# ------------------------------------------------- stand-ins for NVIDIA classes


class PersistentObject:
    """Stand-in for an NVIDIA persistent-class instance: its class name and __dict__."""

    __slots__ = ("class_name", "state")

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state

    def __repr__(self):
        return f"<persistent {self.class_name}>"


class _EasyDict(dict):
    """Replacement for dnnlib.util.EasyDict: a dict (with a __dict__ for BUILD)."""


class TFNetwork:
    """Stand-in for ``dnnlib.tflib.network.Network``: keeps the pickled state, runs nothing.

    NVIDIA's ``Network.__setstate__`` exec()s ``state["build_module_src"]`` and
    builds a TensorFlow graph; this one only stores the state dict.
    """

    state = None

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise CheckpointError("malformed TensorFlow network object in pickle (its state is not a dict)")
        self.state = state

    def __repr__(self):
        name = self.state.get("name") if isinstance(self.state, dict) else None
        return f"<TensorFlow network {name!r}>"


# ------------------------------------------------ allow-listed reconstructors


def _safe_codecs_encode(text, encoding="utf-8"):
    # How protocol-2 pickles written by Python 3 store bytes: _codecs.encode(str, "latin1").
    if not isinstance(text, str) or str(encoding).lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise CheckpointError("pickle calls _codecs.encode in an unexpected way")
    return text.encode("latin1")


def _safe_empty_bytes(*args):
    # Protocol-2 pickles store b"" as builtins.bytes().
    if args:
        raise CheckpointError("pickle calls builtins.bytes in an unexpected way")
    return b""


def _reconstruct_persistent_obj(meta):
    # NVIDIA's version exec()s meta["module_src"]; we only keep the state.
    if not isinstance(meta, dict) or not isinstance(meta.get("class_name"), str) \
            or not isinstance(meta.get("state"), dict):
        raise CheckpointError("malformed torch_utils.persistence object in pickle")
    return PersistentObject(meta["class_name"], dict(meta["state"]))


def _safe_load_from_bytes(b):
    # torch.storage._load_from_bytes does torch.load(weights_only=False).
    if not isinstance(b, (bytes, bytearray)):
        raise CheckpointError("malformed tensor storage in pickle")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)


def _safe_rebuild_from_type(func, new_type, args, state=None):
    if new_type not in (torch.Tensor, torch.nn.Parameter):
        raise CheckpointError(f"pickle rebuilds a tensor of unexpected type {new_type!r}")
    ret = func(*args)
    if new_type is torch.nn.Parameter and not isinstance(ret, torch.nn.Parameter):
        ret = torch.nn.Parameter(ret, requires_grad=False)
    return ret


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise CheckpointError("pickle holds a numpy object scalar")
    if data is None:
        return dtype.type(0)
    if isinstance(data, str):
        data = data.encode("latin1")
    return np.frombuffer(bytes(data), dtype=dtype, count=1)[0]


def _np_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise CheckpointError("pickle reconstructs an unexpected numpy array type")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _np_frombuffer(buf, dtype, shape, order="C"):
    # numpy arrays pickled with protocol 5 (in-band buffer).
    if not isinstance(dtype, np.dtype) or dtype.hasobject or order not in ("C", "F"):
        raise CheckpointError("pickle reconstructs an unexpected numpy array")
    if not isinstance(buf, (bytes, bytearray)):
        raise CheckpointError("malformed numpy array buffer in pickle")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order).copy()


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _safe_rebuild_from_type,
        ("torch.tensor", "_rebuild_from_type_v2"): _safe_rebuild_from_type,
        ("torch", "Tensor"): torch.Tensor,
        ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
        ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
        ("numpy", "dtype"): np.dtype,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy.core.multiarray", "scalar"): _np_scalar,
        ("numpy._core.multiarray", "scalar"): _np_scalar,
        ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
        ("numpy.core.numeric", "_frombuffer"): _np_frombuffer,
        ("numpy._core.numeric", "_frombuffer"): _np_frombuffer,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.tflib.network", "Network"): TFNetwork,
        ("dnnlib.tflib", "Network"): TFNetwork,
        ("_codecs", "encode"): _safe_codecs_encode,
        ("builtins", "bytes"): _safe_empty_bytes,
    }
    if hasattr(torch._utils, "_rebuild_parameter_with_state"):
        allowed[("torch._utils", "_rebuild_parameter_with_state")] = \
            torch._utils._rebuild_parameter_with_state
    for name in ("float16", "float32", "float64", "bfloat16", "int64", "int32", "uint8", "bool"):
        allowed[("torch", name)] = getattr(torch, name)
    return allowed


_ALLOWED = _allowed_globals()


# ------------------------------------------------------------- plain pickles


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the allow-listed globals; ``label`` names the file in errors."""

    def __init__(self, file, label: str):
        # latin1: Python 2 era pickles hold numpy buffers as str (as NVIDIA's own loader assumes).
        super().__init__(file, encoding="latin1")
        self._label = label

    def find_class(self, module, name):
        obj = _ALLOWED.get((module, name))
        if obj is not None:
            return obj
        if module.startswith("dnnlib.tflib"):
            raise CheckpointError(
                f"{self._label} is a TensorFlow StyleGAN pickle that references {module}.{name}, "
                "which is not a network-state type; refusing to load it (it could run code)")
        raise CheckpointError(
            f"{self._label}: refusing to load, the pickle references {module}.{name}, "
            "which is not a tensor or network-state type (it could run code)")

    def persistent_load(self, pid):
        raise CheckpointError(f"{self._label}: unexpected persistent id in pickle")


def read_pickle(path: Path) -> Any:
    """The object in a plain pickle file, read with :class:`RestrictedUnpickler`."""
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, path.name).load()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{path.name} is truncated or corrupt ({type(e).__name__}: {_first_line(str(e))})") from None


# ------------------------------------------------------------------ messages


def few(items, n: int = 4) -> str:
    """The first ``n`` items joined for an error message, then how many more there are."""
    items = [str(i) for i in items]
    more = f", ... {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def state_mismatch(module, state, optional: tuple[str, ...] = ()) -> str:
    """How the tensors of ``state`` differ from the state dict ``module`` expects (missing keys, unexpected
    keys, wrong shapes; keys ending in an ``optional`` suffix may be missing), for an error message;
    "" when they match. ``module`` may live on the meta device."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = [k for k in expected if k not in state and not k.endswith(optional)]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {shape}" for k, shape in expected.items()
             if k in state and tuple(state[k].shape) != shape]
    parts = [f"missing {len(missing)} key(s) ({few(missing)})"] if missing else []
    parts += [f"{len(unexpected)} unexpected key(s) ({few(unexpected)})"] if unexpected else []
    parts += [f"wrong shapes: {few(wrong)}"] if wrong else []
    return "; ".join(parts)


def _first_line(msg: str) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else "no details"
    return line[:200]
