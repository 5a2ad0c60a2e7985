"""NVIDIA stylegan2-ada-pytorch ``.pkl`` generators renamed to rosinality's state-dict layout.

The pickle's ``G_ema`` arrives as :class:`~engine.generator.safe_pickle.PersistentObject`
stand-ins (read by :func:`~engine.generator.safe_pickle.read_pickle`); only the
unconditional config-f ``'skip'`` StyleGAN2 generator is accepted (StyleGAN3,
class-conditional and ``'resnet'`` generators are refused).
"""

from __future__ import annotations

import re

import torch

from .safe_pickle import CheckpointError, PersistentObject, few
from .stylegan2 import make_kernel

__all__ = ["module_tensors", "convert_nvidia_generator"]


def module_tensors(obj: PersistentObject, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every parameter and buffer of a pickled torch module tree, by NVIDIA's dotted name."""
    out: dict[str, torch.Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (obj.state.get(group) or {}).items():
            if isinstance(t, torch.Tensor):
                out[prefix + name] = t.detach()
    for name, sub in (obj.state.get("_modules") or {}).items():
        if isinstance(sub, PersistentObject):
            out.update(module_tensors(sub, f"{prefix}{name}."))
    return out


def _submodule(obj: PersistentObject, dotted: str) -> PersistentObject | None:
    for part in dotted.split("."):
        obj = (obj.state.get("_modules") or {}).get(part)
        if not isinstance(obj, PersistentObject):
            return None
    return obj


def convert_nvidia_generator(G) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, float | None]:
    """Rename an NVIDIA StyleGAN2 G_ema to rosinality's state-dict layout."""
    if not isinstance(G, PersistentObject):
        raise CheckpointError("'G_ema' is not a torch_utils.persistence network")
    t = module_tensors(G)
    if any(re.match(r"synthesis\.(input|L\d+_)", k) for k in t):
        raise CheckpointError(
            "this is a StyleGAN3 (alias-free) generator; only StyleGAN2 config-f generators "
            "are supported")
    if "mapping.embed.weight" in t:
        raise CheckpointError("this is a class-conditional generator; only unconditional "
                              "StyleGAN2 generators are supported")
    res = sorted({int(m.group(1)) for k in t if (m := re.match(r"synthesis\.b(\d+)\.", k))})
    if not res or res[0] != 4 or res != [2**i for i in range(2, 2 + len(res))] or len(res) < 2:
        raise CheckpointError("unrecognised generator layout (no StyleGAN2 synthesis blocks "
                              "synthesis.b4 ... synthesis.bN)")
    if any(re.match(r"synthesis\.b\d+\.skip\.", k) for k in t):
        raise CheckpointError("this generator uses the 'resnet' synthesis architecture; only "
                              "config-f ('skip') generators are supported")

    used: set[str] = set()

    def take(name: str) -> torch.Tensor:
        if name not in t:
            raise CheckpointError(f"G_ema has no parameter {name} (not a StyleGAN2 config-f generator)")
        used.add(name)
        return t[name].float()

    out: dict[str, torch.Tensor] = {}
    n_mlp = 0
    while f"mapping.fc{n_mlp}.weight" in t:
        out[f"style.{n_mlp + 1}.weight"] = take(f"mapping.fc{n_mlp}.weight")
        out[f"style.{n_mlp + 1}.bias"] = take(f"mapping.fc{n_mlp}.bias")
        n_mlp += 1
    if n_mlp == 0:
        raise CheckpointError("G_ema has no mapping network (mapping.fc0)")
    dims = {tuple(out[f"style.{i}.weight"].shape) for i in range(1, n_mlp + 1)}
    if len(dims) != 1 or len({*next(iter(dims))}) != 1:
        raise CheckpointError(f"mapping layers are not square (z_dim == w_dim) as in config-f: {sorted(dims)}")

    out["input.input"] = take("synthesis.b4.const").unsqueeze(0)

    def layer(src: str, dst: str, noise_name: str, resolution: int):
        w = take(f"{src}.weight")
        out[f"{dst}.conv.weight"] = w.unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        out[f"{dst}.activate.bias"] = take(f"{src}.bias")
        if f"{src}.noise_strength" in t:  # use_noise=False layers have neither
            out[f"{dst}.noise.weight"] = take(f"{src}.noise_strength").reshape(1)
            out[noise_name] = take(f"{src}.noise_const").reshape(1, 1, resolution, resolution)
        else:
            out[f"{dst}.noise.weight"] = w.new_zeros(1)
            out[noise_name] = w.new_zeros(1, 1, resolution, resolution)

    def torgb(src: str, dst: str):
        out[f"{dst}.conv.weight"] = take(f"{src}.weight").unsqueeze(0)
        out[f"{dst}.conv.modulation.weight"] = take(f"{src}.affine.weight")
        out[f"{dst}.conv.modulation.bias"] = take(f"{src}.affine.bias")
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape(1, -1, 1, 1)

    layer("synthesis.b4.conv1", "conv1", "noises.noise_0", 4)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for i, r in enumerate(res[1:]):
        layer(f"synthesis.b{r}.conv0", f"convs.{2 * i}", f"noises.noise_{2 * i + 1}", r)
        layer(f"synthesis.b{r}.conv1", f"convs.{2 * i + 1}", f"noises.noise_{2 * i + 2}", r)
        torgb(f"synthesis.b{r}.torgb", f"to_rgbs.{i}")

    expected_filter = make_kernel([1, 3, 3, 1])
    for k, v in t.items():
        if k.endswith("resample_filter"):
            used.add(k)
            if tuple(v.shape) != (4, 4) or not torch.allclose(v.float(), expected_filter, atol=1e-6):
                raise CheckpointError(f"{k} is not the [1,3,3,1] filter of config-f")
    latent_avg = t.get("mapping.w_avg")
    used.add("mapping.w_avg")
    left = [k for k in t if k not in used]
    if left:
        raise CheckpointError(f"G_ema has parameters a StyleGAN2 config-f generator does not "
                              f"({few(left)})")

    conv_clamp = None
    first = _submodule(G, "synthesis.b4.conv1")
    if first is not None and isinstance(first.state.get("conv_clamp"), (int, float)):
        conv_clamp = float(first.state["conv_clamp"])
    return out, (None if latent_avg is None else latent_avg.float()), conv_clamp
