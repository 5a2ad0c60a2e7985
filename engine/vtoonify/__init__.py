"""VToonify (Yang et al., SIGGRAPH Asia 2022): video toonification in one feed-forward pass per frame.

    from engine.vtoonify import load_vtoonify, load_face_parser, load_style_encoder, style_code, stylize
    net = load_vtoonify("vtoonify_t_cartoon.pt")            # VToonify, eval; net.backbone "toonify"
    parser = load_face_parser("faceparsing.pth")            # BiSeNet
    encoder = load_style_encoder("encoder.pt")              # pSp into Z+ (+ latent_avg)
    wplus = style_code(net, encoder, aligned_face)          # (1, 18, 512) W+
    out = stylize(net, parser, crop, wplus, degree=0.5)     # (N, 3, 4H, 4W) in [-1, 1]

VToonify-D also needs an extrinsic style: ``read_exstyles(find_exstyles(ckpt))``
gives the codes; pick one, map it with ``net.zplus2wplus`` and pass it to
:func:`style_code`. Modules: :mod:`.network` (VToonify, fusion blocks),
:mod:`.dualstylegan` (VToonify-D's generator), :mod:`.bisenet` (the face
parser), :mod:`.style_encoder`, :mod:`.loading` (checkpoints), :mod:`.exstyles`
(the restricted ``.npy`` reader), :mod:`.stylize` (the reference's inference
steps), :mod:`.blend` (VToonify's per-layer blend weights).
"""

from .bisenet import BiSeNet
from .blend import blend_weights
from .exstyles import find_exstyles, read_exstyles
from .loading import VToonifyInfo, inspect_vtoonify, load_face_parser, load_style_encoder, load_vtoonify
from .network import BACKBONES, VToonify
from .style_encoder import StyleEncoder
from .stylize import parse_faces, style_code, stylize

__all__ = ["BACKBONES", "BiSeNet", "StyleEncoder", "VToonify", "VToonifyInfo", "blend_weights", "find_exstyles",
           "inspect_vtoonify", "load_face_parser", "load_style_encoder", "load_vtoonify", "parse_faces",
           "read_exstyles", "style_code", "stylize"]
