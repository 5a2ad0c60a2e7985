"""Model store: manifest, lookup, downloads (local server only), CLI glue."""
from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import re
import threading
from pathlib import Path

import pytest

from toon_ofx.core import model_commands, model_store as ms
from toon_ofx.core.errors import UserError

PAYLOAD = b"toon-ofx test weights\n" * 500
SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ----------------------------------------------------------------------------- the real manifest

def test_manifest_parses_and_entries_are_complete():
    m = ms.load_manifest()
    assert len(m["models"]) >= 8
    for name, e in m["models"].items():
        for key in ms.REQUIRED:
            assert key in e, f"{name} lacks {key}"
        assert e["format"] in ms.FORMATS, name
        assert e["kind"] in ms.KINDS, name
        assert e["title"] and e["file"] and e["licence"] and e["notes"], name
        assert isinstance(e["urls"], list) and (e["urls"] or e["page"]), f"{name}: no way to get it"
        for url in e["urls"]:
            assert url.startswith("https://"), (name, url)
        assert e["sha256"] == "" or re.fullmatch(r"[0-9a-f]{64}", e["sha256"]), name
        if e["sha256"] and e["sha256_prefix"]:
            assert e["sha256"].startswith(e["sha256_prefix"]), name
        if e["sha256_prefix"]:  # torch.hub convention: the prefix is in the upstream file name
            assert f"-{e['sha256_prefix']}" in e["file"], name
        if e["kind"] in ("base", "toon", "blended"):
            assert e["resolution"] in (256, 512, 1024), name
            assert e["format"] in ("rosinality-pt", "nvidia-pkl", "nvidia-tf-pkl"), name
            assert "Nvidia Source Code License-NC" in e["licence"], name
        if e["format"] in ("nvidia-pkl", "nvidia-tf-pkl"):  # engine.generator.checkpoints loads both as downloaded
            assert e["file"].endswith(".pkl") and not e.get("download_file") and not e.get("convert"), name
        if e["kind"] == "blended":
            assert e.get("swap_res"), name
    for group, members in m["groups"].items():
        assert members and all(x in m["models"] for x in members), group


def test_manifest_names_used_elsewhere_exist():
    m = ms.load_manifest()
    # params defaults, render.py and engine.faces.landmarks' pull hint
    for name in ("toonify", "ffhq-1024", "ffhq-512", "vgg16", "lpips-vgg", "s3fd", "fan-2d"):
        assert name in m["models"]
    assert set(m["groups"]["face-alignment"]) == {"s3fd", "fan-2d"}
    assert ms.is_blended("toonify", m) and not ms.is_blended("ffhq-1024", m)
    assert not ms.is_blended("/some/file.pt", m)
    assert m["models"]["vgg16"]["sha256"].startswith("397923af")


# ----------------------------------------------------------------------------- isolated store

@pytest.fixture
def store(tmp_path, monkeypatch):
    """An isolated store: temp manifest, models folder, cache and torch hub."""
    for var, sub in (("TOON_OFX_MODELS", "models"), ("TOON_OFX_CACHE_DIR", "cache"), ("TORCH_HOME", "torch")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    served = tmp_path / "served"
    served.mkdir()
    (served / "good.bin").write_bytes(PAYLOAD)
    (served / "page.html").write_text("<html><body>sign in</body></html>")
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(f'''
[groups]
pair = ["good", "prefix"]

[models.good]
title = "good"
kind = "base"
file = "good.pt"
format = "rosinality-pt"
resolution = 256
urls = ["{base}/good.bin"]
sha256 = "{SHA}"
size = {len(PAYLOAD)}
licence = "test"
notes = "served locally"

[models.prefix]
title = "prefix check only"
kind = "perceptual"
file = "prefix-{SHA[:8]}.pth"
format = "torchvision"
urls = ["{base}/good.bin"]
sha256 = ""
sha256_prefix = "{SHA[:8]}"
licence = "test"
notes = ""

[models.bad]
title = "wrong checksum"
kind = "base"
file = "bad.pt"
format = "rosinality-pt"
resolution = 256
urls = ["{base}/good.bin"]
sha256 = "{'0' * 64}"
licence = "test"
notes = ""

[models.offline]
title = "unreachable"
kind = "base"
file = "offline.pt"
format = "rosinality-pt"
resolution = 256
urls = ["http://127.0.0.1:9/offline.pt"]
sha256 = ""
licence = "test"
notes = ""

[models.fallback]
title = "first mirror down"
kind = "base"
file = "fallback.pt"
format = "rosinality-pt"
resolution = 256
urls = ["http://127.0.0.1:9/fallback.pt", "{base}/good.bin"]
sha256 = "{SHA}"
licence = "test"
notes = ""

[models.local]
title = "file url"
kind = "toon"
file = "local.pt"
format = "rosinality-pt"
resolution = 256
urls = ["{(served / 'good.bin').as_uri()}"]
sha256 = "{SHA}"
licence = "test"
notes = ""

[models.webpage]
title = "html instead of weights"
kind = "base"
file = "webpage.pt"
format = "rosinality-pt"
resolution = 256
urls = ["{base}/page.html"]
page = "https://example.invalid/page"
sha256 = ""
licence = "test"
notes = ""

[models.manual]
title = "manual only"
kind = "blended"
file = "manual.pt"
format = "rosinality-pt"
resolution = 256
swap_res = 32
urls = []
page = "https://example.invalid/manual"
sha256 = ""
licence = "test"
notes = ""

[models.conv]
title = "needs conversion"
kind = "blended"
file = "conv.pt"
download_file = "conv.zip"
convert = "unzip conv.zip"
format = "rosinality-pt"
resolution = 256
swap_res = 64
urls = ["{base}/good.bin"]
sha256 = "{SHA}"
licence = "test"
notes = ""

[models.withcodes]
title = "a model that needs a file beside it"
kind = "vtoonify"
file = "withcodes.pt"
requires = ["codes"]
format = "vtoonify-pt"
urls = ["{base}/good.bin"]
sha256 = "{SHA}"
licence = "test"
notes = ""

[models.codes]
title = "the file beside it"
kind = "exstyles"
file = "withcodes_exstyle_code.npy"
also_found_as = ["withcodes/exstyle_code.npy"]
format = "exstyle-npy"
urls = ["{base}/good.bin"]
sha256 = "{SHA}"
licence = "test"
notes = ""

[models.packaged]
title = "shipped in a package"
kind = "perceptual"
file = "packaged.pth"
package_file = "toon_ofx:core/errors.py"
format = "lpips"
urls = ["{base}/good.bin"]
sha256 = ""
licence = "test"
notes = ""
''')
    monkeypatch.setenv("TOON_OFX_MANIFEST", str(manifest))
    yield tmp_path
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _no_temp_files(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or "partial" in p.name] if folder.exists() else []


def test_dirs(store):
    assert ms.models_dir() == store / "models"
    assert ms.search_dirs() == [store / "models", store / "cache" / "models", store / "torch" / "hub" / "checkpoints"]


def test_resolve_path_and_names(store):
    ckpt = store / "elsewhere" / "mine.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    assert ms.resolve(ckpt) == ckpt
    assert ms.resolve(str(ckpt)) == ckpt
    (store / "models").mkdir()
    (store / "models" / "good.pt").write_bytes(PAYLOAD)
    assert ms.resolve("good") == store / "models" / "good.pt"
    # also found in the cache folder and the torch hub cache
    hub = store / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / f"prefix-{SHA[:8]}.pth").write_bytes(PAYLOAD)
    assert ms.resolve("prefix") == hub / f"prefix-{SHA[:8]}.pth"
    assert ms.resolve("packaged").name == "errors.py"  # copy inside an installed package


def test_resolve_missing_says_what_to_do(store):
    with pytest.raises(UserError) as err:
        ms.resolve("good")
    msg = err.value.message
    assert "good.pt" in msg and str(store / "models") in msg
    assert "toon-ofx models pull good" in msg and "/good.bin" in msg
    assert err.value.field == "model"
    with pytest.raises(UserError, match="https://example.invalid/manual"):
        ms.resolve("manual")
    with pytest.raises(UserError, match="convert"):
        ms.resolve("conv")
    (store / "models").mkdir()
    (store / "models" / "conv.zip").write_bytes(b"zipped")
    with pytest.raises(UserError, match="must be converted"):
        ms.resolve("conv")


def test_resolve_unknown_lists_names(store):
    with pytest.raises(UserError) as err:
        ms.resolve("nonesuch")
    assert "good" in err.value.message and "offline" in err.value.message and "pair" in err.value.message
    with pytest.raises(UserError, match="does not exist"):
        ms.resolve(str(store / "missing.pt"))
    with pytest.raises(UserError, match="does not exist"):
        ms.resolve("missing.pkl")
    with pytest.raises(UserError, match="group"):
        ms.resolve("pair")


def test_pull_verifies_and_installs(store):
    path = ms.pull("good", progress=False)
    assert path == store / "models" / "good.pt"
    assert path.read_bytes() == PAYLOAD
    assert ms.resolve("good") == path
    assert _no_temp_files(store / "models") == []
    mtime = path.stat().st_mtime_ns
    assert ms.pull("good", progress=False) == path and path.stat().st_mtime_ns == mtime  # not again
    assert ms.pull("prefix", progress=True).read_bytes() == PAYLOAD  # prefix check, with a progress bar
    assert ms.pull("local", progress=False).read_bytes() == PAYLOAD  # file:// URL
    assert ms.pull("fallback", progress=False).read_bytes() == PAYLOAD  # second mirror
    assert ms.pull("conv", progress=False).name == "conv.zip"  # the download to convert


def test_pull_group(store):
    ms.pull("pair", progress=False)
    rows = {r["name"]: r for r in ms.list_models()}
    assert rows["good"]["installed"] and rows["prefix"]["installed"]
    assert not rows["bad"]["installed"] and rows["bad"]["path"] is None


def test_pull_checksum_mismatch_leaves_nothing(store):
    with pytest.raises(UserError) as err:
        ms.pull("bad", progress=False)
    msg = err.value.message
    assert "checksum mismatch" in msg and "bad.pt" in msg and SHA in msg
    assert not (store / "models" / "bad.pt").exists()
    assert _no_temp_files(store / "models") == []


def test_pull_offline_is_clear(store):
    with pytest.raises(UserError) as err:
        ms.pull("offline", progress=False)
    msg = err.value.message
    assert "offline.pt" in msg and str(store / "models") in msg and "offline" in msg
    assert "http://127.0.0.1:9/offline.pt" in msg
    assert _no_temp_files(store / "models") == []


def test_pull_refuses_web_page_and_manual(store):
    with pytest.raises(UserError, match="web page"):
        ms.pull("webpage", progress=False)
    assert not (store / "models" / "webpage.pt").exists()
    with pytest.raises(UserError, match="cannot be downloaded automatically"):
        ms.pull("manual", progress=False)
    with pytest.raises(UserError, match="unknown model"):
        ms.pull("nonesuch", progress=False)


def test_pull_falls_back_to_cache_when_models_folder_read_only(store, monkeypatch):
    ro = store / "readonly"
    ro.mkdir()
    monkeypatch.setenv("TOON_OFX_MODELS", str(ro))
    monkeypatch.setattr(ms.os, "access", lambda p, mode: Path(p) != ro)
    path = ms.pull("good", progress=False)
    assert path == store / "cache" / "models" / "good.pt"


def test_cli(store, capsys):
    parser = argparse.ArgumentParser(prog="toon-ofx")
    sub = parser.add_subparsers(dest="command", required=True)
    model_commands.add_models_parser(sub)

    def run(*argv):
        args = parser.parse_args(list(argv))
        return args.run(args)

    assert run("models", "list") == 0
    out = capsys.readouterr().out
    assert re.search(r"^good\s+missing", out, re.M) and re.search(r"^conv\s+missing \(convert\)", out, re.M)
    assert run("models", "pull", "good", "--no-progress") == 0
    assert capsys.readouterr().out.strip() == str(store / "models" / "good.pt")
    assert run("models", "path", "good") == 0
    assert capsys.readouterr().out.strip() == str(store / "models" / "good.pt")
    assert run("models", "list", "--json") == 0
    assert '"installed": true' in capsys.readouterr().out
    with pytest.raises(UserError):
        run("models", "path", "offline")
    assert run("models", "dir") == 0
    assert str(store / "models") in capsys.readouterr().out


# ----------------------------------------------------------------------------- TensorFlow pickles load directly

def test_toonify_tf_pickle_is_the_model_file(tmp_path, monkeypatch):
    """The real manifest's Toonify entries: the downloaded TensorFlow .pkl is what resolves and loads."""
    torch = pytest.importorskip("torch")
    from engine.generator.checkpoints import inspect_checkpoint, load_generator
    from tiny_models import save_tf_pkl, tiny_generator

    for var, sub in (("TOON_OFX_MODELS", "models"), ("TOON_OFX_CACHE_DIR", "cache"), ("TORCH_HOME", "torch")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("TOON_OFX_MANIFEST", raising=False)
    m = ms.load_manifest()
    for name in ("toonify", "toon-cartoon"):
        e = m["models"][name]
        assert e["format"] == "nvidia-tf-pkl" and e["file"].endswith(".pkl") and not e.get("download_file")
        with pytest.raises(UserError) as err:
            ms.resolve(name, m)
        assert "convert" not in err.value.message and e["file"] in err.value.message
        assert f"toon-ofx models pull {name}" in err.value.message
    rows = {r["name"]: r for r in ms.list_models(m)}
    assert not rows["toonify"]["needs_conversion"] and not rows["toon-cartoon"]["needs_conversion"]

    folder = tmp_path / "models"
    folder.mkdir()
    g = tiny_generator(size=32)
    pkl = save_tf_pkl(folder / m["models"]["toonify"]["file"], g)  # what `pull` saves
    assert ms.resolve("toonify", m) == pkl
    assert ms.is_blended("toonify", m)
    assert inspect_checkpoint(pkl).format == "nvidia-tf"
    assert torch.equal(load_generator(ms.resolve("toonify", m)).input.input, g.input.input)
    # a .pt converted earlier with convert_weight.py is still found
    legacy = folder / "FFHQ-Cartoons.pt"
    legacy.write_bytes(b"converted earlier")
    assert ms.resolve("toon-cartoon", m) == legacy


def test_manifest_encoders():
    """Issue 12: the public face encoders, listable by kind, each for the base model or a one-pass toon."""
    m = ms.load_manifest()
    enc = {n: e for n, e in m["models"].items() if e["kind"] == "encoder"}
    assert {e["file"] for e in enc.values()} == {"psp_ffhq_encode.pt", "psp_ffhq_toonify.pt", "e4e_ffhq_encode.pt",
                                                 "restyle_psp_ffhq_encode.pt", "restyle_e4e_ffhq_encode.pt"}
    for name, e in enc.items():
        assert e["format"] == "psp-pt" and e["resolution"] == 1024 and e["urls"], name
        assert "MIT" in e["licence"] and "non-commercial" in e["licence"], name
        assert (e.get("encodes_into") in m["models"]) != bool(e.get("one_pass_toon")), name
    assert enc["psp-toonify"]["one_pass_toon"] is True
    assert set(m["groups"]["encoders"]) == set(enc)


def test_manifest_vtoonify(tmp_path):
    """Issue 20: VToonify-T/-D, their style codes, the Z+ style encoder, the parser, the training directions."""
    from engine.vtoonify import find_exstyles

    m = ms.load_manifest()
    vt = {n: e for n, e in m["models"].items() if e["kind"] == "vtoonify"}
    styles = ("cartoon", "caricature", "arcane", "comic", "pixar")
    assert {n for n, e in vt.items() if e["backbone"] == "toonify"} == {f"vtoonify-t-{s}" for s in styles}
    assert {n for n, e in vt.items() if e["backbone"] == "dualstylegan"} == set(m["groups"]["vtoonify-d"])
    assert len({e["file"] for e in vt.values()}) == len(vt)   # the public files share names; ours may not
    for name, e in vt.items():
        assert e["format"] == "vtoonify-pt" and e["resolution"] == 1024, name
        assert "S-Lab License 1.0" in e["licence"] and "non-commercial" in e["licence"], name
        assert {"vtoonify-style-encoder", "face-parsing"} <= set(e["requires"]), name
        assert all(r in m["models"] for r in e["requires"]), name
        if e["backbone"] == "toonify":   # Google Drive folders only
            assert not e["urls"] and e["page"].startswith("https://drive.google.com/drive/folders/"), name
            assert e["also_found_as"] == [f"{name.replace('-', '_')}/vtoonify.pt"], name
            continue
        codes = [m["models"][r] for r in e["requires"] if m["models"][r]["kind"] == "exstyles"]
        assert len(codes) == 1 and codes[0]["format"] == "exstyle-npy", name
        for entry in (e, codes[0]):   # Hugging Face publishes the LFS hash and size of each file
            assert entry["urls"][0].startswith("https://huggingface.co/PKUWilliamYang/VToonify/resolve/main/")
            assert entry["sha256"] and entry["size"] > 0, entry["name"]
        # the engine finds the codes beside the model under the manifest's names and the reference layout
        for model_file, codes_file in ((e["file"], codes[0]["file"]),
                                       (e["also_found_as"][0], codes[0]["also_found_as"][0])):
            folder = tmp_path / name / str(len(model_file))
            for f in (model_file, codes_file):
                (folder / f).parent.mkdir(parents=True, exist_ok=True)
                (folder / f).write_bytes(b"x")
            assert find_exstyles(folder / model_file) == folder / codes_file, name
    assert m["models"]["vtoonify-style-encoder"]["kind"] == "style-encoder"   # not a W+ inversion encoder
    assert m["models"]["face-parsing"]["format"] == "bisenet-pth"
    assert m["models"]["lowrankgan-directions"]["format"] == "npy"
    assert "stylegan2-ffhq-config-f.pt" in m["models"]["ffhq-1024"]["also_found_as"]   # distill's base
    assert set(m["groups"]["vtoonify-support"]) == {"vtoonify-style-encoder", "face-parsing"}


def test_requires_are_pulled_found_and_required_together(store):
    assert ms.expand(["withcodes"], ms.load_manifest()) == ["codes", "withcodes"]
    path = ms.pull("withcodes", progress=False)
    assert path == store / "models" / "withcodes.pt" and (store / "models" / "withcodes_exstyle_code.npy").exists()
    (store / "models" / "withcodes_exstyle_code.npy").unlink()
    with pytest.raises(UserError) as err:
        ms.require({"toon": "withcodes"}, download=False)     # the first-run list names the companion
    assert err.value.message.startswith("1 model file is missing")
    assert "withcodes_exstyle_code.npy (model codes" in err.value.message
    paths = ms.require({"toon": "withcodes"}, progress=False)
    assert paths == {"toon": path, "codes": store / "models" / "withcodes_exstyle_code.npy"}
    (store / "models" / "withcodes_exstyle_code.npy").unlink()
    nested = store / "models" / "withcodes" / "exstyle_code.npy"   # the reference's folder layout
    nested.parent.mkdir()
    nested.write_bytes(PAYLOAD)
    assert ms.resolve("codes") == nested


# ----------------------------------------------------------------------------- first run: everything at once

def test_require_downloads_what_it_can_and_names_every_missing_file_at_once(store):
    paths = ms.require({"base": "good", "toon": "local"}, progress=False)   # both downloaded
    assert paths == {"base": store / "models" / "good.pt", "toon": store / "models" / "local.pt"}
    with pytest.raises(UserError) as err:
        ms.require({"base": "good", "toon": "manual", "vgg16": "offline", "lpips": "conv"}, progress=False)
    msg = err.value.message
    lines = msg.splitlines()
    assert lines[0].startswith("3 model files are missing (this machine looks offline)")
    # one line per missing file: file, model, size, licence, where from; then the folder and the command
    assert any(line.startswith("  - manual.pt (model manual, size not published, licence: test) from "
                               "https://example.invalid/manual") for line in lines)
    assert any("offline.pt (model offline" in line and "http://127.0.0.1:9/offline.pt" in line for line in lines)
    assert any("conv.pt (model conv" in line for line in lines) and "convert it once: unzip conv.zip" in msg
    assert str(store / "models") in lines[-1] and "toon-ofx models pull offline conv" in lines[-1]
    assert err.value.field == "model"                       # the toon model is among the missing


def test_require_stops_downloading_once_offline(store, monkeypatch):
    tried = []
    real = ms._download

    def download(url, target, e, progress):
        tried.append(e["name"])
        return real(url, target, e, progress)

    monkeypatch.setattr(ms, "_download", download)
    with pytest.raises(UserError) as err:
        ms.require({"a": "offline", "b": "fallback", "c": "prefix"}, progress=False)
    assert tried == ["offline"]                             # the others would wait for the same timeout
    assert err.value.message.startswith("3 model files are missing") and err.value.field is None
    assert ms.require({"a": "prefix"}, download=True, progress=False)["a"].exists()   # online again: fine


def test_require_reports_bad_names_and_paths_as_the_parameter_at_fault(store, tmp_path):
    with pytest.raises(UserError, match="unknown model 'nope'") as err:
        ms.require({"base": "good", "toon": "nope"}, download=False)
    assert err.value.field == "model"
    with pytest.raises(UserError, match="does not exist") as err:
        ms.require({"base": str(tmp_path / "none.pt")}, download=False)
    assert err.value.field == "base_model"
    with pytest.raises(UserError, match="1 model file is missing") as err:
        ms.require({"base": "good"}, download=False)     # download=False: named, not fetched
    assert err.value.field == "base_model"
    assert f"good.pt (model good, {len(PAYLOAD) / 1024:.1f} KiB, licence: test)" in err.value.message


def test_required_models_follow_the_parameters():
    from toon_ofx.core.params import validate

    assert ms.required(validate({})) == {"base": "ffhq-1024", "toon": "toonify", "vgg16": "vgg16",
                                         "lpips": "lpips-vgg"}
    assert set(ms.required(validate({"landmarker": "face-alignment"}))) == {"base", "toon", "vgg16", "lpips",
                                                                              "fan", "s3fd"}
