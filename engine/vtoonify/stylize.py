"""One VToonify pass as the reference's ``style_transfer.py`` does it: parse the face, stylise, clamp.

* :func:`parse_faces`: BiSeNet on the frame upsampled 2x (bilinear) and doubled
  in amplitude ("the parsing network works best on 512x512 images"), its main
  output scaled back by 0.5 (nearest).
* :func:`stylize`: the frame plus the parsing map / 16 (22 channels) through the
  network with a W+ style code and the style degree; output clamped to [-1, 1].
* :func:`style_code`: the W+ code of a face: the Z+ style encoder on the
  aligned face, mapped to W+; for VToonify-D the first 7 layers (structure)
  come from the extrinsic style, or all 18 with ``color_transfer``.

All three run without gradients (inference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .network import VToonify

__all__ = ["parse_faces", "stylize", "style_code", "STRUCTURE_LAYERS", "PARSING_DIVISOR"]

STRUCTURE_LAYERS = 7  # VToonify-D takes W+ indices 0..6 from the extrinsic style code
PARSING_DIVISOR = 16.0  # "we give parsing maps lower weight (1/16)"


@torch.no_grad()
def parse_faces(parser: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Face-parsing logits (N, 19, H, W) of frames ``x`` (N, 3, H, W) in [-1, 1]."""
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    return F.interpolate(parser(2 * up)[0], scale_factor=0.5, recompute_scale_factor=False)


@torch.no_grad()
def stylize(net: VToonify, parser: torch.nn.Module, x: torch.Tensor, wplus: torch.Tensor,
            degree: float = 0.5) -> torch.Tensor:
    """Stylised frames (N, 3, H*k, W*k), k = out_size / in_size (4), in [-1, 1].

    ``x``: (N, 3, H, W) in [-1, 1], sides multiples of 8; ``wplus``: (N, L, 512)
    or one code (1, L, 512) for every frame; ``degree``: VToonify-D's style
    degree d_s (ignored by VToonify-T).
    """
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % 8 or x.shape[3] % 8:
        raise ValueError(f"frames must be (N, 3, H, W) with H and W multiples of 8, got {tuple(x.shape)}")
    if wplus.shape[0] == 1 and x.shape[0] > 1:
        wplus = wplus.repeat(x.shape[0], 1, 1)
    inputs = torch.cat((x, parse_faces(parser, x) / PARSING_DIVISOR), dim=1)
    return torch.clamp(net(inputs, wplus, d_s=degree), -1, 1)


@torch.no_grad()
def style_code(net: VToonify, encoder: torch.nn.Module, aligned: torch.Tensor, exstyle: torch.Tensor | None = None,
               color_transfer: bool = False) -> torch.Tensor:
    """W+ style codes (N, L, 512) of aligned faces (N, 3, 256, 256) in [-1, 1], L = ``net.n_latent``.

    The encoder may give more codes than the network reads (the reference's 18-layer
    encoder and a model that stops one layer early, ``distill --out-scale 2``): all are
    mapped, as the reference maps them, and the layers past L, which the network never
    reads, are dropped. ``exstyle``: VToonify-D's extrinsic style, (1, L, 512) already
    mapped to W+ (``net.zplus2wplus`` of a code from :func:`engine.vtoonify.read_exstyles`);
    required for VToonify-D, ignored for VToonify-T.
    """
    codes = encoder(aligned)
    if codes.shape[1] < net.n_latent:
        raise ValueError(f"the style encoder gives {codes.shape[1]} codes, the network reads {net.n_latent}")
    s_w = net.zplus2wplus(codes)[:, :net.n_latent]
    if net.backbone != "dualstylegan":
        return s_w
    if exstyle is None:
        raise ValueError("VToonify-D needs an extrinsic style code (exstyle)")
    if tuple(exstyle.shape[1:]) != tuple(s_w.shape[1:]):
        raise ValueError(f"exstyle must be (1, {s_w.shape[1]}, {s_w.shape[2]}), got {tuple(exstyle.shape)}")
    exstyle = exstyle.to(s_w)
    if color_transfer:
        return exstyle.expand(s_w.shape[0], -1, -1).clone()
    s_w[:, :STRUCTURE_LAYERS] = exstyle[:, :STRUCTURE_LAYERS]
    return s_w
