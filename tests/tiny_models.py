"""Tiny StyleGAN2 generators and realistic checkpoint files for tests.

``tiny_generator`` gives a small random (but deterministic) generator with
non-zero noise strengths, biases and latent_avg. ``save_nvidia_pkl`` writes
it the way NVIDIA's stylegan2-ada-pytorch ``training_loop.py`` writes a
network snapshot: a plain pickle of ``dict(training_set_kwargs, G, D, G_ema,
augment_pipe)`` whose networks are ``torch_utils.persistence`` objects
(``_reconstruct_persistent_obj(meta)`` with ``module_src``, ``class_name`` and
``state`` = the module's ``__dict__``), parameter names and layouts as in
``training/networks.py``. Neither ``torch_utils`` nor ``dnnlib`` is needed:
the pickler writes those global references by name.
"""

from __future__ import annotations

import math
import pickle
import types
from pathlib import Path

import numpy as np
import torch

from engine.generator.stylegan2 import Generator, make_kernel

__all__ = [
    "tiny_generator",
    "tiny_channels",
    "save_nvidia_pkl",
    "nvidia_state_dict",
    "nv_module",
    "write_nvidia_pickle",
    "EasyDict",
    "MODULE_SRC",
    "nvidia_generator",
]

# Stands in for training/networks.py; it must never be executed by a loader.
MODULE_SRC = (
    "raise RuntimeError('module_src from a network pickle was executed')\n"
    "# stand-in for stylegan2-ada-pytorch training/networks.py\n"
)


def tiny_channels(size: int, channels: int = 16) -> dict[int, int]:
    """The same channel count at every resolution 4..size."""
    return {2**i: channels for i in range(2, int(math.log2(size)) + 1)}


def tiny_generator(size: int = 32, seed: int = 0, style_dim: int = 16, n_mlp: int = 2,
                   channels: int | dict = 16) -> Generator:
    """A small random generator, identical for equal arguments; does not touch the global RNG."""
    chans = tiny_channels(size, channels) if isinstance(channels, int) else channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = Generator(size, style_dim=style_dim, n_mlp=n_mlp, channels=chans)
        with torch.no_grad():
            for name, p in g.named_parameters():
                if name.endswith("noise.weight"):
                    p.copy_(0.05 + 0.2 * torch.rand_like(p))
                elif name.endswith("modulation.bias"):
                    p.copy_(1 + 0.1 * torch.randn_like(p))
                elif name.endswith("bias"):
                    p.copy_(0.1 * torch.randn_like(p))
            g.latent_avg.copy_(0.5 * torch.randn(style_dim))
    return g.eval()


# ----------------------------------------------------------- NVIDIA look-alikes


class EasyDict(dict):
    """Pickled as dnnlib.util.EasyDict."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value


def _reconstruct_persistent_obj(meta):  # pragma: no cover - only referenced by name
    raise RuntimeError("stand-in for torch_utils.persistence._reconstruct_persistent_obj")


_ALIASES = {
    id(_reconstruct_persistent_obj): ("torch_utils.persistence", "_reconstruct_persistent_obj"),
    id(EasyDict): ("dnnlib.util", "EasyDict"),
    # Published snapshots were written with numpy 1.x, whose module is numpy.core.
    id(np.float64(1).__reduce__()[0]): ("numpy.core.multiarray", "scalar"),
    id(np.empty(0).__reduce__()[0]): ("numpy.core.multiarray", "_reconstruct"),
}


class _NVModule(torch.nn.Module):
    """An instance of an NVIDIA @persistence.persistent_class network class."""

    def __init__(self, class_name, init_args=(), init_kwargs=None):
        super().__init__()
        self.nv_class_name = class_name
        self._init_args = tuple(init_args)
        self._init_kwargs = dict(init_kwargs or {})


def nv_module(class_name: str, init_args=(), init_kwargs=None, params=None, buffers=None,
              modules=None, **attrs) -> torch.nn.Module:
    """Build a persistent-class stand-in with the given parameters, buffers, submodules, attributes."""
    m = _NVModule(class_name, init_args, init_kwargs)
    for k, v in attrs.items():
        setattr(m, k, v)
    for k, v in (params or {}).items():
        setattr(m, k, torch.nn.Parameter(v.detach().clone(), requires_grad=False))
    for k, v in (buffers or {}).items():
        m.register_buffer(k, v.detach().clone())
    for k, v in (modules or {}).items():
        setattr(m, k, v)
    return m


def _save_function(self, obj, name=None):
    self.save_global(obj, name)


class _NvidiaPickler(pickle._Pickler):
    """Pure-Python pickler that writes persistent objects as NVIDIA's persistence does."""

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[types.FunctionType] = _save_function
    alias_tables = (_ALIASES,)  # dicts id(object) -> (module, name) it is pickled as

    def reducer_override(self, obj):
        if isinstance(obj, _NVModule):
            # persistence.persistent_class.__reduce__: state = super().__reduce__()[2]
            state = object.__reduce__(obj)[2]
            state = {k: v for k, v in state.items() if k != "nv_class_name"}
            meta = dict(type="class", version=6, module_src=self.module_src,
                        class_name=obj.nv_class_name, state=state)
            return (_reconstruct_persistent_obj, (meta,), None)
        return NotImplemented

    def save_global(self, obj, name=None):
        alias = next((t[id(obj)] for t in self.alias_tables if id(obj) in t), None)
        if alias is None:
            return super().save_global(obj, name)
        module, qualname = alias
        if self.proto >= 4:
            self.save(module)
            self.save(qualname)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + module.encode() + b"\n" + qualname.encode() + b"\n")
        self.memoize(obj)


def write_nvidia_pickle(path, data, protocol: int = 4, module_src: str = MODULE_SRC) -> Path:
    """Pickle ``data`` (which may contain ``nv_module`` objects) like NVIDIA's snapshots."""
    path = Path(path)
    with open(path, "wb") as f:
        p = _NvidiaPickler(f, protocol=protocol)
        p.module_src = module_src
        p.dump(data)
    return path


# -------------------------------------------------- rosinality -> NVIDIA layout


def nvidia_state_dict(g: Generator) -> dict[str, torch.Tensor]:
    """The generator's tensors under stylegan2-ada-pytorch's names and layouts."""
    sd = {k: v.detach().clone() for k, v in g.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for i in range(g.n_mlp):
        out[f"mapping.fc{i}.weight"] = sd[f"style.{i + 1}.weight"]
        out[f"mapping.fc{i}.bias"] = sd[f"style.{i + 1}.bias"]
    out["mapping.w_avg"] = g.latent_avg.detach().clone()
    out["synthesis.b4.const"] = sd["input.input"][0]

    def layer(src, dst, noise, res):
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        out[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape(())
        out[f"{dst}.noise_const"] = sd[noise].reshape(res, res)
        out[f"{dst}.bias"] = sd[f"{src}.activate.bias"]

    def torgb(src, dst):
        out[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        out[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        out[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(-1)

    layer("conv1", "synthesis.b4.conv1", "noises.noise_0", 4)
    torgb("to_rgb1", "synthesis.b4.torgb")
    for i in range(g.log_size - 2):
        r = 2 ** (i + 3)
        layer(f"convs.{2 * i}", f"synthesis.b{r}.conv0", f"noises.noise_{2 * i + 1}", r)
        layer(f"convs.{2 * i + 1}", f"synthesis.b{r}.conv1", f"noises.noise_{2 * i + 2}", r)
        torgb(f"to_rgbs.{i}", f"synthesis.b{r}.torgb")
    return out


def _fc(t, prefix, activation="linear", lr_multiplier=1, bias_init=0):
    w = t[f"{prefix}.weight"]
    out_f, in_f = w.shape
    return nv_module(
        "FullyConnectedLayer", init_args=(in_f, out_f),
        init_kwargs=dict(activation=activation, lr_multiplier=lr_multiplier, bias_init=bias_init)
        if activation != "linear" or bias_init else {},
        params={"weight": w, "bias": t[f"{prefix}.bias"]},
        activation=activation, weight_gain=lr_multiplier / np.sqrt(in_f), bias_gain=lr_multiplier,
    )


def _synthesis_layer(t, prefix, w_dim, resolution, up, conv_clamp):
    w = t[f"{prefix}.weight"]
    return nv_module(
        "SynthesisLayer", init_args=(w.shape[1], w.shape[0]),
        init_kwargs=dict(w_dim=w_dim, resolution=resolution, conv_clamp=conv_clamp,
                         channels_last=False, **({"up": 2, "resample_filter": [1, 3, 3, 1]} if up > 1 else {})),
        resolution=resolution, up=up, use_noise=True, activation="lrelu", conv_clamp=conv_clamp,
        buffers={"resample_filter": make_kernel([1, 3, 3, 1]),
                 "noise_const": t[f"{prefix}.noise_const"]},
        padding=1, act_gain=np.sqrt(2),
        modules={"affine": _fc(t, f"{prefix}.affine", bias_init=1)},
        params={"weight": w, "noise_strength": t[f"{prefix}.noise_strength"],
                "bias": t[f"{prefix}.bias"]},
    )


def _torgb(t, prefix, w_dim, conv_clamp):
    w = t[f"{prefix}.weight"]
    return nv_module(
        "ToRGBLayer", init_args=(w.shape[1], w.shape[0]),
        init_kwargs=dict(w_dim=w_dim, conv_clamp=conv_clamp, channels_last=False),
        conv_clamp=conv_clamp, modules={"affine": _fc(t, f"{prefix}.affine", bias_init=1)},
        params={"weight": w, "bias": t[f"{prefix}.bias"]},
        weight_gain=1 / np.sqrt(w.shape[1]),
    )


def nvidia_generator(g: Generator, conv_clamp=None) -> torch.nn.Module:
    """A persistent-object tree shaped like stylegan2-ada-pytorch's Generator."""
    t = nvidia_state_dict(g)
    w_dim, size = g.style_dim, g.size
    resolutions = [2**i for i in range(2, g.log_size + 1)]
    blocks = {}
    for res in resolutions:
        in_ch = 0 if res == 4 else g.channels[res // 2]
        pre = f"synthesis.b{res}"
        mods = {}
        if res > 4:
            mods["conv0"] = _synthesis_layer(t, f"{pre}.conv0", w_dim, res, 2, conv_clamp)
        mods["conv1"] = _synthesis_layer(t, f"{pre}.conv1", w_dim, res, 1, conv_clamp)
        mods["torgb"] = _torgb(t, f"{pre}.torgb", w_dim, conv_clamp)
        blocks[f"b{res}"] = nv_module(
            "SynthesisBlock", init_args=(in_ch, g.channels[res]),
            init_kwargs=dict(w_dim=w_dim, resolution=res, img_channels=3, is_last=res == size,
                             use_fp16=False, conv_clamp=conv_clamp, architecture="skip"),
            in_channels=in_ch, w_dim=w_dim, resolution=res, img_channels=3,
            is_last=res == size, architecture="skip", use_fp16=False, channels_last=False,
            buffers={"resample_filter": make_kernel([1, 3, 3, 1])},
            num_conv=1 if res == 4 else 2, num_torgb=1,
            params={"const": t[f"{pre}.const"]} if res == 4 else None,
            modules=mods,
        )
    synthesis_kwargs = EasyDict(channel_base=int(g.channels[4] * 4 * 1024 // 32),
                                channel_max=max(g.channels.values()), num_fp16_res=0,
                                conv_clamp=conv_clamp)
    synthesis = nv_module(
        "SynthesisNetwork", init_kwargs=dict(w_dim=w_dim, img_resolution=size, img_channels=3,
                                             **synthesis_kwargs),
        w_dim=w_dim, img_resolution=size, img_resolution_log2=g.log_size, img_channels=3,
        block_resolutions=resolutions, num_ws=g.n_latent, modules=blocks,
    )
    mapping = nv_module(
        "MappingNetwork", init_kwargs=dict(z_dim=w_dim, c_dim=0, w_dim=w_dim, num_ws=g.n_latent,
                                           num_layers=g.n_mlp),
        z_dim=w_dim, c_dim=0, w_dim=w_dim, num_ws=g.n_latent, num_layers=g.n_mlp,
        w_avg_beta=0.995,
        modules={f"fc{i}": _fc(t, f"mapping.fc{i}", activation="lrelu", lr_multiplier=0.01)
                 for i in range(g.n_mlp)},
        buffers={"w_avg": t["mapping.w_avg"]},
    )
    return nv_module(
        "Generator",
        init_kwargs=dict(z_dim=w_dim, w_dim=w_dim, c_dim=0, img_resolution=size, img_channels=3,
                         mapping_kwargs=EasyDict(num_layers=g.n_mlp),
                         synthesis_kwargs=synthesis_kwargs),
        z_dim=w_dim, c_dim=0, w_dim=w_dim, img_resolution=size, img_channels=3,
        modules={"synthesis": synthesis, "mapping": mapping}, num_ws=g.n_latent,
    )


def _discriminator_stub(size: int, channels: int = 4) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(1)

    def conv(cin, cout, k, **kw):
        return nv_module("Conv2dLayer", init_args=(cin, cout), init_kwargs=dict(kernel_size=k, **kw),
                         params={"weight": torch.randn(cout, cin, k, k, generator=gen),
                                 "bias": torch.zeros(cout)},
                         buffers={"resample_filter": make_kernel([1, 3, 3, 1])},
                         activation="lrelu", up=1, down=kw.get("down", 1), conv_clamp=None,
                         padding=k // 2, weight_gain=1 / np.sqrt(cin * k * k), act_gain=np.sqrt(2))

    block = nv_module("DiscriminatorBlock", init_args=(0, channels, channels),
                      init_kwargs=dict(resolution=size, img_channels=3, first_layer_idx=0),
                      in_channels=0, resolution=size, img_channels=3, first_layer_idx=0,
                      architecture="resnet", use_fp16=False, channels_last=False, num_layers=3,
                      buffers={"resample_filter": make_kernel([1, 3, 3, 1])},
                      modules={"fromrgb": conv(3, channels, 1), "conv0": conv(channels, channels, 3),
                               "conv1": conv(channels, channels, 3, down=2)})
    mbstd = nv_module("MinibatchStdLayer", init_kwargs=dict(group_size=4, num_channels=1),
                      group_size=4, num_channels=1)
    epilogue = nv_module("DiscriminatorEpilogue", init_args=(channels,),
                         init_kwargs=dict(cmap_dim=0, resolution=4, img_channels=3),
                         in_channels=channels, cmap_dim=0, resolution=4, img_channels=3,
                         architecture="resnet",
                         modules={"mbstd": mbstd,
                                  "out": _fc({"o.weight": torch.randn(1, channels, generator=gen),
                                              "o.bias": torch.zeros(1)}, "o")})
    return nv_module("Discriminator", init_kwargs=dict(c_dim=0, img_resolution=size, img_channels=3),
                     c_dim=0, img_resolution=size, img_resolution_log2=int(math.log2(size)),
                     img_channels=3, block_resolutions=[size],
                     modules={f"b{size}": block, "b4": epilogue})


def save_nvidia_pkl(path, generator: Generator, protocol: int = 4, conv_clamp=None,
                    module_src: str = MODULE_SRC) -> Path:
    """Write ``generator`` as a stylegan2-ada-pytorch network snapshot ``.pkl``.

    protocol 3 mimics files written under Python 3.7 (GLOBAL opcodes, builtins.set),
    4 those of Python 3.8+ (STACK_GLOBAL).
    """
    data = dict(
        training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset",
                                 path="toons.zip", use_labels=False, max_size=317,
                                 xflip=True, resolution=generator.size),
        G=nvidia_generator(generator, conv_clamp),
        D=_discriminator_stub(generator.size),
        G_ema=nvidia_generator(generator, conv_clamp),
        augment_pipe=None,
    )
    return write_nvidia_pickle(path, data, protocol=protocol, module_src=module_src)



# ------------------------------------------------ NVIDIA TensorFlow look-alikes
#
# The original StyleGAN2 release (NVlabs/stylegan2, TensorFlow 1.x) and every
# model fine-tuned with it (the Toonify models) are pickles of
# dnnlib.tflib.network.Network objects, usually the tuple (G, D, Gs) that
# training/misc.py's save_pkl writes. Network.__getstate__ returns
#   {"version": 4, "name", "static_kwargs": dict, "components": dict of Networks,
#    "build_module_src": source text, "build_func_name", "variables": [(name, ndarray)]}
# where the variable names are local to the network (no "G_synthesis/" prefix)
# and come in TensorFlow creation order. Scalar variables come back from
# tf.Session.run as numpy scalars (np.float32), not 0-d arrays.

# Stands in for training/networks_stylegan2.py; a loader must never execute it.
TF_BUILD_MODULE_SRC = (
    "raise RuntimeError('build_module_src from a TensorFlow network pickle was executed')\n"
    "# stand-in for NVlabs/stylegan2 training/networks_stylegan2.py\n"
)


class TFNetwork:
    """Pickled as ``dnnlib.tflib.network.Network`` with the state NVIDIA's __getstate__ writes."""

    def __init__(self, name, build_func_name, static_kwargs=None, variables=(), components=None,
                 build_module_src=TF_BUILD_MODULE_SRC):
        self.name = name
        self.build_func_name = build_func_name
        self.static_kwargs = dict(static_kwargs or {})
        self.variables = list(variables)
        self.components = dict(components or {})
        self.build_module_src = build_module_src

    def var_names(self):
        return [k for k, _ in self.variables]

    def __getstate__(self):
        return {
            "version": 4,
            "name": self.name,
            "static_kwargs": dict(self.static_kwargs),
            "components": dict(self.components),
            "build_module_src": self.build_module_src,
            "build_func_name": self.build_func_name,
            "variables": list(self.variables),
        }


_TF_ALIASES = {id(TFNetwork): ("dnnlib.tflib.network", "Network")}


class _TFPickler(_NvidiaPickler):
    alias_tables = (_TF_ALIASES, _ALIASES)


def write_tf_pickle(path, data, protocol: int = 4) -> Path:
    """Pickle ``data`` (which may contain TFNetwork objects) like NVIDIA's TensorFlow code."""
    path = Path(path)
    with open(path, "wb") as f:
        _TFPickler(f, protocol=protocol).dump(data)
    return path


def _np(t) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=np.float32)


def tf_variables(g: Generator, mapping_lrmul: float = 0.01, use_noise: bool = True,
                 architecture: str = "skip", label_size: int = 0, seed: int = 3):
    """(Gs own, G_mapping, G_synthesis) variable lists holding ``g`` the way TensorFlow stores it.

    Written from NVlabs/stylegan2 networks_stylegan2.py's conventions, not by
    inverting engine.generator.checkpoints:
      * get_weight(shape=[..., fan_out]) returns var * runtime_coef with
        runtime_coef = lrmul / sqrt(fan_in); dense weights are [in, out];
        apply_bias_act adds bias * lrmul. rosinality's EqualLinear computes
        x @ (W * lr_mlp / sqrt(in)).T + b * lr_mlp with W [out, in], so
        var = W.T * lr_mlp / lrmul and bias = b * lr_mlp / lrmul.
      * tf.nn.conv2d(NCHW, filter HWIO, 'SAME') is a correlation like torch's
        conv2d with OIHW: var[h, w, i, o] = W[o, i, h, w].
      * Conv0_up: upsample_conv_2d(x, v) = zero-insert x, correlate with v
        (it flips v and runs conv2d_transpose), then blur. rosinality runs
        conv_transpose2d with W, which convolves (= correlates with W flipped),
        so var[h, w, i, o] = W[o, i, k-1-h, k-1-w].
      * modulation: s = dense(w, mod_weight [D, in]) + mod_bias + 1.
      * noise_strength is a scalar variable; noise inputs noise0..noiseN are
        [1, 1, R, R] variables created before the layers.
    ``architecture``/``label_size`` add the variables of the unsupported
    'resnet'/'orig' synthesis networks and of a class-conditional mapping network.
    """
    rng = np.random.RandomState(seed)
    sd = {k: v.detach().clone() for k, v in g.state_dict().items()}
    lr_mlp = 0.01  # what Generator uses

    mapping = []
    if label_size:
        mapping.append(("LabelConcat/weight", rng.randn(label_size, g.style_dim).astype(np.float32)))
    for i in range(g.n_mlp):
        w = sd[f"style.{i + 1}.weight"].double() * (lr_mlp / mapping_lrmul)
        b = sd[f"style.{i + 1}.bias"].double() * (lr_mlp / mapping_lrmul)
        mapping.append((f"Dense{i}/weight", _np(w.t())))
        mapping.append((f"Dense{i}/bias", _np(b)))

    synthesis = []
    if use_noise:
        for k in range(g.num_layers):
            synthesis.append((f"noise{k}", _np(sd[f"noises.noise_{k}"])))

    def modconv(scope, prefix, up=False):
        w = sd[f"{prefix}.conv.weight"][0]  # [O, I, k, k]
        if up:
            w = w.flip([2, 3])
        synthesis.append((f"{scope}/weight", _np(w.permute(2, 3, 1, 0))))
        synthesis.append((f"{scope}/mod_weight", _np(sd[f"{prefix}.conv.modulation.weight"].t())))
        synthesis.append((f"{scope}/mod_bias", _np(sd[f"{prefix}.conv.modulation.bias"] - 1)))

    def layer(scope, prefix, up=False):
        modconv(scope, prefix, up)
        if use_noise:
            synthesis.append((f"{scope}/noise_strength", np.float32(sd[f"{prefix}.noise.weight"].item())))
        synthesis.append((f"{scope}/bias", _np(sd[f"{prefix}.activate.bias"])))

    def torgb(scope, prefix):
        modconv(scope, prefix)
        synthesis.append((f"{scope}/bias", _np(sd[f"{prefix}.bias"].reshape(3))))

    synthesis.append(("4x4/Const/const", _np(sd["input.input"])))
    layer("4x4/Conv", "conv1")
    if architecture == "skip":
        torgb("4x4/ToRGB", "to_rgb1")
    for j in range(g.log_size - 2):
        r = 2 ** (j + 3)
        layer(f"{r}x{r}/Conv0_up", f"convs.{2 * j}", up=True)
        layer(f"{r}x{r}/Conv1", f"convs.{2 * j + 1}")
        if architecture == "resnet":
            cin, cout = g.channels[r // 2], g.channels[r]
            synthesis.append((f"{r}x{r}/Skip/weight", rng.randn(1, 1, cin, cout).astype(np.float32)))
        if architecture == "skip" or r == g.size:
            torgb(f"{r}x{r}/ToRGB", f"to_rgbs.{j}")

    own = [("lod", np.float32(0.0)), ("dlatent_avg", _np(g.latent_avg))]
    return own, mapping, synthesis


def tf_generator_network(g: Generator, name: str = "Gs", mapping_lrmul: float = 0.01,
                         use_noise: bool = True, architecture: str = "skip", label_size: int = 0,
                         build_module_src: str = TF_BUILD_MODULE_SRC, static_kwargs=None) -> TFNetwork:
    """A G_main network (with G_mapping and G_synthesis components) holding ``g``."""
    own, mapping, synthesis = tf_variables(g, mapping_lrmul, use_noise, architecture, label_size)
    # tflib.Network("G", num_channels=3, resolution=..., label_size=..., **G_args); G_main
    # forwards these kwargs to both components.
    kwargs = dict(num_channels=3, resolution=g.size, label_size=label_size,
                  fmap_base=max(g.channels.values()) * g.size, fmap_max=max(g.channels.values()),
                  latent_size=g.style_dim, dlatent_size=g.style_dim, mapping_layers=g.n_mlp,
                  mapping_fmaps=g.style_dim)
    if mapping_lrmul != 0.01:
        kwargs["mapping_lrmul"] = mapping_lrmul
    if architecture != "skip":
        kwargs["architecture"] = architecture
    kwargs.update(static_kwargs or {})
    synthesis_net = TFNetwork("G_synthesis", "G_synthesis_stylegan2", kwargs, synthesis,
                              build_module_src=build_module_src)
    mapping_net = TFNetwork("G_mapping", "G_mapping", dict(kwargs, dlatent_broadcast=g.n_latent),
                            mapping, build_module_src=build_module_src)
    return TFNetwork(name, "G_main", kwargs, own,
                     components={"synthesis": synthesis_net, "mapping": mapping_net},
                     build_module_src=build_module_src)


def tf_discriminator_stub(size: int, channels: int = 4) -> TFNetwork:
    rng = np.random.RandomState(1)
    variables = [(f"{size}x{size}/FromRGB/weight", rng.randn(1, 1, 3, channels).astype(np.float32)),
                 (f"{size}x{size}/FromRGB/bias", np.zeros(channels, np.float32)),
                 ("4x4/Dense0/weight", rng.randn(channels * 16, channels).astype(np.float32)),
                 ("Output/weight", rng.randn(channels, 1).astype(np.float32)),
                 ("Output/bias", np.zeros(1, np.float32))]
    return TFNetwork("D", "D_stylegan2", dict(num_channels=3, resolution=size, label_size=0),
                     variables)


def tf_networks(generator: Generator, training_generator: Generator | None = None, **kwargs):
    """(G, D, Gs) as NVIDIA's training loop pickles them; G holds ``training_generator`` if given."""
    G = tf_generator_network(training_generator or generator, name="G", **kwargs)
    Gs = tf_generator_network(generator, name="Gs", **kwargs)
    return (G, tf_discriminator_stub(generator.size), Gs)


def save_tf_pkl(path, generator: Generator, protocol: int = 4, training_generator=None,
                **kwargs) -> Path:
    """Write ``generator`` as a TensorFlow StyleGAN2 ``.pkl``: the tuple (G, D, Gs).

    protocol 4 is what NVlabs/stylegan2's save_pkl (pickle.HIGHEST_PROTOCOL on
    Python 3.6/3.7) writes; 2 and 3 are what other tools wrote. ``kwargs`` go to
    :func:`tf_generator_network` (mapping_lrmul, use_noise, architecture,
    label_size, build_module_src, static_kwargs).
    """
    return write_tf_pickle(path, tf_networks(generator, training_generator, **kwargs), protocol)


def random_ws(g: Generator, n: int = 2, seed: int = 1) -> torch.Tensor:
    """Fixed random W+ latents for `g`."""
    return torch.randn(n, g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(seed))


def same_outputs(g1: Generator, g2: Generator, n: int = 2) -> bool:
    """Bit-identical images for fixed latents, with the stored noise and with explicit noise."""
    ws = random_ws(g1, n)
    noise = g1.make_noise()
    with torch.no_grad():
        return (torch.equal(g1.synthesis(ws), g2.synthesis(ws))
                and torch.equal(g1.synthesis(ws, noise=noise), g2.synthesis(ws, noise=noise)))
