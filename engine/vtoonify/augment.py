"""VToonify's mild geometric augmentation of training pairs (``model/simple_augment.py``, ``random_apply_affine``).

The transform family and its draws are those of StyleGAN2-ADA's geometric
pipeline as rosinality's ``non_leaking.py`` ports it, with VToonify's milder
settings: x-flip, integer translation, isotropic scale, rotation (up to 45
degrees either way), anisotropic scale, rotation, fractional translation; each
applied per image with probability ``p`` (rotations with ``1 - sqrt(1 - p)``),
the reference uses ``p = 0.2``. As in the reference, matrices act on pixel
coordinates centred on the image, so its translations (``±0.125`` and
``N(0, 0.125)``) move images by a fraction of a pixel.

The warp: reflect-pad by what the transform uncovers, upsample 2x with the
symlet-6 low-pass filter, sample bilinearly, filter and downsample 2x. Every
random draw comes from the ``torch.Generator`` passed in, so a batch depends
on its seed alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["sample_affine", "random_affine", "SYM6"]

# Symlet-6 low-pass decomposition filter (sums to sqrt(2)).
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)


def _eye(n: int) -> torch.Tensor:
    return torch.eye(3).repeat(n, 1, 1)


def _translate(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    m = _eye(tx.shape[0])
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def _scale(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    m = _eye(sx.shape[0])
    m[:, 0, 0], m[:, 1, 1] = sx, sy
    return m


def _rotate(theta: torch.Tensor) -> torch.Tensor:
    m = _eye(theta.shape[0])
    c, s = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = c, -s, s, c
    return m


def sample_affine(p: float, n: int, height: int, width: int, rng: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) random transforms (float32, CPU), each step applied to each image with probability p."""
    def maybe(transform: torch.Tensor, matrix: torch.Tensor, prob: float) -> torch.Tensor:
        chosen = torch.empty(n).bernoulli_(prob, generator=rng).view(n, 1, 1)
        return (chosen * transform + (1 - chosen) * _eye(n)) @ matrix

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.empty(n).uniform_(lo, hi, generator=rng)

    def lognormal(std: float) -> torch.Tensor:
        return torch.empty(n).log_normal_(0.0, std, generator=rng)

    p_rot = 1 - math.sqrt(1 - p)
    m = _eye(n)
    flip = torch.randint(0, 2, (n,), generator=rng).float()
    m = maybe(_scale(1 - 2 * flip, torch.ones(n)), m, p)
    shift = uniform(-0.125, 0.125)
    m = maybe(_translate(torch.round(shift * width) / width, torch.round(shift * height) / height), m, p)
    s = lognormal(0.1 * math.log(2))
    m = maybe(_scale(s, s), m, p)
    m = maybe(_rotate(-uniform(-math.pi / 4, math.pi / 4)), m, p_rot)
    s = lognormal(0.1 * math.log(2))
    m = maybe(_scale(s, 1 / s), m, p)
    m = maybe(_rotate(-uniform(-math.pi / 4, math.pi / 4)), m, p_rot)
    t = torch.empty(n).normal_(0.0, 0.125, generator=rng)
    return maybe(_translate(t, t), m, p)


def _single(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def _padding(g: torch.Tensor, height: int, width: int, taps: int) -> tuple[int, int, int, int]:
    """Reflect padding (left, right, top, bottom) that covers what the transforms ``g`` bring into view."""
    cx, cy = (width - 1) / 2, (height - 1) / 2
    corners = _single([(-cx, -cy, 1), (cx, -cy, 1), (cx, cy, 1), (-cx, cy, 1)])
    moved = (g @ corners.T)[:, :2, :].permute(1, 0, 2).flatten(1)
    pad = torch.cat((-moved, moved)).max(1).values
    margin = taps // 4 * 2
    pad = pad + _single([margin - cx, margin - cy] * 2)
    pad = pad.clamp_min(0).min(_single([width - 1, height - 1] * 2))
    x0, y0, x1, y1 = (int(v) for v in pad.ceil().tolist())
    return x0, x1, y0, y1


def random_affine(images: torch.Tensor, p: float, rng: torch.Generator) -> torch.Tensor:
    """Warp each image of (N, C, H, W) by a transform from :func:`sample_affine` (channels move together)."""
    n, c, h, w = images.shape
    g = torch.inverse(sample_affine(p, n, h, w, rng))
    taps = len(SYM6)
    x0, x1, y0, y1 = _padding(g, h, w, taps)
    padded = F.pad(images, (x0, x1, y0, y1), mode="reflect")
    kernel = torch.tensor(SYM6, dtype=images.dtype, device=images.device)
    up = _fir(_fir(padded, kernel, 3, up=2, pad=((taps + 1) // 2, (taps - 2) // 2)),
              kernel, 2, up=2, pad=((taps + 1) // 2, (taps - 2) // 2))
    m = _single([[1, 0, (x0 - x1) / 2], [0, 1, (y0 - y1) / 2], [0, 0, 1]]) @ g
    m = _single([[2, 0, 0], [0, 2, 0], [0, 0, 1]]) @ m @ _single([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 1]])
    m = _single([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]]) @ m @ _single([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    margin = taps // 4
    out_h, out_w = (h + 2 * margin) * 2, (w + 2 * margin) * 2
    m = _single([[2 / up.shape[3], 0, 0], [0, 2 / up.shape[2], 0], [0, 0, 1]]) @ m \
        @ _single([[out_w / 2, 0, 0], [0, out_h / 2, 0], [0, 0, 1]])
    grid = F.affine_grid(m[:, :2, :].to(images), (n, c, out_h, out_w), align_corners=False)
    warped = F.grid_sample(up, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    crop = (-2 * margin + (taps - 1) // 2, -2 * margin + (taps - 2) // 2)
    return _fir(_fir(warped, kernel.flip(0), 3, down=2, pad=crop), kernel.flip(0), 2, down=2, pad=crop)


def _fir(x: torch.Tensor, taps: torch.Tensor, dim: int, up: int = 1, down: int = 1, pad=(0, 0)) -> torch.Tensor:
    """upfirdn along one axis (``dim`` 2: rows, 3: columns): zero-insert, pad (negative crops), convolve, decimate."""
    if dim == 2:
        return _fir(x.transpose(2, 3), taps, 3, up, down, pad).transpose(2, 3)
    n, c, h, w = x.shape
    if up > 1:
        x = F.pad(x.reshape(n, c, h, w, 1), (0, up - 1)).reshape(n, c, h, w * up)
    x = F.pad(x, (max(pad[0], 0), max(pad[1], 0)))
    x = x[..., max(-pad[0], 0): x.shape[-1] - max(-pad[1], 0)]
    weight = taps.flip(0).to(x).view(1, 1, 1, -1).expand(c, 1, 1, -1)
    return F.conv2d(x, weight, stride=(1, down), groups=c)
