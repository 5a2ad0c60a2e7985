"""Feed-forward GAN inversion: pSp, e4e and ReStyle encoders on their public checkpoints.

    from engine.inversion.encoders import load_encoder, inspect_encoder, load_encoder_decoder
    enc = load_encoder("e4e_ffhq_encode.pt", device="cpu")   # FaceEncoder, eval mode
    enc.info                                               # EncoderInfo(kind="e4e", n_latent=18, ...)
    latents = enc(crops)                                   # (N,3,S,S) in [-1,1] -> (N, 18, 512) W+
    toon = load_encoder_decoder("psp_ffhq_toonify.pt")     # the file's own generator, or None

Modules: :mod:`.backbones` (IR-SE-50 / ResNet-34 trunks), :mod:`.architectures`
(the reference encoder heads), :mod:`.model` (:class:`FaceEncoder`: input
transform, latent_avg, ReStyle iterations), :mod:`.loading` (checkpoints).
"""

from .loading import ENCODER_TYPES, inspect_encoder, load_encoder, load_encoder_decoder
from .model import EncoderInfo, FaceEncoder, preprocess, resize_faces

__all__ = ["ENCODER_TYPES", "EncoderInfo", "FaceEncoder", "inspect_encoder", "load_encoder",
           "load_encoder_decoder", "preprocess", "resize_faces"]
