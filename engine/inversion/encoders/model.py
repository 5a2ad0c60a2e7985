"""The loaded encoder as one module: face crops in, W+ latents of the base generator out.

:class:`FaceEncoder` wraps an architecture from :mod:`.architectures` with what
the reference ``pSp`` / ``e4e`` wrappers add around it at inference time:

* the input transform: aligned face crops resized to the encoder's input size
  (256) exactly as the reference's ``transforms.Resize((256, 256))`` does on a
  PIL image (:func:`resize_faces`, :func:`preprocess`): the crop in whole grey
  levels (a deep crop rounded to 8 bits, as the reference reads images), PIL's
  antialiased bilinear resampling in its fixed-point arithmetic, horizontal pass
  then vertical, each rounded half up to whole grey levels;
* ``latent_avg`` added to the codes when ``start_from_latent_avg`` (pSp, e4e),
  a single W code broadcast to every layer;
* ReStyle's iterations: the encoder sees the face next to the current
  reconstruction (6 channels). The first reconstruction is the average image
  (the decoder's rendering of ``latent_avg``, average-pooled to 256 like the
  reference's ``face_pool``); the first iteration adds its output to
  ``latent_avg``, each later one to the previous latent; between iterations
  the decoder renders the latent (stored noise, as ``randomize_noise=False``)
  and it is pooled to 256 again. The reference's default is 5 iterations.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine.generator.stylegan2 import Generator

__all__ = ["EncoderInfo", "FaceEncoder", "resize_faces", "resize_levels", "preprocess"]

RESTYLE_ITERATIONS = 5  # restyle-encoder options/test_options.py: --n_iters_per_batch default


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder checkpoint holds.

    ``kind``: "psp", "psp-w", "psp-w+", "e4e", "restyle-psp" or "restyle-e4e";
    ``encoder_type``: the reference class name from ``opts``; ``backbone``:
    "ir_se50" or "resnet34"; ``n_latent``/``style_dim``/``size``: the W+ shape
    and output resolution of the generator the latents are for; ``input_nc``:
    3, or 6 for ReStyle (image + reconstruction); ``input_size``: the
    encoder's input resolution (256); ``iterations``: the default number of
    forward passes (ReStyle 5, others 1); ``start_from_latent_avg``: whether
    ``latent_avg`` is added (always true for ReStyle's first pass);
    ``has_decoder``: the file carries a generator (``decoder.*``).
    """

    kind: str
    encoder_type: str
    backbone: str
    n_latent: int
    style_dim: int
    size: int
    input_nc: int
    input_size: int
    iterations: int
    start_from_latent_avg: bool
    has_decoder: bool
    dataset_type: str | None
    path: Path

    @property
    def restyle(self) -> bool:
        return self.kind.startswith("restyle")


PIL_PRECISION_BITS = 22   # Pillow's Resample.c: 32 - 8 - 2 fractional bits of its 8-bit coefficients


@functools.lru_cache(maxsize=32)
def _pil_weights(in_size: int, out_size: int) -> torch.Tensor:
    """Pillow's BILINEAR coefficients for one axis (``precompute_coeffs``, then ``normalize_coeffs_8bpc``
    into fixed point) as a dense (out_size, in_size) float64 matrix of whole numbers."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 1.0 * filterscale  # the triangle filter's support, stretched when shrinking
    inv_filterscale = 1.0 / filterscale
    weights = torch.zeros(out_size, in_size, dtype=torch.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * inv_filterscale)) for x in range(xmax)]
        total = 0.0
        for w in k:  # summed in Pillow's order: the normalised doubles must round the same way
            total += w
        for x, w in enumerate(k):
            w = w / total if total != 0.0 else w
            weights[xx, x + xmin] = int(0.5 + w * (1 << PIL_PRECISION_BITS))  # w >= 0: Pillow's rounding
    return weights


def resize_levels(levels: torch.Tensor, size: int) -> torch.Tensor:
    """``Image.resize((size, size), BILINEAR)`` of whole 8-bit grey levels (N, C, H, W), bit for bit.

    Pillow's fixed-point passes, horizontal then vertical (each skipped when that side already has
    the size), each ``(sum of level * weight + 2**21) >> 22`` clipped to 0..255. The sums are whole
    numbers below 2**40, so float64 products and sums hold them exactly, in any order (MPS has no
    float64: the CPU does it there). Pillow 13 runs the vertical pass first on some non-square
    images; on square ones (every face crop) every version agrees with this.
    """
    device = levels.device
    x = levels.to(device="cpu" if device.type == "mps" else device, dtype=torch.float64)
    half, unit = float(1 << (PIL_PRECISION_BITS - 1)), float(1 << PIL_PRECISION_BITS)
    if x.shape[-1] != size:
        x = torch.floor((x @ _pil_weights(x.shape[-1], size).to(x.device).T + half) / unit).clamp_(0, 255)
    if x.shape[-2] != size:
        x = torch.floor((_pil_weights(x.shape[-2], size).to(x.device) @ x + half) / unit).clamp_(0, 255)
    return x.to(device)


def resize_faces(crops: torch.Tensor, size: int) -> torch.Tensor:
    """Float crops (N, C, S, S) in [-1, 1] as the reference encoders see them at size x size: whole
    8-bit grey levels (deep crops rounded), resized like PIL's BILINEAR (:func:`resize_levels`)."""
    levels = ((crops.detach().float() + 1.0) * 127.5).round_().clamp_(0, 255)
    return (resize_levels(levels, size) / 127.5 - 1.0).to(crops.dtype)


def preprocess(images, size: int = 256) -> torch.Tensor:
    """The reference inference transform for uint8 RGB faces: (N,H,W,3) or (H,W,3) -> (N,3,size,size) in [-1,1].

    ``Resize((size, size))`` on a PIL image, ``ToTensor`` and ``Normalize(0.5, 0.5)``, bit for bit
    (:func:`resize_levels`).
    """
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB images (N,H,W,3) or (H,W,3), got {arr.dtype} {arr.shape}")
    levels = torch.from_numpy(np.ascontiguousarray(arr.reshape((-1,) + arr.shape[-3:]))).permute(0, 3, 1, 2)
    return (resize_levels(levels, size) / 127.5 - 1.0).to(torch.float32)


class FaceEncoder(nn.Module):
    """An encoder ready to run: ``forward(crops, iterations=None) -> (N, n_latent, style_dim)`` W+ latents.

    ``crops``: aligned FFHQ-style face crops (N, 3, S, S) in [-1, 1], any S
    (resized to the encoder's input size inside). ``iterations``: ReStyle
    passes (None: ``info.iterations``); one-pass encoders accept only None or 1.
    ``decoder`` is the checkpoint's generator when the encoder needs it
    (ReStyle renders its intermediate reconstructions with it), else None.
    """

    def __init__(self, encoder: nn.Module, info: EncoderInfo, latent_avg: torch.Tensor | None,
                 decoder: Generator | None = None):
        super().__init__()
        self.encoder = encoder
        self.info = info
        self.decoder = decoder
        if latent_avg is not None:
            latent_avg = latent_avg.reshape(-1, info.style_dim).float()
            latent_avg = latent_avg.expand(info.n_latent, -1).clone() if len(latent_avg) == 1 else latent_avg
        self.register_buffer("latent_avg", latent_avg)
        self.register_buffer("avg_image", None)
        if info.restyle:
            if decoder is None or latent_avg is None:
                raise ValueError("a ReStyle encoder needs its decoder and latent_avg")
            with torch.no_grad():
                self.avg_image = self._face_pool(decoder.synthesis(self.latent_avg[None]))

    def _face_pool(self, images: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(images, self.info.input_size)

    def _offset(self, codes: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        """codes (N,n,D) or a single W (N,D), plus base (n,D) or (N,n,D), as (N, n_latent, D)."""
        if codes.ndim == 2:
            codes = codes.unsqueeze(1).expand(-1, self.info.n_latent, -1)
        return codes if base is None else codes + base

    def forward(self, crops: torch.Tensor, iterations: int | None = None,
                return_all: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """W+ latents (N, n_latent, style_dim) of the faces; ``return_all``: the list of every iteration's."""
        info = self.info
        if crops.ndim != 4 or crops.shape[1] != 3 or crops.shape[-1] != crops.shape[-2]:
            raise ValueError(f"expected square RGB crops (N, 3, S, S), got {tuple(crops.shape)}")
        n_iter = info.iterations if iterations is None else int(iterations)
        if n_iter < 1 or (not info.restyle and n_iter != 1):
            raise ValueError(f"iterations must be >= 1 for ReStyle and 1 for a one-pass encoder "
                             f"({info.kind}), got {iterations}")
        weight = next(self.encoder.parameters())
        x = resize_faces(crops.to(device=weight.device), self.encoder.layout.input_size).to(weight.dtype)
        if not info.restyle:
            out = self._offset(self.encoder(x), self.latent_avg if info.start_from_latent_avg else None)
            return [out] if return_all else out
        outs = []
        latent, recon = None, self.avg_image.expand(len(x), -1, -1, -1)
        for i in range(n_iter):
            latent = self._offset(self.encoder(torch.cat([x, recon], dim=1)),
                                  self.latent_avg if latent is None else latent)
            outs.append(latent)
            if i + 1 < n_iter:
                recon = self._face_pool(self.decoder.synthesis(latent))
        return outs if return_all else outs[-1]
