"""`toon-ofx farm export`: write a FarmJob for one farm manager into a folder.

Each format module lists its files as (file name, text, mode) rows; this module
owns the table of formats and writes every file atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..core.errors import UserError
from . import flamenco, opencue, openjd
from .job import FarmJob

ExportFile = Tuple[str, str, Optional[int]]        # (file name, text, file mode or None)

EXPORTERS: Dict[str, Callable[[FarmJob, Path], List[ExportFile]]] = {
    "openjd": openjd.bundle_files,       # AWS Deadline Cloud / OpenJD job bundle
    "opencue": opencue.script_files,     # PyOutline script
    "flamenco": flamenco.job_files,      # job type + job to submit
}
FORMATS = tuple(EXPORTERS)


def render_tasks(fmt: str, job: FarmJob) -> Tuple[List[Tuple[int, int]], Optional[str]]:
    """The chunks the farm manager of `fmt` cuts the render into at the export's settings, and the note
    saying how many of those tasks will have nothing to write (None: all write frames). OpenCue and
    Flamenco cut on the segment grid (`FarmJob.chunks`); OpenJD divides the range evenly."""
    if fmt == "openjd":
        chunks, cut = openjd.task_chunks(job)
    else:
        chunks, cut = [c.frames for c in job.chunks()], f"{fmt} cuts the frames on the keyframe segments"
    return chunks, job.idle_note(chunks, cut)


def write_export(fmt: str, job: FarmJob, out: Path) -> List[Path]:
    """Write the job description for `fmt` into directory `out`; return the files written.

    Every file is generated before anything is written: a job the format refuses leaves no folder behind.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown farm format {fmt!r}; choose one of {', '.join(FORMATS)}", field="format")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder for the job files", field="output")
    files = EXPORTERS[fmt](job, out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {out}: {exc.strerror or exc}", field="output") from None
    written: List[Path] = []
    for name, text, mode in files:
        path = out / name
        tmp = path.with_name(f".{name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
        written.append(path)
    return written
