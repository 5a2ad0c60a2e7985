"""Farm chunks, the three farm-manager exports (run as their managers would run them), assemble.

Every export is checked by executing it the way its farm manager does: the OpenJD template
through openjd-model (decode, create_job, the step's CHUNK[INT] parameter space, format-string
resolution) and, when the `openjd` CLI is on PATH, `openjd check`/`openjd run` (with path
mapping, once with the real `toon-ofx render` on tiny models); the OpenCue script through the
real PyOutline, whose job spec (the XML Cuebot receives) is chunked the way Cuebot does; the
Flamenco job type in node with stand-ins for Flamenco's `author` module and a port of its
`frameChunker`. Each resulting command line is parsed by the real `toon-ofx` parser and the
chunks must cover the frame range exactly once.
"""
from __future__ import annotations

import json
import os
import py_compile
import random
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from toon_ofx.cli import build_parser, main
from toon_ofx.core.errors import UserError
from toon_ofx.core.options import params_from_args, parse_frame_range
from toon_ofx.core.params import validate
from toon_ofx.farm.assemble import find_sequence, sequence_frames
from toon_ofx.farm.export import FORMATS, write_export
from toon_ofx.farm.job import FarmJob, Resources, param_args
from toon_ofx.farm.openjd import openjd_template
from toon_ofx.farm.plan import (chunk_warmup_first, effective_chunk_size, plan_chunks, snap_chunk,
                                 temporal_plan)
from engine.temporal import TemporalPlan

from conftest import FIXTURES, REPO  # noqa: E402

CLIP = FIXTURES / "single_face.mp4"   # 72 frames, 30 fps, audio


# -- planning ----------------------------------------------------------------------------------------
def _covers(ranges, first, last):
    frames = [i for a, b in ranges for i in range(a, b + 1)]
    return frames == list(range(first, last + 1))


def test_plan_chunks_cut_on_the_segment_grid():
    plan = TemporalPlan.create(48, 8, smoothing=0.5)  # the default interval and smoothing: history 14 frames
    chunks = plan_chunks(10, 250, 100, 3, plan=plan)
    assert [c.frames for c in chunks] == [(10, 103), (104, 199), (200, 250)]
    # a chunk on the grid (keyframe + overlap) projects from its keyframe (the cross-fade frames the
    # chunk before it writes) and tracks from `history` frames before that
    assert [c.warmup_first for c in chunks] == [0, 96 - 14, 192 - 14]
    assert chunks[1].warmup == 8 + 14 and str(chunks[1]) == "104-199" and chunks[1].count == 96
    assert temporal_plan({"keyframe_overlap": 8}) == plan and temporal_plan({"keyframe_overlap": 0}).overlap == 0
    assert temporal_plan({}).overlap == 12   # the default cross-fade


@pytest.mark.parametrize("size,k,expected", [(30, 48, 48), (48, 48, 48), (70, 48, 48), (73, 48, 96),
                                             (100, 0, 100), (1, 4, 4), (5, 4, 4), (7, 4, 8)])
def test_effective_chunk_size(size, k, expected):
    """Multiples of the keyframe interval, one at least: a task renders whole keyframe segments."""
    assert effective_chunk_size(size, k) == expected


def test_plan_chunks_partition_any_range():
    rng = random.Random(1)
    for _ in range(500):
        k = rng.choice([0, 1, 4, 5, 24, 48])
        first = rng.randrange(0, 300)
        last = first + rng.randrange(0, 400)
        size = rng.randrange(1, 120)
        warmup = rng.randrange(0, 10)
        plan = TemporalPlan.create(k, rng.randrange(0, 12), rng.choice([0.0, 0.5, 1.0]))
        chunks = plan_chunks(first, last, size, warmup, plan=plan)
        assert _covers([c.frames for c in chunks], first, last)
        eff = effective_chunk_size(size, k)
        for c in chunks:
            assert c.count <= eff + plan.overlap
            assert c.warmup_first == chunk_warmup_first(c.first, warmup, plan) <= c.first
            assert c.warmup_first <= max(0, plan.projection_start(c.first) - plan.history)
            if c.first != first:
                assert (c.first - plan.overlap) % eff == 0
                if k and eff % k == 0:
                    assert plan.segment_start(c.first) == c.first  # re-projects only the cross-fade
                    assert c.warmup == min(max(warmup, plan.overlap + plan.history), c.first)


def test_plan_chunks_bad_input():
    with pytest.raises(UserError):
        plan_chunks(5, 4, 10)
    with pytest.raises(UserError):
        plan_chunks(0, 4, 0)
    with pytest.raises(UserError):
        plan_chunks(0, 4, 2, -1)


def test_no_keyframes_means_prerolling_from_zero():
    # without keyframes the chain never restarts: every chunk starts processing at frame 0
    assert [c.warmup_first for c in plan_chunks(0, 99, 25, 4)] == [0, 0, 0, 0]


def _openjd_chunks(first, last, count):
    from openjd.model._step_param_space_iter import divide_int_interval_into_chunks

    return [parse_frame_range(c) for c in divide_int_interval_into_chunks(count, first, last)]


def test_snap_chunk_keeps_a_partition_and_lands_on_the_segment_grid():
    rng = random.Random(2)
    for _ in range(400):
        k = rng.choice([1, 4, 7, 48])
        plan = TemporalPlan.create(k, rng.randrange(0, 12), 0.5)
        first = rng.randrange(0, 200)
        last = first + rng.randrange(0, 500)
        if rng.random() < 0.5:
            chunks = _openjd_chunks(first, last, rng.randrange(1, 150))   # how OpenJD cuts a range
        else:                                                             # arbitrary (adaptive) cuts
            cuts = sorted(rng.sample(range(first + 1, last + 2), min(rng.randrange(0, 8), last - first + 1)))
            bounds = [first] + [c for c in cuts if c <= last] + [last + 1]
            chunks = [(a, b - 1) for a, b in zip(bounds, bounds[1:]) if b > a]
        snapped = [snap_chunk(c, (first, last), plan) for c in chunks]
        assert _covers([s for s in snapped if s], first, last)
        for s in snapped:
            if s:
                assert s[0] == first or plan.segment_start(s[0]) == s[0]


def test_snap_chunk_examples():
    hard = TemporalPlan.create(48, 0, 0.5)  # no cross-fade: the keyframes themselves
    assert snap_chunk((34, 66), (0, 99), hard) == (0, 47)
    assert snap_chunk((0, 33), (0, 99), hard) is None
    assert snap_chunk((67, 99), (0, 99), hard) == (48, 99)
    fading = TemporalPlan.create(48, 8, 0.5)  # grid 0, 56, 104, ...
    assert snap_chunk((34, 66), (0, 99), fading) == (0, 55)
    assert snap_chunk((67, 99), (0, 99), fading) == (56, 99)
    assert snap_chunk((5, 9), (5, 9), TemporalPlan.create(4, 0, 0.5)) == (5, 9)
    assert snap_chunk((3, 8), (3, 20), TemporalPlan.create(0, 8, 0.5)) == (3, 8)
    with pytest.raises(UserError):
        snap_chunk((2, 30), (3, 20), hard)


@pytest.mark.parametrize("text,expected", [("10-120", (10, 120)), ("7", (7, 7)), ("3,4", (3, 4)),
                                           ("1..5", (1, 5)), (" 2-2 ", (2, 2)), ("0-4,5-9", (0, 9))])
def test_parse_frame_range(text, expected):
    assert parse_frame_range(text) == expected


@pytest.mark.parametrize("text", ["", "a-b", "5-3", "-3", "1-", "1,,2"])
def test_parse_frame_range_rejects(text):
    with pytest.raises(UserError):
        parse_frame_range(text)


# -- the commands ----------------------------------------------------------------------------------------
PARAMS = {"swap_res": 32, "color_match": False, "steps": 7, "blend_width": 0.5, "keyframe_interval": 4,
          "model": "/models/my toon.pt"}


def _parse_cli(argv):
    """The real toon-ofx parser accepts the command line (SystemExit otherwise)."""
    return build_parser().parse_args(argv)


def test_param_args_round_trip_through_the_cli():
    job = FarmJob("/clips/a b.mp4", "/out/a.%06d.png", "/out/a.mp4", (3, 20), 8, PARAMS)
    args = _parse_cli(job.render_args("3-8"))
    assert args.command == "render" and args.frames == (3, 8) and args.warmup == 0
    assert params_from_args(args) == validate(PARAMS)
    # keyframe_interval and keyframe_overlap are always explicit (the chunk grid depends on them),
    # defaults are not repeated
    assert "--keyframe-interval" in param_args({}) and "--keyframe-overlap" in param_args({})
    assert "--swap-res" not in param_args({})
    a = _parse_cli(job.assemble_args())
    assert a.command == "assemble" and a.frames == (3, 20) and str(a.source) == "/clips/a b.mp4"


def _job(tmp_path, executable="toon-ofx", **kw):
    values = dict(source=str(tmp_path / "in clip.mp4"), sequence=str(tmp_path / "frames" / "in_toon.%06d.png"),
                  movie=str(tmp_path / "in clip_toon.mp4"), frames=(3, 20), chunk_size=8, params=PARAMS,
                  executable=executable, name="toon-ofx test")
    values.update(kw)
    return FarmJob(**values)


def _check_render_commands(job, argvs, expect_chunk_of=None):
    """Render commands parse with the real CLI and write every frame of the job exactly once."""
    ranges = []
    for argv in argvs:
        args = _parse_cli(argv)
        assert args.command == "render"
        assert str(args.source) == job.source and str(args.output) == job.sequence
        assert params_from_args(args) == validate(job.params)
        frames = args.frames
        if getattr(args, "chunk_of", None):
            frames = snap_chunk(frames, args.chunk_of, temporal_plan(job.params))
        if frames:
            ranges.append(frames)
    ranges.sort()
    assert _covers(ranges, *job.frames), ranges
    return ranges


# -- OpenJD ------------------------------------------------------------------------------------------------
def _openjd_run(template_dict, values, template_dir):
    """Decode + create_job as a scheduler does; yield (step, [argv per task])."""
    from openjd.model import (
        DecodeValidationError,
        StepParameterSpaceIterator,
        SymbolTable,
        create_job,
        decode_job_template,
        preprocess_job_parameters,
    )

    with pytest.raises(DecodeValidationError):   # CHUNK[INT] is only valid with the extension enabled
        decode_job_template(template=template_dict)
    template = decode_job_template(template=template_dict, supported_extensions=["TASK_CHUNKING"])
    params = preprocess_job_parameters(job_template=template, job_parameter_values=values,
                                       job_template_dir=template_dir, current_working_dir=template_dir)
    job = create_job(job_template=template, job_parameter_values=params)
    base = {f"Param.{k}": v.value for k, v in params.items()}
    base.update({f"RawParam.{k}": v.value for k, v in params.items()})
    out = {}
    for step in job.steps:
        action = step.script.actions.onRun
        tasks = [{}]
        if step.parameterSpace is not None:
            tasks = [{f"Task.Param.{k}": v.value for k, v in p.items()}
                     for p in StepParameterSpaceIterator(space=step.parameterSpace)]
        argvs = []
        for task in tasks:
            table = SymbolTable(source={**base, **task})
            argvs.append([action.command.resolve(symtab=table)] + [a.resolve(symtab=table) for a in action.args])
        out[step.name] = (step, argvs)
    return job, out


def test_openjd_template_validates_and_runs_as_chunks(tmp_path):
    job = _job(tmp_path)
    files = write_export("openjd", job, tmp_path / "bundle")
    assert sorted(p.name for p in files) == ["README.md", "job_params.json", "parameter_values.json",
                                             "template.json"]
    template = json.loads((tmp_path / "bundle" / "template.json").read_text())
    assert template["extensions"] == ["TASK_CHUNKING"]
    render = template["steps"][0]
    frame_param = render["parameterSpace"]["taskParameterDefinitions"][0]
    assert frame_param["type"] == "CHUNK[INT]" and frame_param["chunks"]["rangeConstraint"] == "CONTIGUOUS"
    values = json.loads((tmp_path / "bundle" / "job_params.json").read_text())
    deadline = json.loads((tmp_path / "bundle" / "parameter_values.json").read_text())
    assert {v["name"]: v["value"] for v in deadline["parameterValues"]} == values

    created, steps = _openjd_run(template, values, tmp_path / "bundle")
    assert [s.name for s in created.steps] == ["Render", "Assemble"]
    assert [d.dependsOn for d in created.steps[1].dependencies] == ["Render"]
    _, render_argvs = steps["Render"]
    assert len(render_argvs) == 3                      # 18 frames in chunks of 8
    assert all(argv[0] == "toon-ofx" for argv in render_argvs)
    _check_render_commands(job, [argv[1:] for argv in render_argvs])
    (_, [assemble_argv]) = steps["Assemble"]
    assert _parse_cli(assemble_argv[1:]).frames == (3, 20)
    assert assemble_argv[1:] == job.assemble_args()

    # a user changing the range and chunk size at submission still gets a full, exact cover
    values2 = dict(values, Frames="0-71", ChunkSize="10")
    _, steps2 = _openjd_run(template, values2, tmp_path / "bundle")
    job2 = _job(tmp_path, frames=(0, 71))
    _check_render_commands(job2, [argv[1:] for argv in steps2["Render"][1]])


def test_openjd_asks_for_hardware_and_maps_every_path(tmp_path):
    """hostRequirements from the job's resources; checkpoint files and the model folder are PATH
    parameters (path-mapped like the clip), used by the task's command line."""
    job = _job(tmp_path, resources=Resources(gpus=1, gpu_memory_gib=12, memory_gib=6, cpus=4),
               models_dir="/farm/models", params=dict(PARAMS, base_model="/farm/models/base.pkl"))
    files = write_export("openjd", job, tmp_path / "bundle")
    template = json.loads((tmp_path / "bundle" / "template.json").read_text())
    values = json.loads((tmp_path / "bundle" / "job_params.json").read_text())
    assert values["ToonModel"] == "/models/my toon.pt" and values["BaseModel"] == "/farm/models/base.pkl"
    assert values["ModelsDir"] == "/farm/models"
    kinds = {p["name"]: (p["type"], p.get("objectType"), p.get("dataFlow")) for p in template["parameterDefinitions"]}
    assert kinds["ToonModel"] == kinds["BaseModel"] == ("PATH", "FILE", "IN")
    assert kinds["ModelsDir"] == ("PATH", "DIRECTORY", "IN")
    assert "/models/my toon.pt" not in json.dumps(template["steps"])   # not baked into the command line
    created, steps = _openjd_run(template, values, tmp_path / "bundle")
    render_step, argvs = steps["Render"]
    amounts = {a.name: float(a.min) for a in render_step.hostRequirements.amounts}
    assert amounts == {"amount.worker.vcpu": 4, "amount.worker.memory": 6 * 1024, "amount.worker.gpu": 1,
                       "amount.worker.gpu.memory": 12 * 1024}
    assert created.steps[1].hostRequirements is None               # assembling needs no GPU
    args = _parse_cli(argvs[0][1:])
    assert (args.model, args.base_model) == ("/models/my toon.pt", "/farm/models/base.pkl")
    assert str(args.models_dir) == "/farm/models" and args.openjd
    _check_render_commands(job, [argv[1:] for argv in argvs])
    # CPU workers: no GPU amounts at all
    cpu = openjd_template(_job(tmp_path, resources=Resources(gpus=0)))
    names = [a["name"] for a in cpu["steps"][0]["hostRequirements"]["amounts"]]
    assert names == ["amount.worker.vcpu", "amount.worker.memory"]


def test_a_refused_job_leaves_no_folder_behind(tmp_path):
    with pytest.raises(UserError, match="OpenJD"):
        write_export("openjd", _job(tmp_path, source="/clips/{{x}}.mp4"), tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()


def test_openjd_without_movie_has_no_assemble_step(tmp_path):
    template = openjd_template(_job(tmp_path, movie=None))
    assert [s["name"] for s in template["steps"]] == ["Render"]
    assert "OutputMovie" not in {p["name"] for p in template["parameterDefinitions"]}


def test_openjd_refuses_format_string_braces(tmp_path):
    with pytest.raises(UserError):
        openjd_template(_job(tmp_path, source="/clips/{{x}}.mp4"))


def _fake_toon_ofx(tmp_path) -> Path:
    """A stand-in toon-ofx executable: records its arguments, writes the frames a render chunk owns."""
    log = tmp_path / "calls.jsonl"
    exe = tmp_path / "fake-toon-ofx"
    exe.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from toon_ofx.cli import build_parser
        from toon_ofx.core.options import params_from_args
        from toon_ofx.farm.plan import snap_chunk, temporal_plan
        argv = sys.argv[1:]
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps(argv) + "\\n")
        args = build_parser().parse_args(argv)
        if args.command == "render":
            frames = args.frames
            if getattr(args, "chunk_of", None):
                frames = snap_chunk(frames, args.chunk_of, temporal_plan(params_from_args(args)))
            if frames:
                for i in range(frames[0], frames[1] + 1):
                    path = str(args.output) % i
                    import os
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "x") as out:   # "x": a frame written twice fails the task
                        out.write(str(i))
        """))
    exe.chmod(0o755)
    return exe


def _openjd_cli():
    local = REPO / ".venv-openjd" / "bin" / "openjd"
    return os.environ.get("TOON_OFX_OPENJD_CLI") or (str(local) if local.exists() else shutil.which("openjd"))


@pytest.mark.skipif(not _openjd_cli(), reason="the openjd CLI (pip install openjd-cli) is not on PATH")
def test_openjd_cli_checks_and_runs_the_bundle(tmp_path):
    exe = _fake_toon_ofx(tmp_path)
    job = _job(tmp_path, executable=str(exe))
    bundle = tmp_path / "bundle"
    write_export("openjd", job, bundle)
    cli = _openjd_cli()
    check = subprocess.run([cli, "check", str(bundle / "template.json")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([cli, "run", str(bundle / "template.json"), "-p", f"file://{bundle / 'job_params.json'}",
                          "--run-dependencies", "--step", "Assemble"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    assert [c[0] for c in calls] == ["render"] * 3 + ["assemble"]
    written = sorted(int(p.read_text()) for p in (tmp_path / "frames").iterdir())
    assert written == list(range(3, 21))


@pytest.mark.skipif(not _openjd_cli(), reason="the openjd CLI (pip install openjd-cli) is not on PATH")
def test_openjd_run_maps_paths_and_reports_progress_of_a_real_render(tmp_path, tiny_models_dir, tiny_params):
    """The bundle written for farm paths (/farm/...) runs here through OpenJD path mapping: the real
    toon-ofx renders with tiny models it finds only through the mapped PATH parameters, and its
    `openjd_progress:`/`openjd_status:` lines reach the session."""
    farm = tmp_path / "farm"
    (farm / "clips").mkdir(parents=True)
    shutil.copyfile(CLIP, farm / "clips" / "a.mp4")
    shutil.copytree(tiny_models_dir, farm / "models")
    params = dict(tiny_params, model="/farm/models/tiny-toon.pt", base_model="/farm/models/tiny-base.pt",
                  steps=2, warm_steps=1)
    toon_ofx = str(Path(sys.executable).with_name("toon-ofx"))
    job = FarmJob("/farm/clips/a.mp4", "/farm/out/frames/a_toon.%06d.png", "/farm/out/a_toon.mp4", (0, 3), 4,
                  params, executable=toon_ofx, models_dir="/farm/models", resources=Resources(gpus=0))
    bundle = tmp_path / "bundle"
    write_export("openjd", job, bundle)
    rules = {"version": "pathmapping-1.0", "path_mapping_rules": [
        {"source_path_format": "POSIX", "source_path": "/farm", "destination_path": str(farm)}]}
    env = {k: v for k, v in os.environ.items() if k != "TOON_OFX_MODELS"}   # only the mapped folder
    run = subprocess.run([_openjd_cli(), "run", str(bundle / "template.json"), "-p",
                          f"file://{bundle / 'job_params.json'}", "--run-dependencies", "--step", "Assemble",
                          "--path-mapping-rules", json.dumps(rules)],
                         capture_output=True, text=True, timeout=600, env=env)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    progress = [float(x) for x in re.findall(r"openjd_progress: ([\d.]+)", log)]
    assert progress[0] == 0.0 and progress[-1] == 100.0 and 25.0 in progress
    assert progress == sorted(progress)
    statuses = re.findall(r"openjd_status: (.*)", log)
    assert "loading tiny-base.pt (model 1 of 4)" in statuses and "loading dlib (model 4 of 4)" in statuses
    assert any(s.startswith("projecting faces: step ") for s in statuses)
    assert sorted(p.name for p in (farm / "out" / "frames").iterdir()) == [f"a_toon.{i:06d}.png" for i in range(4)]
    assert (farm / "out" / "a_toon.mp4").stat().st_size > 0


# -- OpenCue -------------------------------------------------------------------------------------------------
def _has_pyoutline() -> bool:
    import importlib.util

    return importlib.util.find_spec("outline") is not None


def _cue_tasks(layer):
    """Cuebot's chunking of a spec layer: frames in order, `chunk` at a time; RQD fills the tokens."""
    a, b = parse_frame_range(layer.findtext("range"))
    chunk = int(layer.findtext("chunk"))
    frames = list(range(a, b + 1))
    out = []
    for i in range(0, len(frames), chunk):
        part = frames[i:i + chunk]
        cmd = layer.findtext("cmd").replace("#FRAME_START#", str(part[0])).replace("#FRAME_END#", str(part[-1]))
        out.append(shlex.split(cmd.replace("#IFRAME#", str(part[0]))))   # RQD runs the command through a shell
    return out


@pytest.mark.skipif(not _has_pyoutline(), reason="PyOutline (pip install opencue-pyoutline) is not installed")
@pytest.mark.parametrize("frames", [(3, 20), (8, 23), (0, 5)])
def test_opencue_script_builds_the_job_spec_cuebot_chunks(tmp_path, frames):
    """The script, run with the real PyOutline, prints the job spec Cuebot would receive: render layers
    whose chunks cover the range once on the segment grid, with the job's cores, memory, GPUs,
    service and host tag, and an assemble layer that depends on all of them."""
    job = _job(tmp_path, frames=frames, resources=Resources(gpus=1, gpu_memory_gib=12, memory_gib=6.5, cpus=3,
                                                            worker_tag="gpu", service="toon"))
    (script,) = write_export("opencue", job, tmp_path / "cue")
    py_compile.compile(str(script), doraise=True)
    assert os.access(script, os.X_OK)

    dry = subprocess.run([sys.executable, str(script), "--dry-run"], capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert "layer render" in dry.stdout and "layer assemble" in dry.stdout

    run = subprocess.run([sys.executable, str(script), "--print-spec", "--pause"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    spec = ET.fromstring(run.stdout)
    assert spec.findtext("job/paused") == "True"
    layers = {layer.get("name"): layer for layer in spec.iter("layer")}
    renders = [layer for name, layer in layers.items() if name != "assemble"]
    assemble = layers["assemble"]
    for layer in renders:
        assert (layer.findtext("cores"), layer.findtext("memory")) == ("3.0", "6656m")
        assert (layer.findtext("gpus"), layer.findtext("gpu_memory")) == ("1", "12g")
        assert layer.findtext("tags") == "gpu" and layer.findtext("services/service") == "toon"
    assert (assemble.findtext("cores"), assemble.findtext("memory"), assemble.find("gpus")) == ("1.0", "2g", None)
    depends = {d.findtext("onlayer") for d in spec.iter("depend") if d.findtext("deplayer") == "assemble"}
    assert depends == {layer.get("name") for layer in renders}
    argvs = [argv for layer in renders for argv in _cue_tasks(layer)]
    assert all(argv[0] == "toon-ofx" for argv in argvs)
    ranges = _check_render_commands(job, [argv[1:] for argv in argvs])
    # Cuebot's chunks start on the chunk grid (multiples of the keyframe interval, shifted by the cross-fade)
    overlap = job.temporal_plan.overlap
    assert overlap == 2 and all(a == frames[0] or (a - overlap) % 8 == 0 for a, _ in ranges)
    (assemble_argv,) = _cue_tasks(assemble)
    assert assemble_argv[1:] == job.assemble_args()


# -- Flamenco ---------------------------------------------------------------------------------------------------
_FLAMENCO_HARNESS = r"""
// Runs a Flamenco job-type script the way Flamenco Manager does (goja): globals `author`,
// `frameChunker` (port of Flamenco's JSFrameChunker), `print`, `path`; then compileJob(job).
const fs = require("fs");
const vm = require("vm");

function explode(range) {
    const frames = new Set();
    for (const part of range.replace(/\.\./g, "-").split(",")) {
        const se = part.split("-");
        if (se.length === 1) { frames.add(parseInt(se[0].trim(), 10)); continue; }
        if (se.length !== 2) throw new Error("invalid range " + range);
        for (let f = parseInt(se[0], 10); f <= parseInt(se[1], 10); f++) frames.add(f);
    }
    return Array.from(frames).sort((a, b) => a - b);
}
function merge(frames) {           // Flamenco's frameRangeMerge: "3-8", "13", "15,16"
    const out = [];
    let start = frames[0], prev = frames[0];
    const flush = (a, b) => { if (a === b) out.push(String(a)); else if (a + 1 === b) out.push(a + "," + b);
                              else out.push(a + "-" + b); };
    for (const f of frames.slice(1)) { if (f > prev + 1) { flush(start, prev); start = f; } prev = f; }
    flush(start, prev);
    return out.join(",");
}
function frameChunker(range, size) {
    if (!(size >= 1)) throw new Error("invalid chunk size");
    const frames = explode(String(range).trim());
    const chunks = [];
    for (let i = 0; i < frames.length; i += size) chunks.push(merge(frames.slice(i, i + size)));
    return chunks;
}
const tasks = [];
const author = {
    Task: (name, type) => ({ name: name, type: type, commands: [], deps: [],
        addCommand(c) { this.commands.push(c); }, addDependency(t) { this.deps.push(t.name); } }),
    Command: (name, parameters) => ({ name: name, parameters: parameters }),
};
const ctx = { author, frameChunker, print: () => {}, path: require("path"), JSON, Math, String, Number,
              parseInt, isNaN, Object };
vm.createContext(ctx);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), ctx);
const submitted = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
const job = { name: submitted.name, settings: submitted.settings, addTask(t) { tasks.push(t); } };
vm.runInContext("compileJob", ctx)(job);
const jobType = vm.runInContext("JOB_TYPE", ctx);
console.log(JSON.stringify({ jobType: jobType, tasks: tasks.map((t) => ({ name: t.name, type: t.type,
    commands: t.commands, deps: t.deps })) }));
"""

NODE = shutil.which("node")


def test_flamenco_job_type_parses_as_javascript(tmp_path):
    if not NODE:
        pytest.skip("node is not installed")
    (js, _) = write_export("flamenco", _job(tmp_path), tmp_path / "fl")
    check = subprocess.run([NODE, "--check", str(js)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("frames,chunk", [((3, 20), 8), ((8, 23), 8), ((0, 71), 10), ((5, 6), 4)])
def test_flamenco_compile_job_makes_chunk_tasks_and_assemble(tmp_path, frames, chunk):
    if not NODE:
        pytest.skip("node is not installed")
    job = _job(tmp_path, frames=frames, chunk_size=chunk)
    js, job_json = write_export("flamenco", job, tmp_path / "fl")
    assert js.name == "toon_ofx.js"              # Flamenco: job type "toon-ofx" from the file name
    submitted = json.loads(job_json.read_text())
    assert submitted["type"] == "toon-ofx" and submitted["settings"]["frames"] == f"{frames[0]}-{frames[1]}"
    harness = tmp_path / "harness.js"
    harness.write_text(_FLAMENCO_HARNESS)
    run = subprocess.run([NODE, str(harness), str(js), str(job_json)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    compiled = json.loads(run.stdout)
    keys = {s["key"] for s in compiled["jobType"]["settings"]}
    assert set(submitted["settings"]) <= keys     # every submitted setting is declared by the job type
    renders = [t for t in compiled["tasks"] if t["name"] != "assemble"]
    (assemble,) = [t for t in compiled["tasks"] if t["name"] == "assemble"]
    assert sorted(assemble["deps"]) == sorted(t["name"] for t in renders)
    argvs = []
    for task in renders:
        (command,) = task["commands"]
        assert command["name"] == "exec" and command["parameters"]["exe"] == "toon-ofx"
        argvs.append(command["parameters"]["args"])
    ranges = _check_render_commands(job, argvs)
    size, grid = effective_chunk_size(chunk, 4), job.temporal_plan
    assert all(a == frames[0] or (a - grid.overlap) % size == 0 for a, _ in ranges)
    assert assemble["commands"][0]["parameters"]["args"] == job.assemble_args()


def test_flamenco_job_goes_to_tagged_workers_and_passes_the_model_folder(tmp_path):
    if not NODE:
        pytest.skip("node is not installed")
    tag = "5bd0ff7f-4c36-4d18-9b4e-4fd2ba79a57d"
    job = _job(tmp_path, resources=Resources(worker_tag=tag), models_dir="/farm/models")
    js, job_json = write_export("flamenco", job, tmp_path / "fl")
    submitted = json.loads(job_json.read_text())
    assert submitted["worker_tag"] == tag and submitted["settings"]["models_dir"] == "/farm/models"
    assert "worker_tag" not in json.loads(write_export("flamenco", _job(tmp_path), tmp_path / "f2")[1].read_text())
    harness = tmp_path / "harness.js"
    harness.write_text(_FLAMENCO_HARNESS)
    run = subprocess.run([NODE, str(harness), str(js), str(job_json)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    renders = [t for t in json.loads(run.stdout)["tasks"] if t["name"] != "assemble"]
    for task in renders:
        args = _parse_cli(task["commands"][0]["parameters"]["args"])
        assert str(args.models_dir) == "/farm/models" and args.json


# -- the command line ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_says_when_the_chunk_size_moves(tmp_path, fmt, capsys):
    """--chunk-size 10 with keyframes every 4 frames becomes 12: said on the console and in the job. The
    console counts the tasks and the most frames one writes: 14, the first task's 12 and the 2 cross-fade
    frames before the next segment starts."""
    out = tmp_path / fmt
    code = main(["farm", "export", str(CLIP), "--format", fmt, "-o", str(out), "--keyframe-interval", "4",
                 "--chunk-size", "10"])
    assert code == 0
    err = capsys.readouterr().err
    assert "chunk size 10 became 12" in err and "keyframe interval (4)" in err
    assert "frames 0-71 in 6 render task(s) of up to 14 frames" in err and "nothing to do" not in err
    text = {"openjd": lambda: json.loads((out / "template.json").read_text())["description"],
            "opencue": lambda: (out / "toon_ofx_job.py").read_text(),
            "flamenco": lambda: json.loads((out / "job.json").read_text())["metadata"]["note"]}[fmt]()
    assert "chunk size 10 became 12" in text
    assert main(["farm", "export", str(CLIP), "--format", fmt, "-o", str(tmp_path / "b"), "--keyframe-interval",
                 "4", "--chunk-size", "24"]) == 0
    assert "became" not in capsys.readouterr().err


def _exported_render_tasks(fmt, job, out):
    """Write `job` for `fmt`, cut it into tasks the way that manager does; (render argvs, the export's text)."""
    files = write_export(fmt, job, out)
    if fmt == "openjd":
        template = json.loads((out / "template.json").read_text())
        _, steps = _openjd_run(template, json.loads((out / "job_params.json").read_text()), out)
        return [argv[1:] for argv in steps["Render"][1]], template["description"]
    if fmt == "opencue":
        if not _has_pyoutline():
            pytest.skip("PyOutline is not installed")
        run = subprocess.run([sys.executable, str(files[0]), "--print-spec"], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        layers = [layer for layer in ET.fromstring(run.stdout).iter("layer") if layer.get("name") != "assemble"]
        return [argv[1:] for layer in layers for argv in _cue_tasks(layer)], files[0].read_text()
    if not NODE:
        pytest.skip("node is not installed")
    harness = out.parent / "harness.js"
    harness.write_text(_FLAMENCO_HARNESS)
    run = subprocess.run([NODE, str(harness), str(files[0]), str(files[1])], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    tasks = [t for t in json.loads(run.stdout)["tasks"] if t["name"] != "assemble"]
    return [t["commands"][0]["parameters"]["args"] for t in tasks], json.loads(files[1].read_text())["metadata"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("frames, chunk", [((0, 119), 7), ((0, 119), 48), ((10, 249), 96)])
def test_no_task_is_idle_unless_the_export_says_so(tmp_path, fmt, frames, chunk):
    """Keyframes every 48 frames (cross-fade 12): a task renders whole keyframe segments, so chunks of 7
    frames would leave most tasks nothing to do (15 of 18). Every exported task writes frames, or the
    export says how many will not, and why."""
    job = _job(tmp_path, frames=frames, chunk_size=chunk, params=dict(PARAMS, keyframe_interval=48))
    argvs, text = _exported_render_tasks(fmt, job, tmp_path / fmt)
    ranges = _check_render_commands(job, argvs)
    idle = len(argvs) - len(ranges)
    if idle:
        assert f"{idle} of the {len(argvs)} render tasks" in str(text), text
    else:
        assert "nothing to do" not in str(text)
    assert job.task_chunk_size >= 48


@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_explains_chunks_smaller_than_a_keyframe_interval(tmp_path, fmt, capsys):
    """--chunk-size 7 with keyframes every 48 frames: one interval per task, said with what would make
    smaller tasks; OpenJD's even cut of the 72 frames into 2 tasks leaves one with nothing to do: said too."""
    assert main(["farm", "export", str(CLIP), "--format", fmt, "-o", str(tmp_path / fmt), "--chunk-size", "7"]) == 0
    err = capsys.readouterr().err
    assert "chunk size 7 became 48, the keyframe interval" in err and "lower keyframe_interval" in err
    idle = "1 of the 2 render tasks will have nothing to do: OpenJD divides frames 0-71 evenly"
    assert (idle in err) == (fmt == "openjd"), err


def test_cli_resources_follow_the_device(tmp_path):
    main(["farm", "export", str(CLIP), "--format", "openjd", "-o", str(tmp_path / "cpu"), "--device", "cpu",
          "--memory", "3", "--cpus", "6"])
    amounts = json.loads((tmp_path / "cpu" / "template.json").read_text())["steps"][0]["hostRequirements"]["amounts"]
    assert {a["name"]: a["min"] for a in amounts} == {"amount.worker.vcpu": 6, "amount.worker.memory": 3072}
    main(["farm", "export", str(CLIP), "--format", "openjd", "-o", str(tmp_path / "gpu"), "--gpus", "2"])
    amounts = json.loads((tmp_path / "gpu" / "template.json").read_text())["steps"][0]["hostRequirements"]["amounts"]
    assert {a["name"]: a["min"] for a in amounts}["amount.worker.gpu"] == 2



@pytest.mark.parametrize("fmt", FORMATS)
def test_cli_farm_export_probes_the_clip(tmp_path, fmt, capsys):
    out = tmp_path / fmt
    code = main(["farm", "export", str(CLIP), "--format", fmt, "-o", str(out), "--keyframe-interval", "12",
                 "--swap-res", "32", "--chunk-size", "20", "--sequence", str(tmp_path / "seq")])
    assert code == 0, capsys.readouterr().err
    assert "0-71" in capsys.readouterr().err
    if fmt == "openjd":
        template = json.loads((out / "template.json").read_text())
        frames = {p["name"]: p.get("default") for p in template["parameterDefinitions"]}
        assert frames["Frames"] == "0-71" and frames["ChunkSize"] == 24
        assert json.loads((out / "job_params.json").read_text())["FramesDir"] == str(tmp_path / "seq")
    elif fmt == "flamenco":
        settings = json.loads((out / "job.json").read_text())["settings"]
        assert settings["sequence"] == str(tmp_path / "seq" / "single_face_toon.%06d.png")
        assert json.loads(settings["params"]) == {"keyframe_interval": 12, "keyframe_overlap": 12, "swap_res": 32}
    else:
        # a head up to the segment grid (keyframes + the 6-frame cross-fade: 30, 54), then 24-frame chunks
        assert "RENDER_LAYERS = [('render_head', '0-29', 30), ('render', '30-71', 24)]" in \
            (out / "toon_ofx_job.py").read_text()


@pytest.mark.parametrize("argv,message", [
    (["--keyframe-interval", "0"], "keyframe_interval > 0"),
    (["--frames", "60-80"], "outside the clip"),
    (["--movie", "out.gif"], "must end in"),
    (["--output-kind", "overlay", "--movie", "o.mp4"], ".mov"),
    (["--swap-res", "33"], "swap_res"),
    (["--gpus", "-1"], "gpus must be 0 or more"),
    (["--cpus", "0"], "at least 1 CPU"),
])
def test_cli_farm_export_bad_input(tmp_path, capsys, argv, message):
    code = main(["farm", "export", str(CLIP), "--format", "openjd", "-o", str(tmp_path / "x")] + argv)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_farm_export_unreadable_source_needs_frames(tmp_path, capsys):
    remote = "/farm/projects/shot010/plate.mov"
    assert main(["farm", "export", remote, "--format", "openjd", "-o", str(tmp_path / "a")]) == 2
    assert "--frames" in capsys.readouterr().err
    assert main(["farm", "export", remote, "--format", "openjd", "-o", str(tmp_path / "a"),
                 "--frames", "1001-1100"]) == 0
    values = json.loads((tmp_path / "a" / "job_params.json").read_text())
    assert values["SourceFile"] == remote and values["OutputMovie"] == "/farm/projects/shot010/plate_toon.mp4"


# -- assemble -------------------------------------------------------------------------------------------------
def _source_frames(tmp_path, first, last, skip=()):
    """An identity 'render': the source's own frames written as the sequence."""
    from toon_ofx.core import media

    pattern = str(tmp_path / "seq" / "single_face_toon.%06d.png")
    for index, frame in media.read_frames(CLIP, first, last):
        if index not in skip:
            media.write_frame(Path(pattern % index), frame)
    return pattern


def test_assemble_encodes_the_range_with_audio(tmp_path, capsys):
    from toon_ofx.core import media

    pattern = _source_frames(tmp_path, 6, 17)
    out = tmp_path / "out.mp4"
    assert main(["assemble", str(tmp_path / "seq"), "--source", str(CLIP), "-o", str(out)]) == 0, \
        capsys.readouterr().err
    info = media.probe(out)
    assert info.frame_count == 12 and info.has_audio
    assert abs(info.duration - 12 / 30) < 0.05
    # explicit range and a pattern work the same; re-running replaces the movie (farm retries)
    assert main(["assemble", pattern, "--source", str(CLIP), "-o", str(out), "--frames", "8-10"]) == 0
    assert media.probe(out).frame_count == 3


def test_assemble_names_missing_frames(tmp_path, capsys):
    pattern = _source_frames(tmp_path, 0, 9, skip={4, 5, 8})
    code = main(["assemble", pattern, "--source", str(CLIP), "-o", str(tmp_path / "o.mp4"), "--frames", "0-9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "3 frame(s)" in err and "4-5,8" in err
    assert not (tmp_path / "o.mp4").exists()


def test_assemble_bad_input(tmp_path, capsys):
    pattern = _source_frames(tmp_path, 0, 2)
    cases = [
        ([str(tmp_path / "nothing")], "neither a frame folder"),
        ([pattern, "-o", str(tmp_path / "o.gif")], "must be a movie"),
        ([pattern, "--frames", "0-100"], "outside the clip"),
        ([pattern, "-o", str(CLIP)], "source"),
    ]
    for extra, message in cases:
        argv = ["assemble"] + extra[:1] + ["--source", str(CLIP)]
        argv += extra[1:] if "-o" in extra else extra[1:] + ["-o", str(tmp_path / "o.mp4")]
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err


def test_find_sequence_in_a_folder(tmp_path):
    (tmp_path / "a").mkdir()
    for i in (3, 4, 1000000):
        (tmp_path / "a" / f"shot.{i:06d}.png").write_bytes(b"")
    (tmp_path / "a" / ".shot.000005.png.tmp").write_bytes(b"")
    pattern = find_sequence(tmp_path / "a")
    assert pattern == str(tmp_path / "a" / "shot.%06d.png")
    assert sequence_frames(pattern) == [3, 4, 1000000]
    (tmp_path / "a" / "other_0001.png").write_bytes(b"")
    with pytest.raises(UserError, match="more than one"):
        find_sequence(tmp_path / "a")


# -- chunked == whole, with the real engine -------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_params(tiny_params):
    """The conftest tiny models with the fewest projection steps that still chain warm starts."""
    return dict(tiny_params, steps=1, warm_steps=1)


def _frames(pattern, first, last):
    from toon_ofx.core import media

    return [media.read_image(pattern % i) for i in range(first, last + 1)]


@pytest.mark.parametrize("smoothing", [0.0, 0.5])
def test_chunked_render_equals_whole_render(tmp_path, engine_params, smoothing):
    """Frames 2-9 rendered in one piece, in keyframe-aligned chunks (in reverse order) and in
    chunks that cut through keyframe intervals (as OpenJD divides a range) are the same pixels."""
    from toon_ofx.core.render import Renderer, RenderRequest

    params = dict(engine_params, smoothing=smoothing)
    renderer = Renderer(params)
    first, last = 2, 9

    def render(name, chunks, warmup=0):
        pattern = str(tmp_path / name / "f.%06d.png")
        for a, b in chunks:
            result = renderer.render(RenderRequest(source=CLIP, output=Path(pattern), params=params,
                                                   frames=(a, b), warmup=warmup))
            assert result.written == b - a + 1
        return pattern

    whole = render("whole", [(first, last)])
    aligned = render("aligned", [c.frames for c in reversed(plan_chunks(first, last, 4, 0,
                                                                         plan=temporal_plan(params)))])
    ragged = render("ragged", [(2, 6), (7, 9)], warmup=1)   # cuts through a keyframe interval
    reference = _frames(whole, first, last)
    for pattern in (aligned, ragged):
        for i, (want, got) in enumerate(zip(reference, _frames(pattern, first, last))):
            assert np.array_equal(want, got), f"{pattern}: frame {first + i} differs"
