"""AWS Deadline Cloud / Open Job Description: a job bundle whose render step uses CHUNK[INT].

`bundle_files` lists the bundle: template.json (an OpenJD 2023-09 job template),
parameter_values.json (Deadline Cloud), job_params.json (`openjd run`) and a README.
Every path (clip, frames folder, movie, checkpoint files, model folder, OCIO config) is a
PATH job parameter, so Deadline's path mapping translates it for each worker's platform; the
render step asks for the FarmJob's resources in `hostRequirements` and reports its
progress with `openjd_progress:` lines (`toon-ofx render --openjd`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..core.errors import UserError
from .job import FarmJob, Resources, assemble_command, model_files, render_command, split_pattern

GROUP = "toon-ofx"
MODEL_PATH_PARAMS = {"model": ("ToonModel", "Toon model file"), "base_model": ("BaseModel", "Base model file")}
MIB_PER_GIB = 1024


def _path_param(name: str, kind: str, flow: str, label: str, description: str) -> Dict[str, Any]:
    control = {("FILE", "IN"): "CHOOSE_INPUT_FILE", ("FILE", "OUT"): "CHOOSE_OUTPUT_FILE"}.get(
        (kind, flow), "CHOOSE_DIRECTORY")
    return {"name": name, "type": "PATH", "objectType": kind, "dataFlow": flow, "description": description,
            "userInterface": {"control": control, "label": label, "groupLabel": GROUP}}


def host_requirements(resources: Resources) -> Dict[str, Any]:
    """The render step's OpenJD hostRequirements: vCPUs, memory and, unless gpus is 0, GPUs and GPU memory."""
    amounts = [{"name": "amount.worker.vcpu", "min": resources.cpus},
               {"name": "amount.worker.memory", "min": round(resources.memory_gib * MIB_PER_GIB)}]
    if resources.gpus > 0:
        amounts += [{"name": "amount.worker.gpu", "min": resources.gpus},
                    {"name": "amount.worker.gpu.memory", "min": round(resources.gpu_memory_gib * MIB_PER_GIB)}]
    return {"amounts": amounts}


def openjd_parameter_values(job: FarmJob) -> Dict[str, str]:
    """This export's values for the template's PATH parameters."""
    values = {"SourceFile": job.source, "FramesDir": split_pattern(job.sequence)[0]}
    if job.movie:
        values["OutputMovie"] = job.movie
    for param, path in model_files(job.params).items():
        values[MODEL_PATH_PARAMS[param][0]] = path
    if job.models_dir:
        values["ModelsDir"] = job.models_dir
    if job.ocio_config:
        values["OcioConfig"] = job.ocio_config
    return values


def openjd_chunks(first: int, last: int, chunk_size: int) -> List[Tuple[int, int]]:
    """How OpenJD cuts first..last into CONTIGUOUS chunks for a default task count of `chunk_size`
    (openjd-model's divide_chunk_sizes): ceil(n / chunk_size) chunks whose sizes differ by one at most."""
    n = last - first + 1
    count = -(-n // chunk_size)
    if count >= n:
        sizes = [1] * n
    elif count <= 1:
        sizes = [n]
    else:
        small, leftovers = divmod(n, count)
        sizes = [small] * count
        for i in range(leftovers):
            sizes[i * count // leftovers] += 1
    bounds = [first]
    for size in sizes:
        bounds.append(bounds[-1] + size)
    return [(a, b - 1) for a, b in zip(bounds, bounds[1:])]


def task_chunks(job: FarmJob) -> Tuple[List[Tuple[int, int]], str]:
    """The render tasks' chunks at the template's defaults, and how OpenJD cut them."""
    first, last = job.frames
    return (openjd_chunks(first, last, job.task_chunk_size),
            f"OpenJD divides frames {first}-{last} evenly into chunks of at most {job.task_chunk_size} frames")


def openjd_template(job: FarmJob) -> Dict[str, Any]:
    """An OpenJD 2023-09 job template: a CHUNK[INT] render step and an assemble step after it.

    Scalar job parameters default to this export's values. PATH parameters carry no default
    (OpenJD resolves PATH defaults relative to the template's folder, so absolute ones are
    refused): their values are in `openjd_parameter_values`, which `bundle_files` puts into
    the bundle's parameter_values.json (Deadline Cloud) and job_params.json (`openjd run`).
    """
    first, last = job.frames
    values = openjd_parameter_values(job)
    for value in list(values.values()) + [job.sequence, job.executable]:
        if "{{" in value or "}}" in value:
            raise UserError(f"{value!r}: OpenJD templates cannot carry '{{{{' or '}}}}' in a value")
    params: List[Dict[str, Any]] = [
        _path_param("SourceFile", "FILE", "IN", "Source clip", "The clip whose faces are toonified."),
        _path_param("FramesDir", "DIRECTORY", "OUT", "Frames folder",
                    "Folder of the rendered frames (one image per source frame, in the plate's own format "
                    "for an image-sequence source, PNG for a movie)."),
        {"name": "FrameName", "type": "STRING", "default": split_pattern(job.sequence)[1], "minLength": 5,
         "description": "printf pattern of the frame files inside the frames folder.",
         "userInterface": {"control": "LINE_EDIT", "label": "Frame file pattern", "groupLabel": GROUP}},
    ]
    if job.movie:
        params.append(_path_param("OutputMovie", "FILE", "OUT", "Output movie",
                                  "Movie encoded from the frames, with the source's audio."))
    placeholders = {}
    for param, (name, label) in MODEL_PATH_PARAMS.items():
        if name in values:
            params.append(_path_param(name, "FILE", "IN", label, f"The checkpoint of the `{param}` parameter."))
            placeholders[param] = f"{{{{Param.{name}}}}}"
    if job.models_dir:
        params.append(_path_param("ModelsDir", "DIRECTORY", "IN", "Model folder",
                                  "Folder the workers read model checkpoints from (TOON_OFX_MODELS)."))
    ocio = "{{Param.OcioConfig}}" if job.ocio_config else None
    if ocio:
        params.append(_path_param("OcioConfig", "FILE", "IN", "OCIO config",
                                  "The OpenColorIO config every task converts colour with (input_colorspace)."))
    params += [
        {"name": "Frames", "type": "STRING", "default": job.frame_range, "minLength": 1,
         "description": "Inclusive source frame range (0-based), e.g. 0-239.",
         "userInterface": {"control": "LINE_EDIT", "label": "Frames", "groupLabel": "Chunking"}},
        {"name": "ChunkSize", "type": "INT", "default": job.task_chunk_size,
         "minValue": 1 if job.frame_exact else max(1, job.keyframe_interval),
         "description": ("Frames per task (the range is divided evenly). Chunks are frame-exact for this "
                         "VToonify style: any size writes exactly its frames." if job.frame_exact else
                         f"Frames per task (the range is divided evenly). A task renders whole keyframe "
                         f"segments ({job.keyframe_interval} frames): a chunk inside a segment another task "
                         "renders has nothing to do; multiples of the keyframe interval waste no work."),
         "userInterface": {"control": "SPIN_BOX", "label": "Chunk size", "groupLabel": "Chunking"}},
        {"name": "Warmup", "type": "INT", "default": job.warmup, "minValue": 0,
         "description": "Extra frames each task processes before its range, not written.",
         "userInterface": {"control": "SPIN_BOX", "label": "Warm-up frames", "groupLabel": "Chunking"}},
        {"name": "ToonOfx", "type": "STRING", "default": job.executable, "minLength": 1,
         "description": "The toon-ofx command on the workers.",
         "userInterface": {"control": "LINE_EDIT", "label": "toon-ofx command", "groupLabel": "Software"}},
    ]
    pattern = "{{Param.FramesDir}}/{{Param.FrameName}}"
    render_args = render_command("{{Param.SourceFile}}", pattern, "{{Task.Param.Frame}}", "{{Param.Warmup}}",
                                 "{{Param.Frames}}" if job.chunk_of else None, job.params,
                                 models_dir="{{Param.ModelsDir}}" if job.models_dir else None, ocio_config=ocio,
                                 progress="--openjd", placeholders=placeholders)
    steps: List[Dict[str, Any]] = [{
        "name": "Render",
        "description": "Toonify the faces of one frame-range chunk into the frames folder.",
        "parameterSpace": {"taskParameterDefinitions": [{
            "name": "Frame", "type": "CHUNK[INT]", "range": "{{Param.Frames}}",
            "chunks": {"defaultTaskCount": "{{Param.ChunkSize}}", "rangeConstraint": "CONTIGUOUS"},
        }]},
        "hostRequirements": host_requirements(job.resources),
        "script": {"actions": {"onRun": {"command": "{{Param.ToonOfx}}", "args": render_args}}},
    }]
    if job.movie:
        steps.append({
            "name": "Assemble",
            "description": "Encode the finished frames into the movie, with the source's audio.",
            "dependencies": [{"dependsOn": "Render"}],
            "script": {"actions": {"onRun": {"command": "{{Param.ToonOfx}}", "args": assemble_command(
                pattern, "{{Param.SourceFile}}", "{{Param.OutputMovie}}", "{{Param.Frames}}", job.codec,
                input_colorspace=job.input_colorspace, ocio_config=ocio)}}},
        })
    description = f"toon-ofx: toonify the faces of {Path(job.source).name}, frames {first}-{last}."
    for note in (job.chunk_note(), job.idle_note(*task_chunks(job))):
        if note:
            description += f" Note: {note}."
    return {
        "specificationVersion": "jobtemplate-2023-09",
        "extensions": ["TASK_CHUNKING"],
        "name": job.name,
        "description": description,
        "parameterDefinitions": params,
        "steps": steps,
    }


README = """# {name}

An Open Job Description job bundle written by `toon-ofx farm export --format openjd`.

- AWS Deadline Cloud: `deadline bundle submit {dir}` (or `deadline bundle gui-submit {dir}`);
  parameter_values.json holds this clip's paths.
- Locally, with the OpenJD CLI: `openjd run {dir}/template.json -p file://{dir}/job_params.json --run-dependencies --step Assemble`.

The Render step's `Frame` parameter is `CHUNK[INT]` (extension TASK_CHUNKING): each task renders
one contiguous frame range into the frames folder; the Assemble step runs after all of them.
Every path is a PATH parameter, so path mapping rules translate it for each worker. Render tasks
ask for {resources} and report progress with `openjd_progress:` lines.
"""


def _resources_text(resources: Resources) -> str:
    text = f"{resources.cpus} vCPU(s) and {resources.memory_gib:g} GiB of memory"
    if resources.gpus:
        text += f", {resources.gpus} GPU(s) and {resources.gpu_memory_gib:g} GiB of GPU memory"
    return text


def bundle_files(job: FarmJob, folder: Path) -> List[Tuple[str, str, Optional[int]]]:
    """The job bundle to write into `folder`, as (file name, text, mode) rows."""
    values = openjd_parameter_values(job)
    return [
        ("template.json", json.dumps(openjd_template(job), indent=2) + "\n", None),
        ("parameter_values.json", json.dumps(
            {"parameterValues": [{"name": k, "value": v} for k, v in values.items()]}, indent=2) + "\n", None),
        ("job_params.json", json.dumps(values, indent=2) + "\n", None),
        ("README.md", README.format(name=job.name, dir=folder, resources=_resources_text(job.resources)), None),
    ]
