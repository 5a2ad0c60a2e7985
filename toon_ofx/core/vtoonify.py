"""VToonify styles in the product: which styles are VToonify models, the files they need, loading them.

A style (`model`) is a VToonify model when its manifest entry says ``kind =
"vtoonify"`` or, for a file, when the file reads as one (``engine.vtoonify.
inspect_vtoonify``). Such a style renders by ``engine.vtoonify.video`` (crop, one
feed-forward pass, paste): no base model, no LPIPS, no projection; swap resolution,
inversion, projection steps, keyframes and ``frame_batch`` do not apply. It needs:

* the VToonify file itself (``toon``),
* VToonify-D only: its extrinsic style codes (``exstyles``: the model of kind
  "exstyles" its entry ``requires``, or ``exstyle_code.npy`` beside the file) —
  ``style_id`` picks one, ``style_degree`` and ``color_transfer`` apply,
* the face parser (``face-parsing``) and the Z+ style encoder (``vtoonify-style-encoder``),
* the landmarker's files (face-alignment only).

A file that is meant as a VToonify model (its ``g_ema`` holds VToonify's keys) but
does not load is one error naming the file and the reason (field ``model``).
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

from . import model_store
from .errors import Cancelled, UserError

KIND = "vtoonify"
PARSER = "face-parsing"
STYLE_ENCODER = "vtoonify-style-encoder"
D_PARAMS = ("style_id", "style_degree", "color_transfer")   # parameters only VToonify-D styles take
STYLEGAN_PARAMS = ("base_model", "swap_res", "blend_width", "mapping_from", "inversion", "encoder", "steps",
                   "refine_steps", "warm_steps", "latent_space", "pixel_weight", "keyframe_interval",
                   "keyframe_overlap", "frame_batch", "seed")   # parameters a VToonify style does not take
VTOONIFY_KEYS = ("encoder.", "fusion_out.", "fusion_skip.", "generator.")  # g_ema keys no StyleGAN2 file has


@dataclass(frozen=True)
class VToonifyStyle:
    """A VToonify style: its manifest name or path (`model`) and backbone, when known without the file."""

    model: str
    backbone: Optional[str] = None   # "toonify" (VToonify-T) or "dualstylegan" (VToonify-D); None: not known yet
    exstyles: Optional[str] = None   # manifest name of VToonify-D's style codes


@functools.lru_cache(maxsize=32)
def _inspect_file(path: str, mtime_ns: int, size: int):
    """(VToonifyInfo or None, error message or None) for a file, cached per file version: None and None
    when the file is no VToonify model at all; None and the reason when it is meant as one but cannot load."""
    from engine.generator.checkpoints import CheckpointError
    from engine.generator.safe_pickle import read_torch_file
    from engine.vtoonify import inspect_vtoonify

    try:
        return inspect_vtoonify(path), None
    except CheckpointError as exc:
        try:
            obj = read_torch_file(Path(path))
        except Exception:  # noqa: BLE001 - not even a torch file: some other kind of style
            return None, None
        g_ema = obj.get("g_ema") if isinstance(obj, Mapping) else None
        meant = isinstance(g_ema, Mapping) and any(str(k).startswith(VTOONIFY_KEYS) for k in g_ema)
        return None, (str(exc) if meant else None)


def inspect_style(path: Path):
    """VToonifyInfo of a style file, None if it is no VToonify model; UserError if it is one that cannot load."""
    path = Path(path).expanduser()
    stat = path.stat()
    info, error = _inspect_file(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if error is not None:
        raise UserError(error, field="model")
    return info


def vtoonify_style(model: str) -> Optional[VToonifyStyle]:
    """The style `model` as a VToonify style, or None when it is a StyleGAN or one-pass style."""
    models = model_store.load_manifest()["models"]
    e = models.get(str(model))
    if e is not None:
        if e.get("kind") != KIND:
            return None
        exstyles = next((r for r in e.get("requires", []) if models.get(r, {}).get("kind") == "exstyles"), None)
        return VToonifyStyle(str(model), e.get("backbone"), exstyles)
    path = Path(str(model)).expanduser()
    if not path.is_file():
        return None
    info = inspect_style(path)
    return None if info is None else VToonifyStyle(str(model), info.backbone)


def required_models(params: Mapping[str, Any], style: VToonifyStyle) -> Dict[str, str]:
    """Role -> manifest name or path of every file a render of this VToonify style loads (for
    model_store.require: the first run names every missing one at once)."""
    need = {"toon": style.model}
    if style.exstyles:
        need["exstyles"] = style.exstyles
    need.update(parser=PARSER, style_encoder=STYLE_ENCODER)
    if params.get("landmarker") == "face-alignment":
        need.update(fan="fan-2d", s3fd="s3fd")
    return need


def exstyles_file(files: Mapping[str, Path]) -> Path:
    """VToonify-D's style codes: the required `exstyles` model, else the file beside the checkpoint."""
    from engine.generator.checkpoints import CheckpointError
    from engine.vtoonify import find_exstyles

    if "exstyles" in files:
        return files["exstyles"]
    try:
        return find_exstyles(files["toon"])
    except CheckpointError as exc:
        raise UserError(str(exc), field="model") from None


@functools.lru_cache(maxsize=8)
def _style_count(path: str, mtime_ns: int, size: int) -> int:
    from engine.vtoonify import read_exstyles

    return len(read_exstyles(path))


def check_style_id(style_id: int, count: int) -> None:
    """UserError (field ``style_id``) unless VToonify-D's ``count`` extrinsic styles hold ``style_id``."""
    if not 0 <= style_id < count:
        raise UserError(f"style_id {style_id} is out of range: this VToonify-D model has {count} styles "
                        f"(0-{count - 1})", field="style_id")


def check_style(params: Mapping[str, Any], style: VToonifyStyle, files: Mapping[str, Path]) -> None:
    """Before any network loads (the engine's request check): a VToonify-D style's ``style_id`` is one of
    its styles. Reads only the style codes (cached per file version); nothing to check for VToonify-T."""
    from engine.generator.checkpoints import CheckpointError

    if style.backbone != "dualstylegan":
        return
    path = Path(exstyles_file(files)).resolve()
    try:
        stat = path.stat()
        count = _style_count(str(path), stat.st_mtime_ns, stat.st_size)
    except (OSError, CheckpointError) as exc:
        raise UserError(str(exc), field="model") from None
    check_style_id(int(params["style_id"]), count)


class VToonifyModels:
    """A VToonify style's loaded networks: the model, the face parser, the style encoder and (VToonify-D)
    the extrinsic style codes. `on_load(label)` is called before each file is loaded; `backbone` (the
    manifest's) refuses a file of the other kind."""

    def __init__(self, files: Mapping[str, Path], device, on_load: Optional[Callable[[str], None]] = None,
                 labels: Optional[Mapping[str, str]] = None, backbone: Optional[str] = None):
        from engine.generator.checkpoints import CheckpointError
        from engine.vtoonify import load_face_parser, load_style_encoder, load_vtoonify, read_exstyles

        labels = dict(labels or {})

        def loading(role: str) -> None:
            if on_load is not None:
                on_load(labels.get(role, Path(files[role]).name))

        field = "model"
        try:
            loading("toon")
            self.net = load_vtoonify(files["toon"], device, backbone=backbone)   # the manifest's backbone, if any
            self.exstyles: Dict[str, Any] = {}
            if self.net.backbone == "dualstylegan":
                path = exstyles_file(files)
                self.exstyles = read_exstyles(path)
            field = None
            loading("parser")
            self.parser = load_face_parser(files["parser"], device)
            loading("style_encoder")
            self.encoder = load_style_encoder(files["style_encoder"], device)
        except CheckpointError as exc:
            raise UserError(str(exc), field=field) from None
        # The network reads W+ layers 0..n_latent-1 and ignores the rest (the reference's does too), so the
        # public 18-code encoder drives a model distilled with --out-scale 2 (16 layers) as well.
        n_styles, width = self.encoder.n_styles, int(self.encoder.latent_avg.shape[-1])
        if n_styles < self.net.n_latent or width != self.net.style_channels:
            raise UserError(f"{Path(files['style_encoder']).name} encodes {n_styles} styles of {width}, but the "
                            f"VToonify model {Path(files['toon']).name} reads {self.net.n_latent} styles of "
                            f"{self.net.style_channels}: it needs a style encoder for its own generator",
                            field="model")
        self.device = device

    @property
    def backbone(self) -> str:
        return self.net.backbone

    def exstyle(self, style_id: int):
        """VToonify-D's extrinsic style `style_id` as W+ (1, L, 512); None for VToonify-T."""
        import torch

        if self.net.backbone != "dualstylegan":
            return None
        names = list(self.exstyles)
        check_style_id(style_id, len(names))
        code = torch.from_numpy(self.exstyles[names[style_id]]).to(self.device)
        with torch.no_grad():
            return self.net.zplus2wplus(code)

    def pipeline(self, landmarker, params: Mapping[str, Any], batch_size: int,
                 cancel: Optional[threading.Event] = None):
        """A VToonifyPipeline for validated `params`; with `cancel`, setting it stops the render before the
        next network batch."""
        from engine.vtoonify.video import VToonifyConfig, VToonifyPipeline

        p = params
        config = VToonifyConfig(feather=p["feather"], color_match=p["color_match"],
                                overlay=p["output_kind"] == "overlay", smoothing=p["smoothing"],
                                smoothing_mode=p["smoothing_mode"], batch_size=batch_size,
                                style_degree=p["style_degree"], color_transfer=p["color_transfer"])
        pipeline = VToonifyPipeline(landmarker, self.net, self.parser, self.encoder, config,
                                    exstyle=self.exstyle(p["style_id"]))
        if cancel is not None:
            def check() -> None:
                if cancel.is_set():
                    raise Cancelled("cancelled")
            pipeline.on_batch = check
        return pipeline
