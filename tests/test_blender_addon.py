"""The Blender Video Sequencer extension (blender_addon/), tested in a real Blender.

Blender here is the `bpy` module from PyPI (Python 3.11). It needs numpy<2,
which clashes with the engine's environment, so each Blender lives in its own
venv (scripts/setup_blender_env.sh), and the Blender tests run against every
one present (see BPY_VENVS):

* ``bpy-default``: <repo>/.venv-blender (else /tmp/venv-blender), bpy 5.0.1:
  every scenario;
* ``bpy-4.2``: <repo>/.venv-blender-4.2 (else /tmp/venv-blender-4.2), the 4.2
  LTS: install/enable, validator, panel properties, unbuilt checkout,
  placement, execute() against the engine and the error reports (the
  cancel/modal/engine-death scenarios exercise no strip API beyond these);
* ``bpy-env``: $TOON_OFX_BPY_PYTHON, when set: every scenario (point it at the
  4.2 venv to run the whole list there).

A venv that is absent skips its tests, saying how to create it. Each Blender
test runs tests/blender/run_scenario.py in that interpreter as a subprocess: it
installs the built extension zip with Blender's own "Install from Disk"
operator, builds a scene and drives the add-on; pytest asserts on the JSON it
writes.

The engine is always the real process, `python -m toon_ofx serve` (its HTTP
contract, job queue, media decoding and frame numbering). Most tests give it a
stand-in renderer (tests/blender/engine_stub.py) that writes every source frame
unchanged, so Blender's renderer can prove the result lines up frame by frame;
one test renders with tiny StyleGAN2 models (conftest.py's tiny_model_paths).
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import pytest

REPO = Path(__file__).resolve().parents[1]
ADDON = REPO / "blender_addon"
SCENARIO = REPO / "tests" / "blender" / "run_scenario.py"
from conftest import FIXTURES  # noqa: E402  ($TOON_OFX_FIXTURES or ../shared/fixtures)

SHARED_CLIP = FIXTURES / "single_face.mp4"
SHARED_IMAGE = FIXTURES / "astronaut.png"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


timeline = _load("toon_addon_timeline", ADDON / "timeline.py")
build_script = _load("build_blender_addon", REPO / "scripts" / "build_blender_addon.py")
png = _load("toon_test_png", REPO / "tests" / "blender" / "png.py")


# ----------------------------------------------------------------------------- helpers and fixtures

@dataclass(frozen=True)
class BpyVenv:
    """One Blender (a bpy venv) the Blender tests run in."""
    label: str                 # the test id
    python: Optional[str]      # its interpreter; None when absent
    full: bool                 # runs every scenario (else the 4.2 subset, see the module docstring)
    series: Optional[str]      # the Blender series it must hold ("4.2"), checked on every run
    create: str                # how to make it (the skip reason when absent)

    def skip_if_absent(self) -> "BpyVenv":
        if self.python is None:
            pytest.skip(f"no {self.label} venv: {self.create}")
        return self


def _first_python(*venvs) -> Optional[str]:
    for venv in venvs:
        python = Path(venv) / "bin" / "python"
        if python.is_file():
            return str(python)
    return None


def _venv_key(python: str) -> str:
    """The same venv, however it is spelled (its bin/python is a symlink to the base Python)."""
    return str(Path(python).absolute().parent.resolve())


def bpy_venvs() -> list:
    """The bpy venvs to test against: the default, the 4.2 LTS, and $TOON_OFX_BPY_PYTHON when set.

    When $TOON_OFX_BPY_PYTHON names one of the other two, that one runs every scenario instead of
    appearing twice.
    """
    venvs = [
        BpyVenv("bpy-default", _first_python(REPO / ".venv-blender", "/tmp/venv-blender"), True, None,
                "create it with: bash scripts/setup_blender_env.sh .venv-blender"),
        BpyVenv("bpy-4.2", _first_python(REPO / ".venv-blender-4.2", "/tmp/venv-blender-4.2"), False, "4.2",
                "create it with: bash scripts/setup_blender_env.sh .venv-blender-4.2 4.2.x"),
    ]
    env = os.environ.get("TOON_OFX_BPY_PYTHON")
    if env:
        if not Path(env).is_file():
            venvs.append(BpyVenv("bpy-env", None, True, None, f"TOON_OFX_BPY_PYTHON={env} does not exist"))
        else:
            same = [i for i, v in enumerate(venvs) if v.python and _venv_key(v.python) == _venv_key(env)]
            if same:
                venvs[same[0]] = replace(venvs[same[0]], full=True)
            else:
                venvs.append(BpyVenv("bpy-env", env, True, None, ""))
    return venvs


BPY_VENVS = bpy_venvs()


@pytest.fixture(scope="session", params=[pytest.param(v, id=v.label) for v in BPY_VENVS])
def bpy_venv(request) -> BpyVenv:
    """Every bpy venv (the tests that must pass on the 4.2 LTS too)."""
    return request.param.skip_if_absent()


@pytest.fixture(scope="session", params=[pytest.param(v, id=v.label) for v in BPY_VENVS if v.full])
def bpy_venv_full(request) -> BpyVenv:
    """The bpy venvs that run every scenario."""
    return request.param.skip_if_absent()


@pytest.fixture(scope="session")
def addon_zip(tmp_path_factory) -> Path:
    return build_script.build(tmp_path_factory.mktemp("addon") / "toon_ofx.zip")


@pytest.fixture(scope="session")
def clip(tmp_path_factory) -> Path:
    """The shared face clip (72 frames at 30 fps), else a synthetic 72-frame clip made with ffmpeg."""
    if SHARED_CLIP.is_file():
        return SHARED_CLIP
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip(f"{SHARED_CLIP} is missing and ffmpeg is not installed to make a clip")
    out = tmp_path_factory.mktemp("clip") / "synthetic.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x90:rate=30:duration=2.4",
                    "-pix_fmt", "yuv420p", str(out)], check=True)
    return out


def grey_movies_at(folder: Path, frames: int, rates: dict) -> dict:
    """Movies whose frame n is a flat 64x36 grey of level 3n (a render tells which frame shows), lossless H.264.

    `rates` maps a label to ffmpeg's spelling of the frame rate; returns label -> path.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed (needed to make the grey-coded test movies)")
    for n in range(frames):
        (folder / f"g{n:03d}.png").write_bytes(png.png_bytes(64, 36, (3 * n,) * 3))
    movies = {}
    for label, rate in rates.items():
        movies[label] = folder / f"grey{label}.mp4"
        subprocess.run([ffmpeg, "-v", "error", "-framerate", rate, "-i", str(folder / "g%03d.png"), "-c:v", "libx264",
                        "-qp", "0", "-pix_fmt", "yuv444p", str(movies[label])], check=True)
    return movies


@pytest.fixture(scope="session")
def grey_clip(tmp_path_factory) -> Path:
    """72 frames at 30 fps: grey30.mp4."""
    return grey_movies_at(tmp_path_factory.mktemp("grey"), 72, {"30": "30"})["30"]


#: Frame rates of the grey-coded movies (ffmpeg's spelling) and the scenes they play in (fps, fps_base).
RATES = {"23.976": ("24000/1001", 24, 1.001), "24": ("24", 24, 1.0), "25": ("25", 25, 1.0),
         "29.97": ("30000/1001", 30, 1.001), "30": ("30", 30, 1.0), "50": ("50", 50, 1.0), "60": ("60", 60, 1.0)}


@pytest.fixture(scope="session")
def grey_movies(tmp_path_factory) -> dict:
    """48-frame grey-coded movies at every rate in RATES."""
    return grey_movies_at(tmp_path_factory.mktemp("grey_rates"), 48, {k: v[0] for k, v in RATES.items()})


@pytest.fixture(scope="session")
def grey_sequence(tmp_path_factory) -> Path:
    """shot.0001.png .. shot.0020.png; shot.N is grey level 3(N-1), its source frame in the engine's numbering."""
    folder = tmp_path_factory.mktemp("greyseq")
    for n in range(1, 21):
        (folder / f"shot.{n:04d}.png").write_bytes(png.png_bytes(64, 36, (3 * (n - 1),) * 3))
    return folder


def start_engine_process(tmp_path: Path, *extra: str, env_extra=None) -> tuple:
    """`python -m toon_ofx serve --port 0` as a real process; returns (process, config dir) once it is up."""
    config = tmp_path / "config"
    env = dict(os.environ, TOON_OFX_CONFIG_DIR=str(config), TOON_OFX_DATA_DIR=str(tmp_path / "engine_data"),
               PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "blender"), str(REPO)]))
    env.update(env_extra or {})
    log = open(tmp_path / "engine.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "toon_ofx", "serve", "--port", "0", *extra], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
    log.close()
    deadline = time.monotonic() + 120
    while not (config / "server.json").is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"engine did not start: {(tmp_path / 'engine.log').read_text()[-3000:]}")
        time.sleep(0.1)
    return proc, config


def stop_process(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:  # pragma: no cover
        proc.kill()


@pytest.fixture
def engine(tmp_path):
    """The engine process with the identity stand-in renderer; yields its config dir."""
    proc, config = start_engine_process(tmp_path, "--render-fn", "engine_stub:identity_render")
    yield config
    stop_process(proc)


@pytest.fixture
def slow_engine(tmp_path):
    """The same, 0.1 s per frame, for progress and cancellation."""
    proc, config = start_engine_process(tmp_path, "--render-fn", "engine_stub:identity_render",
                                        env_extra={"TOON_STUB_DELAY": "0.1"})
    yield config
    stop_process(proc)


def engine_jobs(config: Path) -> list:
    sys.path.insert(0, str(REPO))
    from toon_ofx.client import EngineClient
    return EngineClient(config_dir=str(config)).jobs()


def run_blender(venv: BpyVenv, scenario: str, args: dict, tmp_path: Path, config_dir: Path,
                timeout: float = 300) -> dict:
    """Run one scenario in the bpy venv; returns its "data" (fails with Blender's output otherwise)."""
    result_path = tmp_path / f"{scenario}-result.json"
    env = dict(os.environ)
    env.update(BLENDER_USER_RESOURCES=str(tmp_path / "blender_user"), TOON_OFX_CONFIG_DIR=str(config_dir),
               TOON_OFX_DATA_DIR=str(tmp_path / "engine_data"), PYTHONNOUSERSITE="1",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    env.pop("TOON_OFX_PYTHON", None)
    t = time.perf_counter()
    proc = subprocess.run([venv.python, str(SCENARIO), scenario, json.dumps(args), str(result_path)],
                          env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - t
    output = f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    assert result_path.is_file(), f"Blender exited {proc.returncode} without a result\n{output}"
    result = json.loads(result_path.read_text())
    assert result["ok"], f"scenario {scenario} failed in Blender:\n{result.get('traceback')}\n{output}"
    if venv.series:
        assert result["blender"].startswith(venv.series + "."), f"{venv.python} is Blender {result['blender']}"
    result["data"]["_blender"] = result["blender"]
    result["data"]["_seconds"] = seconds
    result["data"]["_stdout"] = proc.stdout
    return result["data"]


def shown_files(strip: dict) -> dict:
    return {int(t): name for t, name in strip["shown"].items()}


# ----------------------------------------------------------------------------- no Blender needed

def test_timeline_trim_hold_offset_and_reverse():
    # movie strip: content starts at frame 10, 3 source frames cut (hold offset), 5 trimmed left, 10 right
    t = timeline.StripTiming(content_start=10, content_length=69, final_start=15, final_end=69, source_offset=3)
    assert t.visible_timeline_range() == (15, 68)
    assert t.visible_source_range() == (8, 61)
    assert t.source_frame_at(15) == 8 and t.source_frame_at(40) == 33
    assert t.shown_frames() == list(range(8, 62))
    r = timeline.StripTiming(10, 69, 15, 69, source_offset=3, reverse=True)
    assert r.source_frame_at(15) == 66 and r.source_frame_at(68) == 13
    assert r.visible_source_range() == (13, 66)
    assert r.shown_frames() == list(range(66, 12, -1))


def test_timeline_hold_frames_strobe_and_nothing_visible():
    hold = timeline.StripTiming(content_start=10, content_length=72, final_start=5, final_end=86)
    assert hold.visible_source_range() == (0, 71)
    assert hold.source_frame_at(5) == 0 and hold.source_frame_at(85) == 71
    still = timeline.StripTiming(content_start=1, content_length=1, final_start=1, final_end=25)
    assert still.visible_source_range() == (0, 0)
    strobe = timeline.StripTiming(content_start=1, content_length=10, final_start=1, final_end=11, strobe=3)
    assert strobe.shown_frames() == [0, 0, 0, 3, 3, 3, 6, 6, 6, 9]
    with pytest.raises(timeline.TimelineError):
        timeline.StripTiming(content_start=10, content_length=5, final_start=20, final_end=30).visible_source_range()


def test_timeline_playback_rate():
    """A 30 fps movie added with "Adjust Playback Rate" to a 24 fps scene: 72 frames span 57 timeline frames.

    The expected frames are what Blender 5.0.1 rendered for a grey-coded clip.
    """
    t = timeline.StripTiming(content_start=1, content_length=57, final_start=1, final_end=58,
                             rate=timeline.playback_rate(30, 24, 1.0), source_length=72)
    assert t.shown_frames()[:9] == [0, 1, 3, 4, 5, 6, 8, 9, 10]    # idx * 1.25, halves rounded up
    assert t.shown_frames()[-3:] == [68, 69, 70]
    r = timeline.StripTiming(1, 52, 1, 53, source_offset=7, reverse=True, rate=1.25, source_length=65)
    assert r.shown_frames()[:5] == [71, 70, 68, 67, 66] and r.shown_frames()[-2:] == [8, 7]


def test_timeline_slowed_movie_fresh_and_through_blenders_source_cache():
    """A 24 fps movie in a 30 fps scene, as Blender 4.2 (fresh) and 5.0 (raw cache on) rendered it.

    Single precision matters: 25 fps in a 30 fps scene puts frame index 2.4999999 on 2.5 (shown: 3).
    """
    rate = timeline.playback_rate(24, 30, 1.0)
    assert timeline.real_time_length(72, rate) == 90
    fresh = timeline.StripTiming(1, 90, 1, 91, rate=rate, source_length=72)
    cached = replace(fresh, cached_keys=True)
    assert fresh.shown_frames()[:10] == [0, 1, 2, 2, 3, 4, 5, 6, 6, 7]
    assert cached.shown_frames()[:10] == [0, 0, 2, 2, 3, 4, 4, 6, 6, 7]
    assert fresh.shown_frames()[-1] == cached.shown_frames()[-1] == 71
    # a trimmed start decodes the first frame of a key at the strip's first visible frame
    assert replace(cached, final_start=2).shown_frames()[:3] == [1, 2, 2]
    quarter = timeline.StripTiming(1, 86, 1, 87, rate=timeline.playback_rate(25, 30, 1.0), source_length=72)
    assert quarter.shown_frames()[:6] == [0, 1, 2, 3, 3, 4]
    assert replace(quarter, cached_keys=True).shown_frames()[:6] == [0, 0, 2, 3, 3, 4]


def test_first_free_channel():
    occupied = [(3, 0, 20), (4, 100, 120), (5, 10, 11)]
    assert timeline.first_free_channel(occupied, 2, 10, 50) == 4   # 3 overlaps, 4 is free over 10-49
    assert timeline.first_free_channel(occupied, 2, 20, 50) == 3   # end is exclusive
    assert timeline.first_free_channel([], 1, 0, 10) == 2
    with pytest.raises(timeline.TimelineError):
        timeline.first_free_channel([(c, 0, 10) for c in range(2, 129)], 1, 0, 10)


def test_image_sequence_source(tmp_path):
    for i in range(1, 21):
        (tmp_path / f"shot.{i:04d}.png").write_bytes(b"x")
    files = [f"shot.{i:04d}.png" for i in range(5, 15)]
    pattern, base = timeline.image_sequence_source(str(tmp_path), files)
    assert pattern == str(tmp_path / "shot.%04d.png") and base == 4   # the engine counts from shot.0001
    assert timeline.image_sequence_source(str(tmp_path), ["a.png"]) == (str(tmp_path / "a.png"), 0)
    with pytest.raises(timeline.TimelineError):
        timeline.image_sequence_source(str(tmp_path), ["shot.0001.png", "shot.0003.png"])
    with pytest.raises(timeline.TimelineError):
        timeline.image_sequence_source(str(tmp_path), ["shot.0001.png", "other.0002.png"])


def test_addon_imports_only_stdlib_and_bpy():
    allowed = set(sys.stdlib_module_names) | {"bpy"}
    for path in ADDON.rglob("*.py"):
        if "_vendor" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_strip_api_names_only_in_compat():
    """4.2's `sequences`/`Sequence` vs 5.0's `strips`/`Strip` (and `frame_duration`'s meaning) live in compat.py."""
    words = ("sequences_all", ".sequences", "selected_sequences", "strips_all", "selected_strips",
             "sequencer_scene", "types.Sequence", "types.Strip", "new_movie(", "new_image(", "strip.frame_duration")
    for path in ADDON.glob("*.py"):
        if path.name == "compat.py":
            continue
        text = path.read_text()
        for word in words:
            if word in text:
                # compat.new_image(...) / compat.sequencer_scene(...) calls are fine
                stripped = text.replace(f"compat.{word.lstrip('.')}", "")
                assert word not in stripped, f"{path.name} uses {word!r} outside compat.py"


def test_build_zip_layout(addon_zip):
    with zipfile.ZipFile(addon_zip) as zf:
        names = zf.namelist()
        manifest = zf.read("blender_manifest.toml").decode()
    assert names[0] == "blender_manifest.toml"
    for name in ("__init__.py", "compat.py", "jobs.py", "operators.py", "placement.py", "planning.py", "props.py",
                 "timeline.py", "toonify.py", "ui.py", "engine_link.py", "_vendor/__init__.py",
                 "_vendor/toon_ofx/__init__.py",
                 "_vendor/toon_ofx/client.py", "_vendor/toon_ofx/core/__init__.py",
                 "_vendor/toon_ofx/core/params.py", "_vendor/toon_ofx/core/errors.py",
                 "_vendor/toon_ofx/core/dirs.py"):
        assert name in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert 'id = "toon_ofx"' in manifest and 'blender_version_min = "4.2.0"' in manifest
    # same sources, same bytes
    again = build_script.build(addon_zip.with_name("again.zip"))
    assert again.read_bytes() == addon_zip.read_bytes()


def test_build_refuses_non_stdlib_vendored_module(tmp_path):
    fake = tmp_path / "toon_ofx"
    shutil.copytree(REPO / "toon_ofx", fake, ignore=shutil.ignore_patterns("__pycache__"))
    (fake / "client.py").write_text((fake / "client.py").read_text() + "\nimport numpy\n")
    with pytest.raises(build_script.BuildError, match="numpy"):
        build_script.build(tmp_path / "x.zip", fake)
    assert build_script.main(["-o", str(tmp_path / "y.zip"), "--toon-ofx-dir", str(fake)]) == 1
    assert not (tmp_path / "y.zip").exists()


# ----------------------------------------------------------------------------- in Blender

@pytest.mark.blender
def test_extension_zip_passes_blenders_validator(bpy_venv, addon_zip):
    validator = next(Path(bpy_venv.python).parents[1].glob("lib/python3*/site-packages/bpy/*/scripts/addons_core/"
                                                         "bl_pkg/cli/blender_ext.py"), None)
    if validator is None:
        pytest.skip("bpy's extension command-line tool not found")
    proc = subprocess.run([bpy_venv.python, str(validator), "validate", str(addon_zip)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.blender
def test_panel_properties_come_from_the_schema(bpy_venv, addon_zip, tmp_path):
    data = run_blender(bpy_venv, "schema", {"zip": str(addon_zip)}, tmp_path, tmp_path / "config")
    sys.path.insert(0, str(REPO))
    from toon_ofx.core import params
    props = data["props"]
    assert list(props) == [p.name for p in params.PARAMS]
    for p in params.PARAMS:
        prop = props[p.name]
        if p.choices is not None:
            assert prop["type"] == "ENUM" and prop["items"] == [str(c) for c in p.choices]
            assert prop["default"] == str(p.default)
        else:
            if p.type is float:
                assert prop["default"] == pytest.approx(p.default, rel=1e-6), p.name   # float32 in Blender
            else:
                assert prop["default"] == p.default, p.name
            assert prop["type"] == {bool: "BOOLEAN", int: "INT", float: "FLOAT", str: "STRING"}[p.type]
            if p.minimum is not None:
                assert prop["min"] == pytest.approx(p.minimum), p.name
            if p.maximum is not None:
                assert prop["max"] == pytest.approx(p.maximum), p.name
        assert prop["name"] == p.label
    assert data["values"] == params.defaults()      # the panel's values as the engine gets them
    assert data["panels"] == ["TOONOFX_PT_toonify", "TOONOFX_PT_advanced"]
    assert data["panel_category"] == "Toon" and data["space"] == "SEQUENCE_EDITOR"
    assert data["prefs_idname"] == "bl_ext.user_default.toon_ofx"
    assert set(data["operators"]) >= {"toonify", "cancel", "check_engine"}


@pytest.mark.blender
def test_unbuilt_checkout_and_disable(bpy_venv, addon_zip, tmp_path):
    repo_dir = tmp_path / "dev_repo"
    repo_dir.mkdir()
    (repo_dir / "toon_ofx").symlink_to(ADDON, target_is_directory=True)
    data = run_blender(bpy_venv, "checkout", {"zip": str(addon_zip), "repo_dir": str(repo_dir)}, tmp_path,
                       tmp_path / "cfg")
    assert data["source"] == "checkout" and data["client_file"] == str(REPO / "toon_ofx" / "client.py")
    assert data["vendored_source"] == "vendored"            # the installed zip uses its bundled copy
    assert data["registered"] and not data["after_disable"] and not data["after_disable_zip"]


@pytest.mark.blender
def test_placement_lines_up_with_the_source(bpy_venv, addon_zip, tmp_path, grey_clip, grey_sequence):
    """plan_strip + place_result: Blender's renderer shows result frame n wherever the source shows frame n."""
    cases = [
        {"label": "trim", "frame_start": 10, "frame_offset_start": 5, "frame_offset_end": 10,
         "animation_offset_start": 3, "offset_x": 12.5},
        {"label": "reverse", "frame_start": 10, "frame_offset_start": 5, "frame_offset_end": 10,
         "animation_offset_start": 3, "reverse": True},
        {"label": "hold", "frame_start": 10, "frame_offset_start": -5, "frame_offset_end": -4},
        {"label": "strobe", "frame_start": 1, "strobe": 3.0, "frame_offset_end": 40},
        {"label": "playback_rate", "ui_add": True, "frame_start": 10},
        {"label": "playback_rate_trim_reverse", "ui_add": True, "frame_start": 10, "animation_offset_start": 7,
         "frame_offset_start": 3, "frame_offset_end": 4, "reverse": True},
        {"label": "still", "image": str(grey_sequence / "shot.0001.png"), "channel": 1, "frame_start": 1,
         "frame_final_end": 25},
        {"label": "blockers", "channel": 2, "frame_start": 1, "blockers": [[3, 50, 10], [4, 200, 10], [5, 1, 3]],
         "output_kind": "overlay"},
        {"label": "sequence", "sequence": [str(grey_sequence / f"shot.{i:04d}.png") for i in range(5, 15)],
         "channel": 3, "frame_start": 100, "frame_offset_start": 2, "frame_offset_end": 1,
         "first_number": 1},           # results named like the source: engine frame 6 is res.0007
        {"label": "meta", "meta": True, "frame_start": 10, "frame_offset_start": 5},
    ]
    args = {"zip": str(addon_zip), "clip": str(grey_clip), "folder": str(tmp_path / "out"), "cases": cases, "fps": 24}
    data = run_blender(bpy_venv, "placement", args, tmp_path, tmp_path / "config")
    for case in cases:
        label = case["label"]
        got = data[label]
        assert got["source_before"] == got["source_after"], f"{label}: the source strip changed"
        new, src = got["new"], got["source_after"]
        assert new["type"] == "IMAGE"
        assert (new["frame_final_start"], new["frame_final_end"]) == (src["frame_final_start"], src["frame_final_end"])
        # the decisive check: what Blender renders, frame by frame
        assert got["rendered_result"] == got["rendered_source"], label
        if label != "still":
            assert len(set(got["rendered_source"])) > 1, label

    def check(label, plan, channel):
        assert data[label]["plan"] == plan, label
        assert data[label]["new"]["channel"] == channel, label

    # frame_start 10, 3 source frames cut: timeline 15 shows source 3 + (15 - 10) = 8
    check("trim", [8, 61], 3)
    assert data["trim"]["rendered_source"][:2] == [8, 9]
    assert data["trim"]["new"]["transform"][:1] == [12.5]            # placement copied
    check("reverse", [13, 66], 3)
    check("hold", [0, 71], 3)
    assert data["hold"]["rendered_source"][:6] == [0] * 6             # held first frame stays held
    assert data["playback_rate"]["rate"] == pytest.approx(1.25)
    assert data["playback_rate"]["new"]["frame_final_duration"] == 57
    check("playback_rate", [0, 70], 3)
    check("still", [0, 0], 2)
    assert data["still"]["new"]["frame_final_duration"] == 24
    check("blockers", [0, 71], 4)                                     # 3 is taken, 4 only later, 5 only before
    assert data["blockers"]["new"]["blend_type"] == "ALPHA_OVER"
    # shot.0005..0014 of a folder starting at shot.0001: source frames 4..13, trimmed by 2 and 1
    assert data["sequence"]["plan_source"] == str(grey_sequence / "shot.%04d.png")
    check("sequence", [6, 12], 4)
    assert data["sequence"]["new"]["files"][0] == "res.0007.png"   # shot.0007 shows first: its result
    check("meta", [5, 71], 3)
    assert data["meta"]["new"]["parent_meta"] == "meta"


#: (movie rate, scene rate): every rate of RATES as a movie slower and faster than its scene where the list
#: allows (23.976 is the slowest, 60 the fastest), with cadences that repeat within the 48-frame movies.
RATE_PAIRS = [("23.976", "29.97"), ("24", "30"), ("24", "60"), ("24", "23.976"), ("25", "50"), ("25", "30"),
              ("25", "24"), ("29.97", "60"), ("29.97", "23.976"), ("30", "24"), ("30", "25"), ("50", "60"),
              ("50", "25"), ("60", "24"), ("60", "25")]


@pytest.mark.blender
def test_playback_rate_lines_up_in_both_directions(bpy_venv, addon_zip, tmp_path, grey_movies):
    """Movies slower and faster than the scene, added the UI's way ("Adjust Playback Rate"): what Blender
    renders at each timeline frame from the result strip equals what it renders from the source.

    Blender 5.0 shows a slowed movie through its source image cache (see blender_addon/timeline.py): a 24 fps
    movie in a 30 fps scene shows 0, 0, 2, 2, 3 where 4.2 shows 0, 1, 2, 2, 3. The result follows either.
    """
    def case(label, movie, scene, **extra):
        _, fps, base = RATES[scene]
        return dict({"label": label, "clip": str(grey_movies[movie]), "ui_add": True, "frame_start": 5,
                     "fps": fps, "fps_base": base}, **extra)

    cases = [case(f"{m}->{s}", m, s) for m, s in RATE_PAIRS]
    cases += [case("slow_trim_reverse", "24", "30", animation_offset_start=5, frame_offset_start=3,
                   frame_offset_end=4, reverse=True),
              case("slow_strobe_hold", "25", "60", strobe=3.0, frame_offset_start=-4, frame_offset_end=-3),
              case("slow_no_raw_cache", "24", "30", cache_raw=False),
              case("slow_in_reversed_meta", "24", "30", meta=True, meta_reverse=True)]
    args = {"zip": str(addon_zip), "folder": str(tmp_path / "out"), "cases": cases}
    data = run_blender(bpy_venv, "placement", args, tmp_path, tmp_path / "config", timeout=600)
    reversed_meta = data.pop("slow_in_reversed_meta")
    if data["_blender"].startswith("4.2."):   # no cache: the result inside the meta is reversed with its source
        assert reversed_meta["rendered_result"] == reversed_meta["rendered_source"]
        assert reversed_meta["rendered_source"][0] == 47 and reversed_meta["rendered_source"][-1] == 0
    else:                                     # what shows depends on the playback order: refused, by name
        assert "inside meta strip 'meta', which reverses, strobes or retimes it" in reversed_meta["error"]
    for c in cases[:-1]:
        got = data[c["label"]]
        assert got["rendered_result"] == got["rendered_source"], c["label"]
        assert got["plan"] == [min(got["rendered_source"]), max(got["rendered_source"])], c["label"]
        assert got["source_before"] == got["source_after"], c["label"]
    assert data["24->30"]["rate"] == pytest.approx(0.8)
    fresh = [0, 1, 2, 2, 3, 4, 5, 6]                         # round(0.8 k)
    cached = [0, 0, 2, 2, 3, 4, 4, 6]                        # 4.5+: the frame first decoded for trunc(0.8 k)
    expected = fresh if data["_blender"].startswith("4.2.") else cached
    assert data["24->30"]["rendered_source"][:8] == expected
    assert data["slow_no_raw_cache"]["rendered_source"][:8] == fresh
    assert data["30->24"]["rendered_source"][:7] == [0, 1, 3, 4, 5, 6, 8]   # round(1.25 k), no cache effect


@pytest.mark.blender
def test_toonify_operator_with_the_engine_process(bpy_venv, addon_zip, tmp_path, grey_clip, engine):
    """The operator's execute() against `toon-ofx serve`: a trimmed 30 fps movie in a 24 fps scene, added
    the way the UI does (real-time playback rate), channel 3 taken, overlay output. The stand-in renderer
    copies source frames, so the timeline must render the same with and without the new strip."""
    args = {"zip": str(addon_zip), "clip": str(grey_clip), "output_folder": str(tmp_path / "renders"),
            "ui_add": True, "frame_start": 10, "frame_offset_start": 5, "frame_offset_end": 10,
            "blockers": [[3, 1, 20]], "render": True,
            "params": {"steps": 3, "warm_steps": 1, "swap_res": 32, "output_kind": "overlay", "device": "cpu"}}
    data = run_blender(bpy_venv, "toonify", args, tmp_path, engine)
    assert data["op"]["error"] is None and data["op"]["result"] == ["FINISHED"], \
        (data["op"], (tmp_path / "engine.log").read_text()[-3000:])
    assert data["before"][data["source"]] == data["after"][data["source"]]   # original untouched
    (name,) = data["new"]
    new, src = data["after"][name], data["after"][data["source"]]
    assert src["content_length"] == 57                     # 72 frames at 30 fps, in real time at 24 fps
    assert (new["channel"], new["frame_final_start"], new["frame_final_duration"]) == (4, 15, 42)
    assert new["blend_type"] == "ALPHA_OVER"
    # timeline frame 15 shows movie frame round((15 - 10) * 30 / 24) = 6
    assert new["files"][0] == "grey30_toon.000006.png" and len(new["files"]) == 42
    assert Path(new["directory"], new["files"][0]).is_file()
    assert Path(new["directory"]).parent == tmp_path / "renders"
    assert data["rendered_result"] == data["rendered_source"]
    (job,) = engine_jobs(engine)                           # what the engine was asked for
    assert job["frames"] == [6, 58] and job["source"] == str(grey_clip) and job["state"] == "done"
    assert (job["params"]["steps"], job["params"]["warm_steps"], job["params"]["swap_res"]) == (3, 1, 32)
    assert job["params"]["output_kind"] == "overlay"


def _rendered_pairs(folder: Path, frames) -> list:
    """(source render, result render) images per timeline frame, as the scenario saved them."""
    import cv2
    return [(cv2.imread(str(folder / f"s{t}.png")).astype(float), cv2.imread(str(folder / f"r{t}.png")).astype(float))
            for t in frames]


@pytest.fixture(scope="session")
def tears_of_steel_50(tmp_path_factory) -> Path:
    """The Tears of Steel clip with every frame kept but stamped at 50 fps (real footage faster than a scene)."""
    source = FIXTURES / "tears_of_steel_clip.mp4"
    if not source.is_file() or shutil.which("ffmpeg") is None:
        pytest.skip(f"{source} or ffmpeg is missing")
    out = tmp_path_factory.mktemp("tos50") / "tos50.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(source), "-vf", "setpts=N/(50*TB),scale=320:180", "-r", "50",
                    "-an", "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(out)], check=True)
    return out


@pytest.mark.parametrize("footage, scene_fps", [("tears_of_steel_clip.mp4", 30), ("tos50", 30)])
@pytest.mark.blender
def test_real_footage_at_another_frame_rate(bpy_venv, addon_zip, tmp_path, engine, request, footage, scene_fps):
    """Real footage through the engine process: Tears of Steel (24 fps) slowed into a 30 fps scene, and the
    same frames stamped at 50 fps sped into it, trimmed, over many cadence periods. At every timeline frame
    the result strip renders the source's picture (up to the two decoders' colour conversion, MSE below 6
    here), not a neighbouring frame's: the footage moves enough for that to show (checked below)."""
    clip = request.getfixturevalue("tears_of_steel_50") if footage == "tos50" else FIXTURES / footage
    if not clip.is_file():
        pytest.skip(f"{clip} is missing")
    args = {"zip": str(addon_zip), "clip": str(clip), "output_folder": str(tmp_path / "renders"), "ui_add": True,
            "fps": scene_fps, "frame_start": 1, "frame_offset_start": 7, "frame_offset_end": 20, "render": True,
            "params": {"output_kind": "frame", "device": "cpu"}}
    data = run_blender(bpy_venv, "toonify", args, tmp_path, engine)
    assert data["op"]["result"] == ["FINISHED"], data["op"]
    src = data["after"][data["source"]]
    pairs = _rendered_pairs(tmp_path / "renders" / "_render", range(src["frame_final_start"], src["frame_final_end"]))
    same = [float(((s - r) ** 2).mean()) for s, r in pairs]
    assert max(same) < 6.0, [round(x, 1) for x in same]
    moved = [float(((pairs[i][0] - pairs[i + 1][0]) ** 2).mean()) for i in range(len(pairs) - 1)]
    distinct = [m for m in moved if m > 20.0]
    assert len(distinct) > len(pairs) // 3, "the footage barely moves: a shifted frame would go unnoticed"


@pytest.mark.blender
def test_selected_meta_strip_is_toonified_inside(bpy_venv, addon_zip, tmp_path, grey_clip, grey_sequence, engine):
    """Selecting a meta strip toonifies the movie and image strips inside it (a muted one is left out) and
    places each result beside its source inside the meta, so the meta's own trim applies to both."""
    args = {"zip": str(addon_zip), "clip": str(grey_clip), "output_folder": str(tmp_path / "renders"),
            "sequence": [str(grey_sequence / f"shot.{i:04d}.png") for i in range(5, 15)]}
    data = run_blender(bpy_venv, "meta", args, tmp_path, engine)
    assert data["op"]["result"] == ["FINISHED"], data["op"]
    # the movie's result covers the color strip that sat above the movie: said, as a warning
    assert "it now covers 'title', which showed above the source" in data["_stdout"]
    new = data["new"]
    assert sorted(new) == ["clip toon", "seq toon"]
    assert all(s["parent_meta"] == "meta" for s in new.values())
    assert (new["clip toon"]["channel"], new["seq toon"]["channel"]) == (3, 3)
    assert data["unchanged"]
    assert data["rendered_result"] == data["rendered_source"]
    assert len(set(data["rendered_source"])) > 10
    assert {job["source"] for job in engine_jobs(engine)} == {str(grey_clip), str(grey_sequence / "shot.%04d.png")}
    assert data["empty"]["result"] == ["ERROR"]
    assert "meta strip 'empty' holds no unmuted movie or image strip to toonify" in data["empty"]["error"]


@pytest.mark.blender
def test_style_picker_lists_the_engines_models(bpy_venv, addon_zip, tmp_path, engine):
    """Style and Base model: a file browser plus the models the engine knows (GET /v1/models), like the Qt panel;
    picking one sets the field; a file picked beside the .blend goes to the engine as an absolute path."""
    sys.path.insert(0, str(REPO))
    from toon_ofx.client import EngineClient
    known = EngineClient(config_dir=str(engine)).models()
    data = run_blender(bpy_venv, "models", {"zip": str(addon_zip), "blend": str(tmp_path / "edit.blend")}, tmp_path,
                       engine)
    assert data["before"] == [] and ["label", [], {"text": "No models listed yet", "icon": "INFO"}] in data["empty_menu"]
    assert data["check"] == ["FINISHED"]
    assert [m["name"] for m in data["styles"]] == [m["name"] for m in known if m["kind"] in ("toon", "blended")]
    assert data["bases"] == [m["name"] for m in known if m["kind"] == "base"]
    entries = [c for c in data["menu"] if c[0] == "operator" and c[1] == ["toon_ofx.pick_model"]]
    assert [e[2]["op.name"] for e in entries] == [m["name"] for m in data["styles"]]
    assert all(e[2]["op.target"] == "model" for e in entries)
    first = data["styles"][0]
    assert data["description"].startswith(str(first.get("title") or first["name"]))
    if not first.get("installed", True):
        assert f"toon-ofx models pull {first['name']}" in data["description"]
    assert ["menu", ["TOONOFX_MT_model"], {"text": "", "icon": "DOWNARROW_HLT"}] in data["panel"]
    assert data["pick"] == ["FINISHED"] and data["picked"] == first["name"]
    assert data["from_browser"] == str(tmp_path / "models" / "my_toon.pt")
    assert data["refresh"] == ["FINISHED"]


@pytest.mark.parametrize("how", ["disable", "exit"])
@pytest.mark.blender
def test_engine_stops_once_blender_lets_go(bpy_venv, addon_zip, tmp_path, how):
    """An engine with an idle timeout stays up while the add-on holds a session, and stops soon after the
    add-on says goodbye: when it is disabled, or when Blender exits."""
    import threading
    proc, config = start_engine_process(tmp_path, "--render-fn", "engine_stub:identity_render",
                                        "--idle-timeout", "2")
    sys.path.insert(0, str(REPO))
    from toon_ofx.client import EngineClient
    test_client = EngineClient(config_dir=str(config))
    test_client.hello(lease=120, name="test")           # holds the engine up while Blender starts
    connected = tmp_path / "connected"

    def let_go():
        deadline = time.monotonic() + 120
        while not connected.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        test_client.goodbye()

    threading.Thread(target=let_go, daemon=True).start()
    try:
        args = {"zip": str(addon_zip), "idle_timeout": 2, "disable": how == "disable", "connected": str(connected)}
        data = run_blender(bpy_venv, "session", args, tmp_path, config)
        assert data["check"] == ["FINISHED"] and data["alive_while_held"]
        if how == "disable":
            assert 0 <= data["gone_after"] < 15
        else:
            proc.wait(15)                       # Blender's exit said goodbye
        assert proc.poll() is not None
    finally:
        stop_process(proc)


@pytest.mark.blender
def test_retry_resumes_a_cancelled_render(bpy_venv_full, addon_zip, tmp_path, clip, slow_engine):
    args = {"zip": str(addon_zip), "clip": str(clip), "output_folder": str(tmp_path / "r"), "frame_offset_end": 40}
    data = run_blender(bpy_venv_full, "retry", args, tmp_path, slow_engine)
    assert data["nothing"]["result"] == ["ERROR"] and "poll" in data["nothing"]["error"]   # nothing to retry yet
    assert data["first"]["result"] == ["ERROR"] and "timed out" in data["first"]["error"]
    assert data["retryable"] == ["clip"]
    assert data["retry"]["result"] == ["FINISHED"], data["retry"]
    (new,) = data["new"]
    assert new["frame_final_duration"] == 32 and new["files"][0] == "clip_toon.000000.png"
    assert data["after_retry"] == []
    jobs = engine_jobs(slow_engine)
    assert [j["state"] for j in jobs if j["id"] == data["job_id"]] == ["done"]
    assert len(jobs) == 2                                # the same job resumed; the second is the failing one
    assert data["failing"]["result"] == ["ERROR"] and "(Retry resumes it)" in data["failing"]["error"]
    assert data["retry_failing"]["result"] == ["ERROR"] and "told to fail" in data["retry_failing"]["error"]
    assert data["still_retryable"] == ["clip"]


@pytest.mark.blender
def test_image_sequence_keeps_its_frame_numbers(bpy_venv, addon_zip, tmp_path, engine):
    """An image strip showing shot.1011 .. shot.1020 of a folder starting at shot.1001: the engine renders its
    frames 10-19 and names them like the source (shot_toon.1011.png ...), the strip lines up frame by frame."""
    folder = tmp_path / "plates"
    folder.mkdir()
    for n in range(1001, 1021):
        (folder / f"shot.{n}.png").write_bytes(png.png_bytes(64, 36, (3 * (n - 1001),) * 3))
    args = {"zip": str(addon_zip), "sequence": [str(folder / f"shot.{n}.png") for n in range(1011, 1021)],
            "output_folder": str(tmp_path / "renders"), "frame_start": 5, "render": True,
            "params": {"output_kind": "frame", "device": "cpu"}}
    data = run_blender(bpy_venv, "toonify", args, tmp_path, engine)
    assert data["op"]["result"] == ["FINISHED"], data["op"]
    (name,) = data["new"]
    assert data["after"][name]["files"] == [f"shot_toon.{n}.png" for n in range(1011, 1021)]
    assert data["rendered_result"] == data["rendered_source"] == list(range(10, 20))
    (job,) = engine_jobs(engine)
    assert job["frames"] == [10, 19] and job["result"]["first_number"] == 1001


@pytest.mark.blender
def test_errors_are_reports_not_tracebacks(bpy_venv, addon_zip, tmp_path, clip, engine):
    bad = tmp_path / "bad.mp4"
    bad.write_text("this is not a video")
    empty = tmp_path / "empty_config"
    empty.mkdir()
    args = {"zip": str(addon_zip), "clip": str(clip), "output_folder": str(tmp_path / "r"), "bad_media": str(bad),
            "empty_config_dir": str(empty)}
    data = run_blender(bpy_venv, "errors", args, tmp_path, engine)
    expected = {"nothing_selected": "select one or more movie or image strips",
                "no_media_selected": "select one or more movie or image strips",
                "no_engine": "cannot start the engine with /nonexistent/python3",
                "no_engine_python": "no toon-ofx engine is running, and no Engine Python is set",
                "bad_media": f"{bad} is not a video",                      # the engine's own message
                "render_failed": "Toonify 'clip' failed: the stand-in renderer was told to fail"}
    for label, text in expected.items():
        case = data[label]
        assert case["op"]["result"] == ["ERROR"], (label, case)
        assert text in case["op"]["error"], (label, case["op"]["error"])
        assert "Traceback" not in case["op"]["error"]
        assert case["unchanged"], f"{label}: strips changed"
    assert "Traceback" not in data["_stdout"]


@pytest.mark.blender
def test_a_strip_played_through_a_speed_effect_is_refused_by_name(bpy_venv, addon_zip, tmp_path, clip):
    """Issue 22 item 6: a Speed Control strip retimes its input (Blender renders the input at fractional
    frames, cross-fades two of them with Frame Interpolation, integrates an animated factor); toonify cannot
    place a result that follows it, so it refuses the strip by name, as it refuses retiming keys, instead of
    placing a result that plays 1:1. A muted speed strip changes nothing and is not in the way."""
    args = {"zip": str(addon_zip), "clip": str(clip), "output_folder": str(tmp_path / "r")}
    data = run_blender(bpy_venv, "speed", args, tmp_path, tmp_path / "no_engine")
    for label, speed in (("direct", "slow motion"), ("meta", "meta speed")):
        case = data[label]
        assert case["op"]["result"] == ["ERROR"] and case["unchanged"], (label, case)
        assert f"speed control strip {speed!r}" in case["op"]["error"] and "'clip'" in case["op"]["error"], case
    assert data["muted"] == [0, 71]
    assert "Traceback" not in data["_stdout"]


@pytest.mark.blender
def test_cancel_while_rendering(bpy_venv_full, addon_zip, tmp_path, clip, slow_engine):
    args = {"zip": str(addon_zip), "clip": str(clip), "output_folder": str(tmp_path / "r")}
    data = run_blender(bpy_venv_full, "cancel", args, tmp_path, slow_engine)
    assert data["done"] and data["cancelled"] and data["error"] is None
    assert data["engine_state"] == "cancelled"
    assert data["reports"] == [["WARNING", "Toonify 'clip' cancelled (Retry resumes it)"]]
    assert data["unchanged"]
    assert any("frame 2/72" in s for s in data["statuses"])
    assert data["progress"] == sorted(data["progress"]) and 0 < data["progress"][-1] < 1


@pytest.mark.blender
def test_engine_killed_mid_render(bpy_venv_full, addon_zip, tmp_path, clip, slow_engine):
    args = {"zip": str(addon_zip), "clip": str(clip), "output_folder": str(tmp_path / "r"), "frame_offset_end": 40}
    data = run_blender(bpy_venv_full, "engine_dies", args, tmp_path, slow_engine)
    assert data["killed"] and data["done"] and data["unchanged"]
    ((level, text),) = data["reports"]
    assert level == "ERROR" and text.startswith("Toonify 'clip' failed: cannot reach the engine"), text


@pytest.mark.blender
def test_modal_operator_progress_and_esc(bpy_venv_full, addon_zip, tmp_path, clip, slow_engine):
    """invoke() + modal() (never called by headless Blender) driven with recorded window-manager calls."""
    args = {"zip": str(addon_zip), "clip": str(clip), "output_folder": str(tmp_path / "r"),
            "frame_start": 1, "frame_offset_start": 10, "frame_offset_end": 50}
    data = run_blender(bpy_venv_full, "modal", args, tmp_path, slow_engine)
    full, cancelled = data["full"], data["cancelled"]

    assert full["first"] == ["RUNNING_MODAL"] and full["final"] == ["FINISHED"]
    assert full["passthrough"] == ["PASS_THROUGH"]             # the UI keeps its events
    assert full["poll_while_running"] is False and full["poll_after"] is True
    assert full["engine_state"] == "done" and full["source_unchanged"]
    (new,) = full["new"]
    assert (new["channel"], new["frame_final_start"], new["frame_final_duration"]) == (3, 11, 12)
    calls = full["calls"]
    assert calls[:3] == [["timer_add", 0.25], ["progress_begin", 0, 100], ["modal_handler_add"]]
    statuses = [c[1] for c in calls if c[0] == "status"]
    assert statuses[0].startswith("Toonify: connecting") and statuses[-1] is None
    assert any("frame 5/12" in (s or "") for s in statuses)
    progress = [c[1] for c in calls if c[0] == "progress_update"]
    assert progress == sorted(progress) and progress[-1] > 0
    assert calls[-3:] == [["timer_remove"], ["progress_end"], ["status", None]]
    assert full["reports"] == [["INFO", "Toonify 'clip': added 'clip toon' in channel 3, frames 11-22"]]

    assert cancelled["final"] == ["CANCELLED"] and cancelled["new"] == [] and cancelled["source_unchanged"]
    assert cancelled["engine_state"] == "cancelled"
    assert cancelled["reports"] == [["WARNING", "Toonify 'clip' cancelled (Retry resumes it)"]]
    assert cancelled["calls"][-3:] == [["timer_remove"], ["progress_end"], ["status", None]]


def _png_size(path: Path) -> tuple:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def _stop_started_engine(config: Path) -> None:
    """Stop the engine the add-on started (it runs detached from the test)."""
    import signal
    info = config / "server.json"
    if not info.is_file():
        return
    pid = json.loads(info.read_text()).get("pid")
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)  # pragma: no cover


@pytest.mark.slow
@pytest.mark.blender
def test_toonify_real_engine_started_by_the_addon(bpy_venv_full, addon_zip, tmp_path, tiny_params):
    """End to end with nothing stubbed: no engine is running, the add-on starts `python -m toon_ofx serve`
    from its Engine Python preference, the real renderer toonifies the trimmed face clip with tiny
    StyleGAN2 models, and the result strip lands above the original on the same frames."""
    clip = SHARED_CLIP
    if not clip.is_file():
        pytest.skip(f"{clip} is missing")
    config = tmp_path / "config"
    args = {"zip": str(addon_zip), "clip": str(clip), "output_folder": str(tmp_path / "renders"),
            "engine_python": sys.executable, "start_timeout": 180, "timeout": 900,
            "channel": 2, "frame_start": 1, "frame_offset_start": 20, "frame_offset_end": 44,
            "params": dict(tiny_params, output_kind="frame")}
    try:
        data = run_blender(bpy_venv_full, "toonify", args, tmp_path, config, timeout=1200)
        jobs = engine_jobs(config)
    finally:
        _stop_started_engine(config)
    log = tmp_path / "engine_data" / "logs" / "server.log"
    assert data["op"]["error"] is None and data["op"]["result"] == ["FINISHED"], \
        (data["op"], log.read_text()[-4000:] if log.is_file() else "no engine log")
    assert data["before"][data["source"]] == data["after"][data["source"]]
    (name,) = data["new"]
    new = data["after"][name]
    assert (new["channel"], new["frame_final_start"], new["frame_final_duration"]) == (3, 21, 8)
    assert new["files"] == [f"clip_toon.{n:06d}.png" for n in range(20, 28)]   # named after the strip
    first = Path(new["directory"], new["files"][0])
    assert _png_size(first) == (640, 360)                    # full frames at the source's size
    (job,) = jobs
    assert job["state"] == "done" and job["frames"] == [20, 27]
    assert job["params"]["model"] == tiny_params["model"] and job["params"]["swap_res"] == 16
    assert job["progress"]["faces"] > 0                      # the real face was found and replaced
    import cv2
    import numpy as np
    cap = cv2.VideoCapture(str(clip))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 20)
    ok, original = cap.read()
    cap.release()
    toon = cv2.imread(str(first))
    assert ok and toon.shape == original.shape
    assert np.abs(toon.astype(int) - original.astype(int)).mean() > 0.5   # the face changed
