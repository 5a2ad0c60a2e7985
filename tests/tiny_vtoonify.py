"""Tiny VToonify models written in the real file formats, for tests (a forward pass takes well under a second).

* ``vtoonify.pt``: ``{"g_ema": VToonify state dict}`` (what VToonify's training saves);
* ``faceparsing.pth``: a bare BiSeNet state dict;
* ``encoder.pt``: a pSp checkpoint (``state_dict`` with ``encoder.*``, ``latent_avg``, ``opts``);
* ``exstyle_code.npy``: ``np.save`` of a ``{name: (1, n_latent, style_dim) float32}`` dict, as
  DualStyleGAN's destylize.py writes it.

Shapes: input 64 -> output 256 generator (4x, like the public 256/1024 networks, two fusion
levels), 8 channels, style width 16, 14 W+ layers. :func:`write_tiny_set` writes one of each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.vtoonify import BiSeNet, VToonify
from tiny_encoders import save_encoder_checkpoint, tiny_encoder

__all__ = ["IN_SIZE", "OUT_SIZE", "STYLE_DIM", "N_LATENT", "tiny_vtoonify", "save_vtoonify", "tiny_face_parser",
           "save_face_parser", "tiny_style_encoder", "save_style_encoder", "write_exstyles", "write_tiny_set",
           "randomize"]

IN_SIZE, OUT_SIZE, STYLE_DIM = 64, 256, 16
N_LATENT = 14
PARSER_WIDTH = 8


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give the parameters the default init leaves at 0/1 (biases, noise strengths, BatchNorm) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                t.fill_(1000)
            elif name.endswith("noise.weight"):
                t.copy_(0.1 + 0.1 * torch.rand(t.shape, generator=g))
            elif name.endswith("bias") and t.is_floating_point():
                t.add_(0.05 * torch.randn(t.shape, generator=g))
            elif t.ndim == 1 and name.endswith("weight"):  # BatchNorm gammas
                t.copy_(0.5 + 0.5 * torch.rand(t.shape, generator=g))
            elif name.startswith("res.") and ".conv" in name and name.endswith("0.weight"):
                t.mul_(30)  # ModRes residuals start at 1% of their weights: make them matter
    return module


def tiny_vtoonify(backbone: str = "toonify", seed: int = 0) -> VToonify:
    """A random tiny VToonify (T for "toonify", D for "dualstylegan") in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VToonify(in_size=IN_SIZE, out_size=OUT_SIZE, style_channels=STYLE_DIM, backbone=backbone,
                       channels={2 ** i: 8 for i in range(2, 9)})
    return randomize(net, seed).eval()


def save_vtoonify(path: Path, net: VToonify) -> Path:
    torch.save({"g_ema": net.state_dict()}, path)
    return Path(path)


def tiny_face_parser(seed: int = 0) -> BiSeNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parser = BiSeNet(19, width=PARSER_WIDTH)
    return randomize(parser, seed).eval()


def save_face_parser(path: Path, parser: BiSeNet) -> Path:
    torch.save(parser.state_dict(), path)
    return Path(path)


def tiny_style_encoder(seed: int = 0, n_styles: int = N_LATENT) -> torch.nn.Module:
    """A tiny pSp GradualStyleEncoder for 256x256 aligned faces."""
    return tiny_encoder("GradualStyleEncoder", n_styles, seed=seed, style_dim=STYLE_DIM, input_size=256)


def save_style_encoder(path: Path, encoder: torch.nn.Module, latent_avg: torch.Tensor | None,
                       output_size: int = OUT_SIZE, opts: dict | None = None) -> Path:
    """A pSp checkpoint as VToonify's encoder.pt: encoder.*, latent_avg (Z+), opts (no decoder)."""
    save_encoder_checkpoint(Path(path), "GradualStyleEncoder", encoder, None, latent_avg,
                            opts={"output_size": output_size, **(opts or {})})
    return Path(path)


def write_exstyles(path: Path, n: int = 3, seed: int = 0, n_latent: int = N_LATENT,
                   style_dim: int = STYLE_DIM) -> dict[str, np.ndarray]:
    """``np.save`` a dict of Z+ style codes the way DualStyleGAN does; returns the dict."""
    rng = np.random.default_rng(seed)
    codes = {f"style{i:03d}.jpg": rng.standard_normal((1, n_latent, style_dim)).astype(np.float32)
             for i in range(n)}
    np.save(path, codes)
    return codes


def write_tiny_set(folder: Path, backbone: str = "toonify", seed: int = 0) -> dict[str, Path]:
    """Write a tiny model, parser, style encoder (and, for VToonify-D, the style codes beside the model).

    Returns {"model", "parser", "encoder"[, "exstyles"]} paths; the model is
    ``vtoonify_<t|d>.pt`` and its codes ``vtoonify_d_exstyle_code.npy``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag = "d" if backbone == "dualstylegan" else "t"
    out = {"model": save_vtoonify(folder / f"vtoonify_{tag}.pt", tiny_vtoonify(backbone, seed)),
           "parser": save_face_parser(folder / "faceparsing.pth", tiny_face_parser(seed)),
           "encoder": save_style_encoder(folder / "encoder.pt", tiny_style_encoder(seed),
                                         0.3 * torch.randn(N_LATENT, STYLE_DIM,
                                                           generator=torch.Generator().manual_seed(seed)))}
    if backbone == "dualstylegan":
        out["exstyles"] = folder / f"vtoonify_{tag}_exstyle_code.npy"
        write_exstyles(out["exstyles"], seed=seed)
    return out
