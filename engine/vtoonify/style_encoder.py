"""VToonify's style encoder: pSp's GradualStyleEncoder trained into StyleGAN's Z+ space.

The reference (``util.load_psp_standalone``) builds the IR-SE-50 feature-pyramid
encoder of pSp from ``encoder.*`` of a pSp checkpoint and adds the file's
``latent_avg`` to every output with a forward hook, whatever the checkpoint's
``start_from_latent_avg`` says. The architecture is the engine's
(:class:`engine.inversion.encoders.architectures.GradualStyleEncoder`, the same
module names and arithmetic as pSp's, checked by bench/parity_encoders.py);
:class:`StyleEncoder` adds ``latent_avg`` the way the hook does. Its output is
Z+: :meth:`engine.vtoonify.VToonify.zplus2wplus` maps it to W+.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["StyleEncoder"]


class StyleEncoder(nn.Module):
    """``forward(faces (N,3,S,S) in [-1,1]) -> (N, n_styles, 512)`` Z+ codes, S the encoder's input size (256).

    ``encoder``: a GradualStyleEncoder; ``latent_avg``: (n_styles, 512) (or
    anything that broadcasts to it), added as the reference's forward hook does.
    """

    def __init__(self, encoder: nn.Module, latent_avg: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("latent_avg", latent_avg.detach().clone())

    @property
    def input_size(self) -> int:
        return self.encoder.layout.input_size

    @property
    def n_styles(self) -> int:
        return self.encoder.layout.n_styles

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        s = self.input_size
        if faces.ndim != 4 or tuple(faces.shape[1:]) != (3, s, s):
            raise ValueError(f"the style encoder takes aligned faces (N, 3, {s}, {s}), got {tuple(faces.shape)}")
        codes = self.encoder(faces)
        return codes + self.latent_avg.repeat(codes.shape[0], 1, 1)
