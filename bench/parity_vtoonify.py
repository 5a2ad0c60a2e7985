"""Parity of engine.vtoonify with the reference VToonify code, same random weights, same inputs.

Random weights are written in the public file formats (``{"g_ema": ...}``
VToonify models, a bare BiSeNet state dict, a pSp ``encoder.pt``, an
``exstyle_code.npy`` saved with ``np.save``); the reference loads them the way
``style_transfer.py`` does (``load_state_dict`` strict, ``util.load_psp_standalone``,
``np.load(allow_pickle=True)``) and the engine through ``engine.vtoonify``'s
loaders. Compared, max abs difference:

* VToonify-T and VToonify-D forward passes (W+ and single-W style codes, style
  degrees 0 / 0.5 / 1 for D, the fusion masks), ``zplus2wplus``, at a small size
  (``in_size`` 64 -> ``out_size`` 256, ``channel_multiplier`` 1) and at the public
  size (256 -> 1024, 64x64 crops);
* BiSeNet's three outputs (the public width);
* the Z+ style encoder with its ``latent_avg`` hook (the public IR-SE-50, 18 codes);
* the whole inference path of ``style_transfer.py`` (style code from the aligned
  face, exstyle for D, parsing, the network, clamp) against
  ``engine.vtoonify.style_code`` + ``stylize``, for T and D (with and without
  ``color_transfer``).

The reference checkout is not part of toon-ofx; put it beside it (git-ignored)::

    git clone https://github.com/williamyang1991/VToonify bench/.reference/VToonify

It runs with ``model/stylegan/op_cpu`` in place of its CUDA ops (the harness
swaps the import); matplotlib, torchvision (imported, unused on this path) and
dlib are stubbed, and BiSeNet's ResNet does not download ImageNet weights::

    PYTHONPATH=. .venv/bin/python bench/parity_vtoonify.py [--only bisenet,T 64]

Prints one table and a JSON summary; exits 1 if any difference is >= --tol (1e-4).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from engine.inversion.encoders.architectures import GradualStyleEncoder  # noqa: E402
from engine.inversion.encoders.backbones import Layout  # noqa: E402
from engine.vtoonify import (BiSeNet, VToonify, load_face_parser, load_style_encoder, load_vtoonify,  # noqa: E402
                             parse_faces, read_exstyles, style_code, stylize)
from tiny_vtoonify import randomize  # noqa: E402

DEFAULT_REFERENCE = ROOT / "bench" / ".reference" / "VToonify"


# ----------------------------------------------------------------- the reference


def enter_reference(root: Path) -> types.SimpleNamespace:
    """Import the reference modules with CPU ops and stubs; returns them."""
    sys.path.insert(0, str(root))
    for name in ("matplotlib", "matplotlib.pyplot", "torchvision", "torchvision.transforms", "dlib"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["matplotlib"].use = lambda *a, **k: None
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    import model.stylegan.op_cpu as op_cpu
    import model.stylegan.op_cpu.conv2d_gradfix as gradfix
    op_cpu.conv2d_gradfix = gradfix
    sys.modules["model.stylegan.op"] = op_cpu
    sys.modules["model.stylegan.op.conv2d_gradfix"] = gradfix
    import model.bisenet.resnet as resnet
    resnet.Resnet18.init_weight = lambda self: None  # it downloads ImageNet weights; ours are loaded over them
    import util
    from model.bisenet.model import BiSeNet as RefBiSeNet
    from model.vtoonify import VToonify as RefVToonify
    return types.SimpleNamespace(VToonify=RefVToonify, BiSeNet=RefBiSeNet, load_psp=util.load_psp_standalone)


def reference_transfer(vtoonify, parser, pspencoder, aligned, frames, exstyle, degree, color_transfer):
    """style_transfer.py's inference lines (image branch), batched over ``frames``."""
    s_w = pspencoder(aligned)
    s_w = vtoonify.zplus2wplus(s_w)
    if vtoonify.backbone == "dualstylegan":
        if color_transfer:
            s_w = exstyle
        else:
            s_w[:, :7] = exstyle[:, :7]
    x = frames
    x_p = F.interpolate(parser(2 * (F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)))[0],
                        scale_factor=0.5, recompute_scale_factor=False).detach()
    inputs = torch.cat((x, x_p / 16.), dim=1)
    y_tilde = vtoonify(inputs, s_w.repeat(inputs.size(0), 1, 1), d_s=degree)
    return torch.clamp(y_tilde, -1, 1)


# ----------------------------------------------------------------- random files


def frames(n: int, size: int, seed: int, channels: int = 3) -> torch.Tensor:
    """Smooth random images (N, C, size, size) in about [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, channels, 8, 8, generator=g), size=size, mode="bicubic", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1) + 0.05 * torch.randn(n, channels, size, size, generator=g)


def write_vtoonify(path: Path, backbone: str, in_size: int, out_size: int, channel_multiplier: int, seed: int):
    torch.manual_seed(seed)
    net = randomize(VToonify(in_size=in_size, out_size=out_size, channel_multiplier=channel_multiplier,
                             backbone=backbone), seed)
    torch.save({"g_ema": net.state_dict()}, path)


def write_parser(path: Path, seed: int):
    torch.manual_seed(seed)
    torch.save(randomize(BiSeNet(19), seed).state_dict(), path)


def write_encoder(path: Path, output_size: int, seed: int):
    """A pSp checkpoint like VToonify's encoder.pt (without the decoder, which load_psp_standalone ignores)."""
    n_styles = 2 * int(math.log2(output_size)) - 2
    torch.manual_seed(seed)
    enc = randomize(GradualStyleEncoder(Layout(n_styles=n_styles)), seed)
    latent_avg = torch.randn(n_styles, 512, generator=torch.Generator().manual_seed(seed))
    opts = {"encoder_type": "GradualStyleEncoder", "output_size": output_size, "input_nc": 3, "label_nc": 0,
            "start_from_latent_avg": True, "learn_in_w": False, "dataset_type": "ffhq_encode", "device": "cuda:0"}
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in enc.state_dict().items()},
                "latent_avg": latent_avg, "opts": opts}, path)


def write_exstyles(path: Path, n_latent: int, seed: int):
    rng = np.random.default_rng(seed)
    np.save(path, {f"{i:03d}.jpg": rng.standard_normal((1, n_latent, 512)).astype(np.float32) for i in range(4)})


# ----------------------------------------------------------------- the cases


def diff(a, b) -> float:
    return float((a - b).abs().max())


def network_case(ref, tmp: Path, backbone: str, in_size: int, out_size: int, cm: int, crop: int, batch: int,
                 seed: int) -> dict:
    path = tmp / f"vtoonify-{backbone}-{out_size}.pt"
    write_vtoonify(path, backbone, in_size, out_size, cm, seed)
    ours = load_vtoonify(path)
    theirs = ref.VToonify(in_size=in_size, out_size=out_size, channel_multiplier=cm, backbone=backbone)
    theirs.load_state_dict(torch.load(path, map_location="cpu")["g_ema"])
    theirs.eval()
    n_latent = ours.n_latent
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.cat([frames(batch, crop, seed), 0.3 * torch.randn(batch, 19, crop, crop, generator=g)], 1)
    wplus = torch.randn(batch, n_latent, 512, generator=g)
    w = torch.randn(batch, 512, generator=g)
    out = {}
    with torch.no_grad():
        out["zplus2wplus"] = diff(ours.zplus2wplus(wplus), theirs.zplus2wplus(wplus))
        degrees = (0.0, 0.5, 1.0) if backbone == "dualstylegan" else (0.5,)
        for d_s in degrees:
            a, b = ours(x, wplus, d_s=d_s), theirs(x, wplus, d_s=d_s)
            out[f"W+ d_s={d_s}"] = diff(a, b)
            out["|out|"] = max(out.get("|out|", 0.0), float(b.abs().max()))
        out["W"] = diff(ours(x, w, d_s=0.5), theirs(x, w, d_s=0.5))
        if backbone == "dualstylegan":
            (_, ma), (_, mb) = ours(x, wplus, 0.5, return_mask=True), theirs(x, wplus, 0.5, return_mask=True)
            out["masks"] = max(diff(p, q) for p, q in zip(ma, mb))
    out["keys"] = keys_match(ours, theirs)
    out["shape"] = tuple(a.shape)
    path.unlink()
    return out


def keys_match(ours, theirs) -> str | None:
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    return None if a == b else f"ours only {sorted(set(a) - set(b))[:3]}, reference only {sorted(set(b) - set(a))[:3]}"


def bisenet_case(ref, parser_path: Path, seed: int) -> dict:
    ours = load_face_parser(parser_path)
    theirs = ref.BiSeNet(n_classes=19)
    theirs.load_state_dict(torch.load(parser_path, map_location="cpu"))
    theirs.eval()
    x = frames(2, 128, seed)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
        out = {f"out{['', '16', '32'][i]}": diff(p, q) for i, (p, q) in enumerate(zip(a, b))}
        out["parse_faces"] = diff(parse_faces(ours, x), F.interpolate(theirs(2 * F.interpolate(
            x, scale_factor=2, mode="bilinear", align_corners=False))[0], scale_factor=0.5,
            recompute_scale_factor=False))
        out["|out|"] = float(b[0].abs().max())
    out["keys"] = keys_match(ours, theirs)
    return out


def encoder_case(ref, encoder_path: Path, seed: int) -> dict:
    ours = load_style_encoder(encoder_path)
    theirs = ref.load_psp(str(encoder_path), "cpu")
    x = frames(2, 256, seed)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    return {"Z+ codes": diff(a, b), "|out|": float(b.abs().max()), "keys": keys_match(ours.encoder, theirs),
            "shape": tuple(a.shape)}


def transfer_case(ref, tmp: Path, backbone: str, parser_path: Path, encoder_path: Path, seed: int) -> dict:
    path = tmp / f"vtoonify-{backbone}-full.pt"
    write_vtoonify(path, backbone, 256, 1024, 2, seed)
    net = load_vtoonify(path)
    parser, encoder = load_face_parser(parser_path), load_style_encoder(encoder_path)
    r_net = ref.VToonify(backbone=backbone)
    r_net.load_state_dict(torch.load(path, map_location="cpu")["g_ema"])
    r_net.eval()
    r_parser = ref.BiSeNet(n_classes=19)
    r_parser.load_state_dict(torch.load(parser_path, map_location="cpu"))
    r_parser.eval()
    r_encoder = ref.load_psp(str(encoder_path), "cpu")
    aligned, crops = frames(1, 256, seed + 2), frames(2, 64, seed + 3)
    out = {}
    with torch.no_grad():
        if backbone == "dualstylegan":
            npy = tmp / "exstyle_code.npy"
            write_exstyles(npy, net.n_latent, seed)
            theirs_codes = np.load(npy, allow_pickle=True).item()
            ours_codes = read_exstyles(npy)
            out["exstyle codes"] = max(float(np.abs(ours_codes[k] - v).max()) for k, v in theirs_codes.items()) \
                if list(ours_codes) == list(theirs_codes) else float("inf")
            name = list(theirs_codes.keys())[2]
            r_ex = r_net.zplus2wplus(torch.tensor(theirs_codes[name]))
            ex = net.zplus2wplus(torch.tensor(ours_codes[name]))
            for ct in (False, True):
                a = stylize(net, parser, crops, style_code(net, encoder, aligned, ex, color_transfer=ct), 0.5)
                b = reference_transfer(r_net, r_parser, r_encoder, aligned, crops, r_ex, 0.5, ct)
                out[f"stylize{' color_transfer' if ct else ''}"] = diff(a, b)
        else:
            a = stylize(net, parser, crops, style_code(net, encoder, aligned), 0.5)
            b = reference_transfer(r_net, r_parser, r_encoder, aligned, crops, None, 0.5, False)
            out["stylize"] = diff(a, b)
    out["shape"] = tuple(a.shape)
    out["|out|"] = float(b.abs().max())
    path.unlink()
    return out


CASES = [  # name, kind, arguments
    ("VToonify-T 64->256", "net", dict(backbone="toonify", in_size=64, out_size=256, cm=1, crop=32, batch=2)),
    ("VToonify-D 64->256", "net", dict(backbone="dualstylegan", in_size=64, out_size=256, cm=1, crop=32, batch=2)),
    ("VToonify-T 256->1024", "net", dict(backbone="toonify", in_size=256, out_size=1024, cm=2, crop=64, batch=1)),
    ("VToonify-D 256->1024", "net", dict(backbone="dualstylegan", in_size=256, out_size=1024, cm=2, crop=64,
                                         batch=1)),
    ("BiSeNet", "bisenet", {}),
    ("Z+ style encoder", "encoder", {}),
    ("stylize T 256->1024", "transfer", dict(backbone="toonify")),
    ("stylize D 256->1024", "transfer", dict(backbone="dualstylegan")),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="a VToonify checkout")
    ap.add_argument("--only", default="", help="comma-separated case names (substring match)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    if not (args.reference / "model" / "vtoonify.py").is_file():
        ap.error(f"{args.reference} is not a VToonify checkout (see this script's docstring)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    ref = enter_reference(args.reference)
    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    results, worst = [], 0.0
    print(f"{'case':<24} {'max |diff|':>10} {'|output|':>9} {'seconds':>7}  details", flush=True)
    with tempfile.TemporaryDirectory(prefix="parity-vtoonify-") as tmp:
        tmp = Path(tmp)
        parser_path, encoder_path = tmp / "faceparsing.pth", tmp / "encoder.pt"
        for name, kind, kw in CASES:
            if wanted and not any(w in name.lower() for w in wanted):
                continue
            t0 = time.perf_counter()
            if kind in ("bisenet", "transfer") and not parser_path.exists():
                write_parser(parser_path, args.seed)
            if kind in ("encoder", "transfer") and not encoder_path.exists():
                write_encoder(encoder_path, 1024, args.seed)
            if kind == "net":
                r = network_case(ref, tmp, seed=args.seed, **kw)
            elif kind == "bisenet":
                r = bisenet_case(ref, parser_path, args.seed)
            elif kind == "encoder":
                r = encoder_case(ref, encoder_path, args.seed)
            else:
                r = transfer_case(ref, tmp, kw["backbone"], parser_path, encoder_path, args.seed)
            diffs = {k: v for k, v in r.items() if isinstance(v, float) and k != "|out|"}
            r.update(case=name, seconds=round(time.perf_counter() - t0, 1), max_diff=max(diffs.values()))
            results.append(r)
            worst = max(worst, r["max_diff"])
            details = ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
            keys = "" if r.get("keys", None) is None else f"; KEYS DIFFER: {r['keys']}"
            scale = f"{r['|out|']:9.2f}" if "|out|" in r else f"{'':9}"
            print(f"{name:<24} {r['max_diff']:10.2e} {scale} {r['seconds']:7.1f}  {details}{keys}", flush=True)
    ok = worst < args.tol and all(r.get("keys") is None for r in results)
    print(json.dumps({"torch": torch.__version__, "results": results, "worst": worst, "ok": ok}, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
