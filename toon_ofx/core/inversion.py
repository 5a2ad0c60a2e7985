"""Which inversion a render runs, and with which encoder file.

The `inversion` parameter asks for "projection", "encoder" or
"encoder+projection"; what runs also depends on what is installed and on the
style:

* a style that is an encoder checkpoint carrying its own toon generator (pSp's
  Toonify, `one_pass_toon` in the manifest, or any encoder file given as the
  model) is a fixed one-pass toon: its encoder and its decoder, inversion
  "encoder"; swap resolution, base model and projection settings do not apply;
* a style that is a VToonify model (`core.vtoonify`) runs none of these: mode
  "vtoonify" (its own style encoder, crop and one pass; no base model, no LPIPS);
* "encoder+projection" (the default) without the encoder installed falls back to
  "projection", with a one-line notice the render reports once;
* "encoder" without the encoder installed is an error (falling back to a
  projection would be a hundred times slower than what was asked for).

Encoders are never downloaded on demand (about 1 GB each, non-commercial
weights): `toon-ofx models pull NAME` installs one.
"""
from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

from . import model_store
from . import vtoonify as vt
from .errors import UserError
from .vtoonify import VToonifyStyle


@dataclass(frozen=True)
class Inversion:
    """What a render runs: `mode` ("projection", "encoder", "encoder+projection"), the `encoder` file
    (None for projection), whether the style is a one-pass toon (`one_pass_toon`: `encoder` is the
    style's file), and a `notice` when the mode differs from the one asked for."""

    mode: str
    encoder: Optional[Path] = None
    one_pass_toon: bool = False
    notice: Optional[str] = None
    vtoonify: Optional[VToonifyStyle] = None   # mode "vtoonify": the style


def _entry(name: str) -> Optional[dict]:
    return model_store.load_manifest()["models"].get(str(name))


def _is_encoder_file(path: Path) -> bool:
    stat = path.stat()
    return _inspect_as_encoder(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _inspect_as_encoder(path: str, mtime_ns: int, size: int) -> bool:
    """Whether a style file reads as an encoder checkpoint (cached per file version: renders ask per segment);
    UserError (field "model") with the reason when it cannot be read at all (refused, truncated)."""
    from engine.generator.safe_pickle import CheckpointError, OtherKind
    from engine.inversion.encoders import inspect_encoder

    try:
        inspect_encoder(path)
    except OtherKind:   # a generator, or no checkpoint: the generator's loader says what it is
        return False
    except CheckpointError as exc:
        raise UserError(str(exc), field="model") from None
    return True


def is_one_pass_toon(model: str) -> bool:
    """True when the style `model` is an encoder checkpoint with its own toon decoder (pSp Toonify)."""
    e = _entry(model)
    if e is not None:
        if e.get("kind") == "encoder" and not e.get("one_pass_toon"):
            raise UserError(f"{model!r} is a face encoder, not a style: choose it as the encoder "
                            "(the 'encoder' parameter)", field="model")
        return bool(e.get("one_pass_toon"))
    path = Path(str(model)).expanduser()
    return path.is_file() and _is_encoder_file(path)


def _encoder_file(params: Dict[str, Any]) -> Optional[Path]:
    """The encoder checkpoint, or None when it is a manifest encoder that is not installed."""
    name = params["encoder"]
    e = _entry(name)
    if e is not None:
        if e.get("kind") != "encoder":
            raise UserError(f"{name!r} is not a face encoder (it is a {e.get('kind')} model)", field="encoder")
        if e.get("one_pass_toon"):
            raise UserError(f"{name!r} encodes faces into its own toon generator, not into the base model: "
                            "choose it as the style (model), or pick an FFHQ encoder", field="encoder")
        if model_store.find(name) is None:
            return None
    try:
        return model_store.resolve(name)
    except UserError as exc:
        raise UserError(exc.message, field="encoder") from None


def plan_inversion(params: Dict[str, Any], download: bool = True) -> Inversion:
    """The inversion validated `params` run, with the files it needs; UserError for what cannot run.
    `download`: a one-pass toon style missing here is downloaded (else: the UserError naming it)."""
    model = params["model"]
    style = vt.vtoonify_style(model)
    if style is not None:
        return Inversion("vtoonify", vtoonify=style)
    if is_one_pass_toon(model):
        path = model_store.require({"toon": model}, download=download)["toon"]
        return Inversion("encoder", path, one_pass_toon=True)
    asked = params["inversion"]
    if asked == "projection":
        return Inversion("projection")
    path = _encoder_file(params)
    if path is not None:
        return Inversion(asked, path)
    how = f"`toon-ofx models pull {params['encoder']}` installs it"
    if asked == "encoder":
        raise UserError(f"inversion 'encoder' needs the face encoder {params['encoder']!r}, which is not "
                        f"installed; {how}", field="encoder")
    return Inversion("projection", notice=(
        f"no face encoder installed ({params['encoder']}): inverting faces by projection from the mean face, "
        f"{params['steps']} steps for each new face (much slower); {how}"))


def required_models(params: Dict[str, Any], inversion: Optional[Inversion] = None) -> Dict[str, str]:
    """`model_store.required` for what this inversion loads: a one-pass toon style needs neither the base
    model nor the toon generator (its file has both); "encoder" needs no perceptual loss; an encoder is
    named by its (installed) file, never downloaded on demand."""
    inversion = inversion or plan_inversion(params)
    if inversion.vtoonify is not None:
        return vt.required_models(params, inversion.vtoonify)
    need = model_store.required(params)
    if inversion.one_pass_toon:
        del need["base"]
        need["toon"] = str(inversion.encoder)
    elif inversion.encoder is not None:
        need["encoder"] = str(inversion.encoder)
    if inversion.mode == "encoder":
        del need["vgg16"], need["lpips"]
    return need


def load_face_encoder(path: Path, base, device):
    """The face encoder at `path` for the base generator `base` (its W+: the blended model renders it)."""
    from engine.generator.checkpoints import CheckpointError
    from engine.inversion.encoders import load_encoder

    try:
        encoder = load_encoder(path, device=device, expect_size=base.size)
    except CheckpointError as exc:
        raise UserError(str(exc), field="encoder") from None
    if encoder.info.style_dim != base.style_dim:
        raise UserError(f"{Path(path).name} encodes {encoder.info.style_dim}-dimensional styles, the base "
                        f"model has {base.style_dim}", field="encoder")
    return encoder


def load_one_pass_toon(path: Path, device):
    """(encoder, toon generator) of a style that is an encoder checkpoint with its own toon decoder."""
    from engine.generator.checkpoints import CheckpointError
    from engine.inversion.encoders import load_encoder, load_encoder_decoder

    try:
        decoder = load_encoder_decoder(path, device=device)
        if decoder is None:
            raise UserError(f"{Path(path).name} is a face encoder without a generator of its own, not a style; "
                            "choose it as the encoder", field="model")
        return load_encoder(path, device=device, expect_size=decoder.size), decoder
    except CheckpointError as exc:
        raise UserError(str(exc), field="model") from None


class InversionModels:
    """The perceptual loss and face encoder a renderer's inversions need, loaded on first use and kept
    (one encoder at a time), so a live encoder preview and an encoder+projection render share them.
    `one_pass`: the encoder of a one-pass toon style (always used)."""

    def __init__(self, base, device, one_pass=None):
        self.base, self.device, self.one_pass = base, device, one_pass
        self._lock = threading.Lock()
        self._perceptual = self._encoder = self._encoder_path = None

    def get(self, inversion: Inversion, loading: Optional[Callable[[str], None]] = None):
        """(perceptual loss or None, face encoder or None) for `inversion`; `loading(label)` is called
        before a model is loaded ("lpips", or the encoder's file name)."""
        from engine.inversion.lpips import load_lpips

        with self._lock:
            perceptual = None
            if inversion.mode != "encoder":
                if self._perceptual is None:
                    if loading is not None:
                        loading("lpips")
                    try:
                        files = model_store.require({"vgg16": "vgg16", "lpips": "lpips-vgg"})
                        self._perceptual = load_lpips(files["vgg16"], files["lpips"],
                                                      device=self.device).eval().requires_grad_(False)
                    except FileNotFoundError as exc:
                        raise UserError(str(exc)) from None
                perceptual = self._perceptual
            if self.one_pass is not None or inversion.encoder is None:
                return perceptual, self.one_pass
            if self._encoder_path != inversion.encoder:
                if loading is not None:
                    loading(Path(inversion.encoder).name)
                self._encoder = load_face_encoder(inversion.encoder, self.base, self.device)
                self._encoder_path = inversion.encoder
            return perceptual, self._encoder
