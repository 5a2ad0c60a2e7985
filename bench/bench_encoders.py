"""Forward time of each encoder relative to one generator forward, same run, same machine.

Random weights at the real sizes (time does not depend on the values): a
1024 px config-f generator (18 latents) and every encoder architecture for it,
wrapped in FaceEncoder as load_encoder wraps them (ReStyle with its default 5
iterations, rendering its reconstructions with the 1024 generator). Crops are
1024x1024 in [-1, 1], so the time includes the resize to 256. Timings are
interleaved over --repeats rounds; the median is reported, as a ratio to the
generator's ``synthesis`` of one W+ latent at the same batch size.

    OMP_NUM_THREADS=2 python bench/bench_encoders.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.generator.stylegan2 import Generator  # noqa: E402
from engine.inversion.encoders.architectures import (BackboneEncoder,  # noqa: E402
                                                     BackboneEncoderUsingLastLayerIntoW,
                                                     BackboneEncoderUsingLastLayerIntoWPlus, GradualStyleEncoder)
from engine.inversion.encoders.backbones import Layout  # noqa: E402
from engine.inversion.encoders.model import RESTYLE_ITERATIONS, EncoderInfo, FaceEncoder  # noqa: E402

# name -> (kind, architecture factory)
ENCODERS = {
    "pSp": ("psp", lambda n: GradualStyleEncoder(Layout(n_styles=n))),
    "e4e": ("e4e", lambda n: GradualStyleEncoder(Layout(n_styles=n), progressive=True)),
    "pSp-W": ("psp-w", lambda n: BackboneEncoderUsingLastLayerIntoW(Layout(n_styles=n))),
    "pSp-W+": ("psp-w+", lambda n: BackboneEncoderUsingLastLayerIntoWPlus(Layout(n_styles=n))),
    "ReStyle-pSp IR-SE-50": ("restyle-psp", lambda n: BackboneEncoder(Layout(input_nc=6, n_styles=n))),
    "ReStyle-e4e IR-SE-50": ("restyle-e4e", lambda n: BackboneEncoder(Layout(input_nc=6, n_styles=n),
                                                                      progressive=True)),
    "ReStyle-pSp ResNet-34": ("restyle-psp", lambda n: BackboneEncoder(
        Layout(backbone="resnet34", input_nc=6, n_styles=n))),
}


def build(name: str, generator: Generator) -> FaceEncoder:
    kind, factory = ENCODERS[name]
    n = generator.n_latent
    arch = factory(n).eval()
    restyle = kind.startswith("restyle")
    info = EncoderInfo(kind=kind, encoder_type=type(arch).__name__, backbone=arch.layout.backbone, n_latent=n,
                       style_dim=512, size=generator.size, input_nc=arch.layout.input_nc, input_size=256,
                       iterations=RESTYLE_ITERATIONS if restyle else 1, start_from_latent_avg=True,
                       has_decoder=restyle, dataset_type="ffhq_encode", path=Path(name))
    latent_avg = generator.latent_avg.repeat(n, 1)
    return FaceEncoder(arch, info, latent_avg, generator if restyle else None).eval().requires_grad_(False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated encoder names (substring match)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    g = Generator(args.size).eval().requires_grad_(False)
    with torch.no_grad():
        g.latent_avg.copy_(g.mean_latent(1000)[0])
    names = [n for n in ENCODERS if not args.only or any(w.strip().lower() in n.lower()
                                                          for w in args.only.split(","))]
    encoders = {n: build(n, g) for n in names}
    crops = torch.rand(args.batch, 3, args.size, args.size) * 2 - 1
    ws = g.latent_avg.repeat(args.batch, g.n_latent, 1)
    times: dict[str, list[float]] = {"generator": [], **{n: [] for n in names}}
    with torch.no_grad():
        g.synthesis(ws)  # warm-up
        for enc in encoders.values():
            enc(crops[:1], iterations=1)
        for _ in range(args.repeats):
            for key in times:
                t0 = time.perf_counter()
                if key == "generator":
                    g.synthesis(ws)
                else:
                    encoders[key](crops)
                times[key].append(time.perf_counter() - t0)
    gen = statistics.median(times["generator"])
    print(f"generator {args.size} px synthesis, batch {args.batch}: {gen:.3f} s (threads {torch.get_num_threads()})")
    rows = []
    for n in names:
        t = statistics.median(times[n])
        its = encoders[n].info.iterations
        rows.append({"encoder": n, "iterations": its, "seconds": round(t, 4), "x_generator": round(t / gen, 3)})
        print(f"  {n:<24} {its} pass{'es' if its > 1 else '  '}  {t:7.3f} s  = {t / gen:5.2f} x generator forward")
    print(json.dumps({"machine": platform.machine(), "torch": torch.__version__, "size": args.size,
                      "batch": args.batch, "generator_seconds": round(gen, 4), "encoders": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
