"""What a client may ask for: a POST /v1/jobs or /v1/preview body, checked field by field.

`parse_submission` turns a job request into a JobSpec (source probed, frame range, validated
parameters, output folder and name, device); `parse_preview` does the same for a preview. Every
error is a RequestError naming the first bad field. The media probe and the model store are
imported lazily (standard library only at import time).

Path rules, the same for every path field (source, output.folder, params.model,
params.base_model and params.encoder when they name a file rather than a manifest model): a string without NUL,
absolute (the engine never expands `~` nor uses its own working folder), normalised. Sources and
models are only ever read; the output folder rules are in toon_ofx.service.outputs.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from ..client import looks_like_model_path
from ..core.errors import UserError
from ..core.params import ParamError, validate
from .devices import check_device
from .errors import RequestError
from .outputs import check_name, check_output_folder, check_path, default_stem, norm_path

OUTPUT_KINDS = ("sequence", "movie")
REQUEST_FIELDS = ("source", "frames", "params", "output")
OUTPUT_FIELDS = ("folder", "kind", "name", "codec")
MODEL_FIELDS = ("model", "base_model", "encoder")


# --------------------------------------------------------------------------- the source clip

@dataclass
class SourceInfo:
    frame_count: int
    fps: Optional[float]
    number_format: str = "%06d"   # printf spec of its frame numbers (an image sequence's own)
    first_number: int = 0         # the number its frame 0 carries
    movie_suffix: str = ".mp4"    # container of a movie that follows its codec (media.movie_suffix)
    info: Any = None              # the media.MediaInfo


def probe_source(path: str, field_name: str = "source") -> SourceInfo:
    """Frame count and rate of a movie or image sequence; RequestError naming `field_name` if not media."""
    from ..core import media

    try:
        info = media.probe(Path(path))
        media.check_renderable(info)
    except UserError as exc:
        raise RequestError(exc.message, field=field_name) from None
    except (OSError, ValueError) as exc:
        raise RequestError(f"{path} is not a readable video or image sequence ({exc})", field=field_name) from None
    fps = getattr(info, "fps", None)
    return SourceInfo(int(info.frame_count), float(fps) if fps else None, info.number_format, info.first_number,
                      media.movie_suffix(info), info)


def check_source(source: Any, field_name: str = "source") -> Tuple[str, SourceInfo]:
    if source is None:
        raise RequestError(f"{field_name} is required", field=field_name)
    source = check_path(source, field_name)
    pattern = "%" in os.path.basename(source) or "#" in os.path.basename(source)  # an image-sequence pattern
    if not pattern and not os.path.exists(source):
        raise RequestError(f"{field_name} {source} does not exist", field=field_name)
    if not pattern and not os.access(source, os.R_OK):
        raise RequestError(f"{field_name} {source} is not readable", field=field_name)
    return source, probe_source(source, field_name)


# --------------------------------------------------------------------------- the request

@dataclass
class JobSpec:
    """A checked submission: everything a job needs except its id and final output name."""

    source: str
    frames: Tuple[int, int]
    params: Dict[str, Any]
    kind: str
    folder: str
    stem: str
    explicit_name: bool
    device: str
    fps: Optional[float] = None
    frame_count: int = 0
    codec: Optional[str] = None
    source_info: SourceInfo = field(default_factory=lambda: SourceInfo(0, None))

    @property
    def movie_suffix(self) -> str:
        if self.params.get("output_kind") == "overlay":
            return ".mov"
        if self.codec is not None:
            from ..core import media

            return media.CODECS[self.codec].containers[0]
        return self.source_info.movie_suffix

    def output_for(self, stem: str, work_root: Optional[Path], job_id: str) -> Dict[str, Any]:
        """Where the job writes; frame files carry the source's numbers (file of frame i:
        pattern % (first_number + i))."""
        folder, first_number = self.folder, self.source_info.first_number
        if self.kind == "sequence":   # an image source's frames come back in its own format (a plate's DPX/EXR)
            from ..core.outputs import frame_suffix

            info, overlay = self.source_info.info, self.params.get("output_kind") == "overlay"
            suffix = frame_suffix(info, overlay) if info is not None else ".png"
            pattern = os.path.join(folder, f"{stem}.{self.source_info.number_format}{suffix}")
            return {"folder": folder, "kind": "sequence", "name": stem, "path": folder, "pattern": pattern,
                    "work_dir": None, "first_number": first_number}
        work = str(Path(work_root) / job_id) if work_root is not None else None
        return {"folder": folder, "kind": "movie", "name": stem, "path": os.path.join(folder, stem + self.movie_suffix),
                "pattern": None, "work_dir": work, "codec": self.codec, "first_number": first_number}


def _strict_object(value: Any, what: str, allowed: Tuple[str, ...], prefix: str = "") -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(f"{what} must be a JSON object", field=prefix.rstrip(".") or None)
    for key in value:
        if key not in allowed:
            raise RequestError(f"unknown field {prefix}{key!r}; allowed: {', '.join(allowed)}",
                               field=f"{prefix}{key}")
    return value


def _check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise RequestError(f"{name} must be an integer, got {value!r}", field=name)
    return int(value)


def check_frames(frames: Any, frame_count: int) -> Tuple[int, int]:
    if frame_count <= 0:
        raise RequestError("the source has no frames", field="source")
    if frames is None:
        return 0, frame_count - 1
    if not isinstance(frames, (list, tuple)) or len(frames) != 2:
        raise RequestError("frames must be [first, last] (inclusive, 0-based) or null", field="frames")
    first, last = (_check_int(v, "frames") for v in frames)
    if first < 0 or last < first or last >= frame_count:
        raise RequestError(f"frame range {first}-{last} is outside the clip (frames 0-{frame_count - 1})",
                           field="frames", status=422)
    return first, last


def check_params(params: Any) -> Dict[str, Any]:
    """Validated parameters; a model given as a file follows the path rules (absolute, normalised)."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise RequestError("params must be a JSON object", field="params")
    try:
        params = validate(params)
    except ParamError as exc:
        raise RequestError(exc.message, field=f"params.{exc.field}", status=422) from None
    for name in MODEL_FIELDS:
        if looks_like_model_path(params[name]):
            params[name] = check_path(params[name], f"params.{name}")
    return params


def check_model_files(params: Mapping[str, Any]) -> None:
    """422 naming the field when params.model / base_model / encoder names a file that is not a checkpoint
    the engine reads: a torch file (a zip holding data.pkl, or the legacy format) or a pickle (NVIDIA .pkl).
    Only the first bytes and a zip's directory are read (what a checkpoint holds is checked when it loads);
    a missing file is left to `check_models`, which names every missing model at once."""
    for name in MODEL_FIELDS:
        value, field_name = params.get(name), f"params.{name}"
        if not isinstance(value, str) or not looks_like_model_path(value):
            continue
        from engine.generator.safe_pickle import TORCH_ZIP, CheckpointError, sniff, torch_zip_problem

        try:
            mode = os.stat(value).st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise RequestError(f"{field_name} {value} cannot be read: {exc.strerror or exc}", field=field_name,
                               status=422) from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):   # a pipe or a device would block or never end
            raise RequestError(f"{field_name} {value} is not a regular file", field=field_name, status=422)
        try:
            kind = sniff(Path(value))
        except CheckpointError as exc:   # a folder, unreadable, empty
            raise RequestError(f"{field_name}: {exc}", field=field_name, status=422) from None
        if kind is None or (kind == TORCH_ZIP and torch_zip_problem(Path(value)) is not None):
            raise RequestError(f"{field_name} {value} is not a model checkpoint (expected a torch .pt/.pth file "
                               "or a pickled .pkl)", field=field_name, status=422)


def check_models(params: Mapping[str, Any]) -> None:
    """422 now (not a failed job later) when a model file is not a checkpoint (`check_model_files`), a model
    the render needs is neither a file nor installed (the message names every missing file at once: size,
    licence, URL, folder), the inversion asked for cannot run (`encoder` without the encoder installed;
    see core.inversion), or a VToonify-D style has no style `style_id`."""
    check_model_files(params)
    try:
        from ..core import model_store
        from ..core.inversion import plan_inversion, required_models
        from ..core.vtoonify import check_style
    except ImportError:  # pragma: no cover - trimmed install: the renderer will say what is missing
        return
    try:
        inversion = plan_inversion(dict(params), download=False)
        files = model_store.require(required_models(params, inversion), download=False)
        if inversion.vtoonify is not None:
            check_style(params, inversion.vtoonify, files)   # VToonify-D: style_id is one of its styles
    except UserError as exc:
        raise RequestError(exc.message, field=f"params.{exc.field}" if exc.field else None, status=422) from None


def check_codec(codec: Any, kind: str, info: SourceInfo, params: Mapping[str, Any]) -> Optional[str]:
    """`output.codec`: a movie codec name (media.codec_names()) or null for the codec that follows the source."""
    if codec is None:
        return None
    if kind != "movie":
        raise RequestError("output.codec is for movie outputs (output.kind \"movie\")", field="output.codec")
    from ..core import media

    if not isinstance(codec, str) or codec not in media.CODECS:
        raise RequestError(f"output.codec must be one of {', '.join(media.codec_names())}; got {codec!r}",
                           field="output.codec")
    try:
        media.choose_codec(Path("out" + media.CODECS[codec].containers[0]), codec, info.info,
                           params.get("output_kind") == "overlay")
    except UserError as exc:
        raise RequestError(exc.message, field="output.codec", status=422) from None
    return codec


def parse_submission(body: Any, *, device_check: Callable[[str], str] = check_device,
                     default_folder: Optional[str] = None) -> JobSpec:
    """Check a POST /v1/jobs body field by field; RequestError names the first bad field."""
    body = _strict_object(body, "the request body", REQUEST_FIELDS)
    source, info = check_source(body.get("source"))
    frames = check_frames(body.get("frames"), info.frame_count)
    params = check_params(body.get("params"))
    output = body.get("output")
    if output is None:
        output = {}
    output = _strict_object(output, "output", OUTPUT_FIELDS, "output.")
    kind = output.get("kind", "sequence")
    if kind is None:
        kind = "sequence"
    if kind not in OUTPUT_KINDS:
        raise RequestError(f"output.kind must be one of {', '.join(OUTPUT_KINDS)}; got {kind!r}", field="output.kind")
    folder = output.get("folder")
    if folder is None:
        if default_folder is None:
            raise RequestError("output.folder is required", field="output.folder")
        folder = default_folder
    folder = check_output_folder(folder, source)
    explicit = output.get("name") is not None
    stem = check_name(output["name"]) if explicit else default_stem(source)
    codec = check_codec(output.get("codec"), kind, info, params)
    device = device_check(params["device"])
    spec = JobSpec(source=source, frames=frames, params=params, kind=kind, folder=folder, stem=stem,
                   explicit_name=explicit, device=device, fps=info.fps, frame_count=info.frame_count, codec=codec,
                   source_info=info)
    target = spec.output_for(stem, None, "x")["path"]
    if kind == "movie" and norm_path(os.path.realpath(target)) == norm_path(os.path.realpath(source)):
        raise RequestError("the output movie would be the source file; the source is never written to",
                           field="output.name")
    return spec


def parse_preview(body: Any) -> Tuple[str, int, Dict[str, Any]]:
    """Check a POST /v1/preview body: (source, frame, params)."""
    body = _strict_object(body, "the request body", ("source", "frame", "params"))
    source, info = check_source(body.get("source"))
    frame = body.get("frame", 0)
    if frame is None:
        frame = 0
    frame = _check_int(frame, "frame")
    if not 0 <= frame < info.frame_count:
        raise RequestError(f"frame {frame} is outside the clip (frames 0-{info.frame_count - 1})",
                           field="frame", status=422)
    return source, frame, check_params(body.get("params"))

