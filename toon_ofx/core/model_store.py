"""Model store: known checkpoints by name, where they live, and how to get them.

The manifest (``models/manifest.toml``; ``TOON_OFX_MANIFEST`` overrides)
lists every checkpoint the product knows. Files are looked up, in order, in

1. ``TOON_OFX_MODELS`` (a local or shared folder, e.g. a studio share),
2. the per-user cache folder (``<user_cache_dir>/models``, where `pull` writes),
3. torch's hub cache (``$TORCH_HOME/hub/checkpoints``; files torchvision or
   face-alignment downloaded before), read only,
4. a copy shipped inside an installed package (``package_file``).

`resolve` answers with a path or with one clear `UserError` that names the file,
the folder to put it in, the URL and the ``toon-ofx models pull NAME`` command;
`require` does that for every model a render needs at once (downloading what it
can first), so a first run names every missing file in one message, with its
size, licence, URL and target folder. `pull` downloads each file through
`downloads` (a temp file next to the target, a tqdm bar, the SHA-256 or the hash
prefix in the upstream file name checked, then renamed into place).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from . import dirs
from .downloads import DownloadError, DownloadFailed, download, hash_ok, sha256_of
from .errors import UserError

ENV_MODELS = "TOON_OFX_MODELS"
ENV_MANIFEST = "TOON_OFX_MANIFEST"
# nvidia-tf-pkl (NVIDIA's TensorFlow StyleGAN2 pickles, e.g. Toonify) loads directly like nvidia-pkl:
# engine.generator.checkpoints reads both without the authors' code, so neither needs a conversion step.
# psp-pt: pSp / e4e / ReStyle encoder checkpoints (engine.inversion.encoders), loaded as downloaded.
# vtoonify-pt, bisenet-pth, exstyle-npy: VToonify's files (engine.vtoonify); npy: a plain NumPy array.
# `requires`: the models a model needs beside it (VToonify: encoder, parser, style codes), pulled with it.
FORMATS = ("rosinality-pt", "nvidia-pkl", "nvidia-tf-pkl", "torchvision", "lpips", "face-alignment", "psp-pt",
           "vtoonify-pt", "bisenet-pth", "exstyle-npy", "npy")
KINDS = ("base", "toon", "blended", "perceptual", "landmarks", "encoder", "vtoonify", "exstyles", "parser",
         "style-encoder", "directions")
REQUIRED = ("title", "kind", "file", "format", "urls", "sha256", "licence", "notes")
_MODEL_SUFFIXES = (".pt", ".pth", ".pkl", ".tar", ".ckpt", ".bin", ".safetensors")


# ============================================================================ manifest

def manifest_path() -> Path:
    """Where the manifest is read from (``TOON_OFX_MANIFEST`` or the repo's models/manifest.toml)."""
    env = os.environ.get(ENV_MANIFEST)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[2] / "models" / "manifest.toml"
    installed = Path(sys.prefix) / "share" / "toon-ofx" / "manifest.toml"  # a wheel's data file
    return installed if not checkout.is_file() and installed.is_file() else checkout


def load_manifest(path: Optional[os.PathLike] = None) -> Dict[str, Any]:
    """Parse the manifest: ``{"models": {name: entry}, "groups": {name: [names]}}``.

    Each entry gets its own ``name``; optional fields get defaults.
    """
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise UserError("reading the model manifest needs Python 3.11+ or the 'tomli' package") from None
    p = Path(path) if path is not None else manifest_path()
    try:
        with open(p, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise UserError(f"model manifest {p} is missing (set {ENV_MANIFEST} to its path)") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"model manifest {p} is not valid TOML: {exc}") from None
    models = {}
    for name, raw in (data.get("models") or {}).items():
        e = dict(raw)
        e["name"] = name
        e.setdefault("urls", [])
        e.setdefault("sha256", "")
        e.setdefault("sha256_prefix", "")
        e.setdefault("size", 0)
        e.setdefault("also_found_as", [])
        e.setdefault("requires", [])
        e.setdefault("page", "")
        e.setdefault("notes", "")
        models[name] = e
    groups = {k: list(v) for k, v in (data.get("groups") or {}).items()}
    return {"models": models, "groups": groups, "path": p}


def entry(name: str, manifest: Optional[dict] = None) -> dict:
    """The manifest entry for `name`; UserError listing known names if unknown."""
    m = manifest or load_manifest()
    if name in m["models"]:
        return m["models"][name]
    raise UserError(_unknown(name, m), field="model")


def _unknown(name: str, m: dict) -> str:
    known = ", ".join(sorted(m["models"]))
    groups = ", ".join(sorted(m["groups"]))
    return (f"unknown model {name!r}: known models are {known}" + (f" (groups: {groups})" if groups else "")
            + "; or give the path of a checkpoint file")


def is_blended(name_or_path: str, manifest: Optional[dict] = None) -> bool:
    """True for a manifest model published pre-blended (its swap resolution is baked in)."""
    m = manifest or load_manifest()
    e = m["models"].get(str(name_or_path))
    return bool(e and e.get("kind") == "blended")


# ============================================================================ folders

def _cache_models_dir() -> Path:
    return Path(dirs.user_cache_dir()) / "models"


def _torch_hub_checkpoints() -> Path:
    home = os.environ.get("TORCH_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(xdg, "torch")
    return Path(home).expanduser() / "hub" / "checkpoints"


def models_dir() -> Path:
    """The folder models are put in: ``TOON_OFX_MODELS`` when set, else ``<user cache>/models``."""
    env = os.environ.get(ENV_MODELS, "").strip()
    return Path(env).expanduser() if env else _cache_models_dir()


def search_dirs() -> List[Path]:
    """Folders searched for model files, in order."""
    out: List[Path] = []
    env = os.environ.get(ENV_MODELS, "").strip()
    if env:
        out.append(Path(env).expanduser())
    out.append(_cache_models_dir())
    out.append(_torch_hub_checkpoints())
    seen, unique = set(), []
    for d in out:
        key = os.path.normcase(os.path.abspath(d))
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def _pull_dir() -> Path:
    """Where `pull` writes: ``TOON_OFX_MODELS`` if writable (or creatable), else the cache."""
    env = os.environ.get(ENV_MODELS, "").strip()
    if env:
        d = Path(env).expanduser()
        probe = d if d.exists() else d.parent
        if os.access(probe, os.W_OK):
            return d
    return _cache_models_dir()


# ============================================================================ lookup

def _package_copy(spec: str) -> Optional[Path]:
    if not spec or ":" not in spec:
        return None
    package, rel = spec.split(":", 1)
    try:
        found = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    for base in found.submodule_search_locations:
        cand = Path(base) / rel
        if cand.is_file():
            return cand
    return None


def find(name: str, manifest: Optional[dict] = None) -> Optional[Path]:
    """Path of an installed model file, or None (no errors, no downloads)."""
    e = entry(name, manifest)
    names = [e["file"]] + list(e.get("also_found_as", []))
    for folder in search_dirs():
        for fname in names:
            cand = folder / fname
            if cand.is_file() and cand.stat().st_size > 0:
                return cand
    return _package_copy(e.get("package_file", ""))


def _looks_like_path(text: str) -> bool:
    return (os.sep in text or (os.altsep and os.altsep in text) or text.startswith(("~", "."))
            or text.lower().endswith(_MODEL_SUFFIXES))


def resolve(name_or_path: os.PathLike | str, manifest: Optional[dict] = None) -> Path:
    """A checkpoint path from a path or a manifest name; UserError says how to get a missing one."""
    text = os.fspath(name_or_path)
    p = Path(text).expanduser()
    if p.is_file():
        return p
    m = manifest or load_manifest()
    if text not in m["models"]:
        if p.is_dir():
            raise UserError(f"{p} is a folder, not a checkpoint file", field="model")
        if _looks_like_path(text):
            raise UserError(f"model file {p} does not exist", field="model")
        if text in m["groups"]:
            raise UserError(f"{text!r} is a group of models ({', '.join(m['groups'][text])}): name one of them",
                            field="model")
        raise UserError(_unknown(text, m), field="model")
    e = m["models"][text]
    found = find(text, m)
    if found is not None:
        return found
    folder = models_dir()
    if e.get("download_file"):
        for d in search_dirs():
            raw = d / e["download_file"]
            if raw.is_file():
                raise UserError(f"model {text!r}: found {raw}, which must be converted once: "
                                f"{e.get('convert', 'see models/README.md')}; put the result {e['file']} in "
                                f"{folder}", field="model")
    source = e["urls"][0] if e["urls"] else e.get("page", "")
    if e.get("download_file"):
        steps = (f"Run `toon-ofx models pull {text}` (or download {e['download_file']} from {source}), convert it "
                 f"once with {e.get('convert') or 'the converter in models/README.md'}, and put {e['file']} "
                 f"in {folder}")
    elif e["urls"]:
        steps = f"Run `toon-ofx models pull {text}`, or download {source} and put {e['file']} in {folder}"
    else:
        steps = f"Download it from {source} and put {e['file']} in {folder}"
    raise UserError(f"model {text!r} is not installed: {e['file']} is missing. {steps} "
                    f"({ENV_MODELS} names another folder).", field="model")


def required(params: Mapping[str, Any]) -> Dict[str, str]:
    """The models a render with these (validated) parameters loads: role -> manifest name or file path."""
    need = {"base": str(params["base_model"]), "toon": str(params["model"]), "vgg16": "vgg16",
            "lpips": "lpips-vgg"}
    if params.get("landmarker") == "face-alignment":
        need.update(fan="fan-2d", s3fd="s3fd")
    return need


ROLE_FIELDS = {"toon": "model", "base": "base_model", "encoder": "encoder"}   # the parameter to blame for a missing model


def require(models: Mapping[str, str], download: bool = True, progress: bool = True,
            manifest: Optional[dict] = None) -> Dict[str, Path]:
    """Paths of `models` (role -> name or path, e.g. `required(params)`), or ONE UserError naming every file
    that is missing, with its size, licence, URL and the folder to put it in.

    With `download`, known models that are missing are downloaded first; once a download finds
    the machine offline the others are not tried. Unknown names and missing paths are input
    errors and fail at once, like `resolve`.
    """
    m = manifest or load_manifest()
    implied = [r for n in models.values() if n in m["models"] for r in m["models"][n]["requires"]]
    models = {**{r: r for r in implied if r not in models.values()}, **models}   # keyed by their own name
    paths: Dict[str, Path] = {}
    missing: List[Tuple[str, dict]] = []
    for role, name in models.items():
        if name in m["models"] and find(name, m) is None:
            missing.append((role, m["models"][name]))
            continue
        try:
            paths[role] = resolve(name, m)
        except UserError as exc:
            raise UserError(exc.message, field=ROLE_FIELDS.get(role, exc.field)) from None
    failure: Optional[DownloadError] = None
    if download:
        for role, e in list(missing):
            if not e["urls"] or e.get("download_file") or (failure is not None and failure.offline):
                continue
            try:
                pull(e["name"], progress=progress, manifest=m)
            except DownloadError as exc:
                failure = failure or exc
                continue
            paths[role] = resolve(e["name"], m)
            missing.remove((role, e))
    if missing:
        raise UserError(_missing_message([e for _, e in missing], failure),
                        field=next((ROLE_FIELDS[r] for r in ("toon", "base") if r in dict(missing)), None))
    return paths


def _size_text(e: dict) -> str:
    size = int(e.get("size") or 0)
    if not size:
        return "size not published"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"


def _missing_message(entries: List[dict], failure: Optional["DownloadError"]) -> str:
    """Every missing file on its own line: file, model, size, licence, where from; then where to put them."""
    folder = models_dir()
    count = f"{len(entries)} model file{'s are' if len(entries) > 1 else ' is'} missing"
    if failure is not None:
        count += " (this machine looks offline)" if failure.offline else f" (download failed: {failure.message})"
    lines = [f"{count}:"]
    for e in entries:
        source = e["urls"][0] if e["urls"] else e.get("page", "")
        licence = e.get("licence") or "see models/manifest.toml"
        lines.append(f"  - {e['file']} (model {e['name']}, {_size_text(e)}, licence: {licence}) from {source}")
        if e.get("download_file"):
            lines.append(f"    downloads as {e['download_file']}; convert it once: {e.get('convert')}")
    pullable = [e["name"] for e in entries if e["urls"]]
    lines.append(f"Put them in {folder} (or a folder named by {ENV_MODELS})"
                 + (f", or run `toon-ofx models pull {' '.join(pullable)}` on a machine with internet access "
                    "and copy the files there." if pullable else "."))
    return "\n".join(lines)


# ============================================================================ download

def expand(names: Iterable[str], m: dict) -> List[str]:
    """Model names with groups replaced by their members (each once); UserError for an unknown name."""
    out: List[str] = []
    for n in names:
        if n in m["groups"]:
            out.extend(x for x in m["groups"][n] if x not in out)
        elif n in m["models"]:
            if n not in out:
                out.append(n)
        else:
            raise UserError(_unknown(n, m), field="model")
    return list(dict.fromkeys([r for n in out for r in m["models"][n]["requires"]] + out))  # requirements first


def pull(name: str, progress: bool = True, force: bool = False, manifest: Optional[dict] = None,
         dest: Optional[os.PathLike] = None) -> Path:
    """Download model `name` (or each model of a group) into the models folder; returns its path.

    Verifies the SHA-256 when the manifest has one; on a mismatch or a
    network failure nothing is left behind and a UserError says what to do.
    Already-installed files that verify are not downloaded again.
    """
    m = manifest or load_manifest()
    names = expand([name], m)
    result = None
    for n in names:
        result = _pull_one(m["models"][n], progress, force, m, dest)
    assert result is not None
    return result


def _pull_one(e: dict, progress: bool, force: bool, m: dict, dest) -> Path:
    folder = Path(dest) if dest is not None else _pull_dir()
    fname = e.get("download_file") or e["file"]
    target = folder / fname
    if not e["urls"]:
        raise UserError(f"{e['name']} cannot be downloaded automatically: get {fname} from {e.get('page')} and "
                        f"put it in {folder}", field="model")
    if not force:
        existing = find(e["name"], m) if not e.get("download_file") else (target if target.is_file() else None)
        if existing is not None and (not (e.get("sha256") or e.get("sha256_prefix"))
                                     or hash_ok(e, sha256_of(existing))):
            return existing
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the models folder {folder}: {exc.strerror or exc}") from None
    errors = []
    for url in e["urls"]:
        try:
            return download(url, target, e, progress)
        except DownloadFailed as exc:
            errors.append(f"{url}: {exc}")
            if exc.final:
                raise DownloadError(str(exc)) from None
    offline = all("unreachable" in x or "timed out" in x for x in errors)
    reason = "; ".join(errors)
    hint = ("It looks like this machine is offline. " if offline else "") + (
        f"Download {fname} from {e['urls'][0]} on a machine with internet access and copy it to {folder}"
        f" (or into a folder named by {ENV_MODELS}).")
    raise DownloadError(f"could not download {fname} for model {e['name']!r} ({reason}). {hint}", offline=offline)


# ============================================================================ listing

def list_models(manifest: Optional[dict] = None) -> List[dict]:
    """One row per manifest model: name, title, kind, format, resolution, file, installed, path, licence."""
    m = manifest or load_manifest()
    rows = []
    for name, e in m["models"].items():
        path = find(name, m)
        rows.append({
            "name": name, "title": e.get("title", ""), "kind": e.get("kind", ""), "format": e.get("format", ""),
            "resolution": e.get("resolution"), "file": e["file"], "installed": path is not None,
            "path": str(path) if path else None, "licence": e.get("licence", ""),
            "needs_conversion": bool(e.get("download_file")), "swap_res": e.get("swap_res"),
        })
    return rows


def file_stamps(paths: Iterable[Path]) -> List[Optional[Tuple[int, int]]]:
    """(mtime, size) of each file, None when it is gone: a model rewritten in place (a `distill` or `train`
    run that went on, a new download) is not the one a process loaded before."""
    stamps: List[Optional[Tuple[int, int]]] = []
    for path in paths:
        try:
            stat = Path(path).stat()
            stamps.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append(None)
    return stamps
