"""Read pSp / e4e / ReStyle checkpoints: inspect, build the encoder, expose the decoder.

The public files are ``torch.save`` dicts::

    {"state_dict": {"encoder.<name>": tensor, ..., "decoder.<name>": tensor, ...},
     "latent_avg": tensor (n_latent, 512) or absent,
     "opts": dict or argparse.Namespace of the training options,
     ...training state (ignored)}

They are read with ``engine.generator.safe_pickle.read_torch_file``
(``weights_only``: tensors, plain containers and ``argparse.Namespace`` only;
no code from the file runs). The architecture
comes from ``opts["encoder_type"]``; its widths, unit counts, number of
styles and input size are read off the weights (the public files have the
reference's shapes; tests write tiny ones), the module is built with those
and loaded with strict key and shape matching. ``decoder.*`` is a rosinality
StyleGAN2 generator: ReStyle needs it to render its intermediate
reconstructions, and pSp's Toonify model's decoder is the toon generator its
latents are meant for (:func:`load_encoder_decoder`).
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from engine.generator.checkpoints import generator_from_state_dict
from engine.generator.safe_pickle import (PICKLE, TORCH_LEGACY, TORCH_ZIP, CheckpointError, OtherKind,
                                         read_torch_file, sniff, state_mismatch)
from engine.generator.stylegan2 import Generator

from .architectures import (BackboneEncoder, BackboneEncoderUsingLastLayerIntoW,
                            BackboneEncoderUsingLastLayerIntoWPlus, GradualStyleEncoder)
from .backbones import IR_SE50, RESNET34, Layout
from .model import RESTYLE_ITERATIONS, EncoderInfo, FaceEncoder

__all__ = ["ENCODER_TYPES", "inspect_encoder", "load_encoder", "load_encoder_decoder"]

# opts["encoder_type"] -> (head, progressive, backbone)
ENCODER_TYPES: dict[str, tuple[str, bool, str]] = {
    "GradualStyleEncoder": ("fpn", False, IR_SE50),             # pSp, e4e repo, ReStyle
    "Encoder4Editing": ("fpn", True, IR_SE50),                   # e4e
    "BackboneEncoderUsingLastLayerIntoW": ("w", False, IR_SE50),  # pSp
    "SingleStyleCodeEncoder": ("w", False, IR_SE50),              # e4e repo's name for the same
    "BackboneEncoderUsingLastLayerIntoWPlus": ("w+", False, IR_SE50),  # pSp
    "ResNetGradualStyleEncoder": ("fpn", False, RESNET34),        # ReStyle
    "BackboneEncoder": ("backbone", False, IR_SE50),              # ReStyle pSp
    "ResNetBackboneEncoder": ("backbone", False, RESNET34),
    "ProgressiveBackboneEncoder": ("backbone", True, IR_SE50),    # ReStyle e4e
    "ResNetProgressiveBackboneEncoder": ("backbone", True, RESNET34),
}
_RESTYLE_ONLY = {"ResNetGradualStyleEncoder", "BackboneEncoder", "ResNetBackboneEncoder",
                 "ProgressiveBackboneEncoder", "ResNetProgressiveBackboneEncoder"}
_EXPECTED = "a pSp, e4e or ReStyle checkpoint (a torch .pt with 'state_dict', 'latent_avg' and 'opts')"


@dataclass
class _Parsed:
    info: EncoderInfo
    layout: Layout
    progressive: bool
    head: str
    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor]
    latent_avg: torch.Tensor | None


# ------------------------------------------------------------------ public API


def inspect_encoder(path) -> EncoderInfo:
    """What an encoder checkpoint is (kind, latents, sizes) without building it; CheckpointError if unusable."""
    return _parse(Path(path)).info


def load_encoder(path, device="cpu", expect_size: int | None = None) -> FaceEncoder:
    """Load a pSp / e4e / ReStyle checkpoint as a :class:`FaceEncoder` in eval mode, gradients off.

    ``expect_size``: the base generator's resolution; a checkpoint whose
    latents are for another size is refused. ReStyle encoders carry their
    decoder (it renders their intermediate reconstructions).
    """
    path = Path(path)
    p = _parse(path)
    info = p.info
    if expect_size is not None and info.size != int(expect_size):
        want = 2 * int(math.log2(int(expect_size))) - 2
        raise CheckpointError(
            f"{path.name} encodes faces for a {info.size} px generator ({info.n_latent} latents), but the base "
            f"generator is {expect_size} px ({want} latents)")
    encoder = _build(p, path, device)
    latent_avg = p.latent_avg
    decoder = None
    if info.restyle or (info.start_from_latent_avg and latent_avg is None):
        decoder = _decoder(p, path, device)
        if latent_avg is None:  # as e4e's pSp wrapper: the decoder's mean latent
            latent_avg = decoder.latent_avg
    if latent_avg is not None:
        latent_avg = latent_avg.to(device=device, dtype=torch.float32)
    model = FaceEncoder(encoder, info, latent_avg, decoder if info.restyle else None)
    return model.eval().requires_grad_(False)


def load_encoder_decoder(path, device="cpu") -> Generator | None:
    """The checkpoint's own generator (``decoder.*``) as an engine Generator, or None when it has none.

    For ``psp_ffhq_toonify.pt`` this is the Toonify generator: it renders the
    encoder's latents as toon faces directly (a fixed one-pass toon, not a
    base for layer swapping).
    """
    path = Path(path)
    p = _parse(path)
    return _decoder(p, path, device) if p.decoder else None


# ------------------------------------------------------------------ reading


def _read_torch_file(path: Path):
    """The object in a torch.save file, read with weights_only (CheckpointError otherwise)."""
    kind = sniff(path)
    if kind not in (TORCH_ZIP, TORCH_LEGACY):
        what = "a plain pickle (an NVIDIA .pkl?)" if kind == PICKLE else "not a torch file"
        raise OtherKind(f"{path.name} is {what}; expected {_EXPECTED}")
    return read_torch_file(path)


def _parse(path: Path) -> _Parsed:
    obj = _read_torch_file(path)
    name = path.name
    if not isinstance(obj, Mapping) or "state_dict" not in obj or "opts" not in obj:
        found = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, Mapping) else type(obj).__name__
        hint = " (it is a StyleGAN2 generator checkpoint)" if isinstance(obj, Mapping) and "g_ema" in obj else ""
        raise OtherKind(f"{name} is not an encoder checkpoint{hint}: expected {_EXPECTED}; found {found}")
    state = obj["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise CheckpointError(f"{name}: 'state_dict' is not a state dict of tensors")
    opts = obj["opts"]
    if isinstance(opts, argparse.Namespace):
        opts = vars(opts)
    if not isinstance(opts, Mapping):
        raise CheckpointError(f"{name}: 'opts' is a {type(opts).__name__}, expected a dict of training options")
    encoder_type = opts.get("encoder_type")
    if encoder_type not in ENCODER_TYPES:
        raise CheckpointError(f"{name}: unknown encoder type {encoder_type!r} (expected one of "
                              f"{', '.join(ENCODER_TYPES)})")
    if opts.get("dataset_type") == "cars_encode":
        raise CheckpointError(f"{name} is a car encoder (dataset_type 'cars_encode'); only face encoders are "
                              "supported")
    enc = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    dec = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    if not enc:
        raise CheckpointError(f"{name}: the state dict has no encoder.* weights")
    latent_avg = obj.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, torch.Tensor):
        raise CheckpointError(f"{name}: 'latent_avg' is not a tensor")

    head, progressive, backbone = ENCODER_TYPES[encoder_type]
    size = _output_size(name, opts, dec)
    n_latent = 2 * int(math.log2(size)) - 2
    layout = _layout(name, encoder_type, head, backbone, enc, n_latent)
    if layout.n_styles != n_latent:
        raise CheckpointError(f"{name}: the encoder predicts {layout.n_styles} latents, but its generator is "
                              f"{size} px ({n_latent} latents)")
    restyle = layout.input_nc == 6
    if encoder_type in _RESTYLE_ONLY and not restyle:
        raise CheckpointError(f"{name}: {encoder_type} is a ReStyle encoder but takes {layout.input_nc} input "
                              "channels (ReStyle takes 6: the face and the current reconstruction)")
    if layout.input_nc not in (3, 6) or (restyle and head in ("w", "w+")) or (restyle and encoder_type ==
                                                                               "Encoder4Editing"):
        raise CheckpointError(f"{name}: {encoder_type} with {layout.input_nc} input channels is not a face "
                              "encoder (a sketch or segmentation model?)")
    if restyle and not dec:
        raise CheckpointError(f"{name}: a ReStyle encoder needs its decoder.* weights, which the file lacks")
    if latent_avg is not None:
        rows = latent_avg.numel() // layout.style_dim
        if latent_avg.numel() % layout.style_dim or rows not in (1, n_latent):
            raise CheckpointError(f"{name}: latent_avg has shape {tuple(latent_avg.shape)}, expected (1 or "
                                  f"{n_latent}, {layout.style_dim})")
    elif restyle:
        raise CheckpointError(f"{name}: a ReStyle checkpoint must carry latent_avg (its first iteration starts "
                              "there)")
    if progressive:
        kind = "restyle-e4e" if restyle else "e4e"
    elif restyle:
        kind = "restyle-psp"
    else:
        kind = {"fpn": "psp", "w": "psp-w", "w+": "psp-w+"}[head]
    info = EncoderInfo(
        kind=kind, encoder_type=encoder_type, backbone=layout.backbone, n_latent=n_latent,
        style_dim=layout.style_dim, size=size, input_nc=layout.input_nc, input_size=layout.input_size,
        iterations=RESTYLE_ITERATIONS if restyle else 1,
        start_from_latent_avg=restyle or bool(opts.get("start_from_latent_avg", False)),
        has_decoder=bool(dec), dataset_type=opts.get("dataset_type"), path=path)
    return _Parsed(info, layout, progressive, head, enc, dec, latent_avg)


def _output_size(name: str, opts: Mapping, dec: Mapping[str, torch.Tensor]) -> int:
    """The generator resolution: opts output_size (pSp, ReStyle) or stylegan_size (e4e), checked against decoder.*."""
    size = opts.get("output_size", opts.get("stylegan_size"))
    n_up = 0
    while f"to_rgbs.{n_up}.conv.weight" in dec:
        n_up += 1
    dec_size = 2 ** (n_up + 2) if n_up else None
    if size is None:
        size = dec_size or 1024  # pSp's inference.py defaults a missing output_size to 1024
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size & (size - 1):
        raise CheckpointError(f"{name}: output size {size!r} in opts is not a power of two")
    if dec_size is not None and dec_size != size:
        raise CheckpointError(f"{name}: opts say a {size} px generator, but decoder.* is {dec_size} px")
    return size


def _layout(name: str, encoder_type: str, head: str, backbone: str, s: Mapping[str, torch.Tensor],
            n_latent: int) -> Layout:
    """The Layout the encoder weights were trained with (the reference's for the public files)."""
    try:
        if backbone == IR_SE50:
            stem = s["input_layer.0.weight"]
            start, depth = "body.{}.shortcut_layer.0.weight", "body.{}.res_layer.1.weight"
        else:
            stem = s["conv1.weight"]
            start, depth = "body.{}.downsample.0.weight", "body.{}.conv1.weight"
        n_units = 1 + max((int(m.group(1)) for k in s if (m := re.match(r"body\.(\d+)\.", k))), default=-1)
        starts = [0] + [i for i in range(1, n_units) if start.format(i) in s]
        if len(starts) != 4:
            raise CheckpointError(f"{name}: the {backbone} trunk has {len(starts)} stages, expected 4")
        units = tuple(b - a for a, b in zip(starts, starts[1:] + [n_units]))
        widths = tuple(int(s[depth.format(i)].shape[0]) for i in starts)
        n_styles, input_size = n_latent, 256
        if head in ("fpn", "backbone"):
            n_styles = sum(1 for k in s if re.fullmatch(r"styles\.\d+\.linear\.weight", k))
            style_dim = int(s["styles.0.linear.weight"].shape[0])
            n_convs = sum(1 for k in s if re.fullmatch(r"styles\.0\.convs\.\d+\.weight", k))
            input_size = 16 * 2 ** n_convs
        elif head == "w":
            style_dim = int(s["linear.weight"].shape[0])
        else:
            style_dim = int(s["output_layer_2.3.weight"].shape[0])
            n_styles = int(s["linear.weight"].shape[0]) // style_dim
        return Layout(backbone=backbone, input_nc=int(stem.shape[1]), n_styles=n_styles, style_dim=style_dim,
                      widths=widths, units=units, input_size=input_size)
    except (KeyError, IndexError, ValueError) as e:
        what = f"no {e.args[0]}" if isinstance(e, KeyError) else str(e)
        raise CheckpointError(f"{name}: the encoder weights do not have the layout of {encoder_type} "
                              f"({what})") from None


def _build(p: _Parsed, path: Path, device) -> nn.Module:
    """The architecture, built without allocating and loaded with strict names and shapes."""
    with torch.device("meta"):
        if p.head == "fpn":
            module = GradualStyleEncoder(p.layout, progressive=p.progressive)
        elif p.head == "backbone":
            module = BackboneEncoder(p.layout, progressive=p.progressive)
        elif p.head == "w":
            module = BackboneEncoderUsingLastLayerIntoW(p.layout)
        else:
            module = BackboneEncoderUsingLastLayerIntoWPlus(p.layout)
    mismatch = state_mismatch(module, p.encoder)
    if mismatch:
        raise CheckpointError(f"{path.name}: encoder weights do not match {p.info.encoder_type}: {mismatch}")
    state = {k: v.to(device=device, dtype=v.dtype if k.endswith("num_batches_tracked") else torch.float32,
                     copy=True) for k, v in p.encoder.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def _decoder(p: _Parsed, path: Path, device) -> Generator:
    if not p.decoder:
        raise CheckpointError(f"{path.name} has no decoder.* weights")
    avg = None
    if p.latent_avg is not None:
        rows = p.latent_avg.reshape(-1, p.info.style_dim).float()
        avg = rows[0] if bool((rows == rows[0]).all()) else None
    try:
        g = generator_from_state_dict(p.decoder, avg)
    except CheckpointError as e:
        raise CheckpointError(f"{path.name}: decoder.*: {e}") from None
    return g.to(device).eval().requires_grad_(False)
