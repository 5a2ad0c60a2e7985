"""NVIDIA TensorFlow StyleGAN2 ``.pkl`` generators converted to rosinality's names and layouts.

The original StyleGAN2 release (e.g. ``stylegan2-ffhq-config-f.pkl``), the
public Toonify models and stylegan2-ada's TensorFlow snapshots pickle
``dnnlib.tflib.network.Network`` objects, usually the tuple ``(G, D, Gs)``. A
Network's pickled state is plain data (``version``, ``name``,
``static_kwargs``, ``components``, ``build_module_src``, ``build_func_name``
and ``variables``: a list of ``(name, numpy array)``), so
:func:`~engine.generator.safe_pickle.read_pickle` reads them without
TensorFlow as :class:`~engine.generator.safe_pickle.TFNetwork` stand-ins;
``build_module_src`` (Python source) is kept as text and never executed.
``Gs``'s variables are converted with the mapping of rosinality's
``convert_weight.py``. Only the unconditional config-e/f ``'skip'`` generator
is supported.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from .safe_pickle import CheckpointError, TFNetwork, few

__all__ = ["is_tf_pickle", "pick_tf_generator", "convert_tf_generator"]

# TF name (relative to the Gs / G_mapping / G_synthesis networks)   rosinality name, layout
#   Gs: dlatent_avg [D]                                    latent_avg (D,)
#   Gs: lod (scalar, always 0 in StyleGAN2)                 ignored
#   G_mapping/Dense{i}/weight [in, out]                     style.{i+1}.weight = W.T (out, in)
#   G_mapping/Dense{i}/bias [out]                           style.{i+1}.bias
#       (both x mapping_lrmul / 0.01 when the file's mapping_lrmul is not 0.01)
#   G_synthesis/4x4/Const/const [1, C, 4, 4]                input.input (same)
#   G_synthesis/4x4/Conv/*                                  conv1.*
#   G_synthesis/{r}x{r}/Conv0_up/*  (j = log2 r - 3)        convs.{2j}.*   (weight also flipped in H and W)
#   G_synthesis/{r}x{r}/Conv1/*                             convs.{2j+1}.*
#   G_synthesis/4x4/ToRGB/*, {r}x{r}/ToRGB/*                to_rgb1.*, to_rgbs.{j}.*
#   G_synthesis/noise{k} [1, 1, R, R]                       noises.noise_{k} (same)
# per modulated layer:
#   weight [kh, kw, I, O] (HWIO)                            conv.weight = W.transpose(3, 2, 0, 1)[None] (1, O, I, kh, kw)
#   mod_weight [D, I]                                       conv.modulation.weight = .T (I, D)
#   mod_bias [I]  (TF adds 1 at run time)                   conv.modulation.bias = mod_bias + 1
#   noise_strength [] (scalar)                              noise.weight (1,)
#   bias [O] (conv layers)                                  activate.bias (O,)
#   bias [3] (ToRGB)                                        bias (1, 3, 1, 1)
# The equalised-lr runtime gains (1/sqrt(fan_in), and lrmul for the mapping)
# are applied at run time by both implementations, so weights copy as they are.
# Conv0_up: TF's upsample_conv_2d flips the weight spatially and runs
# conv2d_transpose, i.e. it correlates the zero-stuffed input with W itself;
# rosinality's conv_transpose2d correlates with its weight flipped, hence the flip.

_TF_BLOCK_RE = re.compile(r"^(\d+)x(\d+)/")
_TF_MAPPING_LRMUL = 0.01  # the lr multiplier our Generator's mapping layers use


def is_tf_pickle(data) -> bool:
    """Whether unpickled ``data`` is a TensorFlow network, or a tuple/list holding one."""
    if isinstance(data, TFNetwork):
        return True
    return isinstance(data, (tuple, list)) and any(isinstance(x, TFNetwork) for x in data)


def _tf_state(net, what: str) -> dict:
    st = net.state if isinstance(net, TFNetwork) else None
    if not isinstance(st, dict):
        raise CheckpointError(f"the TensorFlow network pickle holds no state for {what} "
                              "(truncated, or not a StyleGAN network)")
    version = st.get("version")
    if version not in (2, 3, 4):
        raise CheckpointError(f"{what} is a TensorFlow network of unknown pickle version {version!r} "
                              "(dnnlib writes 2 to 4)")
    if not isinstance(st.get("variables"), (list, tuple)):
        raise CheckpointError(f"{what}: malformed TensorFlow network state (no variable list)")
    for key in ("static_kwargs", "components"):
        if st.get(key) is not None and not isinstance(st[key], dict):
            raise CheckpointError(f"{what}: malformed TensorFlow network state ({key} is not a dict)")
    return st


def _tf_vars(st: dict, what: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for item in st["variables"]:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
            raise CheckpointError(f"{what}: malformed TensorFlow variable list")
        name, value = item
        if not isinstance(value, (np.ndarray, np.generic, float, int)) or isinstance(value, bool):
            raise CheckpointError(f"{what}: variable {name} is not a numeric array "
                                  f"({type(value).__name__})")
        arr = np.asarray(value)
        if arr.dtype.kind not in "fiu":
            raise CheckpointError(f"{what}: variable {name} is not a numeric array ({arr.dtype})")
        out[name] = arr
    return out


def _has_generator_components(net: TFNetwork) -> bool:
    comps = net.state.get("components") if isinstance(net.state, dict) else None
    return isinstance(comps, dict) and isinstance(comps.get("synthesis"), TFNetwork)


def pick_tf_generator(data) -> TFNetwork:
    """Gs from (G, D, Gs) as NVIDIA's training loop pickles it, or a lone generator network."""
    nets = [data] if isinstance(data, TFNetwork) else [x for x in data if isinstance(x, TFNetwork)]
    for i, net in enumerate(nets):
        _tf_state(net, f"network {i}")
    names = [net.state.get("name") for net in nets]
    if "Gs" in names:
        return nets[names.index("Gs")]
    if isinstance(data, (tuple, list)) and len(data) == 3 and isinstance(data[2], TFNetwork):
        return data[2]  # (G, D, Gs)
    gens = [net for net in nets if _has_generator_components(net)]
    if len(gens) == 1:
        return gens[0]
    raise CheckpointError("the TensorFlow pickle holds no unique generator (expected (G, D, Gs) or one "
                          f"Gs network; found networks named {few(map(repr, names))})")


def _as_number(value, key: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CheckpointError(f"static argument {key}={value!r} is not a number")
    return float(value)


def _same_value(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. an array compared with a scalar
        return False


def _reshape(arr: np.ndarray, shape: tuple, name: str) -> np.ndarray:
    if arr.size != int(np.prod(shape)):
        raise CheckpointError(f"{name} has shape {tuple(arr.shape)}, expected {int(np.prod(shape))} values")
    return arr.reshape(shape)


def _t(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def convert_tf_generator(Gs: TFNetwork) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, float | None]:
    """Convert a TensorFlow StyleGAN2 Gs network's variables to rosinality's state-dict layout."""
    gs = _tf_state(Gs, "Gs")
    comps = gs.get("components") or {}
    if not isinstance(comps.get("mapping"), TFNetwork) or not isinstance(comps.get("synthesis"), TFNetwork):
        raise CheckpointError(f"the TensorFlow network {gs.get('name')!r} is not a StyleGAN generator "
                              "(no mapping and synthesis components)")
    ms, ss = _tf_state(comps["mapping"], "G_mapping"), _tf_state(comps["synthesis"], "G_synthesis")
    gv, mv, sv = _tf_vars(gs, "Gs"), _tf_vars(ms, "G_mapping"), _tf_vars(ss, "G_synthesis")
    gkw = dict(gs.get("static_kwargs") or {})  # G_main forwards its kwargs to both components
    mkw = {**gkw, **(ms.get("static_kwargs") or {})}
    skw = {**gkw, **(ss.get("static_kwargs") or {})}

    # ---- what kind of generator is it?
    if any("StyleMod" in k or "ToRGB_lod" in k or k.endswith("/Noise/weight") for k in sv):
        raise CheckpointError(
            f"this is a StyleGAN (v1) or progressive-growing generator ({ss.get('build_func_name')}); "
            "only StyleGAN2 config-e/f ('skip') generators are supported")
    label_size = _as_number(mkw.get("label_size", 0) or 0, "label_size")
    if label_size > 0 or any(k.startswith(("LabelConcat/", "LabelEmbed/")) for k in mv):
        raise CheckpointError(f"this is a class-conditional generator (label_size={int(label_size)}); "
                              "only unconditional StyleGAN2 generators are supported")
    for key in ("4x4/Const/const", "4x4/Conv/weight"):
        if key not in sv:
            raise CheckpointError(f"not a StyleGAN2 synthesis network (no G_synthesis/{key})")
    arch = skw.get("architecture", "skip")
    if arch == "resnet" or any(re.match(r"^\d+x\d+/Skip/", k) for k in sv):
        raise CheckpointError("this generator uses the 'resnet' synthesis architecture; only "
                              "config-e/f ('skip') generators are supported")
    if arch == "orig" or "4x4/ToRGB/weight" not in sv:
        raise CheckpointError("this generator uses the 'orig' synthesis architecture (no ToRGB skip "
                              "connections); only config-e/f ('skip') generators are supported")
    if arch != "skip":
        raise CheckpointError(f"unknown synthesis architecture {arch!r}; only 'skip' is supported")
    for kw, key, want in ((skw, "nonlinearity", "lrelu"), (mkw, "mapping_nonlinearity", "lrelu"),
                          (mkw, "normalize_latents", True), (skw, "num_channels", 3)):
        if key in kw and not _same_value(kw[key], want):
            raise CheckpointError(f"{key}={kw[key]!r} is not supported (StyleGAN2 config-f uses {want!r})")
    kernel = skw.get("resample_kernel", [1, 3, 3, 1])
    try:
        kernel_ok = kernel is not None and np.asarray(kernel, dtype=np.float64).tolist() == [1, 3, 3, 1]
    except (TypeError, ValueError):
        kernel_ok = False
    if not kernel_ok:
        raise CheckpointError(f"resample_kernel={kernel!r} is not the [1,3,3,1] filter of config-f")
    lrmul = _as_number(mkw.get("mapping_lrmul", _TF_MAPPING_LRMUL), "mapping_lrmul")
    if not lrmul > 0:
        raise CheckpointError(f"mapping_lrmul={lrmul!r} is not a positive number")

    out: dict[str, torch.Tensor] = {}

    # ---- mapping network
    used_m: set[str] = set()
    n_mlp = 0
    while f"Dense{n_mlp}/weight" in mv:
        n_mlp += 1
    if n_mlp == 0:
        raise CheckpointError("G_mapping has no Dense0 layer (not a StyleGAN2 mapping network)")
    rescale = None if lrmul == _TF_MAPPING_LRMUL else lrmul / _TF_MAPPING_LRMUL
    dims = set()
    for i in range(n_mlp):
        wname, bname = f"Dense{i}/weight", f"Dense{i}/bias"
        if bname not in mv:
            raise CheckpointError(f"G_mapping has no variable {bname}")
        used_m.update((wname, bname))
        w, b = mv[wname], mv[bname]
        if w.ndim != 2 or b.shape != (w.shape[1],):
            raise CheckpointError(f"G_mapping/{wname} {tuple(w.shape)} / {bname} {tuple(b.shape)} "
                                  "are not a dense layer")
        dims.add(tuple(w.shape))
        w, b = np.asarray(w, dtype=np.float32).T, np.asarray(b, dtype=np.float32)
        if rescale is not None:  # same effective weights with our lr multiplier
            w = (w.astype(np.float64) * rescale).astype(np.float32)
            b = (b.astype(np.float64) * rescale).astype(np.float32)
        out[f"style.{i + 1}.weight"], out[f"style.{i + 1}.bias"] = _t(w), _t(b)
    if len(dims) != 1 or len({*next(iter(dims))}) != 1:
        raise CheckpointError(f"mapping layers are not square (latent_size == dlatent_size == "
                              f"mapping_fmaps) as in config-f: {sorted(dims)}")
    left = [k for k in mv if k not in used_m]
    if left:
        raise CheckpointError(f"G_mapping has variables a StyleGAN2 config-f mapping network does not "
                              f"({few(left)})")

    # ---- synthesis network
    res = sorted({int(m.group(1)) for k in sv
                  if (m := _TF_BLOCK_RE.match(k)) and m.group(1) == m.group(2)})
    if len(res) < 2 or res != [2**i for i in range(2, 2 + len(res))]:
        raise CheckpointError(f"unrecognised synthesis layout (blocks {res}; expected 4x4, 8x8, ... NxN)")
    size = res[-1]
    if "resolution" in skw and _as_number(skw["resolution"], "resolution") != size:
        raise CheckpointError(f"the network says resolution={skw['resolution']!r}, but its synthesis "
                              f"blocks go up to {size}x{size}")
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in sv:
            raise CheckpointError(f"G_synthesis has no variable {name} (not a StyleGAN2 config-f generator)")
        used.add(name)
        return np.asarray(sv[name], dtype=np.float32)

    def modconv(src: str, dst: str, flip: bool = False):
        w = take(f"{src}/weight")
        if w.ndim != 4 or w.shape[0] != w.shape[1]:
            raise CheckpointError(f"G_synthesis/{src}/weight has shape {tuple(w.shape)}, not [k, k, in, out]")
        w = w.transpose(3, 2, 0, 1)  # [kh, kw, I, O] -> [O, I, kh, kw]
        if flip:
            w = w[:, :, ::-1, ::-1]
        out[f"{dst}.conv.weight"] = _t(w[None])
        mod_w = take(f"{src}/mod_weight")
        if mod_w.ndim != 2:
            raise CheckpointError(f"G_synthesis/{src}/mod_weight has shape {tuple(mod_w.shape)}, not [D, in]")
        out[f"{dst}.conv.modulation.weight"] = _t(mod_w.T)
        out[f"{dst}.conv.modulation.bias"] = _t(take(f"{src}/mod_bias") + np.float32(1))

    def layer(src: str, dst: str, noise_idx: int, r: int, flip: bool = False):
        modconv(src, dst, flip)
        out[f"{dst}.activate.bias"] = _t(take(f"{src}/bias"))
        strength, noise = f"{src}/noise_strength", f"noise{noise_idx}"
        if strength in sv or noise in sv:
            out[f"{dst}.noise.weight"] = _t(_reshape(take(strength), (1,), strength))
            out[f"noises.noise_{noise_idx}"] = _t(_reshape(take(noise), (1, 1, r, r), noise))
        else:  # use_noise=False (stylegan2-ada): no noise at all
            out[f"{dst}.noise.weight"] = torch.zeros(1)
            out[f"noises.noise_{noise_idx}"] = torch.zeros(1, 1, r, r)

    def torgb(src: str, dst: str):
        modconv(src, dst)
        out[f"{dst}.bias"] = _t(_reshape(take(f"{src}/bias"), (1, 3, 1, 1), f"{src}/bias"))

    out["input.input"] = _t(take("4x4/Const/const"))
    layer("4x4/Conv", "conv1", 0, 4)
    torgb("4x4/ToRGB", "to_rgb1")
    for j, r in enumerate(res[1:]):
        layer(f"{r}x{r}/Conv0_up", f"convs.{2 * j}", 2 * j + 1, r, flip=True)
        layer(f"{r}x{r}/Conv1", f"convs.{2 * j + 1}", 2 * j + 2, r)
        torgb(f"{r}x{r}/ToRGB", f"to_rgbs.{j}")
    left = [k for k in sv if k not in used]
    if left:
        raise CheckpointError(f"G_synthesis has variables a StyleGAN2 config-f generator does not "
                              f"({few(left)})")

    # ---- Gs's own variables
    latent_avg = None
    for k, v in gv.items():
        if k == "dlatent_avg":
            latent_avg = _t(v)
        elif k != "lod":
            raise CheckpointError(f"Gs has a variable a StyleGAN2 generator does not ({k})")
    conv_clamp = skw.get("conv_clamp")  # stylegan2-ada (TensorFlow) only
    conv_clamp = None if conv_clamp is None else _as_number(conv_clamp, "conv_clamp")
    return out, latent_avg, conv_clamp

