"""Tiny pSp / e4e / ReStyle encoders written in the real checkpoint layout for tests.

``save_encoder_checkpoint`` writes what the reference training coaches write:
``{"state_dict": {"encoder.*", "decoder.*"}, "latent_avg", "opts"}`` (``opts``
as a dict, ``vars(opts)``, or as an ``argparse.Namespace``), so the files reach
the engine through the same loader as the public ones.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from engine.inversion.encoders.architectures import (BackboneEncoder, BackboneEncoderUsingLastLayerIntoW,
                                                     BackboneEncoderUsingLastLayerIntoWPlus, GradualStyleEncoder)
from engine.inversion.encoders.backbones import Layout
from tiny_models import tiny_generator

__all__ = ["TINY_WIDTHS", "tiny_layout", "tiny_encoder", "save_encoder_checkpoint", "write_tiny_encoder"]

TINY_WIDTHS = (16, 24, 32, 48)

# encoder_type -> (architecture, progressive, input_nc, backbone, opts key for the size)
_ARCH = {
    "GradualStyleEncoder": (GradualStyleEncoder, False, 3, "ir_se50", "output_size"),
    "Encoder4Editing": (GradualStyleEncoder, True, 3, "ir_se50", "stylegan_size"),
    "BackboneEncoderUsingLastLayerIntoW": (BackboneEncoderUsingLastLayerIntoW, False, 3, "ir_se50", "output_size"),
    "BackboneEncoderUsingLastLayerIntoWPlus": (BackboneEncoderUsingLastLayerIntoWPlus, False, 3, "ir_se50",
                                               "output_size"),
    "BackboneEncoder": (BackboneEncoder, False, 6, "ir_se50", "output_size"),
    "ProgressiveBackboneEncoder": (BackboneEncoder, True, 6, "ir_se50", "output_size"),
    "ResNetBackboneEncoder": (BackboneEncoder, False, 6, "resnet34", "output_size"),
    "ResNetProgressiveBackboneEncoder": (BackboneEncoder, True, 6, "resnet34", "output_size"),
}


def tiny_layout(encoder_type: str, n_styles: int, style_dim: int = 16, input_size: int = 64) -> Layout:
    _, _, input_nc, backbone, _ = _ARCH[encoder_type]
    return Layout(backbone=backbone, input_nc=input_nc, n_styles=n_styles, style_dim=style_dim,
                  widths=TINY_WIDTHS, units=(1, 2, 2, 1), input_size=input_size)


def tiny_encoder(encoder_type: str, n_styles: int, seed: int = 0, style_dim: int = 16,
                 input_size: int = 64) -> torch.nn.Module:
    """A tiny random encoder of the given reference type; BatchNorm statistics and PReLU slopes random too."""
    cls, progressive, *_ = _ARCH[encoder_type]
    layout = tiny_layout(encoder_type, n_styles, style_dim, input_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        enc = cls(layout, progressive=progressive) if cls in (GradualStyleEncoder, BackboneEncoder) else cls(layout)
        with torch.no_grad():
            for name, t in enc.state_dict().items():
                if name.endswith("running_mean") or name.endswith(".bias") and t.ndim == 1:
                    t.copy_(0.1 * torch.randn_like(t))
                elif name.endswith("running_var") or (name.endswith("weight") and t.ndim == 1):
                    t.copy_(0.5 + torch.rand_like(t))
                elif name.endswith("num_batches_tracked"):
                    t.fill_(1000)
    return enc.eval()


def save_encoder_checkpoint(path: Path, encoder_type: str, encoder: torch.nn.Module, decoder, latent_avg,
                            opts: dict | None = None, namespace: bool = False) -> Path:
    """Write ``{"state_dict", "latent_avg", "opts"}`` as the reference coaches do."""
    *_, size_key = _ARCH[encoder_type]
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    if decoder is not None:
        state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    full_opts = {"exp_dir": "/tmp/exp", "dataset_type": "ffhq_encode", "encoder_type": encoder_type,
                 "input_nc": encoder.layout.input_nc, size_key: decoder.size if decoder is not None else 1024,
                 "start_from_latent_avg": True, "batch_size": 8, "learning_rate": 1e-4,
                 "progressive_steps": [0, 20000], "device": "cuda:0", "checkpoint_path": None}
    full_opts.update(opts or {})
    payload = {"state_dict": state, "opts": argparse.Namespace(**full_opts) if namespace else full_opts}
    if latent_avg is not None:
        payload["latent_avg"] = latent_avg
    torch.save(payload, path)
    return Path(path)


def write_tiny_encoder(path: Path, encoder_type: str, size: int = 32, seed: int = 0, **kw) -> Path:
    """A tiny encoder + decoder checkpoint for a ``size`` px tiny generator (n_latent = 2 log2(size) - 2)."""
    n_latent = 2 * int(math.log2(size)) - 2
    decoder = tiny_generator(size, seed=seed, channels=8 if size > 64 else 16)
    encoder = tiny_encoder(encoder_type, n_latent, seed=seed + 1)
    latent_avg = decoder.latent_avg.repeat(n_latent, 1)
    return save_encoder_checkpoint(path, encoder_type, encoder, decoder, latent_avg, **kw)
