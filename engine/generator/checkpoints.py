"""Load and save StyleGAN2 generator checkpoints in the public formats.

Supported, without their authors' code installed:

* rosinality ``.pt`` (``torch.save`` zip or legacy file): a dict with ``g_ema``
  (a state dict with rosinality's names), optional ``latent_avg`` and possibly
  ``g``, ``d``, optimiser states and ``args``. Read with ``weights_only=True``.
  A bare generator state dict is accepted too.
* NVIDIA stylegan2-ada-pytorch / stylegan3 ``.pkl`` (a dict with ``G_ema``):
  pickles of ``torch_utils.persistence`` objects. They are read with a
  restricted unpickler that resolves only an explicit allow-list of globals and
  never executes the embedded ``module_src``; the StyleGAN2 parameters are then
  renamed to rosinality's layout. StyleGAN3 generators are rejected.
* NVIDIA TensorFlow StyleGAN2 ``.pkl`` (the original StyleGAN2 release, e.g.
  ``stylegan2-ffhq-config-f.pkl``, the public Toonify models, stylegan2-ada's
  TensorFlow snapshots): pickles of ``dnnlib.tflib.network.Network`` objects,
  usually the tuple ``(G, D, Gs)``. A Network's pickled state is plain data
  (``version``, ``name``, ``static_kwargs``, ``components``,
  ``build_module_src``, ``build_func_name`` and ``variables``: a list of
  ``(name, numpy array)``), so the same restricted unpickler reads them without
  TensorFlow; ``build_module_src`` (Python source) is kept as text and never
  executed. ``Gs``'s variables are then converted to rosinality's names and
  layouts (the mapping of rosinality's ``convert_weight.py``). Only the
  unconditional config-e/f ``'skip'`` generator is supported.

Every problem surfaces as one :class:`CheckpointError` (a ``ValueError``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import math
import os
import pickle
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .stylegan2 import Generator, make_kernel, state_dict_shapes

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "inspect_checkpoint",
    "load_generator",
    "save_generator",
    "generator_from_state_dict",
    "FORMAT_ROSINALITY",
    "FORMAT_NVIDIA",
    "FORMAT_NVIDIA_TF",
]

FORMAT_ROSINALITY = "rosinality"
FORMAT_NVIDIA = "nvidia"
FORMAT_NVIDIA_TF = "nvidia-tf"

# Legacy (pre-zip) torch.save files start with a protocol-2 pickle of this number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_ZIP_MAGIC = b"PK\x03\x04"
_LATENT_AVG_SAMPLES = 4096


class CheckpointError(ValueError):
    """A checkpoint could not be used; the message says why, in one sentence."""


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file holds (read without building a generator)."""

    format: str  # FORMAT_ROSINALITY, FORMAT_NVIDIA or FORMAT_NVIDIA_TF
    size: int
    n_latent: int
    style_dim: int
    n_mlp: int
    channels: dict[int, int] = field(hash=False)
    path: Path


@dataclass
class _Parsed:
    format: str
    state: dict[str, torch.Tensor]  # rosinality names
    latent_avg: torch.Tensor | None
    conv_clamp: float | None


# ------------------------------------------------------------------ public API


def inspect_checkpoint(path) -> CheckpointInfo:
    """Detect a checkpoint's format and generator layout (size, latents, channels)."""
    path = Path(path)
    parsed = _read(path)
    return _info(path, parsed)


def load_generator(path, device="cpu", expect_size: int | None = None) -> Generator:
    """Load a generator from a rosinality ``.pt`` or an NVIDIA (PyTorch or TensorFlow) ``.pkl``.

    Returns it in eval mode with ``requires_grad`` off (call
    ``.requires_grad_(True)`` to train) and ``latent_avg`` set: from the file,
    or, when the file has none, the mean of 4096 mapped z drawn with a fixed seed.
    """
    path = Path(path)
    parsed = _read(path)
    info = _info(path, parsed)
    if expect_size is not None and info.size != int(expect_size):
        raise CheckpointError(
            f"{path.name} is a {info.size}x{info.size} generator, but {expect_size}x{expect_size} is needed"
        )
    g = generator_from_state_dict(parsed.state, parsed.latent_avg, parsed.conv_clamp)
    return g.to(device).eval().requires_grad_(False)


def generator_from_state_dict(state: Mapping[str, torch.Tensor],
                              latent_avg: torch.Tensor | None = None,
                              conv_clamp: float | None = None) -> Generator:
    """Build a :class:`Generator` whose layout is inferred from a rosinality state dict."""
    state, (size, style_dim, n_mlp, channels) = _checked_state(state, latent_avg)
    with torch.random.fork_rng(devices=[]):
        g = Generator(size, style_dim=style_dim, n_mlp=n_mlp, channels=channels)
    g.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    g.conv_clamp = None if conv_clamp is None else float(conv_clamp)
    with torch.no_grad():
        if latent_avg is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                g.latent_avg.copy_(g.mean_latent(_LATENT_AVG_SAMPLES)[0])
        else:
            g.latent_avg.copy_(latent_avg.reshape(style_dim).float())
    return g


def _checked_state(state: Mapping[str, torch.Tensor], latent_avg: torch.Tensor | None):
    """Validate a rosinality state dict against the layout it implies (nothing is allocated).

    Returns the state (missing FIR kernel buffers filled in) and _describe()'s tuple.
    """
    state = dict(state)
    layout = _describe(state)
    size, style_dim, n_mlp, channels = layout
    expected = state_dict_shapes(size, style_dim=style_dim, n_mlp=n_mlp, channels=channels)
    # FIR kernels are constants; very old files may lack them, but a different
    # kernel would silently change the network.
    kernel = make_kernel([1, 3, 3, 1]) * 4
    for name in expected:
        if name.endswith(".kernel"):
            if name not in state:
                state[name] = kernel.clone()
            elif tuple(state[name].shape) != (4, 4) or not torch.allclose(
                    state[name].float(), kernel, atol=1e-6):
                raise CheckpointError(f"{name} is not the [1,3,3,1] blur kernel of config-f")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s) ({_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({_few(unexpected)})")
        raise CheckpointError("generator state dict does not match StyleGAN2 config-f: " + ", ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} vs {shape}" for k, shape in expected.items()
           if tuple(state[k].shape) != shape]
    if bad:
        raise CheckpointError(f"generator state dict has wrong shapes: {_few(bad)}")
    if latent_avg is not None and latent_avg.numel() != style_dim:
        raise CheckpointError(f"latent_avg has {latent_avg.numel()} values, expected style_dim={style_dim}")
    return state, layout


def save_generator(path, generator: Generator, extra: dict | None = None) -> Path:
    """Write ``{"g_ema": state_dict, "latent_avg": tensor, **extra}`` atomically (rosinality .pt).

    Tensors are stored as float32 on the CPU. ``conv_clamp`` is stored when set.
    ``extra`` must hold only tensors and plain containers so that
    ``weights_only`` loading still works.
    """
    path = Path(path)
    payload: dict[str, Any] = {
        "g_ema": {k: _cpu32(v) for k, v in generator.state_dict().items()},
        "latent_avg": _cpu32(generator.latent_avg),
    }
    if getattr(generator, "conv_clamp", None) is not None:
        payload["conv_clamp"] = float(generator.conv_clamp)
    if extra:
        clash = sorted(set(extra) & set(payload))
        if clash:
            raise ValueError(f"extra may not override {clash}")
        payload.update(extra)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path


# ----------------------------------------------------------------- file reading


def _read(path: Path) -> _Parsed:
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
        return _read_torch(path, zipped=True)
    if head.startswith(_LEGACY_TORCH_MAGIC):
        return _read_torch(path, zipped=False)
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return _read_nvidia(path)
    raise CheckpointError(
        f"{path.name} is not a StyleGAN2 checkpoint (expected a rosinality .pt or an NVIDIA .pkl)")


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


def _read_torch(path: Path, zipped: bool) -> _Parsed:
    if zipped:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise CheckpointError(f"{path.name} is truncated or corrupt ({_first_line(str(e))})") from None
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise CheckpointError(f"{path.name} is a zip archive but not a torch checkpoint")
    try:
        obj = _torch_load(path, mmap=zipped)
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

    if isinstance(obj, Mapping) and "g_ema" in obj:
        state, latent_avg = obj["g_ema"], obj.get("latent_avg")
        conv_clamp = obj.get("conv_clamp")
    elif isinstance(obj, Mapping) and ("conv1.conv.weight" in obj or "input.input" in obj):
        state, latent_avg, conv_clamp = obj, None, None
    else:
        keys = _few(list(obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"{path.name} is a torch file but not a StyleGAN2 generator checkpoint "
            f"(no 'g_ema'; found {keys})")
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path.name}: 'g_ema' is not a state dict of tensors")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"{path.name}: 'latent_avg' is not a tensor")
    if conv_clamp is not None and not isinstance(conv_clamp, (int, float)):
        conv_clamp = None
    return _Parsed(FORMAT_ROSINALITY, dict(state), latent_avg, conv_clamp)


# ------------------------------------------------------ NVIDIA pickle (restricted)


class _PersistentObject:
    """Stand-in for an NVIDIA persistent-class instance: its class name and __dict__."""

    __slots__ = ("class_name", "state")

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state

    def __repr__(self):
        return f"<persistent {self.class_name}>"


class _EasyDict(dict):
    """Replacement for dnnlib.util.EasyDict: a dict (with a __dict__ for BUILD)."""


class _TFNetwork:
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
    return _PersistentObject(meta["class_name"], dict(meta["state"]))


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
        ("dnnlib.tflib.network", "Network"): _TFNetwork,
        ("dnnlib.tflib", "Network"): _TFNetwork,
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


class _RestrictedUnpickler(pickle.Unpickler):
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


def _read_nvidia(path: Path) -> _Parsed:
    try:
        with open(path, "rb") as f:
            data = _RestrictedUnpickler(f, path.name).load()
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"{path.name} is truncated or corrupt ({type(e).__name__}: {_first_line(str(e))})") from None
    if _is_tf_pickle(data):
        try:
            state, latent_avg, conv_clamp = _convert_nvidia_tf(_pick_tf_generator(data))
        except CheckpointError as e:
            raise CheckpointError(f"{path.name}: {e}") from None
        return _Parsed(FORMAT_NVIDIA_TF, state, latent_avg, conv_clamp)
    if not isinstance(data, dict) or "G_ema" not in data:
        keys = _few(list(data)) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path.name} is a pickle but not an NVIDIA StyleGAN2 network "
                              f"snapshot (no 'G_ema'; found {keys})")
    try:
        state, latent_avg, conv_clamp = _convert_nvidia(data["G_ema"])
    except CheckpointError as e:
        raise CheckpointError(f"{path.name}: {e}") from None
    return _Parsed(FORMAT_NVIDIA, state, latent_avg, conv_clamp)


def _module_tensors(obj: _PersistentObject, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (obj.state.get(group) or {}).items():
            if isinstance(t, torch.Tensor):
                out[prefix + name] = t.detach()
    for name, sub in (obj.state.get("_modules") or {}).items():
        if isinstance(sub, _PersistentObject):
            out.update(_module_tensors(sub, f"{prefix}{name}."))
    return out


def _submodule(obj: _PersistentObject, dotted: str) -> _PersistentObject | None:
    for part in dotted.split("."):
        obj = (obj.state.get("_modules") or {}).get(part)
        if not isinstance(obj, _PersistentObject):
            return None
    return obj


def _convert_nvidia(G) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, float | None]:
    """Rename an NVIDIA StyleGAN2 G_ema to rosinality's state-dict layout."""
    if not isinstance(G, _PersistentObject):
        raise CheckpointError("'G_ema' is not a torch_utils.persistence network")
    t = _module_tensors(G)
    if any(re.match(r"synthesis\.(input|L\d+_)", k) for k in t):
        raise CheckpointError(
            "this is a StyleGAN3 (alias-free) generator; only StyleGAN2 config-f generators "
            "are supported")
    if "mapping.embed.weight" in t:
        raise CheckpointError("this is a class-conditional generator; only unconditional "
                              "StyleGAN2 generators are supported")
    res = sorted({int(m.group(1)) for k in t if (m := re.match(r"synthesis\.b(\d+)\.", k))})
    if not res or res[0] != 4 or res != [2**i for i in range(2, 2 + len(res))] or len(res) < 2:
        raise CheckpointError("unrecognised generator layout (no StyleGAN2 synthesis blocks "
                              "synthesis.b4 ... synthesis.bN)")
    if any(re.match(r"synthesis\.b\d+\.skip\.", k) for k in t):
        raise CheckpointError("this generator uses the 'resnet' synthesis architecture; only "
                              "config-f ('skip') generators are supported")

    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in t:
            raise CheckpointError(f"G_ema has no parameter {name} (not a StyleGAN2 config-f generator)")
        used.add(name)
        return t[name].float()

    out: dict[str, torch.Tensor] = {}
    n_mlp = 0
    while f"mapping.fc{n_mlp}.weight" in t:
        out[f"style.{n_mlp + 1}.weight"] = take(f"mapping.fc{n_mlp}.weight")
        out[f"style.{n_mlp + 1}.bias"] = take(f"mapping.fc{n_mlp}.bias")
        n_mlp += 1
    if n_mlp == 0:
        raise CheckpointError("G_ema has no mapping network (mapping.fc0)")
    dims = {tuple(out[f"style.{i}.weight"].shape) for i in range(1, n_mlp + 1)}
    if len(dims) != 1 or len({*next(iter(dims))}) != 1:
        raise CheckpointError(f"mapping layers are not square (z_dim == w_dim) as in config-f: {sorted(dims)}")

    out["input.input"] = take("synthesis.b4.const").unsqueeze(0)

    def layer(src: str, dst: str, noise_name: str, resolution: int):
        w = take(f"{src}.weight")
        out[f"{dst}.conv.weight"] = w.unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        out[f"{dst}.activate.bias"] = take(f"{src}.bias")
        if f"{src}.noise_strength" in t:  # use_noise=False layers have neither
            out[f"{dst}.noise.weight"] = take(f"{src}.noise_strength").reshape(1)
            out[noise_name] = take(f"{src}.noise_const").reshape(1, 1, resolution, resolution)
        else:
            out[f"{dst}.noise.weight"] = w.new_zeros(1)
            out[noise_name] = w.new_zeros(1, 1, resolution, resolution)

    def torgb(src: str, dst: str):
        out[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape(1, -1, 1, 1)

    layer("synthesis.b4.conv1", "conv1", "noises.noise_0", 4)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for i, r in enumerate(res[1:]):
        layer(f"synthesis.b{r}.conv0", f"convs.{2 * i}", f"noises.noise_{2 * i + 1}", r)
        layer(f"synthesis.b{r}.conv1", f"convs.{2 * i + 1}", f"noises.noise_{2 * i + 2}", r)
        torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{i}")

    expected_filter = make_kernel([1, 3, 3, 1])
    for k, v in t.items():
        if k.endswith("resample_filter"):
            used.add(k)
            if tuple(v.shape) != (4, 4) or not torch.allclose(v.float(), expected_filter, atol=1e-6):
                raise CheckpointError(f"{k} is not the [1,3,3,1] filter of config-f")
    latent_avg = t.get("mapping.w_avg")
    used.add("mapping.w_avg")
    left = [k for k in t if k not in used]
    if left:
        raise CheckpointError(f"G_ema has parameters a StyleGAN2 config-f generator does not "
                              f"({_few(left)})")

    conv_clamp = None
    first = _submodule(G, "synthesis.b4.conv1")
    if first is not None and isinstance(first.state.get("conv_clamp"), (int, float)):
        conv_clamp = float(first.state["conv_clamp"])
    return out, (None if latent_avg is None else latent_avg.float()), conv_clamp


# ------------------------------------------- NVIDIA TensorFlow pickle (restricted)
#
# TF name (relative to the Gs / G_mapping / G_synthesis networks)   rosinality name, layout
#   Gs: dlatent_avg [D]                                    latent_avg (D,)
#   Gs: lod (scalar, always 0 in StyleGAN2)                 ignored
#   G_mapping/Dense{i}/weight [in, out]                     style.{i+1}.weight = W.T (out, in)
#   G_mapping/Dense{i}/bias [out]                           style.{i+1}.bias
#       (both x mapping_lrmul / 0.01 when the file's mapping_lrmul is not 0.01)
#   G_synthesis/4x4/Const/const [1, C, 4, 4]                input.input (same)
#   G_synthesis/4x4/Conv/*                                  conv1.*
#   G_synthesis/{r}x{r}/Conv0_up/*  (j = log2 r - 3)        convs.{2j}.*   (weight also flipped in H and W)
#   G_synthesis/{r}x{r}/Conv1/*                             convs.{2j+1}.*
#   G_synthesis/4x4/ToRGB/*, {r}x{r}/ToRGB/*                to_rgb1.*, to_rgbs.{j}.*
#   G_synthesis/noise{k} [1, 1, R, R]                       noises.noise_{k} (same)
# per modulated layer:
#   weight [kh, kw, I, O] (HWIO)                            conv.weight = W.transpose(3, 2, 0, 1)[None] (1, O, I, kh, kw)
#   mod_weight [D, I]                                       conv.modulation.weight = .T (I, D)
#   mod_bias [I]  (TF adds 1 at run time)                   conv.modulation.bias = mod_bias + 1
#   noise_strength [] (scalar)                              noise.weight (1,)
#   bias [O] (conv layers)                                  activate.bias (O,)
#   bias [3] (ToRGB)                                        bias (1, 3, 1, 1)
# The equalised-lr runtime gains (1/sqrt(fan_in), and lrmul for the mapping)
# are applied at run time by both implementations, so weights copy as they are.
# Conv0_up: TF's upsample_conv_2d flips the weight spatially and runs
# conv2d_transpose, i.e. it correlates the zero-stuffed input with W itself;
# rosinality's conv_transpose2d correlates with its weight flipped, hence the flip.

_TF_BLOCK_RE = re.compile(r"^(\d+)x(\d+)/")
_TF_MAPPING_LRMUL = 0.01  # the lr multiplier our Generator's mapping layers use


def _is_tf_pickle(data) -> bool:
    if isinstance(data, _TFNetwork):
        return True
    return isinstance(data, (tuple, list)) and any(isinstance(x, _TFNetwork) for x in data)


def _tf_state(net, what: str) -> dict:
    st = net.state if isinstance(net, _TFNetwork) else None
    if not isinstance(st, dict):
        raise CheckpointError(f"the TensorFlow network pickle holds no state for {what} "
                              "(truncated, or not a StyleGAN network)")
    version = st.get("version")
    if version not in (2, 3, 4):
        raise CheckpointError(f"{what} is a TensorFlow network of unknown pickle version {version!r} "
                              "(dnnlib writes 2 to 4)")
    if not isinstance(st.get("variables"), (list, tuple)):
        raise CheckpointError(f"{what}: malformed TensorFlow network state (no variable list)")
    for key in ("static_kwargs", "components"):
        if st.get(key) is not None and not isinstance(st[key], dict):
            raise CheckpointError(f"{what}: malformed TensorFlow network state ({key} is not a dict)")
    return st


def _tf_vars(st: dict, what: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for item in st["variables"]:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise CheckpointError(f"{what}: malformed TensorFlow variable list")
        name, value = item
        if not isinstance(value, (np.ndarray, np.generic, float, int)) or isinstance(value, bool):
            raise CheckpointError(f"{what}: variable {name} is not a numeric array "
                                  f"({type(value).__name__})")
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise CheckpointError(f"{what}: variable {name} is not a numeric array ({arr.dtype})")
        out[name] = arr
    return out


def _has_generator_components(net: _TFNetwork) -> bool:
    comps = net.state.get("components") if isinstance(net.state, dict) else None
    return isinstance(comps, dict) and isinstance(comps.get("synthesis"), _TFNetwork)


def _pick_tf_generator(data) -> _TFNetwork:
    """Gs from (G, D, Gs) as NVIDIA's training loop pickles it, or a lone generator network."""
    nets = [data] if isinstance(data, _TFNetwork) else [x for x in data if isinstance(x, _TFNetwork)]
    for i, net in enumerate(nets):
        _tf_state(net, f"network {i}")
    names = [net.state.get("name") for net in nets]
    if "Gs" in names:
        return nets[names.index("Gs")]
    if isinstance(data, (tuple, list)) and len(data) == 3 and isinstance(data[2], _TFNetwork):
        return data[2]  # (G, D, Gs)
    gens = [net for net in nets if _has_generator_components(net)]
    if len(gens) == 1:
        return gens[0]
    raise CheckpointError("the TensorFlow pickle holds no unique generator (expected (G, D, Gs) or one "
                          f"Gs network; found networks named {_few(map(repr, names))})")


def _as_number(value, key: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CheckpointError(f"static argument {key}={value!r} is not a number")
    return float(value)


def _same_value(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. an array compared with a scalar
        return False


def _reshape(arr: np.ndarray, shape: tuple, name: str) -> np.ndarray:
    if arr.size != int(np.prod(shape)):
        raise CheckpointError(f"{name} has shape {tuple(arr.shape)}, expected {int(np.prod(shape))} values")
    return arr.reshape(shape)


def _t(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _convert_nvidia_tf(Gs: _TFNetwork) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, float | None]:
    """Convert a TensorFlow StyleGAN2 Gs network's variables to rosinality's state-dict layout."""
    gs = _tf_state(Gs, "Gs")
    comps = gs.get("components") or {}
    if not isinstance(comps.get("mapping"), _TFNetwork) or not isinstance(comps.get("synthesis"), _TFNetwork):
        raise CheckpointError(f"the TensorFlow network {gs.get('name')!r} is not a StyleGAN generator "
                              "(no mapping and synthesis components)")
    ms, ss = _tf_state(comps["mapping"], "G_mapping"), _tf_state(comps["synthesis"], "G_synthesis")
    gv, mv, sv = _tf_vars(gs, "Gs"), _tf_vars(ms, "G_mapping"), _tf_vars(ss, "G_synthesis")
    gkw = dict(gs.get("static_kwargs") or {})  # G_main forwards its kwargs to both components
    mkw = {**gkw, **(ms.get("static_kwargs") or {})}
    skw = {**gkw, **(ss.get("static_kwargs") or {})}

    # ---- what kind of generator is it?
    if any("StyleMod" in k or "ToRGB_lod" in k or k.endswith("/Noise/weight") for k in sv):
        raise CheckpointError(
            f"this is a StyleGAN (v1) or progressive-growing generator ({ss.get('build_func_name')}); "
            "only StyleGAN2 config-e/f ('skip') generators are supported")
    label_size = _as_number(mkw.get("label_size", 0) or 0, "label_size")
    if label_size > 0 or any(k.startswith(("LabelConcat/", "LabelEmbed/")) for k in mv):
        raise CheckpointError(f"this is a class-conditional generator (label_size={int(label_size)}); "
                              "only unconditional StyleGAN2 generators are supported")
    for key in ("4x4/Const/const", "4x4/Conv/weight"):
        if key not in sv:
            raise CheckpointError(f"not a StyleGAN2 synthesis network (no G_synthesis/{key})")
    arch = skw.get("architecture", "skip")
    if arch == "resnet" or any(re.match(r"^\d+x\d+/Skip/", k) for k in sv):
        raise CheckpointError("this generator uses the 'resnet' synthesis architecture; only "
                              "config-e/f ('skip') generators are supported")
    if arch == "orig" or "4x4/ToRGB/weight" not in sv:
        raise CheckpointError("this generator uses the 'orig' synthesis architecture (no ToRGB skip "
                              "connections); only config-e/f ('skip') generators are supported")
    if arch != "skip":
        raise CheckpointError(f"unknown synthesis architecture {arch!r}; only 'skip' is supported")
    for kw, key, want in ((skw, "nonlinearity", "lrelu"), (mkw, "mapping_nonlinearity", "lrelu"),
                          (mkw, "normalize_latents", True), (skw, "num_channels", 3)):
        if key in kw and not _same_value(kw[key], want):
            raise CheckpointError(f"{key}={kw[key]!r} is not supported (StyleGAN2 config-f uses {want!r})")
    kernel = skw.get("resample_kernel", [1, 3, 3, 1])
    try:
        kernel_ok = kernel is not None and np.asarray(kernel, dtype=np.float64).tolist() == [1, 3, 3, 1]
    except (TypeError, ValueError):
        kernel_ok = False
    if not kernel_ok:
        raise CheckpointError(f"resample_kernel={kernel!r} is not the [1,3,3,1] filter of config-f")
    lrmul = _as_number(mkw.get("mapping_lrmul", _TF_MAPPING_LRMUL), "mapping_lrmul")
    if not lrmul > 0:
        raise CheckpointError(f"mapping_lrmul={lrmul!r} is not a positive number")

    out: dict[str, torch.Tensor] = {}

    # ---- mapping network
    used_m: set[str] = set()
    n_mlp = 0
    while f"Dense{n_mlp}/weight" in mv:
        n_mlp += 1
    if n_mlp == 0:
        raise CheckpointError("G_mapping has no Dense0 layer (not a StyleGAN2 mapping network)")
    rescale = None if lrmul == _TF_MAPPING_LRMUL else lrmul / _TF_MAPPING_LRMUL
    dims = set()
    for i in range(n_mlp):
        wname, bname = f"Dense{i}/weight", f"Dense{i}/bias"
        if bname not in mv:
            raise CheckpointError(f"G_mapping has no variable {bname}")
        used_m.update((wname, bname))
        w, b = mv[wname], mv[bname]
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise CheckpointError(f"G_mapping/{wname} {tuple(w.shape)} / {bname} {tuple(b.shape)} "
                                  "are not a dense layer")
        dims.add(tuple(w.shape))
        w, b = np.asarray(w, dtype=np.float32).T, np.asarray(b, dtype=np.float32)
        if rescale is not None:  # same effective weights with our lr multiplier
            w = (w.astype(np.float64) * rescale).astype(np.float32)
            b = (b.astype(np.float64) * rescale).astype(np.float32)
        out[f"style.{i + 1}.weight"], out[f"style.{i + 1}.bias"] = _t(w), _t(b)
    if len(dims) != 1 or len({*next(iter(dims))}) != 1:
        raise CheckpointError(f"mapping layers are not square (latent_size == dlatent_size == "
                              f"mapping_fmaps) as in config-f: {sorted(dims)}")
    left = [k for k in mv if k not in used_m]
    if left:
        raise CheckpointError(f"G_mapping has variables a StyleGAN2 config-f mapping network does not "
                              f"({_few(left)})")

    # ---- synthesis network
    res = sorted({int(m.group(1)) for k in sv
                  if (m := _TF_BLOCK_RE.match(k)) and m.group(1) == m.group(2)})
    if len(res) < 2 or res != [2**i for i in range(2, 2 + len(res))]:
        raise CheckpointError(f"unrecognised synthesis layout (blocks {res}; expected 4x4, 8x8, ... NxN)")
    size = res[-1]
    if "resolution" in skw and _as_number(skw["resolution"], "resolution") != size:
        raise CheckpointError(f"the network says resolution={skw['resolution']!r}, but its synthesis "
                              f"blocks go up to {size}x{size}")
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in sv:
            raise CheckpointError(f"G_synthesis has no variable {name} (not a StyleGAN2 config-f generator)")
        used.add(name)
        return np.asarray(sv[name], dtype=np.float32)

    def modconv(src: str, dst: str, flip: bool = False):
        w = take(f"{src}/weight")
        if w.ndim != 4 or w.shape[0] != w.shape[1]:
            raise CheckpointError(f"G_synthesis/{src}/weight has shape {tuple(w.shape)}, not [k, k, in, out]")
        w = w.transpose(3, 2, 0, 1)  # [kh, kw, I, O] -> [O, I, kh, kw]
        if flip:
            w = w[:, :, ::-1, ::-1]
        out[f"{dst}.conv.weight"] = _t(w[None])
        mod_w = take(f"{src}/mod_weight")
        if mod_w.ndim != 2:
            raise CheckpointError(f"G_synthesis/{src}/mod_weight has shape {tuple(mod_w.shape)}, not [D, in]")
        out[f"{dst}.conv.modulation.weight"] = _t(mod_w.T)
        out[f"{dst}.conv.modulation.bias"] = _t(take(f"{src}/mod_bias") + np.float32(1))

    def layer(src: str, dst: str, noise_idx: int, r: int, flip: bool = False):
        modconv(src, dst, flip)
        out[f"{dst}.activate.bias"] = _t(take(f"{src}/bias"))
        strength, noise = f"{src}/noise_strength", f"noise{noise_idx}"
        if strength in sv or noise in sv:
            out[f"{dst}.noise.weight"] = _t(_reshape(take(strength), (1,), strength))
            out[f"noises.noise_{noise_idx}"] = _t(_reshape(take(noise), (1, 1, r, r), noise))
        else:  # use_noise=False (stylegan2-ada): no noise at all
            out[f"{dst}.noise.weight"] = torch.zeros(1)
            out[f"noises.noise_{noise_idx}"] = torch.zeros(1, 1, r, r)

    def torgb(src: str, dst: str):
        modconv(src, dst)
        out[f"{dst}.bias"] = _t(_reshape(take(f"{src}/bias"), (1, 3, 1, 1), f"{src}/bias"))

    out["input.input"] = _t(take("4x4/Const/const"))
    layer("4x4/Conv", "conv1", 0, 4)
    torgb("4x4/ToRGB", "to_rgb1")
    for j, r in enumerate(res[1:]):
        layer(f"{r}x{r}/Conv0_up", f"convs.{2 * j}", 2 * j + 1, r, flip=True)
        layer(f"{r}x{r}/Conv1", f"convs.{2 * j + 1}", 2 * j + 2, r)
        torgb(f"{r}x{r}/ToRGB", f"to_rgbs.{j}")
    left = [k for k in sv if k not in used]
    if left:
        raise CheckpointError(f"G_synthesis has variables a StyleGAN2 config-f generator does not "
                              f"({_few(left)})")

    # ---- Gs's own variables
    latent_avg = None
    for k, v in gv.items():
        if k == "dlatent_avg":
            latent_avg = _t(v)
        elif k != "lod":
            raise CheckpointError(f"Gs has a variable a StyleGAN2 generator does not ({k})")
    conv_clamp = skw.get("conv_clamp")  # stylegan2-ada (TensorFlow) only
    conv_clamp = None if conv_clamp is None else _as_number(conv_clamp, "conv_clamp")
    return out, latent_avg, conv_clamp


# ------------------------------------------------------------------ utilities


def _describe(state: Mapping[str, torch.Tensor]) -> tuple[int, int, int, dict[int, int]]:
    """(size, style_dim, n_mlp, channels) of a rosinality generator state dict."""
    for key in ("input.input", "conv1.conv.weight", "conv1.conv.modulation.weight"):
        if key not in state:
            raise CheckpointError(f"not a StyleGAN2 generator state dict (no {key})")
    n_mlp = 0
    while f"style.{n_mlp + 1}.weight" in state:
        n_mlp += 1
    n_up = 0
    while f"to_rgbs.{n_up}.conv.weight" in state:
        n_up += 1
    if n_up == 0:
        raise CheckpointError("not a StyleGAN2 generator state dict (no to_rgbs.0)")
    style_dim = int(state["conv1.conv.modulation.weight"].shape[1])
    channels = {4: int(state["input.input"].shape[1])}
    for i in range(n_up):
        key = f"convs.{2 * i}.conv.weight"
        if key not in state or state[key].ndim != 5:
            raise CheckpointError(f"generator state dict is missing or has a malformed {key}")
        channels[2 ** (i + 3)] = int(state[key].shape[1])
    return 2 ** (n_up + 2), style_dim, n_mlp, channels


def _info(path: Path, parsed: _Parsed) -> CheckpointInfo:
    try:
        _, (size, style_dim, n_mlp, channels) = _checked_state(parsed.state, parsed.latent_avg)
    except CheckpointError as e:
        raise CheckpointError(f"{path.name}: {e}") from None
    return CheckpointInfo(format=parsed.format, size=size, n_latent=2 * int(math.log2(size)) - 2,
                          style_dim=style_dim, n_mlp=n_mlp, channels=channels, path=path)


def _cpu32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach().to("cpu")
    return t.float().clone() if t.is_floating_point() else t.clone()


def _few(items, n: int = 4) -> str:
    items = [str(i) for i in items]
    more = f", ... {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def _first_line(msg: str) -> str:
    line = msg.strip().splitlines()[0] if msg.strip() else "no details"
    return line[:200]
