"""Load and save StyleGAN2 generator checkpoints in the public formats.

Supported, without their authors' code installed:

* rosinality ``.pt`` (``torch.save`` zip or legacy file): a dict with ``g_ema``
  (a state dict with rosinality's names), optional ``latent_avg`` and possibly
  ``g``, ``d``, optimiser states and ``args``. Read with ``weights_only=True``.
  A bare generator state dict is accepted too.
* NVIDIA stylegan2-ada-pytorch / stylegan3 ``.pkl`` (a dict with ``G_ema``),
  renamed by :mod:`.nvidia_pkl`. StyleGAN3 generators are rejected.
* NVIDIA TensorFlow StyleGAN2 ``.pkl`` (the original StyleGAN2 release, the
  public Toonify models, stylegan2-ada's TensorFlow snapshots), converted by
  :mod:`.nvidia_tf`.

Both ``.pkl`` kinds are read by :mod:`.safe_pickle`'s restricted unpickler,
which never executes code from the file. This module detects the format, checks
the rosinality state dict against the layout it implies, and builds the
:class:`Generator`. Every problem surfaces as one :class:`CheckpointError` (a
``ValueError``).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .nvidia_pkl import convert_nvidia_generator
from .nvidia_tf import convert_tf_generator, is_tf_pickle, pick_tf_generator
from .safe_pickle import PICKLE, CheckpointError, few, read_pickle, read_torch_file, sniff
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

_LATENT_AVG_SAMPLES = 4096


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
            parts.append(f"missing {len(missing)} key(s) ({few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) ({few(unexpected)})")
        raise CheckpointError("generator state dict does not match StyleGAN2 config-f: " + ", ".join(parts))
    bad = [f"{k} {tuple(state[k].shape)} vs {shape}" for k, shape in expected.items()
           if tuple(state[k].shape) != shape]
    if bad:
        raise CheckpointError(f"generator state dict has wrong shapes: {few(bad)}")
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


# ------------------------------------------------------------- format dispatch


def _read(path: Path) -> _Parsed:
    kind = sniff(path)
    if kind is None:
        raise CheckpointError(
            f"{path.name} is not a StyleGAN2 checkpoint (expected a rosinality .pt or an NVIDIA .pkl)")
    if kind == PICKLE:
        return _read_nvidia(path)
    return _read_rosinality(path)


def _read_rosinality(path: Path) -> _Parsed:
    obj = read_torch_file(path)
    if isinstance(obj, Mapping) and "g_ema" in obj:
        state, latent_avg = obj["g_ema"], obj.get("latent_avg")
        conv_clamp = obj.get("conv_clamp")
    elif isinstance(obj, Mapping) and ("conv1.conv.weight" in obj or "input.input" in obj):
        state, latent_avg, conv_clamp = obj, None, None
    else:
        keys = few(list(obj)) if isinstance(obj, Mapping) else type(obj).__name__
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


def _read_nvidia(path: Path) -> _Parsed:
    data = read_pickle(path)
    if is_tf_pickle(data):
        try:
            state, latent_avg, conv_clamp = convert_tf_generator(pick_tf_generator(data))
        except CheckpointError as e:
            raise CheckpointError(f"{path.name}: {e}") from None
        return _Parsed(FORMAT_NVIDIA_TF, state, latent_avg, conv_clamp)
    if not isinstance(data, dict) or "G_ema" not in data:
        keys = few(list(data)) if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path.name} is a pickle but not an NVIDIA StyleGAN2 network "
                              f"snapshot (no 'G_ema'; found {keys})")
    try:
        state, latent_avg, conv_clamp = convert_nvidia_generator(data["G_ema"])
    except CheckpointError as e:
        raise CheckpointError(f"{path.name}: {e}") from None
    return _Parsed(FORMAT_NVIDIA, state, latent_avg, conv_clamp)


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
