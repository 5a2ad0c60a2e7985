"""Read VToonify's checkpoints without running code from them: the network, the face parser, the style encoder.

* VToonify models (``vtoonify.pt``, ``vtoonify_s_d.pt``, ...): ``{"g_ema":
  VToonify state dict}``. The backbone follows from the keys (VToonify-D has
  ``generator.generator.*`` and ``res.*``), the input size from the number of
  encoder blocks, the output size, channels, style width and mapping depth from
  the generator's shapes. The network is built without allocating, compared
  key by key and shape by shape with the file, and loaded strictly.
* ``faceparsing.pth``: a bare BiSeNet state dict.
* ``encoder.pt``: a pSp checkpoint (``state_dict`` with ``encoder.*``,
  ``latent_avg``, ``opts``), built by :func:`engine.inversion.encoders.load_encoder`.

Every file is read by ``engine.generator.safe_pickle.read_torch_file``
(``weights_only``); every problem is one :class:`CheckpointError` naming the
file and the reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.generator.safe_pickle import (TORCH_LEGACY, TORCH_ZIP, CheckpointError, few, read_torch_file, sniff,
                                         state_mismatch)
from engine.generator.stylegan2 import make_kernel

from .bisenet import BiSeNet
from .network import BACKBONES, PARSING_CHANNELS, VToonify
from .style_encoder import StyleEncoder

__all__ = ["VToonifyInfo", "inspect_vtoonify", "load_vtoonify", "load_face_parser", "load_style_encoder"]

_MODEL = "a VToonify model (a torch .pt holding {'g_ema': VToonify state dict})"


@dataclass(frozen=True)
class VToonifyInfo:
    """What a VToonify checkpoint holds: ``backbone`` "toonify" (VToonify-T) or "dualstylegan" (VToonify-D)."""

    backbone: str
    in_size: int
    out_size: int
    n_latent: int
    path: Path


@dataclass(frozen=True)
class _Parsed:
    info: VToonifyInfo
    kwargs: dict  # VToonify(...) arguments
    state: Mapping[str, torch.Tensor]


# ------------------------------------------------------------------ VToonify


def inspect_vtoonify(path) -> VToonifyInfo:
    """Backbone and sizes of a VToonify checkpoint, read off its keys and shapes; CheckpointError if unusable."""
    return _parse(Path(path)).info


def load_vtoonify(path, device="cpu", backbone: str | None = None) -> VToonify:
    """A VToonify checkpoint as a :class:`VToonify` in eval mode, gradients off.

    ``backbone`` ("toonify" or "dualstylegan"): refuse a file of the other kind.
    """
    path = Path(path)
    p = _parse(path)
    if backbone is not None and backbone != p.info.backbone:
        raise CheckpointError(f"{path.name} is a {_variant(p.info.backbone)} model (backbone "
                              f"{p.info.backbone}), not a {_variant(backbone)} model")
    with torch.device("meta"):
        net = VToonify(**p.kwargs)
    _check_keys(net, p.state, path.name, "VToonify weights")
    kernel = make_kernel([1, 3, 3, 1]) * 4  # every FIR kernel in VToonify is an x2 upsampling one
    for k, v in p.state.items():
        if k.endswith(".kernel") and not torch.allclose(v.float(), kernel, atol=1e-6):
            raise CheckpointError(f"{path.name}: {k} is not StyleGAN2's [1,3,3,1] blur kernel")
    return _load(net, p.state, device)


def _variant(backbone: str) -> str:
    return "VToonify-D" if backbone == "dualstylegan" else "VToonify-T" if backbone == "toonify" else backbone


def _torch_object(path: Path, expected: str):
    kind = sniff(path)
    if kind not in (TORCH_ZIP, TORCH_LEGACY):
        raise CheckpointError(f"{path.name} is not a torch checkpoint (.pt/.pth); expected {expected}")
    return read_torch_file(path)


def _tensor_dict(obj, name: str, what: str) -> Mapping[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not obj or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{name}: {what} is not a state dict of tensors")
    return obj


def _parse(path: Path) -> _Parsed:
    name = path.name
    obj = _torch_object(path, _MODEL)
    if not isinstance(obj, Mapping) or "g_ema" not in obj:
        found = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, Mapping) else type(obj).__name__
        hint = (" (it is a pSp encoder checkpoint)" if isinstance(obj, Mapping) and "state_dict" in obj else
                " (it looks like a bare BiSeNet state dict)" if isinstance(obj, Mapping) and "cp.resnet.conv1.weight"
                in obj else "")
        raise CheckpointError(f"{name} is not {_MODEL}{hint}; found {found or 'nothing'}")
    state = _tensor_dict(obj["g_ema"], name, "'g_ema'")
    if not any(k.startswith("generator.") for k in state):
        if "conv1.conv.weight" in state or "style.1.weight" in state:
            raise CheckpointError(f"{name} is a StyleGAN2 generator, not a VToonify model")
        if any(re.match(r"\d+\.", k) for k in state):
            raise CheckpointError(f"{name} holds only VToonify's encoder (a pre-training checkpoint such as "
                                  "pretrain.pt), not a full VToonify model")
        raise CheckpointError(f"{name}: 'g_ema' has no generator.* weights; expected {_MODEL}")
    backbone = BACKBONES[1] if any(k.startswith("generator.generator.") for k in state) else BACKBONES[0]
    g = "generator.generator." if backbone == "dualstylegan" else "generator."
    try:
        size, style_dim, n_mlp, channels = _generator_layout(state, g)
        n_blocks, num_res = _encoder_layout(state, name)
        img_channels = int(state[f"encoder.{n_blocks - 1}.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"{name}: the weights do not have VToonify's layout (no {e.args[0]})") from None
    in_size = 32 * 2 ** (n_blocks - 3)
    if in_size > size or num_res < 1:
        raise CheckpointError(f"{name}: the weights do not have VToonify's layout (an encoder for {in_size} px "
                              f"inputs with {num_res} residual blocks, a {size} px generator)")
    info = VToonifyInfo(backbone=backbone, in_size=in_size, out_size=size, n_latent=2 * int(math.log2(size)) - 2,
                        path=path)
    kwargs = dict(in_size=in_size, out_size=size, img_channels=img_channels, style_channels=style_dim,
                  num_mlps=n_mlp, num_res_layers=num_res, backbone=backbone, channels=channels)
    return _Parsed(info, kwargs, state)


def _encoder_layout(state: Mapping[str, torch.Tensor], name: str) -> tuple[int, int]:
    """(blocks, residual blocks) of VToonify's encoder: convolution blocks 0..r-1 (``encoder.i.0``), the
    residual blocks ``encoder.r.j.conv*``, the 1x1 convolution ``encoder.r+1``; keys of blocks past it are
    named as unexpected (read as more blocks, they would imply an absurd input size)."""
    res = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.(\d+)\.\d+\.conv\.", k))})
    if not res:
        raise KeyError("encoder.N.0.conv.weight (the encoder has no residual blocks)")
    r = res[0]
    for i in range(max(r, 1)):
        if f"encoder.{i}.0.weight" not in state:
            raise KeyError(f"encoder.{i}.0.weight")
    extra = sorted((k for k in state if (m := re.match(r"encoder\.(\d+)\.", k)) and int(m.group(1)) > r + 1),
                   key=lambda k: (int(k.split(".")[1]), k))
    if extra:
        raise CheckpointError(f"{name}: {len(extra)} unexpected key(s) ({few(extra)}): VToonify's encoder ends "
                              f"at block {r + 1}, the 1x1 convolution after its residual blocks (encoder.{r})")
    num_res = len({m.group(1) for k in state if (m := re.match(rf"encoder\.{r}\.(\d+)\.conv\.", k))})
    return r + 2, num_res


def _generator_layout(state: Mapping[str, torch.Tensor], g: str):
    """(size, style_dim, n_mlp, channels) of the StyleGAN2 generator under prefix ``g``."""
    n_mlp = 0
    while f"{g}style.{n_mlp + 1}.weight" in state:
        n_mlp += 1
    n_up = 0
    while f"{g}to_rgbs.{n_up}.conv.weight" in state:
        n_up += 1
    if n_up < 4:
        raise KeyError(f"{g}to_rgbs.{n_up} (the generator is smaller than 64 px)")
    channels = {4: int(state[f"{g}input.input"].shape[1])}
    for i in range(n_up):
        channels[2 ** (i + 3)] = int(state[f"{g}convs.{2 * i}.conv.weight"].shape[1])
    return 2 ** (n_up + 2), int(state[f"{g}conv1.conv.modulation.weight"].shape[1]), n_mlp, channels


def _check_keys(module: nn.Module, state: Mapping[str, torch.Tensor], name: str, what: str,
                optional: tuple[str, ...] = ()) -> None:
    """CheckpointError listing missing, unexpected and mis-shaped keys (``optional`` suffixes may be missing)."""
    mismatch = state_mismatch(module, state, optional)
    if mismatch:
        raise CheckpointError(f"{name}: {what} do not match the architecture they imply: {mismatch}")


def _load(module: nn.Module, state: Mapping[str, torch.Tensor], device) -> nn.Module:
    """Load ``state`` into a module built on the meta device; float tensors as float32 on ``device``."""
    state = {k: v.to(device=device, dtype=torch.float32 if v.is_floating_point() else v.dtype, copy=True)
             for k, v in state.items()}
    for name, buf in module.state_dict().items():  # optional keys the file lacks (BatchNorm counters)
        if name not in state:
            state[name] = torch.zeros(buf.shape, dtype=buf.dtype, device=device)
    module.load_state_dict(state, strict=True, assign=True)
    for sub in module.modules():  # non-persistent buffers (the generator's latent_avg) are still on meta
        for b, buf in sub._buffers.items():
            if buf is not None and buf.is_meta:
                sub._buffers[b] = torch.zeros(buf.shape, dtype=buf.dtype, device=device)
    return module.eval().requires_grad_(False)


# ------------------------------------------------------------------ face parser


def load_face_parser(path, device="cpu") -> BiSeNet:
    """``faceparsing.pth`` (a bare BiSeNet state dict) as a :class:`BiSeNet` in eval mode, gradients off."""
    path = Path(path)
    expected = "the BiSeNet face parser (a bare state dict, faceparsing.pth)"
    obj = _torch_object(path, expected)
    if isinstance(obj, Mapping) and ("g_ema" in obj or "state_dict" in obj):
        raise CheckpointError(f"{path.name} is not {expected}: it holds "
                              f"{'g_ema (a generator or VToonify model)' if 'g_ema' in obj else 'an encoder'}")
    state = _tensor_dict(obj, path.name, "the file")
    try:
        width = int(state["cp.resnet.conv1.weight"].shape[0])
        n_classes = int(state["conv_out.conv_out.weight"].shape[0])
    except KeyError as e:
        raise CheckpointError(f"{path.name} is not {expected} (no {e.args[0]})") from None
    with torch.device("meta"):
        net = BiSeNet(n_classes, width=width)
    _check_keys(net, state, path.name, "BiSeNet weights", optional=("num_batches_tracked",))
    return _load(net, state, device)


# ------------------------------------------------------------------ style encoder


def load_style_encoder(path, device="cpu") -> StyleEncoder:
    """VToonify's ``encoder.pt`` (a pSp checkpoint into Z+) as a :class:`StyleEncoder`, eval mode, gradients off."""
    from engine.inversion.encoders import load_encoder

    path = Path(path)
    expected = "VToonify's style encoder (a pSp checkpoint with 'state_dict', 'latent_avg' and 'opts')"
    obj = _torch_object(path, expected)
    if isinstance(obj, Mapping) and "g_ema" in obj:
        raise CheckpointError(f"{path.name} is not {expected}: it holds g_ema (a generator or VToonify model)")
    latent_avg = obj.get("latent_avg") if isinstance(obj, Mapping) else None
    if isinstance(obj, Mapping) and "state_dict" in obj and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"{path.name} has no latent_avg tensor; VToonify's style encoder adds it to "
                              "every code")
    face_encoder = load_encoder(path, device=device)
    info = face_encoder.info
    if info.kind != "psp" or info.input_nc != 3:
        raise CheckpointError(f"{path.name} is a {info.kind} encoder ({info.encoder_type}); VToonify's style "
                              "encoder is pSp's GradualStyleEncoder")
    if latent_avg.numel() not in (info.style_dim, info.n_latent * info.style_dim):
        raise CheckpointError(f"{path.name}: latent_avg has shape {tuple(latent_avg.shape)}, expected "
                              f"({info.n_latent}, {info.style_dim})")
    encoder = StyleEncoder(face_encoder.encoder, latent_avg.to(device=device, dtype=torch.float32))
    return encoder.eval().requires_grad_(False)
