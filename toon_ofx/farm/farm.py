"""Render farms: frame-range chunks, job descriptions for farm managers, assembly.

A clip renders on a farm as frame-range tasks that each run

    toon-ofx render SRC -o SEQ.%06d.png --frames A-B --warmup N [effect parameters]

into ONE image sequence named by source frame numbers, then a final task runs

    toon-ofx assemble SEQ.%06d.png --source SRC -o OUT.mp4 --frames F-L

to encode the movie with the source's audio. `toon-ofx farm export` writes
that job for AWS Deadline Cloud / OpenJD (a job bundle whose render step uses
`CHUNK[INT]` task chunking), OpenCue (a PyOutline script: `Shell` layers with
`range=`/`chunk=`) and Flamenco 3 (a job-type script whose `compileJob` uses
`frameChunker`, plus the job to submit).

Why chunks reproduce a single-pass render exactly: the engine restarts its
warm-start chain (a cold projection) at every keyframe, i.e. every source frame
whose number is a multiple of the `keyframe_interval` parameter, and the face
tracker's smoothing only looks back a bounded number of frames. So the state in
which a frame is rendered depends only on the frames since shortly before the
preceding keyframe, never on where a render started: every chunk pre-rolls
from there (frames processed, not written) and writes exactly the pixels a
whole-clip render writes. Chunks whose first frame is a keyframe pre-roll only
the tracker's few frames; `plan_chunks` therefore cuts on the keyframe grid,
and every export keeps the farm's chunks on it (see `snap_chunk`).

Nothing here imports torch, the engine or Ray: exports run on a submit host.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..core.errors import UserError
from ..core.options import add_param_options, checked_frame_range, params_from_args

FORMATS = ("openjd", "opencue", "flamenco")
DEFAULT_CHUNK_KEYFRAMES = 2          # default chunk: this many keyframe intervals
MOVIE_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v")


# -- frame ranges and chunk planning ------------------------------------------------------------
@dataclass(frozen=True)
class Chunk:
    """One farm task: write source frames first..last (inclusive).

    `warmup_first` is the first frame the task processes: frames warmup_first..first-1 are
    rendered but not written, so that `first` sees the history it has in a whole-clip render.
    """

    first: int
    last: int
    warmup_first: int

    @property
    def frames(self) -> Tuple[int, int]:
        return self.first, self.last

    @property
    def warmup(self) -> int:
        """Frames processed before `first` (not written)."""
        return self.first - self.warmup_first

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


def effective_chunk_size(chunk_size: int, keyframe_interval: int) -> int:
    """`chunk_size` moved to the nearest multiple of the keyframe interval (at least one interval).

    A chunk that starts on a keyframe needs no projected warm-up frames; one that starts j frames
    after a keyframe re-projects those j frames. Sizes below one interval are kept as given.
    """
    if chunk_size < 1:
        raise UserError(f"chunk size must be at least 1, got {chunk_size}", field="chunk_size")
    k = keyframe_interval
    if k <= 0 or chunk_size < k:
        return chunk_size
    return max(k, (chunk_size + k // 2) // k * k)


def default_chunk_size(keyframe_interval: int) -> int:
    return DEFAULT_CHUNK_KEYFRAMES * keyframe_interval if keyframe_interval > 0 else 48


def chunk_warmup_first(first: int, overlap: int, keyframe_interval: int) -> int:
    """First frame a task writing from `first` has to process (mirrors the renderer).

    With keyframes every K frames the projection chain restarts at the keyframe at or before
    `first`, and the landmark tracker needs `overlap` frames of history before that. Without
    keyframes (K = 0) the chain never restarts: only a render from frame 0 reproduces it.
    """
    if keyframe_interval <= 0:
        return 0
    keyframe = first - first % keyframe_interval
    return max(0, min(keyframe, first - overlap))


def plan_chunks(first: int, last: int, chunk_size: int, overlap: int = 0, *,
                keyframe_interval: int = 0) -> List[Chunk]:
    """Split source frames first..last (inclusive) into chunks on an absolute grid.

    Chunk boundaries are the multiples of the (effective) chunk size, so with a chunk size that is
    a multiple of `keyframe_interval` every chunk but possibly the first starts on a keyframe.
    `overlap` is the pre-roll each chunk processes before its range (at least the landmark
    tracker's memory); `warmup_first` adds what the keyframe chain needs on top.
    """
    if first < 0 or last < first:
        raise UserError(f"bad frame range {first}-{last}", field="frames")
    if overlap < 0:
        raise UserError(f"warm-up must be 0 or more frames, got {overlap}", field="warmup")
    size = effective_chunk_size(chunk_size, keyframe_interval)
    chunks = []
    for j in range(first // size, last // size + 1):
        a, b = max(first, j * size), min(last, (j + 1) * size - 1)
        chunks.append(Chunk(a, b, chunk_warmup_first(a, overlap, keyframe_interval)))
    return chunks


def snap_chunk(frames: Tuple[int, int], job: Tuple[int, int], keyframe_interval: int) -> Optional[Tuple[int, int]]:
    """Move a farm-chosen chunk's boundaries onto the keyframe grid of its job.

    Farm managers cut a range into chunks their own way (OpenJD divides it evenly, adaptive
    chunking by run time). Each task can snap its own chunk: interior boundaries move down to
    the keyframe at or before them, the job's own ends stay. Because the same monotone map is
    applied to every boundary, the snapped chunks still cover the job range exactly once (a
    chunk may become empty: None), and each starts on a keyframe, so no task re-projects frames
    that another task writes.
    """
    (a, b), (first, last) = frames, job
    if not (first <= a <= b <= last):
        raise UserError(f"chunk {a}-{b} is not inside the job's frames {first}-{last}", field="frames")
    k = keyframe_interval
    if k <= 0:
        return a, b

    def snap(x: int) -> int:
        if x <= first or x > last:
            return x
        return max(first, x - x % k)

    a2, b2 = snap(a), snap(b + 1) - 1
    return (a2, b2) if a2 <= b2 else None


def tracker_memory(params: Dict[str, Any]) -> int:
    """Frames of history the landmark tracker keeps (0 when the engine is not importable)."""
    try:
        from engine.faces.tracking import FaceTracker
    except Exception:
        return 0
    try:
        return int(getattr(FaceTracker(smoothing=params.get("smoothing", 0.5)), "memory", 0))
    except Exception:
        return 0


# -- the commands every farm runs ---------------------------------------------------------------
def param_args(params: Dict[str, Any]) -> List[str]:
    """Command-line flags for every effect parameter that differs from its default.

    `keyframe_interval` is always written: the chunk grid depends on it.
    """
    from ..core.params import PARAMS, validate

    values = validate(params)
    out: List[str] = []
    for p in PARAMS:
        value = values[p.name]
        if value == p.default and p.name != "keyframe_interval":
            continue
        flag = "--" + p.name.replace("_", "-")
        if p.type is bool:
            out.append(flag if value else "--no-" + p.name.replace("_", "-"))
        else:
            out.extend([flag, repr(value) if isinstance(value, float) else str(value)])
    return out


@dataclass
class FarmJob:
    """What a farm job renders, with paths as the farm's workers see them."""

    source: str
    sequence: str                       # printf pattern of the frames, source frame numbers
    movie: Optional[str]                # movie assembled at the end (None: the sequence is the result)
    frames: Tuple[int, int]             # inclusive source frame range
    chunk_size: int
    params: Dict[str, Any] = field(default_factory=dict)
    warmup: int = 0
    executable: str = "toon-ofx"
    name: str = "toon-ofx"
    chunk_of: bool = True               # pass --chunk-of: each task snaps its chunk onto keyframes

    @property
    def keyframe_interval(self) -> int:
        from ..core.params import validate

        return int(validate(self.params)["keyframe_interval"])

    def chunks(self) -> List[Chunk]:
        return plan_chunks(self.frames[0], self.frames[1], self.chunk_size, self.warmup,
                           keyframe_interval=self.keyframe_interval)

    def render_args(self, frames: str) -> List[str]:
        """`toon-ofx render` arguments (without the executable) for one chunk."""
        args = ["render", self.source, "-o", self.sequence, "--frames", frames, "--warmup", str(self.warmup)]
        if self.chunk_of:
            args += ["--chunk-of", f"{self.frames[0]}-{self.frames[1]}"]
        return args + ["--json"] + param_args(self.params)

    def assemble_args(self) -> List[str]:
        assert self.movie is not None
        return ["assemble", self.sequence, "--source", self.source, "-o", self.movie,
                "--frames", f"{self.frames[0]}-{self.frames[1]}"]


def _grid_layers(first: int, last: int, size: int) -> List[Tuple[int, int]]:
    """(first, last) ranges whose farm chunking of `size` lands on the absolute size grid.

    A head range up to the first grid point (when `first` is not on it) and the rest, which a
    farm chunking from its start in steps of `size` then cuts exactly on the grid.
    """
    boundary = -(-first // size) * size
    if boundary == first or boundary > last:
        return [(first, last)]
    return [(first, boundary - 1), (boundary, last)]


# -- OpenJD (AWS Deadline Cloud) -----------------------------------------------------------------
def openjd_template(job: FarmJob) -> Dict[str, Any]:
    """An OpenJD 2023-09 job template: a CHUNK[INT] render step and an assemble step after it.

    Scalar job parameters default to this export's values. PATH parameters carry no default
    (OpenJD resolves PATH defaults relative to the template's folder, so absolute ones are
    refused): their values are in `openjd_parameter_values`, which `write_export` puts into
    the bundle's parameter_values.json (Deadline Cloud) and job_params.json (`openjd run`).
    """
    first, last = job.frames
    for value in (job.source, job.sequence, job.movie or "", job.executable):
        if "{{" in value or "}}" in value:
            raise UserError(f"{value!r}: OpenJD templates cannot carry '{{{{' or '}}}}' in a value")
    size = effective_chunk_size(job.chunk_size, job.keyframe_interval)
    seq_name = _split_pattern(job.sequence)[1]
    params: List[Dict[str, Any]] = [
        {"name": "SourceFile", "type": "PATH", "objectType": "FILE", "dataFlow": "IN",
         "description": "The clip whose faces are toonified.",
         "userInterface": {"control": "CHOOSE_INPUT_FILE", "label": "Source clip", "groupLabel": "toon-ofx"}},
        {"name": "FramesDir", "type": "PATH", "objectType": "DIRECTORY", "dataFlow": "OUT",
         "description": "Folder of the rendered frames (one PNG per source frame).",
         "userInterface": {"control": "CHOOSE_DIRECTORY", "label": "Frames folder", "groupLabel": "toon-ofx"}},
        {"name": "FrameName", "type": "STRING", "default": seq_name, "minLength": 5,
         "description": "printf pattern of the frame files inside the frames folder.",
         "userInterface": {"control": "LINE_EDIT", "label": "Frame file pattern", "groupLabel": "toon-ofx"}},
    ]
    if job.movie:
        params.append(
            {"name": "OutputMovie", "type": "PATH", "objectType": "FILE", "dataFlow": "OUT",
             "description": "Movie encoded from the frames, with the source's audio.",
             "userInterface": {"control": "CHOOSE_OUTPUT_FILE", "label": "Output movie", "groupLabel": "toon-ofx"}})
    params += [
        {"name": "Frames", "type": "STRING", "default": f"{first}-{last}", "minLength": 1,
         "description": "Inclusive source frame range (0-based), e.g. 0-239.",
         "userInterface": {"control": "LINE_EDIT", "label": "Frames", "groupLabel": "Chunking"}},
        {"name": "ChunkSize", "type": "INT", "default": size, "minValue": 1,
         "description": f"Frames per task; multiples of the keyframe interval ({job.keyframe_interval}) "
                        "waste no work.",
         "userInterface": {"control": "SPIN_BOX", "label": "Chunk size", "groupLabel": "Chunking"}},
        {"name": "Warmup", "type": "INT", "default": job.warmup, "minValue": 0,
         "description": "Extra frames each task processes before its range, not written.",
         "userInterface": {"control": "SPIN_BOX", "label": "Warm-up frames", "groupLabel": "Chunking"}},
        {"name": "ToonOfx", "type": "STRING", "default": job.executable, "minLength": 1,
         "description": "The toon-ofx command on the workers.",
         "userInterface": {"control": "LINE_EDIT", "label": "toon-ofx command", "groupLabel": "Software"}},
    ]
    pattern = "{{Param.FramesDir}}/{{Param.FrameName}}"
    render_args = ["render", "{{Param.SourceFile}}", "-o", pattern, "--frames", "{{Task.Param.Frame}}",
                   "--warmup", "{{Param.Warmup}}"]
    if job.chunk_of:
        render_args += ["--chunk-of", "{{Param.Frames}}"]
    render_args += ["--json"] + param_args(job.params)
    steps: List[Dict[str, Any]] = [{
        "name": "Render",
        "description": "Toonify the faces of one frame-range chunk into the frames folder.",
        "parameterSpace": {"taskParameterDefinitions": [{
            "name": "Frame", "type": "CHUNK[INT]", "range": "{{Param.Frames}}",
            "chunks": {"defaultTaskCount": "{{Param.ChunkSize}}", "rangeConstraint": "CONTIGUOUS"},
        }]},
        "script": {"actions": {"onRun": {"command": "{{Param.ToonOfx}}", "args": render_args}}},
    }]
    if job.movie:
        steps.append({
            "name": "Assemble",
            "description": "Encode the finished frames into the movie, with the source's audio.",
            "dependencies": [{"dependsOn": "Render"}],
            "script": {"actions": {"onRun": {"command": "{{Param.ToonOfx}}", "args": [
                "assemble", pattern, "--source", "{{Param.SourceFile}}", "-o", "{{Param.OutputMovie}}",
                "--frames", "{{Param.Frames}}"]}}},
        })
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": job.name,
        "description": f"toon-ofx: toonify the faces of {Path(job.source).name}, frames {first}-{last}.",
        "parameterDefinitions": params,
        "steps": steps,
    }


def openjd_parameter_values(job: FarmJob) -> Dict[str, str]:
    """This export's values for the template's PATH parameters."""
    values = {"SourceFile": job.source, "FramesDir": _split_pattern(job.sequence)[0]}
    if job.movie:
        values["OutputMovie"] = job.movie
    return values


def _split_pattern(pattern: str) -> Tuple[str, str]:
    """'/a/b/clip.%06d.png' -> ('/a/b', 'clip.%06d.png') (either separator)."""
    cut = max(pattern.rfind("/"), pattern.rfind("\\"))
    if cut < 0:
        return ".", pattern
    return pattern[:cut] or "/", pattern[cut + 1:]


_OPENJD_README = """# {name}

An Open Job Description job bundle written by `toon-ofx farm export --format openjd`.

- AWS Deadline Cloud: `deadline bundle submit {dir}` (or `deadline bundle gui-submit {dir}`);
  parameter_values.json holds this clip's paths.
- Locally, with the OpenJD CLI: `openjd run {dir}/template.json -p file://{dir}/job_params.json --run-dependencies --step Assemble`.

The Render step's `Frame` parameter is `CHUNK[INT]` (extension TASK_CHUNKING): each task renders
one contiguous frame range into the frames folder; the Assemble step runs after all of them.
"""


# -- OpenCue (PyOutline) ----------------------------------------------------------------------------
_OPENCUE_SCRIPT = '''#!/usr/bin/env python3
"""OpenCue job: toon-ofx, {description}

Generated by `toon-ofx farm export --format opencue`. Needs PyOutline (opencue-pyoutline)
and a Cuebot (CUEBOT_HOSTS or outline's config):

    python3 {filename}              submit
    python3 {filename} --pause      submit paused
    python3 {filename} --dry-run    print the layers and commands, submit nothing

Render layers are Shell layers over a frame range with a chunk size; RQD replaces
#FRAME_START#/#FRAME_END# with each chunk's first and last frame. Chunks start on the
multiples of the chunk size, a multiple of the keyframe interval, so no task
re-projects frames another task writes. The assemble layer waits for every render layer.
"""
import argparse
import shlex

JOB_NAME = {name!r}
RENDER = {render!r}
ASSEMBLE = {assemble!r}
# (layer name, frame range, chunk size)
RENDER_LAYERS = {layers!r}
ASSEMBLE_FRAME = {assemble_frame!r}


def shell_command(args):
    # PyOutline joins a command list with spaces and RQD runs it through a shell.
    return [shlex.quote(arg) for arg in args]


def build(show=None, shot=None):
    from outline import Outline
    from outline.modules.shell import Shell

    ol = Outline(JOB_NAME, show=show, shot=shot)
    renders = []
    for name, frame_range, chunk in RENDER_LAYERS:
        layer = Shell(name, command=shell_command(RENDER), range=frame_range, chunk=chunk)
        ol.add_layer(layer)
        renders.append(layer)
    if ASSEMBLE:
        assemble = Shell("assemble", command=shell_command(ASSEMBLE), range=ASSEMBLE_FRAME, chunk=1)
        ol.add_layer(assemble)
        for layer in renders:
            assemble.depend_all(layer)
    return ol


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the layers, submit nothing")
    parser.add_argument("--pause", action="store_true", help="submit the job paused")
    parser.add_argument("--show", help="OpenCue show (default: outline's)")
    parser.add_argument("--shot", help="OpenCue shot (default: outline's)")
    args = parser.parse_args(argv)
    if args.dry_run:
        for name, frame_range, chunk in RENDER_LAYERS:
            print(f"layer {{name}}: frames {{frame_range}}, chunk {{chunk}}: {{' '.join(shell_command(RENDER))}}")
        if ASSEMBLE:
            print(f"layer assemble (after all render layers): {{' '.join(shell_command(ASSEMBLE))}}")
        return 0
    from outline import cuerun

    cuerun.launch(build(args.show, args.shot), use_pycuerun=False, pause=args.pause)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
'''


def opencue_script(job: FarmJob, filename: str = "toon_ofx_job.py") -> str:
    """A PyOutline script: Shell render layer(s) with range=/chunk=, an assemble layer after them."""
    first, last = job.frames
    size = effective_chunk_size(job.chunk_size, job.keyframe_interval)
    parts = _grid_layers(first, last, size)
    layers = [("render_head", f"{a}-{b}", b - a + 1) for a, b in parts[:-1]]
    layers.append(("render", f"{parts[-1][0]}-{parts[-1][1]}", size))
    render = [job.executable] + job.render_args("#FRAME_START#-#FRAME_END#")
    assemble = [job.executable] + job.assemble_args() if job.movie else None
    return _OPENCUE_SCRIPT.format(
        description=f"toonify the faces of {Path(job.source).name}, frames {first}-{last}.",
        filename=filename, name=_opencue_name(job.name), render=render, assemble=assemble,
        layers=layers, assemble_frame=f"{first}-{first}")


def _opencue_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "toon_ofx"


# -- Flamenco 3 ---------------------------------------------------------------------------------------
FLAMENCO_JOB_TYPE = "toon-ofx"     # Flamenco names a job type after its file: toon_ofx.js

FLAMENCO_JS = r"""// Flamenco 3 job type "toon-ofx": toonify the faces of a clip on the farm.
// Generated by `toon-ofx farm export --format flamenco`.
//
// Install: copy this file into the `scripts` folder next to the flamenco-manager executable
// (the file name makes the job type name: toon_ofx.js -> "toon-ofx") and restart the Manager.
// Submit:  POST the job.json written beside it to the Manager's API, e.g.
//          curl -X POST -H 'Content-Type: application/json' -d @job.json http://MANAGER:8080/api/v3/jobs
//
// Tasks: one "exec" task per frame chunk running `toon-ofx render --frames A-B`, all writing into
// one image sequence, then an "assemble" task that depends on all of them and encodes the movie
// with the source's audio. Chunks are cut on the multiples of the chunk size (a multiple of the
// keyframe interval) so that every chunk reproduces a whole-clip render without re-projecting
// frames that another chunk writes.

const JOB_TYPE = {
    label: "toon-ofx",
    description: "Toonify the faces in a clip (StyleGAN2 network blending)",
    settings: [
        { key: "toon_ofx", type: "string", default: "toon-ofx", visible: false,
          description: "The toon-ofx command on the Workers" },
        { key: "source", type: "string", subtype: "file_path", required: true,
          description: "Clip whose faces are toonified" },
        { key: "frames", type: "string", required: true,
          description: "Inclusive source frame range (0-based), e.g. 0-239" },
        { key: "sequence", type: "string", subtype: "file_path", required: true,
          description: "printf pattern of the rendered frames, e.g. /render/shot/shot_toon.%06d.png" },
        { key: "movie", type: "string", subtype: "file_path", default: "",
          description: "Movie encoded from the frames at the end (empty: frames only)" },
        { key: "chunk_size", type: "int32", default: 96, description: "Frames per render task" },
        { key: "warmup", type: "int32", default: 0,
          description: "Extra frames each task processes before its chunk, not written" },
        { key: "params", type: "string", default: "{}",
          description: "Effect parameters as a JSON object, e.g. {\"swap_res\": 32}" },
    ]
};

function compileJob(job) {
    const settings = job.settings;
    const exe = settings.toon_ofx || "toon-ofx";
    const range = frameBounds(String(settings.frames));
    const params = JSON.parse(settings.params || "{}");
    const paramArgs = effectArgs(params);
    const keyframes = Number(params.keyframe_interval || 0);
    const size = chunkSize(Number(settings.chunk_size), keyframes);

    const renderTasks = [];
    for (const part of gridParts(range.first, range.last, size)) {
        for (const chunk of frameChunker(`${part.first}-${part.last}`, size)) {
            const bounds = frameBounds(chunk);
            const frames = `${bounds.first}-${bounds.last}`;
            const task = author.Task(`render-${frames}`, "misc");
            task.addCommand(author.Command("exec", {
                exe: exe,
                args: ["render", settings.source, "-o", settings.sequence, "--frames", frames,
                       "--warmup", String(settings.warmup || 0), "--json"].concat(paramArgs),
            }));
            job.addTask(task);
            renderTasks.push(task);
        }
    }

    if (settings.movie) {
        const assemble = author.Task("assemble", "misc");
        assemble.addCommand(author.Command("exec", {
            exe: exe,
            args: ["assemble", settings.sequence, "--source", settings.source, "-o", settings.movie,
                   "--frames", `${range.first}-${range.last}`],
        }));
        for (const task of renderTasks) {
            assemble.addDependency(task);
        }
        job.addTask(assemble);
    }
}

// "A-B", "A", "A..B" or a chunk such as "3,4" -> {first, last}.
function frameBounds(text) {
    const numbers = text.replace(/\.\./g, "-").split(/[,-]/)
        .map((s) => s.trim()).filter((s) => s.length > 0).map((s) => parseInt(s, 10));
    if (numbers.length === 0 || numbers.some((n) => isNaN(n) || n < 0)) {
        throw `invalid frame range "${text}"`;
    }
    return {
        first: numbers.reduce((a, b) => Math.min(a, b)),
        last: numbers.reduce((a, b) => Math.max(a, b)),
    };
}

// The chunk size moved to the nearest multiple of the keyframe interval (at least one interval).
function chunkSize(size, keyframes) {
    if (!(size >= 1)) {
        throw `invalid chunk size ${size}`;
    }
    if (keyframes <= 0 || size < keyframes) {
        return size;
    }
    return Math.max(keyframes, Math.floor((size + Math.floor(keyframes / 2)) / keyframes) * keyframes);
}

// Split first..last at the first multiple of `size` so that frameChunker's chunks of the second
// part start on multiples of `size`.
function gridParts(first, last, size) {
    const boundary = Math.ceil(first / size) * size;
    if (boundary === first || boundary > last) {
        return [{ first: first, last: last }];
    }
    return [{ first: first, last: boundary - 1 }, { first: boundary, last: last }];
}

// {"swap_res": 32, "color_match": false} -> ["--swap-res", "32", "--no-color-match"]
function effectArgs(params) {
    const args = [];
    for (const name of Object.keys(params).sort()) {
        const value = params[name];
        const flag = "--" + name.replace(/_/g, "-");
        if (value === true) {
            args.push(flag);
        } else if (value === false) {
            args.push("--no-" + name.replace(/_/g, "-"));
        } else {
            args.push(flag, String(value));
        }
    }
    return args;
}
"""


def flamenco_job(job: FarmJob) -> Dict[str, Any]:
    """The body to POST to a Flamenco Manager's /api/v3/jobs for this clip."""
    from ..core.params import PARAMS, validate

    values = validate(job.params)
    changed = {p.name: values[p.name] for p in PARAMS
               if values[p.name] != p.default or p.name == "keyframe_interval"}
    platform = {"win32": "windows", "darwin": "darwin"}.get(sys.platform, "linux")
    return {
        "name": job.name,
        "type": FLAMENCO_JOB_TYPE,
        "priority": 50,
        "submitter_platform": platform,
        "settings": {
            "toon_ofx": job.executable,
            "source": job.source,
            "frames": f"{job.frames[0]}-{job.frames[1]}",
            "sequence": job.sequence,
            "movie": job.movie or "",
            "chunk_size": effective_chunk_size(job.chunk_size, job.keyframe_interval),
            "warmup": job.warmup,
            "params": json.dumps(changed, sort_keys=True),
        },
        "metadata": {"generator": "toon-ofx farm export"},
    }


# -- writing exports ------------------------------------------------------------------------------------
def write_export(fmt: str, job: FarmJob, out: Path) -> List[Path]:
    """Write the job description for `fmt` into directory `out`; return the files written."""
    if fmt not in FORMATS:
        raise UserError(f"unknown farm format {fmt!r}; choose one of {', '.join(FORMATS)}", field="format")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the job files", field="output")
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []

    def put(name: str, text: str, mode: Optional[int] = None) -> None:
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        written.append(path)

    if fmt == "openjd":
        values = openjd_parameter_values(job)
        put("template.json", json.dumps(openjd_template(job), indent=2) + "\n")
        put("parameter_values.json", json.dumps(
            {"parameterValues": [{"name": k, "value": v} for k, v in values.items()]}, indent=2) + "\n")
        put("job_params.json", json.dumps(values, indent=2) + "\n")
        put("README.md", _OPENJD_README.format(name=job.name, dir=out))
    elif fmt == "opencue":
        put("toon_ofx_job.py", opencue_script(job, "toon_ofx_job.py"), 0o755)
    else:
        put("toon_ofx.js", FLAMENCO_JS)
        put("job.json", json.dumps(flamenco_job(job), indent=2) + "\n")
    return written


def _abs(path: str) -> str:
    """Absolute form of a farm path; Windows/UNC and already-absolute paths are kept."""
    if re.match(r"^([A-Za-z]:[\\/]|\\\\|/)", path):
        return path
    return str(Path.cwd() / path)


def _default_outputs(source: str, overlay: bool) -> Tuple[str, str]:
    src = Path(source)
    stem = f"{src.stem}_toon"
    movie = src.with_name(stem + (".mov" if overlay else ".mp4"))
    return str(src.with_name(stem + "_frames") / f"{stem}.%06d.png"), str(movie)


def job_from_args(args: argparse.Namespace) -> FarmJob:
    """Validate `farm export` arguments into a FarmJob (probing the source when it is readable)."""
    params = params_from_args(args)
    k = params["keyframe_interval"]
    if k <= 0:
        raise UserError("farm chunks need keyframe_interval > 0: without keyframes every chunk would have to "
                        "re-render the clip from frame 0 to reproduce a single-pass render",
                        field="keyframe_interval")
    source = _abs(str(args.source))
    overlay = params["output_kind"] == "overlay"
    seq_default, movie_default = _default_outputs(source, overlay)
    sequence = _abs(str(args.sequence)) if args.sequence else seq_default
    if "%" not in _split_pattern(sequence)[1]:
        sequence = sequence.rstrip("/\\") + "/" + f"{Path(source).stem}_toon.%06d.png"
    if not re.search(r"%0?\d*d", _split_pattern(sequence)[1]) or not sequence.lower().endswith(".png"):
        raise UserError(f"frame pattern {sequence!r} must look like folder/name.%06d.png", field="sequence")
    movie: Optional[str] = None
    if not args.no_movie:
        movie = _abs(str(args.movie)) if args.movie else movie_default
        if Path(movie).suffix.lower() not in MOVIE_SUFFIXES:
            raise UserError(f"output movie {movie} must end in {', '.join(MOVIE_SUFFIXES)}", field="movie")
        if overlay and Path(movie).suffix.lower() != ".mov":
            raise UserError("an RGBA overlay needs a .mov output movie (or --no-movie)", field="movie")
        if movie == source:
            raise UserError(f"output movie {movie} is the source clip; the source is never written to",
                            field="movie")
    frames = args.frames
    local = Path(args.source)
    if local.exists():
        try:
            from ..core import media
        except ImportError:
            media = None  # type: ignore[assignment]
        if media is not None:
            count = media.probe(local).frame_count
            if frames is None:
                frames = (0, count - 1)
            elif frames[1] >= count:
                raise UserError(f"frame range {frames[0]}-{frames[1]} is outside the clip (frames 0-{count - 1})",
                                field="frames")
    if frames is None:
        raise UserError(f"cannot read {args.source} here to count its frames; give --frames A-B", field="frames")
    chunk_size = args.chunk_size if args.chunk_size is not None else default_chunk_size(k)
    if args.warmup < 0:
        raise UserError("--warmup must be 0 or more", field="warmup")
    name = args.name or f"toon-ofx {Path(source).stem} {frames[0]}-{frames[1]}"
    return FarmJob(source=source, sequence=sequence, movie=movie, frames=tuple(frames), chunk_size=chunk_size,
                   params=params, warmup=args.warmup, executable=args.toon_ofx, name=name)


def add_farm_parser(sub) -> None:
    """`toon-ofx farm export --format openjd|opencue|flamenco SRC -o DIR`."""
    farm = sub.add_parser("farm", help="render-farm job descriptions (Deadline/OpenJD, OpenCue, Flamenco)",
                          description="Write ready-to-submit render-farm jobs that render a clip in frame-range "
                                      "chunks into one image sequence and assemble the movie at the end.")
    farm_sub = farm.add_subparsers(dest="farm_command", metavar="ACTION", required=True)
    p = farm_sub.add_parser("export", help="write a job for a farm manager",
                            description="Write a job for a farm manager. Paths are as the farm's workers see "
                                        "them; the source is probed when it is readable here.")
    p.add_argument("source", help="the clip (as the farm sees it)")
    p.add_argument("-o", "--output", type=Path, required=True, help="folder to write the job files into")
    p.add_argument("--format", choices=FORMATS, required=True,
                   help="openjd: Deadline Cloud job bundle (template.json); opencue: PyOutline script; "
                        "flamenco: job type toon_ofx.js + job.json")
    p.add_argument("--frames", type=checked_frame_range, metavar="A-B",
                   help="inclusive source frame range (0-based); default: the whole clip")
    p.add_argument("--chunk-size", type=int, help="frames per task (default: two keyframe intervals; moved to "
                   "a multiple of the keyframe interval)")
    p.add_argument("--warmup", type=int, default=0, metavar="N",
                   help="extra frames each task processes before its chunk, not written")
    p.add_argument("--sequence", help="frame pattern or folder (default: <clip>_toon_frames/<clip>_toon.%%06d.png)")
    p.add_argument("--movie", help="movie assembled at the end (default: <clip>_toon.mp4, .mov for overlays)")
    p.add_argument("--no-movie", action="store_true", help="no assemble step: the frames are the result")
    p.add_argument("--name", help="job name")
    p.add_argument("--toon-ofx", default="toon-ofx", metavar="COMMAND", help="the toon-ofx command on the workers")
    add_param_options(p)


def run_farm(args) -> int:
    if args.farm_command != "export":  # pragma: no cover - argparse allows only export
        raise UserError(f"unknown farm action {args.farm_command!r}")
    job = job_from_args(args)
    written = write_export(args.format, job, args.output)
    chunks = job.chunks()
    print(f"toon-ofx: wrote {', '.join(str(p) for p in written)}: frames {job.frames[0]}-{job.frames[1]} in "
          f"{len(chunks)} chunk(s) of up to {effective_chunk_size(job.chunk_size, job.keyframe_interval)} frames",
          file=sys.stderr)
    return 0


# -- assemble -------------------------------------------------------------------------------------------
_PRINTF = re.compile(r"%(0?)(\d*)d")


def find_sequence(path: Path) -> str:
    """A printf pattern for `path`: a pattern as given, or the one numbered PNG sequence in a folder."""
    text = str(path)
    if "%" in Path(text).name:
        if not _PRINTF.search(Path(text).name):
            raise UserError(f"{text}: expected a frame pattern like name.%06d.png", field="sequence")
        return text
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"{folder} is neither a frame folder nor a pattern like name.%06d.png", field="sequence")
    groups: Dict[Tuple[str, int, str], int] = {}
    for entry in folder.iterdir():
        m = re.fullmatch(r"(.*?)(\d+)(\.png)", entry.name, flags=re.IGNORECASE)
        if m and not entry.name.startswith("."):
            key = (m.group(1), len(m.group(2)), m.group(3))
            groups[key] = groups.get(key, 0) + 1
    if not groups:
        raise UserError(f"no numbered PNG frames in {folder}", field="sequence")
    # Frames past the padding width (e.g. 1000000 with %06d) land in their own group: merge by prefix.
    prefixes = {(prefix, ext) for prefix, _, ext in groups}
    if len(prefixes) > 1:
        names = ", ".join(f"{p}#{e}" for p, e in sorted(prefixes))
        raise UserError(f"{folder} holds more than one frame sequence ({names}); give the pattern", field="sequence")
    prefix, ext = prefixes.pop()
    width = min(w for p, w, e in groups)
    return str(folder / f"{prefix}%0{width}d{ext}")


def sequence_frames(pattern: str) -> List[int]:
    """Frame numbers present for a printf pattern (sorted)."""
    folder, name = Path(pattern).parent, Path(pattern).name
    m = _PRINTF.search(name)
    if not m:
        raise UserError(f"{pattern}: expected a frame pattern like name.%06d.png", field="sequence")
    regex = re.compile(re.escape(name[:m.start()]) + r"(\d+)" + re.escape(name[m.end():]) + r"\Z")
    if not folder.is_dir():
        return []
    frames = []
    for entry in folder.iterdir():
        hit = regex.match(entry.name)
        if hit and (pattern % int(hit.group(1))) == str(folder / entry.name):
            frames.append(int(hit.group(1)))
    return sorted(frames)


def png_has_alpha(path: Path) -> bool:
    """True when a PNG's colour type carries alpha (grey+alpha or RGBA)."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise UserError(f"{path} is not a PNG file", field="sequence")
    return struct.unpack(">B", head[25:26])[0] in (4, 6)


def _ranges(numbers: Sequence[int]) -> str:
    out, start, prev = [], None, None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(f"{start}-{prev}" if prev != start else str(start))
            start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if prev != start else str(start))
    return ",".join(out)


def assemble(sequence: Path, source: Path, output: Path, frames: Optional[Tuple[int, int]] = None,
             *, info=None) -> Path:
    """Encode frames of a finished image sequence into `output` with the source's timing and audio.

    Every frame of the range must be there (farm chunks that failed are named); the movie is
    written by media.encode_movie (atomically) and may be re-run: it replaces its own output.
    """
    from ..core import media

    pattern = find_sequence(Path(sequence))
    source, output = Path(source), Path(output)
    if output.suffix.lower() not in MOVIE_SUFFIXES:
        raise UserError(f"output {output} must be a movie ({', '.join(MOVIE_SUFFIXES)})", field="output")
    if not source.exists():
        raise UserError(f"source clip {source} does not exist", field="source")
    if output.resolve() == source.resolve():
        raise UserError(f"output {output} is the source clip; the source is never written to", field="output")
    present = sequence_frames(pattern)
    if frames is None:
        if not present:
            raise UserError(f"no frames match {pattern}", field="sequence")
        frames = (present[0], present[-1])
    first, last = frames
    if info is None:
        info = media.probe(source)
    if first < 0 or last < first or last >= info.frame_count:
        raise UserError(f"frame range {first}-{last} is outside the clip (frames 0-{info.frame_count - 1})",
                        field="frames")
    have = set(present)
    missing = [i for i in range(first, last + 1) if i not in have]
    if missing:
        raise UserError(f"{len(missing)} frame(s) of {first}-{last} are missing from {pattern}: "
                        f"{_ranges(missing[:200])}{' ...' if len(missing) > 200 else ''}; "
                        "re-run the chunks that render them", field="sequence")
    alpha = png_has_alpha(Path(pattern % first))
    if alpha and output.suffix.lower() != ".mov":
        raise UserError("the frames carry alpha (an overlay): assemble them into a .mov", field="output")
    output.parent.mkdir(parents=True, exist_ok=True)
    media.encode_movie(pattern, output, info, first_frame=first, last_frame=last, audio_from=source, alpha=alpha)
    return output


def add_assemble_parser(sub) -> None:
    p = sub.add_parser("assemble", help="encode a rendered frame sequence into a movie with the source's audio",
                       description="The last step of a farm render: check that every frame is there and encode "
                                   "the movie with the source clip's frame timing and audio.")
    p.add_argument("sequence", type=Path, help="frame folder or pattern like frames/clip_toon.%%06d.png")
    p.add_argument("--source", type=Path, required=True, help="the source clip (timing and audio)")
    p.add_argument("-o", "--output", type=Path, required=True, help="movie to write (.mp4/.mov/.mkv)")
    p.add_argument("--frames", type=checked_frame_range, metavar="A-B",
                   help="source frames to assemble (default: the frames found); all must be present")


def run_assemble(args) -> int:
    out = assemble(args.sequence, args.source, args.output, args.frames)
    print(f"toon-ofx: wrote {out}", file=sys.stderr)
    return 0
