"""The effect's parameters: one schema for the CLI, the server, and every host panel.

Standard library only: the Resolve script and the Blender add-on read this module
inside interpreters that have no numpy or torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import UserError

SWAP_RESOLUTIONS = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
INVERSIONS = ("projection", "encoder", "encoder+projection")


class ParamError(UserError):
    """A parameter value is missing, unknown or out of range; `field` names it."""

    http_status = 422

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}", field=field)


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    default: Any
    label: str
    help: str
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    choices: Optional[Tuple[Any, ...]] = None

    def validate(self, value: Any) -> Any:
        """Return `value` coerced to this parameter's type, or raise ParamError."""
        if self.type is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return value.lower() in ("1", "true", "yes", "on")
            raise ParamError(self.name, f"expected true or false, got {value!r}")
        if self.type in (int, float):
            if isinstance(value, bool):
                raise ParamError(self.name, f"expected a number, got {value!r}")
            try:
                number = self.type(value)
            except (TypeError, ValueError):
                raise ParamError(self.name, f"expected {'an integer' if self.type is int else 'a number'}, got {value!r}") from None
            if self.type is int and isinstance(value, float) and value != int(value):
                raise ParamError(self.name, f"expected an integer, got {value!r}")
            if number != number:  # NaN
                raise ParamError(self.name, "must be a number, got NaN")
            value = number
        elif not isinstance(value, self.type):
            raise ParamError(self.name, f"expected {self.type.__name__}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ParamError(self.name, f"must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ParamError(self.name, f"must be at least {self.minimum:g}; got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ParamError(self.name, f"must be at most {self.maximum:g}; got {value!r}")
        return value

    def to_json(self) -> Dict[str, Any]:
        out = {"name": self.name, "type": self.type.__name__, "default": self.default,
               "label": self.label, "help": self.help}
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.choices is not None:
            out["choices"] = list(self.choices)
        return out


PARAMS: Tuple[Param, ...] = (
    Param("model", str, "toonify", "Style",
          "Toon model: a name from the model manifest or a path to a .pt/.pkl generator, or a VToonify model "
          "(one feed-forward pass per frame: the fast path for movies)."),
    Param("base_model", str, "ffhq-1024", "Base model",
          "Real-face (FFHQ) generator the faces are projected into: manifest name or path."),
    Param("swap_res", int, 64, "Swap resolution",
          "Layers up to this resolution come from the toon model, above it from the base. "
          "Lower keeps more of the real face.", choices=SWAP_RESOLUTIONS),
    Param("blend_width", float, 0.0, "Blend width",
          "0 = hard layer swap; >0 = smooth logistic blend across this many octaves.",
          minimum=0.0, maximum=4.0),
    Param("mapping_from", str, "base", "Mapping network from",
          "Which model supplies the mapping network and latent_avg.", choices=("base", "toon")),
    Param("style_id", int, 26, "Style image",
          "VToonify-D styles only: which of the model's extrinsic styles (style images) to apply, by number "
          "(the reference's --style_id; 26 is its default).", minimum=0, maximum=100000),
    Param("style_degree", float, 0.5, "Style degree",
          "VToonify-D styles only: how strongly the style image's structure shapes the face (0 = the face's own "
          "structure, 1 = the style's; the reference's --style_degree).", minimum=0.0, maximum=1.0),
    Param("color_transfer", bool, False, "Style colours",
          "VToonify-D styles only: take the colours from the style image too, not from the face (the reference's "
          "--color_transfer).",),
    Param("inversion", str, "encoder+projection", "Inversion",
          "How faces are turned into latents: 'projection' optimises from the mean face (steps, slow, "
          "the reference quality); 'encoder' is one feed-forward pass (fast: previews, live camera); "
          "'encoder+projection' starts from the encoder and refines (refine_steps). Without an installed "
          "encoder, encoder+projection falls back to projection with a notice.",
          choices=INVERSIONS),
    Param("encoder", str, "e4e-encode", "Encoder",
          "Face encoder for the encoder paths (pSp, e4e or ReStyle): a name from the model manifest or a "
          "path to a checkpoint."),
    Param("steps", int, 500, "Projection steps",
          "Projection iterations for the first frame of each face (cold start from the mean face).",
          minimum=1, maximum=5000),
    Param("refine_steps", int, 50, "Refinement steps",
          "encoder+projection: iterations that refine the encoder's latent on the first frame of each face "
          "(0 and warm_steps 0 = the encoder alone).", minimum=0, maximum=5000),
    Param("warm_steps", int, 100, "Warm-start steps",
          "Projection iterations for later frames, started from the previous frame's latent.",
          minimum=0, maximum=5000),
    Param("latent_space", str, "w+", "Latent space",
          "Project into W (one style vector) or W+ (one per layer).", choices=("w", "w+")),
    Param("pixel_weight", float, 0.1, "Pixel loss weight",
          "Weight of the mean squared pixel error next to the perceptual (LPIPS) loss.",
          minimum=0.0, maximum=100.0),
    Param("keyframe_interval", int, 48, "Keyframe interval",
          "Every this many frames the projection starts cold instead of from the previous frame, "
          "which bounds drift and lets farm chunks reproduce a whole-clip render exactly (0 = never).",
          minimum=0, maximum=100000),
    Param("keyframe_overlap", int, 12, "Keyframe overlap",
          "Frames after each keyframe in which the previous chain's face is cross-faded into the new "
          "one, so the face does not jump at keyframes (0 = hard switch; at most half the keyframe "
          "interval). Costs this many extra warm-start projections per face and keyframe; the default is the "
          "smallest that kept the step at keyframes within 1.5x of other frames (bench/bench_temporal.py).",
          minimum=0, maximum=1000),
    Param("feather", float, 0.08, "Feather",
          "Width of the soft edge of the face mask, as a fraction of the face crop.",
          minimum=0.0, maximum=0.5),
    Param("color_match", bool, True, "Colour match",
          "Match the stylised face's colour statistics to the original face."),
    Param("smoothing", float, 0.5, "Temporal smoothing",
          "How strongly face landmarks are smoothed over time (0 = off). In zero-phase mode the "
          "strength times 4 is the Gaussian width in frames.", minimum=0.0, maximum=1.0),
    Param("smoothing_mode", str, "zero-phase", "Smoothing mode",
          "'zero-phase': centred on each frame, over past and future frames (no lag; a render reads "
          "a few frames past its range); 'causal': past frames only (for live input; trails fast "
          "motion slightly).", choices=("zero-phase", "causal")),
    Param("output_kind", str, "frame", "Output",
          "'frame': the full frame with toon faces; 'overlay': RGBA, faces only, alpha elsewhere.",
          choices=("frame", "overlay")),
    Param("landmarker", str, "dlib", "Face landmarks",
          "'dlib' works offline out of the box (its 68-point model was trained on iBUG 300-W, "
          "non-commercial terms); 'face-alignment' (FAN) is more accurate, weights from the model store.",
          choices=("dlib", "face-alignment")),
    Param("device", str, "auto", "Device", "auto, cpu, cuda, cuda:N or mps."),
    Param("batch_size", int, 0, "Batch size",
          "Faces inverted together (0 = what is fastest on the device: one face per projection on a CPU, "
          "where batching is slower, 8 on a GPU; the encoder path batches faces of 8 frames; VToonify styles: "
          "faces per pass, 1 on a CPU, 4 on a GPU).",
          minimum=0, maximum=64),
    Param("frame_batch", int, 1, "Frame batch",
          "Keyframe segments rendered in lockstep so their faces are projected together "
          "(GPU throughput; batch_size still caps the faces per projection); "
          "needs keyframe_interval > 0.", minimum=1, maximum=16),
    Param("seed", int, 0, "Seed", "Random seed for noise inputs and projection.", minimum=0, maximum=2**31 - 1),
    Param("input_colorspace", str, "auto", "Input colour space",
          "OpenColorIO colour space of the source's pictures (e.g. ACEScg for a linear EXR plate); the faces are "
          "stylised in sRGB and converted back. 'auto': the file's colour space attribute or the config's file "
          "rules, Rec.709/sRGB for video. The config is $OCIO, else OpenColorIO's built-in ACES studio config."),
)

BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMS}


def defaults() -> Dict[str, Any]:
    """Every parameter at its default value."""
    return {p.name: p.default for p in PARAMS}


def validate(values: Mapping[str, Any], *, partial: bool = True) -> Dict[str, Any]:
    """Check `values` against the schema; return a complete dict with defaults filled in.

    Unknown names raise ParamError. With partial=False every parameter must be given.
    """
    out = defaults()
    for name, value in values.items():
        param = BY_NAME.get(name)
        if param is None:
            raise ParamError(name, "unknown parameter; known: " + ", ".join(BY_NAME))
        out[name] = param.validate(value)
    if not partial:
        missing = [n for n in BY_NAME if n not in values]
        if missing:
            raise ParamError(missing[0], "missing")
    device = out["device"]
    if not (device in ("auto", "cpu", "cuda", "mps") or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ParamError("device", f"must be auto, cpu, cuda, cuda:N or mps; got {device!r}")
    if out["frame_batch"] > 1 and out["keyframe_interval"] == 0:
        raise ParamError("frame_batch", "frame batching needs keyframe_interval > 0 "
                         "(frames of one warm-start chain depend on each other)")
    return out


def schema() -> list:
    """The schema as JSON-serialisable dicts (served at /v1/params)."""
    return [p.to_json() for p in PARAMS]
