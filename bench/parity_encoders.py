"""Parity of engine.inversion.encoders with the reference pSp / e4e / ReStyle code, same weights.

For each architecture, random weights at the real size are written in the
public checkpoint layout (``{"state_dict": {"encoder.*", "decoder.*"},
"latent_avg", "opts"}``); the reference builds its own model from that file
(its pSp / e4e wrappers, its loaders, its ``run_on_batch`` for ReStyle) and
the engine loads it with ``load_encoder``. Both encode the same faces; the
script prints the max abs difference of the W+ latents (every ReStyle
iteration), of the decoder's images, of the reference's input transform vs
``preprocess``, and checks that the reference encoder's state-dict keys and
shapes are exactly the engine's (ReStyle loads with strict=False, so this is
checked separately).

The reference checkouts are not part of toon-ofx; fetch them beside it::

    git clone https://github.com/eladrich/pixel2style2pixel     REF/pixel2style2pixel
    git clone https://github.com/omertov/encoder4editing         REF/encoder4editing
    git clone https://github.com/yuval-alaluf/restyle-encoder    REF/restyle-encoder

Their StyleGAN2 ops compile CUDA at import; this script puts plain-PyTorch
``upfirdn2d`` / ``fused_leaky_relu`` in their place (and a no-op matplotlib).
ReStyle's ResNet-34 encoders need torchvision (its ``resnet34``, built without
downloading ImageNet weights), so run it where torchvision imports, e.g.::

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch torchvision numpy
    PYTHONPATH=. /tmp/tv/bin/python bench/parity_encoders.py --reference REF

Prints one line per architecture and a JSON summary; exits 1 if any
difference is >= --tol (1e-4).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.generator.stylegan2 import Generator  # noqa: E402
from engine.inversion.encoders import load_encoder, load_encoder_decoder, preprocess  # noqa: E402
from engine.inversion.encoders.architectures import (BackboneEncoder,  # noqa: E402
                                                     BackboneEncoderUsingLastLayerIntoW,
                                                     BackboneEncoderUsingLastLayerIntoWPlus, GradualStyleEncoder)
from engine.inversion.encoders.backbones import Layout  # noqa: E402

REPOS = {"psp": "pixel2style2pixel", "e4e": "encoder4editing", "restyle": "restyle-encoder"}
_REF_PACKAGES = ("models", "configs", "utils", "options", "datasets", "criteria", "training")

# name, repo, encoder_type, output size, extra opts
CASES = [
    ("pSp", "psp", "GradualStyleEncoder", 1024, {"start_from_latent_avg": True}),
    ("pSp 512, no latent_avg", "psp", "GradualStyleEncoder", 512, {"start_from_latent_avg": False}),
    ("pSp-W", "psp", "BackboneEncoderUsingLastLayerIntoW", 1024,
     {"start_from_latent_avg": True, "learn_in_w": True}),
    ("pSp-W+", "psp", "BackboneEncoderUsingLastLayerIntoWPlus", 1024, {"start_from_latent_avg": True}),
    ("e4e", "e4e", "Encoder4Editing", 1024, {"start_from_latent_avg": True}),
    ("ReStyle-pSp IR-SE-50", "restyle", "BackboneEncoder", 1024, {}),
    ("ReStyle-pSp ResNet-34", "restyle", "ResNetBackboneEncoder", 1024, {}),
    ("ReStyle-e4e IR-SE-50", "restyle", "ProgressiveBackboneEncoder", 1024, {}),
    ("ReStyle-e4e ResNet-34", "restyle", "ResNetProgressiveBackboneEncoder", 1024, {}),
    ("ReStyle-pSp FPN IR-SE-50", "restyle", "GradualStyleEncoder", 1024, {}),
]


# ----------------------------------------------------------- plain-PyTorch ops


def _upfirdn2d(x, kernel, up=1, down=1, pad=(0, 0)):
    """Upsample by zero insertion, pad (negative = crop), correlate with the flipped kernel, subsample."""
    n, c, h, w = x.shape
    x = x.reshape(n * c, 1, h, w)
    if up > 1:
        z = x.new_zeros(n * c, 1, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    x = F.conv2d(x, torch.flip(kernel, [0, 1])[None, None].to(x))
    x = x[:, :, ::down, ::down]
    return x.reshape(n, c, x.shape[-2], x.shape[-1])


def _fused_leaky_relu(x, bias, negative_slope=0.2, scale=2 ** 0.5):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


class _FusedLeakyReLU(torch.nn.Module):
    def __init__(self, channel, negative_slope=0.2, scale=2 ** 0.5):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(channel))
        self.negative_slope, self.scale = negative_slope, scale

    def forward(self, x):
        return _fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


def _enter_reference(root: Path):
    """Make one reference checkout importable (they share package names), with the stubs in place."""
    for name in list(sys.modules):
        if name.split(".")[0] in _REF_PACKAGES:
            del sys.modules[name]
    sys.path[:] = [p for p in sys.path if not p.startswith(str(root.parent))]
    sys.path.insert(0, str(root))
    op = types.ModuleType("models.stylegan2.op")
    op.upfirdn2d, op.fused_leaky_relu, op.FusedLeakyReLU = _upfirdn2d, _fused_leaky_relu, _FusedLeakyReLU
    sys.modules["models.stylegan2.op"] = op
    mpl = types.ModuleType("matplotlib")
    mpl.use = lambda *a, **k: None
    sys.modules.setdefault("matplotlib", mpl)
    try:
        import torchvision.models as tvm
        import torchvision.models.resnet as tvr
    except ImportError:
        return
    if not getattr(tvr.resnet34, "_no_download", False):
        def resnet34(pretrained=False, **kw):  # the reference asks for ImageNet weights; they are overwritten
            return tvr.ResNet(tvr.BasicBlock, [3, 4, 6, 3])
        resnet34._no_download = True
        tvr.resnet34 = tvm.resnet34 = resnet34


# ----------------------------------------------------------- random checkpoints


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BatchNorm statistics, affine parameters, PReLU slopes and biases."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif t.ndim == 1 and name.endswith("weight"):  # BN gamma, PReLU slopes
                t.copy_(0.5 + 0.5 * torch.rand(t.shape, generator=g))
            elif t.ndim == 1 and name.endswith("bias"):
                t.copy_(0.05 * torch.randn(t.shape, generator=g))
            elif name.endswith("num_batches_tracked"):
                t.fill_(1000)


def _architecture(repo: str, encoder_type: str, n_styles: int) -> torch.nn.Module:
    resnet = encoder_type.startswith("ResNet")
    restyle = repo == "restyle"
    layout = Layout(backbone="resnet34" if resnet else "ir_se50", n_styles=n_styles,
                    input_nc=6 if restyle else 3)
    if encoder_type in ("GradualStyleEncoder", "ResNetGradualStyleEncoder", "Encoder4Editing"):
        return GradualStyleEncoder(layout, progressive=encoder_type == "Encoder4Editing")
    if encoder_type == "BackboneEncoderUsingLastLayerIntoW":
        return BackboneEncoderUsingLastLayerIntoW(layout)
    if encoder_type == "BackboneEncoderUsingLastLayerIntoWPlus":
        return BackboneEncoderUsingLastLayerIntoWPlus(layout)
    return BackboneEncoder(layout, progressive="Progressive" in encoder_type)


def write_checkpoint(path: Path, repo: str, encoder_type: str, size: int, extra: dict, seed: int) -> None:
    n_latent = 2 * int(math.log2(size)) - 2
    torch.manual_seed(seed)
    encoder = _architecture(repo, encoder_type, n_latent)
    _randomize(encoder, seed)
    decoder = Generator(size)
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith("noise.weight"):
                p.copy_(0.1 + 0.1 * torch.rand_like(p))
            elif name.endswith("bias") and not name.endswith("modulation.bias") and not name.startswith("style."):
                p.copy_(0.05 * torch.randn_like(p))
        latent_avg = decoder.mean_latent(4096)
    if not extra.get("learn_in_w"):  # a W encoder trained with learn_in_w keeps latent_avg as (1, 512)
        latent_avg = latent_avg.repeat(n_latent, 1)
    opts = {"encoder_type": encoder_type, "dataset_type": "ffhq_encode", "start_from_latent_avg": False,
            "learn_in_w": False, "device": "cuda:0", "checkpoint_path": None, "label_nc": 0,
            "input_nc": encoder.layout.input_nc}
    opts["stylegan_size" if repo == "e4e" else "output_size"] = size
    opts.update(extra)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    torch.save({"state_dict": state, "latent_avg": latent_avg, "opts": opts}, path)


# ----------------------------------------------------------- the comparison


def faces(n: int, seed: int) -> torch.Tensor:
    """Smooth random 'images' (N, 3, 256, 256) in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(n, 3, 16, 16, generator=g), size=256, mode="bicubic", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1) + 0.05 * torch.randn(n, 3, 256, 256, generator=g)


def reference_model(repo: str, root: Path, ckpt: Path, encoder_type: str):
    _enter_reference(root / REPOS[repo])
    opts = torch.load(ckpt, map_location="cpu", weights_only=False)["opts"]
    opts.update({"checkpoint_path": str(ckpt), "device": "cpu", "n_iters_per_batch": 5,
                 "resize_outputs": False})
    opts = argparse.Namespace(**opts)
    if repo == "restyle" and "Progressive" in encoder_type:
        from models.e4e import e4e as wrapper
    else:
        from models.psp import pSp as wrapper
    return wrapper(opts).eval(), opts


def keys_match(ours: torch.nn.Module, ref_encoder: torch.nn.Module) -> str | None:
    a = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in ref_encoder.state_dict().items()}
    if a == b:
        return None
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    shapes = [k for k in set(a) & set(b) if a[k] != b[k]]
    return f"ours only {only_a[:4]}, reference only {only_b[:4]}, shapes differ {shapes[:4]}"


def run_case(name, repo, encoder_type, size, extra, root: Path, tmp: Path, batch: int, seed: int) -> dict:
    ckpt = tmp / f"{encoder_type}-{size}.pt"
    t0 = time.perf_counter()
    write_checkpoint(ckpt, repo, encoder_type, size, extra, seed)
    x = faces(batch, seed)
    ours = load_encoder(ckpt)
    ref, opts = reference_model(repo, root, ckpt, encoder_type)
    out = {"case": name, "encoder_type": encoder_type, "size": size, "keys": keys_match(ours.encoder, ref.encoder)}
    with torch.no_grad():
        mine = ours(x, return_all=True)
        if repo == "restyle":
            from utils.inference_utils import run_on_batch
            # utils.inference_utils.get_average_image, without its hard-coded .to('cuda')
            avg = ref(ref.latent_avg.unsqueeze(0), input_code=True, randomize_noise=False,
                      return_latents=False, average_code=True)[0].float()
            _, lat = run_on_batch(x, ref, opts, avg)
            theirs = [torch.from_numpy(np.stack([lat[i][k] for i in range(batch)])) for k in range(len(mine))]
            out["avg_image"] = float((ours.avg_image[0] - avg).abs().max())
        else:
            image, latent = ref(x, resize=False, randomize_noise=False, return_latents=True)
            theirs = [latent]
            decoder = load_encoder_decoder(ckpt)
            out["image"] = float((decoder.synthesis(mine[-1]) - image).abs().max())
    out["iterations"] = len(mine)
    out["latent_diff"] = [float((a - b).abs().max()) for a, b in zip(mine, theirs)]
    out["latent_scale"] = float(mine[-1].abs().max())
    out["seconds"] = round(time.perf_counter() - t0, 1)
    ckpt.unlink()
    return out


def transform_parity(seed: int) -> float:
    """The reference inference transform (PIL Resize, ToTensor, Normalize) vs preprocess, in grey levels."""
    try:
        import torchvision.transforms as T
        from PIL import Image
    except ImportError:
        return float("nan")
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((1024, 1024), Image.BICUBIC))  # a smooth 1024 "face"
    img = np.clip(img.astype(int) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
    tf = T.Compose([T.Resize((256, 256)), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
    theirs = tf(Image.fromarray(img))[None]
    return float((preprocess(img) - theirs).abs().max() * 127.5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference", type=Path, required=True, help="folder with the three reference checkouts")
    ap.add_argument("--only", default="", help="comma-separated case names (substring match)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    for repo in REPOS.values():
        if not (args.reference / repo / "models").is_dir():
            ap.error(f"{args.reference / repo} is not a checkout of {repo}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    wanted = [w.strip().lower() for w in args.only.split(",") if w.strip()]
    results, worst = [], 0.0
    levels = transform_parity(args.seed)
    print(f"input transform: PIL Resize((256,256)) vs preprocess: max {levels:.3f} grey levels", flush=True)
    with tempfile.TemporaryDirectory(prefix="parity-") as tmp:
        for case in CASES:
            if wanted and not any(w in case[0].lower() for w in wanted):
                continue
            r = run_case(*case, root=args.reference, tmp=Path(tmp), batch=args.batch, seed=args.seed)
            results.append(r)
            diffs = r["latent_diff"] + [r[k] for k in ("image", "avg_image") if k in r]
            worst = max([worst] + diffs)
            extra = " ".join(f"{k} {r[k]:.2e}" for k in ("image", "avg_image") if k in r)
            print(f"{r['case']:<26} latents max|diff| {max(r['latent_diff']):.2e} "
                  f"(per iteration {', '.join(f'{d:.1e}' for d in r['latent_diff'])}; |latent| <= "
                  f"{r['latent_scale']:.1f}) {extra} keys {'identical' if r['keys'] is None else r['keys']} "
                  f"[{r['seconds']} s]", flush=True)
    ok = worst < args.tol and all(r["keys"] is None for r in results)
    print(json.dumps({"torch": torch.__version__, "transform_levels": levels, "results": results,
                      "worst": worst, "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
