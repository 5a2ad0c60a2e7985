"""Parity of `toon-ofx distill`'s pieces with the reference VToonify training code, same weights and inputs.

Compared, max abs difference (the reference on CPU ops, as bench/parity_vtoonify.py runs it):

* the affine augmentation: ``engine.vtoonify.augment.random_affine`` against
  ``model/simple_augment.random_apply_affine`` with the same seed (the reference
  draws from the global RNG in the same order: equal transforms, equal warps);
* the anti-flicker blur-downsample: ``downsample`` against StyleGAN2's
  ``Downsample([1, 3, 3, 1])``;
* G1's pretraining target: ``generator_features`` against the reference
  Generator's ``return_feature_ind=6`` (truncation 0.5 towards 0, same noise);
* the discriminator: the engine's StyleGAN2 ``Discriminator`` at 256 px against
  ``ConditionalDiscriminator(256)`` (non-conditional), same weights;
* the teacher: toon-ofx's blend against ``util.blend_models`` with the weights
  ``blend_weights`` derives (reported per layer group: they differ where
  docs/training.md says: the swap resolution's to_rgb, the 4x4 constant and the
  stored noise maps; the student uses only the first).

Needs the reference checkout in bench/.reference/VToonify (see parity_vtoonify.py)::

    PYTHONPATH=. .venv/bin/python bench/parity_distill.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from parity_vtoonify import DEFAULT_REFERENCE, enter_reference, frames  # noqa: E402
from bench_projection import random_generator  # noqa: E402
from engine.generator.blend import blend_generators  # noqa: E402
from engine.generator.stylegan2 import Discriminator, Generator  # noqa: E402
from engine.vtoonify import blend_weights  # noqa: E402
from engine.vtoonify.augment import random_affine  # noqa: E402
from engine.vtoonify.training import downsample, generator_features  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    enter_reference(args.reference)
    from model.simple_augment import random_apply_affine
    from model.stylegan.model import Downsample, Generator as RefGenerator
    from model.vtoonify import ConditionalDiscriminator
    import util

    rows = {}
    x = frames(3, 128, seed=0, channels=6)
    for p in (0.2, 0.9):
        worst = 0.0
        for seed in range(4):
            torch.manual_seed(seed)
            ref, _ = random_apply_affine(x, p, None)
            worst = max(worst, float((ref - random_affine(x, p, torch.Generator().manual_seed(seed))).abs().max()))
        rows[f"augment p={p} (4 seeds, 3x6x128x128)"] = worst
    rows["downsample [1,3,3,1]"] = float((Downsample([1, 3, 3, 1])(x) - downsample(x)).abs().max())

    ours = random_generator(256, seed=3)
    theirs = RefGenerator(256, 512, 8, 2)
    theirs.load_state_dict(ours.state_dict())
    ws = ours.style(torch.randn(2, 512, generator=torch.Generator().manual_seed(1))).unsqueeze(1).repeat(1, 14, 1)
    noise = [torch.randn(2, 1, *n.shape[2:], generator=torch.Generator().manual_seed(i))
             for i, n in enumerate(ours.make_noise())]
    with torch.no_grad():
        feat, skip = generator_features(ours, 0.5 * ws, noise)
        r_feat, r_skip = theirs([ws], input_is_latent=True, truncation=0.5, truncation_latent=0, noise=noise,
                                return_feature_ind=6)
    rows["G1 feature at 32 px (return_feature_ind=6)"] = float((feat - r_feat).abs().max())
    rows["G1 skip at 32 px"] = float((skip - r_skip).abs().max())

    torch.manual_seed(4)
    d_ref = ConditionalDiscriminator(256)
    d = Discriminator(256)
    d.load_state_dict(d_ref.state_dict())
    images = frames(4, 256, seed=2)
    with torch.no_grad():
        rows["discriminator 256 (batch 4)"] = float((d(images) - d_ref(images)).abs().max())

    base, toon = random_generator(1024, seed=5), random_generator(1024, seed=6)
    weights = blend_weights(64, 0.0)
    mine = blend_generators(base, toon, 64).state_dict()
    ref_base, ref_toon = RefGenerator(1024, 512, 8, 2), RefGenerator(1024, 512, 8, 2)
    ref_base.load_state_dict(base.state_dict())
    ref_toon.load_state_dict(toon.state_dict())
    reference = util.blend_models(ref_toon, ref_base, weights)
    differ = sorted({re.match(r"(convs\.\d+|to_rgbs\.\d+|[^.]+)", k).group(1)
                     for k in mine if not torch.equal(mine[k], reference[k].to(mine[k]))})
    print("teacher vs util.blend_models(--weight " + " ".join(f"{w:g}" for w in weights) + "): layers that differ:",
          ", ".join(differ) or "none")

    width = max(len(k) for k in rows)
    bad = {k: v for k, v in rows.items() if not v < args.tol}
    for k, v in rows.items():
        print(f"{k:<{width}}  {v:.3g}")
    print(json.dumps({"max_abs_diff": rows, "blend_differs": differ, "ok": not bad}))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
