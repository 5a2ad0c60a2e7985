"""AWS Deadline Cloud / Open Job Description: a job bundle whose render step uses CHUNK[INT].

`bundle_files` lists the bundle: template.json (an OpenJD 2023-09 job template),
parameter_values.json (Deadline Cloud), job_params.json (`openjd run`) and a README.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..core.errors import UserError
from .job import FarmJob, assemble_command, render_command, split_pattern
from .plan import effective_chunk_size


def openjd_template(job: FarmJob) -> Dict[str, Any]:
    """An OpenJD 2023-09 job template: a CHUNK[INT] render step and an assemble step after it.

    Scalar job parameters default to this export's values. PATH parameters carry no default
    (OpenJD resolves PATH defaults relative to the template's folder, so absolute ones are
    refused): their values are in `openjd_parameter_values`, which `bundle_files` puts into
    the bundle's parameter_values.json (Deadline Cloud) and job_params.json (`openjd run`).
    """
    first, last = job.frames
    for value in (job.source, job.sequence, job.movie or "", job.executable):
        if "{{" in value or "}}" in value:
            raise UserError(f"{value!r}: OpenJD templates cannot carry '{{{{' or '}}}}' in a value")
    size = effective_chunk_size(job.chunk_size, job.keyframe_interval)
    seq_name = split_pattern(job.sequence)[1]
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
    render_args = render_command("{{Param.SourceFile}}", pattern, "{{Task.Param.Frame}}", "{{Param.Warmup}}",
                                 "{{Param.Frames}}" if job.chunk_of else None, job.params)
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
            "script": {"actions": {"onRun": {"command": "{{Param.ToonOfx}}", "args": assemble_command(
                pattern, "{{Param.SourceFile}}", "{{Param.OutputMovie}}", "{{Param.Frames}}")}}},
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
    values = {"SourceFile": job.source, "FramesDir": split_pattern(job.sequence)[0]}
    if job.movie:
        values["OutputMovie"] = job.movie
    return values


README = """# {name}

An Open Job Description job bundle written by `toon-ofx farm export --format openjd`.

- AWS Deadline Cloud: `deadline bundle submit {dir}` (or `deadline bundle gui-submit {dir}`);
  parameter_values.json holds this clip's paths.
- Locally, with the OpenJD CLI: `openjd run {dir}/template.json -p file://{dir}/job_params.json --run-dependencies --step Assemble`.

The Render step's `Frame` parameter is `CHUNK[INT]` (extension TASK_CHUNKING): each task renders
one contiguous frame range into the frames folder; the Assemble step runs after all of them.
"""


def bundle_files(job: FarmJob, folder: Path) -> List[Tuple[str, str, Optional[int]]]:
    """The job bundle to write into `folder`, as (file name, text, mode) rows."""
    values = openjd_parameter_values(job)
    return [
        ("template.json", json.dumps(openjd_template(job), indent=2) + "\n", None),
        ("parameter_values.json", json.dumps(
            {"parameterValues": [{"name": k, "value": v} for k, v in values.items()]}, indent=2) + "\n", None),
        ("job_params.json", json.dumps(values, indent=2) + "\n", None),
        ("README.md", README.format(name=job.name, dir=folder), None),
    ]
