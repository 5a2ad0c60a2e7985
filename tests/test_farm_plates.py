"""Plates on a farm: an image-sequence source renders in chunks into its own format, bit-identical to one pass.

Plates are built at test time from a real face (the astronaut, as in test_plates.py): an ACEScg
half-float RGBA OpenEXR sequence with highlights far above 1.0, and a 10-bit DPX sequence with
headers. The EXR job runs through the real OpenJD CLI (`openjd run`, path mapping, the real
`toon-ofx`, an OCIO config file as a PATH parameter); the DPX job through the task command lines
of the bundle as openjd-model resolves them. `assemble` encodes any sequence the media layer reads.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import media_sources as ms
from toon_ofx.cli import main
from toon_ofx.core import media
from toon_ofx.core.colour import plan_colour
from toon_ofx.core.render import RenderRequest, render
from toon_ofx.farm.assemble import assemble, find_sequence
from toon_ofx.farm.job import param_args

from test_farm import _openjd_cli, _openjd_run, _parse_cli
from test_plates import oiio_read

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")

W, H = 320, 240
COUNT = 10          # frames: OpenJD's tasks of 4 write 0-5 and 6-9 on the keyframe grid (interval 4)
CLEAR = 60          # columns [0, CLEAR) never see the face
FAST = {"steps": 2, "warm_steps": 1}


@pytest.fixture(scope="module")
def face_pictures(astronaut):
    return ms.frames(W, H, COUNT, face=astronaut, face_size=200, face_x=95, face_y=20, step=2)


@pytest.fixture(scope="module")
def exr_plate(tmp_path_factory, face_pictures):
    """bg.1001.exr ...: ACEScg half RGBA (PIZ, colour attribute, timecode), highlights of 8.0+ and negatives."""
    folder = tmp_path_factory.mktemp("exr")
    for k, picture in enumerate(face_pictures):
        rgb = ms.to_acescg(picture)
        rgb[10:30, 5:25] = 8.0 + k
        rgb[40:50, 5:25] = (-0.02, 0.5, -0.001)
        alpha = np.broadcast_to(np.linspace(0.25, 1.0, W, dtype=np.float32)[None, :, None], (H, W, 1))
        ms.write_image(folder / f"bg.{1001 + k}.exr", np.concatenate([rgb, alpha], axis=2).astype(np.float16),
                       "half", compression="piz", oiio__ColorSpace="ACEScg", timecode=f"10:00:00:{k:02d}",
                       fps=(24, 1))
    return folder


@pytest.fixture(scope="module")
def dpx_plate(tmp_path_factory, face_pictures):
    folder = tmp_path_factory.mktemp("dpx")
    for k, picture in enumerate(face_pictures):
        codes = (picture.astype(np.int64) * 1023 + 32767) // 65535
        codes = np.clip(codes + (np.arange(W)[None, :, None] + k) % 3, 0, 1023)   # finer than 8 bits
        ms.write_image(folder / f"plate.{k:04d}.dpx", (codes * 65535 // 1023).astype(np.uint16), "uint16", bits=10,
                       timecode=f"01:00:00:{k:02d}", Copyright="shot 42")
    return folder


@pytest.fixture(scope="module")
def ocio_config(tmp_path_factory):
    """The ACES studio config as a file, with an alias for ACEScg only it knows ("plate_linear"): a task that
    did not get this config cannot render with input_colorspace plate_linear."""
    import PyOpenColorIO as ocio

    config = ocio.Config.CreateFromFile("ocio://studio-config-latest")
    space = config.getColorSpace("ACEScg")
    space.addAlias("plate_linear")
    config.addColorSpace(space)
    path = tmp_path_factory.mktemp("ocio") / "studio.ocio"
    path.write_text(config.serialize())
    return path


def _single_pass(source, out, params, monkeypatch=None, ocio=None):
    if ocio is not None:
        monkeypatch.setenv("OCIO", str(ocio))
    return render(RenderRequest(source, out, params))


def _same_frames(single, chunked, source, names, attributes):
    """Every chunked frame equals the single pass's, header included, and the face was stylised."""
    for src_name, name in names:
        want, want_spec = oiio_read(single / name)
        got, spec = oiio_read(chunked / name)
        assert np.array_equal(got, want), f"{name}: the chunked render differs from the single pass"
        assert str(spec.format) == str(want_spec.format) and spec.channelnames == want_spec.channelnames
        for attribute in attributes:
            assert spec.get_string_attribute(attribute) == want_spec.get_string_attribute(attribute), attribute
        src, _ = oiio_read(source / src_name)
        changed = (got != src).any(axis=2)
        assert 0.005 < changed.mean() < 0.6 and not changed[:, :CLEAR].any()


# -- the export -------------------------------------------------------------------------------------------------
def _export(tmp_path, source, *extra, fmt="openjd"):
    out = tmp_path / f"job-{fmt}"
    code = main(["farm", "export", str(source), "--format", fmt, "-o", str(out), "--keyframe-interval", "4",
                 "--chunk-size", "4"] + list(extra))
    return code, out


def test_a_plate_job_writes_its_own_format_and_a_movie_job_png(tmp_path, dpx_plate, exr_plate, capsys):
    code, out = _export(tmp_path, dpx_plate / "plate.%04d.dpx")
    assert code == 0, capsys.readouterr().err
    template = json.loads((out / "template.json").read_text())
    values = json.loads((out / "job_params.json").read_text())
    names = {p["name"]: p.get("default") for p in template["parameterDefinitions"]}
    assert names["FrameName"] == "plate_toon.%04d.dpx"        # the name a render into a folder gives
    assert values["FramesDir"] == str(dpx_plate / "plate_toon_frames")
    assert Path(values["OutputMovie"]).name == "plate_toon" + media.movie_suffix(media.probe(dpx_plate))
    code, out = _export(tmp_path, exr_plate, "--sequence", str(tmp_path / "renders"), fmt="flamenco")
    assert code == 0, capsys.readouterr().err
    settings = json.loads((out / "job.json").read_text())["settings"]
    assert settings["sequence"] == str(tmp_path / "renders" / "bg_toon.%04d.exr") and settings["movie"].endswith(
        "bg_toon.mov")                                          # ProRes 4444 follows an alpha plate


@pytest.mark.parametrize("sequence,message", [
    ("out/x.%04d.gif", "must look like folder/name.%06d.png, with one of"),
    ("out/x.%04d.jpg", "overlay needs an image format with alpha"),
    ("SOURCE", "the source is never written to"),
])
def test_a_frame_pattern_the_tasks_would_refuse_is_refused_at_export(tmp_path, dpx_plate, capsys, sequence, message):
    sequence = str(dpx_plate / "plate.%04d.dpx") if sequence == "SOURCE" else str(tmp_path / sequence)
    extra = ["--output-kind", "overlay", "--movie", str(tmp_path / "o.mov")] if ".jpg" in sequence else []
    code, out = _export(tmp_path, dpx_plate / "plate.%04d.dpx", "--sequence", sequence, *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_other_image_formats_are_accepted_and_what_they_cannot_keep_is_said(tmp_path, exr_plate, capsys):
    code, out = _export(tmp_path, exr_plate / "bg.%04d.exr", "--sequence", str(tmp_path / "f" / "bg.%04d.tif"),
                        "--movie", str(tmp_path / "bg.mp4"))
    err = capsys.readouterr().err
    assert code == 0, err
    template = json.loads((out / "template.json").read_text())
    names = {p["name"]: p.get("default") for p in template["parameterDefinitions"]}
    assert names["FrameName"] == "bg.%04d.tif"
    assert "warning: the alpha channel of bg.%04d.exr is left out: a " in err     # the .mp4, said at export
    code, _ = _export(tmp_path, exr_plate / "bg.%04d.exr", "--sequence", str(tmp_path / "p" / "bg.%04d.png"))
    err = capsys.readouterr().err
    assert code == 0 and "warning: .png images cannot hold the float values of bg.%04d.exr" in err


def test_the_colour_space_and_ocio_config_reach_every_task(tmp_path, exr_plate, ocio_config, capsys, monkeypatch):
    monkeypatch.delenv("OCIO", raising=False)
    code, _ = _export(tmp_path, exr_plate / "bg.%04d.exr", "--input-colorspace", "plate_linear")
    err = capsys.readouterr().err
    assert code == 2 and "'plate_linear' is not in the OCIO config" in err    # checked here, not on the farm
    code, out = _export(tmp_path, exr_plate / "bg.%04d.exr", "--input-colorspace", "plate_linear", "--ocio-config",
                        str(ocio_config))
    assert code == 0, capsys.readouterr().err
    template = json.loads((out / "template.json").read_text())
    values = json.loads((out / "job_params.json").read_text())
    assert values["OcioConfig"] == str(ocio_config)
    ocio = [p for p in template["parameterDefinitions"] if p["name"] == "OcioConfig"]
    assert ocio[0]["type"] == "PATH" and ocio[0]["objectType"] == "FILE" and ocio[0]["dataFlow"] == "IN"
    _, steps = _openjd_run(template, values, out)
    for step, argvs in steps.values():
        for argv in argvs:
            args = _parse_cli(argv[1:])
            assert str(args.ocio_config) == str(ocio_config) and args.input_colorspace == "plate_linear"
    # $OCIO of the exporting shell is the job's config unless one is given; the other exports carry it too
    monkeypatch.setenv("OCIO", str(ocio_config))
    for fmt in ("opencue", "flamenco"):
        code, out = _export(tmp_path, exr_plate / "bg.%04d.exr", "--input-colorspace", "plate_linear", fmt=fmt)
        assert code == 0, capsys.readouterr().err
        text = next(p for p in out.iterdir() if p.suffix in (".py", ".json")).read_text()
        assert str(ocio_config) in text and "plate_linear" in text


# -- chunked == one pass ------------------------------------------------------------------------------------------
@pytest.mark.skipif(not _openjd_cli(), reason="the openjd CLI (pip install openjd-cli) is not on PATH")
def test_an_exr_plate_on_openjd_is_bit_identical_to_one_pass(tmp_path, exr_plate, ocio_config, tiny_models_dir,
                                                             tiny_params, monkeypatch):
    """The bundle as the submitter wrote it (its paths under /farm, mapped to this machine by OpenJD path
    mapping) renders the plate in chunks with the real toon-ofx, each task with the mapped OCIO config."""
    here = tmp_path / "farm"
    shutil.copytree(exr_plate, here / "plates")
    shutil.copytree(tiny_models_dir, here / "models")
    shutil.copyfile(ocio_config, here / "studio.ocio")
    params = dict(tiny_params, **FAST, model=str(here / "models" / "tiny-toon.pt"),
                  base_model=str(here / "models" / "tiny-base.pt"))
    toon_ofx = str(Path(sys.executable).with_name("toon-ofx"))
    params["input_colorspace"] = "plate_linear"
    code = main(["farm", "export", str(here / "plates" / "bg.%04d.exr"), "--format", "openjd", "-o",
                 str(tmp_path / "bundle"), "--chunk-size", "4", "--toon-ofx", toon_ofx,
                 "--ocio-config", str(here / "studio.ocio"), "--models-dir", str(here / "models")] + param_args(params))
    assert code == 0
    values = json.loads((tmp_path / "bundle" / "job_params.json").read_text())
    assert set(values) >= {"SourceFile", "FramesDir", "OutputMovie", "ToonModel", "BaseModel", "OcioConfig",
                           "ModelsDir"}
    farm_values = {k: v.replace(str(here), "/farm") for k, v in values.items()}   # as the farm's workers see them
    (tmp_path / "farm_params.json").write_text(json.dumps(farm_values))
    rules = {"version": "pathmapping-1.0", "path_mapping_rules": [
        {"source_path_format": "POSIX", "source_path": "/farm", "destination_path": str(here)}]}
    env = {k: v for k, v in os.environ.items() if k not in ("TOON_OFX_MODELS", "OCIO")}
    run = subprocess.run([_openjd_cli(), "run", str(tmp_path / "bundle" / "template.json"), "-p",
                          f"file://{tmp_path / 'farm_params.json'}", "--run-dependencies", "--step", "Assemble",
                          "--path-mapping-rules", json.dumps(rules)], capture_output=True, text=True, timeout=600,
                         env=env)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    assert log.count("this chunk lies inside another task's segment") == 1   # of 3 tasks, 2 wrote frames
    chunked = here / "plates" / "bg_toon_frames"
    names = [(f"bg.{1001 + k}.exr", f"bg_toon.{1001 + k}.exr") for k in range(COUNT)]
    assert sorted(os.listdir(chunked)) == sorted(n for _, n in names)

    single = tmp_path / "single"
    result = _single_pass(here / "plates" / "bg.%04d.exr", single, params, monkeypatch, here / "studio.ocio")
    assert result.warnings == [] and sorted(os.listdir(single)) == sorted(n for _, n in names)
    _same_frames(single, chunked, here / "plates", names, ("compression", "smpte:TimeCode", "oiio:ColorSpace"))
    got, _ = oiio_read(chunked / "bg_toon.1004.exr")
    assert got[10:30, 5:25, :3].min() == np.float16(8.0 + 3)          # highlights above 1.0 survive the farm
    # the movie assembled from the EXR frames: display-referred pictures, the plate's alpha and timecode
    movie = media.probe(here / "plates" / "bg_toon.mov")
    assert movie.frame_count == COUNT and movie.alpha and movie.timecode == "10:00:00:00"
    _movie_shows_the_plate(movie, here / "plates" / "bg.1002.exr", 1, here / "studio.ocio", monkeypatch)


def _movie_shows_the_plate(movie, plate_frame, index, ocio, monkeypatch):
    """Where the face never was, the movie's picture is the plate in the display-referred working space (a
    linear plate encoded as it is would be far darker), within ProRes 4444's precision; alpha carried."""
    monkeypatch.setenv("OCIO", str(ocio))
    linear, _ = media.read_pixels(plate_frame)
    plate = media.probe(plate_frame)
    expected = plan_colour(plate, "plate_linear").to_engine(np.ascontiguousarray(linear[..., :3]), 16)
    (_, rgba), = media.read_native(movie, index, index, bits=16)
    diff = np.abs(rgba[:, :CLEAR, :3].astype(np.int64) - expected[:, :CLEAR])
    assert diff.mean() < 60 and np.percentile(diff, 99) < 300, (diff.mean(), diff.max())   # measured 25, 95
    alpha = np.round(np.clip(linear[..., 3].astype(np.float64), 0, 1) * 65535)
    assert np.abs(rgba[..., 3].astype(np.int64) - alpha).max() <= 96


def test_a_dpx_plate_through_the_bundles_task_commands_is_bit_identical_to_one_pass(tmp_path, dpx_plate,
                                                                                      tiny_params, capsys):
    plate = tmp_path / "plate"
    shutil.copytree(dpx_plate, plate)
    params = dict(tiny_params, **FAST)
    code = main(["farm", "export", str(plate / "plate.%04d.dpx"), "--format", "openjd", "-o", str(tmp_path / "b"),
                 "--chunk-size", "4"] + param_args(params))
    assert code == 0, capsys.readouterr().err
    _, steps = _openjd_run(json.loads((tmp_path / "b" / "template.json").read_text()),
                           json.loads((tmp_path / "b" / "job_params.json").read_text()), tmp_path / "b")
    renders, assembles = steps["Render"][1], steps["Assemble"][1]
    frames, writers = plate / "plate_toon_frames", 0
    for argv in reversed(renders):                      # in any order: each task is on its own
        before = len(os.listdir(frames)) if frames.is_dir() else 0
        assert main(argv[1:]) == 0, capsys.readouterr().err
        writers += len(os.listdir(frames)) > before
    assert writers == 2                                 # two tasks wrote frames (0-5, 6-9)
    single = tmp_path / "single"
    result = _single_pass(plate / "plate.%04d.dpx", single, params)
    assert result.warnings == []
    names = [(f"plate.{k:04d}.dpx", f"plate_toon.{k:04d}.dpx") for k in range(COUNT)]
    _same_frames(single, plate / "plate_toon_frames", plate, names, ("smpte:TimeCode", "Copyright", "dpx:Packing"))
    _, spec = oiio_read(plate / "plate_toon_frames" / "plate_toon.0005.dpx")
    assert spec.get_int_attribute("oiio:BitsPerSample") == 10
    (assemble_argv,) = assembles
    assert main(assemble_argv[1:]) == 0, capsys.readouterr().err
    movie = media.probe(Path(_parse_cli(assemble_argv[1:]).output))
    assert movie.frame_count == COUNT and movie.bit_depth == 10 and movie.timecode == "01:00:00:00"
    # integer plates keep their own values in the movie (as a render into it would): the 10-bit codes
    source = dict(media.read_frames(media.probe(plate / "plate.%04d.dpx"), bits=16))
    for i, frame in media.read_frames(movie, 2, 2, bits=16):
        diff = np.abs(frame[:, :CLEAR].astype(np.int64) - source[i][:, :CLEAR])
        assert diff.mean() < 200 and diff.max() < 1024, (diff.mean(), diff.max())   # measured 100, 523


# -- assemble -----------------------------------------------------------------------------------------------------
def test_assemble_encodes_exr_frames_as_display_pictures_with_their_alpha(tmp_path, exr_plate, monkeypatch,
                                                                           ocio_config):
    """The plate's own frames as a stand-in for rendered ones: a float sequence becomes the movie a render of
    the plate into it writes; alpha is found from the files' channels, not their format."""
    assert find_sequence(exr_plate) == str(exr_plate / "bg.%04d.exr")
    monkeypatch.setenv("OCIO", str(ocio_config))
    encoded = assemble(exr_plate, exr_plate / "bg.%04d.exr", tmp_path / "bg.mov", (0, 3),
                       input_colorspace="plate_linear")
    assert encoded.codec.label == "ProRes 4444"
    assert any("float values of bg.%04d.exr" in n and "display-referred" in n for n in encoded.notes)
    movie = media.probe(tmp_path / "bg.mov")
    assert movie.frame_count == 4 and movie.alpha
    _movie_shows_the_plate(movie, exr_plate / "bg.1002.exr", 1, ocio_config, monkeypatch)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]   # its PNG pictures are gone
    mp4 = assemble(exr_plate, exr_plate / "bg.%04d.exr", tmp_path / "bg.mp4", (0, 1))
    assert any("alpha channel of bg.%04d.exr is left out" in n for n in mp4.notes)   # said, not refused
    assert not media.probe(tmp_path / "bg.mp4").alpha


def test_assemble_says_what_it_cannot_keep_and_refuses_an_overlay_outside_a_mov(tmp_path, exr_plate, capsys):
    code = main(["assemble", str(exr_plate), "--source", str(exr_plate / "bg.%04d.exr"), "-o",
                 str(tmp_path / "a.mp4"), "--frames", "0-1", "--input-colorspace", "ACEScg"])
    err = capsys.readouterr().err
    assert code == 0 and "toon-ofx: warning: the alpha channel of bg.%04d.exr is left out" in err
    # RGBA frames of a source without alpha are an overlay: a .mov only
    clip = tmp_path / "clip.mov"
    ms.encode(clip, ms.frames(64, 48, 2), "24", ["-c:v", "prores_ks", "-pix_fmt", "yuv422p10le"])
    for i in range(2):
        media.write_frame(tmp_path / "ov" / f"clip_toon.{i:06d}.tif", np.zeros((48, 64, 4), np.uint8))
    code = main(["assemble", str(tmp_path / "ov"), "--source", str(clip), "-o", str(tmp_path / "ov.mp4")])
    err = capsys.readouterr().err
    assert code == 2 and "the frames carry alpha (an overlay): assemble them into a .mov" in err
    assert main(["assemble", str(tmp_path / "ov"), "--source", str(clip), "-o", str(tmp_path / "ov.mov")]) == 0
    assert media.probe(tmp_path / "ov.mov").alpha


def test_flamenco_tasks_carry_the_colour_and_the_codec(tmp_path):
    """The job type (run in node, as test_farm runs it) passes the OCIO config to every task, and the colour
    space and codec to assemble, exactly as the Python command lines do."""
    from test_farm import NODE, _FLAMENCO_HARNESS, _job
    from toon_ofx.farm.export import write_export

    if not NODE:
        pytest.skip("node is not installed")
    job = _job(tmp_path, sequence="/farm/out/bg_toon.%04d.exr", ocio_config="/farm/aces.ocio", codec="prores-4444",
               params=dict(keyframe_interval=4, input_colorspace="ACEScg"))
    js, job_json = write_export("flamenco", job, tmp_path / "fl")
    harness = tmp_path / "harness.js"
    harness.write_text(_FLAMENCO_HARNESS)
    run = subprocess.run([NODE, str(harness), str(js), str(job_json)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    tasks = json.loads(run.stdout)["tasks"]
    (assemble_task,) = [t for t in tasks if t["name"] == "assemble"]
    assert assemble_task["commands"][0]["parameters"]["args"] == job.assemble_args()
    assert job.assemble_args()[-6:] == ["--codec", "prores-4444", "--input-colorspace", "ACEScg", "--ocio-config",
                                        "/farm/aces.ocio"]
    for task in tasks:
        if task["name"] != "assemble":
            args = _parse_cli(task["commands"][0]["parameters"]["args"])
            assert str(args.ocio_config) == "/farm/aces.ocio" and args.input_colorspace == "ACEScg"
            assert str(args.output) == "/farm/out/bg_toon.%04d.exr"
