"""Engine jobs for planned strips: submit (`submit_plans`), poll (`poll`), cancel (`cancel`), retry (`resume`).

Each plan becomes one engine job writing into a new folder of its own
(`job_folder`). `poll` asks the engine once about every unfinished job and
turns the answers into messages (`Progress`, and exactly once per job a final
`Finished`, `Failed` or `Cancelled`). Nothing here waits on Blender's event
loop or timers, which never run headless.
"""
from __future__ import annotations

import inspect
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import bpy

from .planning import StripPlan, ToonifyError

#: A job is given up after this many polls in a row that could not reach the engine.
MAX_POLL_ERRORS = 3


@dataclass
class PendingJob:
    """One submitted strip, tracked by the poller."""
    job_id: str
    plan: StripPlan
    output_kind: str                 # the "output_kind" parameter: "frame" or "overlay"
    folder: str
    state: str = "queued"
    frames_done: int = 0
    frames_total: int = 0
    stage: str = ""
    finished: bool = False
    errors_in_a_row: int = 0
    result: Optional[Dict[str, Any]] = None
    error: Optional[str] = None

    @property
    def strip_name(self) -> str:
        return self.plan.strip_name


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


_MEDIA_SUFFIX = re.compile(r"\.(mp4|mov|mkv|m4v|avi|webm|mxf|mpe?g|png|jpe?g|tiff?|exr|dpx|bmp|webp)$", re.I)


def safe_name(name: str) -> str:
    """A file-name-safe stem from a strip name ("shot 1.mp4" -> "shot_1")."""
    return _SAFE.sub("_", _MEDIA_SUFFIX.sub("", name)).strip("._") or "strip"


def job_folder(root: str, strip_name: str) -> str:
    """Create a new folder for one job's frames, so a render never overwrites frames a strip uses."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = os.path.join(root, f"{safe_name(strip_name)}_{stamp}")
    folder, n = base, 1
    while True:
        try:
            os.makedirs(folder)
            return folder
        except FileExistsError:
            n += 1
            folder = f"{base}_{n}"
        except OSError as exc:
            raise ToonifyError(f"cannot create the output folder {folder}: {exc.strerror or exc}") from None


def default_output_root() -> str:
    """``<blend file folder>/toon_ofx`` for a saved file, else a folder in Blender's temp dir."""
    if bpy.data.filepath:
        return os.path.join(os.path.dirname(bpy.data.filepath), "toon_ofx")
    return os.path.join(bpy.app.tempdir or os.path.join(os.path.expanduser("~"), ".cache"), "toon_ofx")


def _accepts(func: Callable, name: str) -> bool:
    """True when `func` has a parameter called `name` (not merely **kwargs: the server rejects unknown fields)."""
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def submit_plans(plans: Sequence[StripPlan], client, params: Dict[str, Any], output_root: str) -> List[PendingJob]:
    """Submit one engine job per plan. Raises the client's EngineError on refusal.

    Jobs already submitted when a later one is refused are cancelled, so a
    failed Toonify leaves nothing running.
    """
    pending: List[PendingJob] = []
    try:
        for plan in plans:
            folder = job_folder(output_root, plan.strip_name)
            kwargs = dict(frames=[plan.first, plan.last], params=params, output_folder=folder,
                          output_kind="sequence", name=f"{safe_name(plan.strip_name)}_toon")
            if _accepts(client.submit, "fps"):
                kwargs["fps"] = plan.fps
            job = client.submit(plan.source, **kwargs)
            pending.append(PendingJob(job_id=str(job["id"]), plan=plan, output_kind=params["output_kind"],
                                      folder=folder, state=job.get("state", "queued")))
    except BaseException:
        cancel(pending, client)
        raise
    return pending


def resume(pending: Sequence[PendingJob], client) -> List[PendingJob]:
    """Queue failed or cancelled jobs again (`client.retry`): the engine resumes each from its frames on disk.

    Raises the client's EngineError on refusal, after cancelling the jobs it had resumed.
    """
    resumed: List[PendingJob] = []
    try:
        for job in pending:
            answer = client.retry(job.job_id)
            job.state, job.finished, job.errors_in_a_row = answer.get("state", "queued"), False, 0
            job.result = job.error = None
            resumed.append(job)
    except BaseException:
        cancel(resumed, client)
        raise
    return resumed


# ----------------------------------------------------------------------------- polling

@dataclass
class Message:
    job: PendingJob

    @property
    def final(self) -> bool:
        return False


@dataclass
class Progress(Message):
    frames_done: int = 0
    frames_total: int = 0
    stage: str = ""


@dataclass
class Finished(Message):
    result: Dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        return True


@dataclass
class Failed(Message):
    error: str = ""

    @property
    def final(self) -> bool:
        return True


@dataclass
class Cancelled(Message):
    @property
    def final(self) -> bool:
        return True


def _engine_error_types():
    from .engine_link import client_module
    return (client_module().EngineError, OSError)


def poll(pending: Sequence[PendingJob], client) -> List[Message]:
    """Ask the engine about every unfinished job once; one message per job asked about.

    A job is final (Finished, Failed or Cancelled) exactly once; later polls skip it.
    """
    engine_errors = _engine_error_types()
    messages: List[Message] = []
    for job in pending:
        if job.finished:
            continue
        try:
            answer = client.job(job.job_id)
        except engine_errors as exc:
            job.errors_in_a_row += 1
            status = getattr(exc, "status", None)
            if job.errors_in_a_row >= MAX_POLL_ERRORS or status == 404:
                job.finished, job.state, job.error = True, "failed", error_text(exc)
                messages.append(Failed(job, error=job.error))
            continue
        job.errors_in_a_row = 0
        job.state = answer.get("state", job.state)
        progress = answer.get("progress") or {}
        job.frames_done = int(progress.get("frames_done") or 0)
        job.frames_total = int(progress.get("frames_total") or 0) or (job.plan.last - job.plan.first + 1)
        job.stage = progress.get("stage") or job.state
        if job.state == "done":
            job.finished, job.result = True, answer.get("result") or {}
            messages.append(Finished(job, result=job.result))
        elif job.state == "failed":
            job.finished, job.error = True, answer.get("error") or "the engine failed without a message"
            messages.append(Failed(job, error=job.error))
        elif job.state == "cancelled":
            job.finished = True
            messages.append(Cancelled(job))
        else:
            messages.append(Progress(job, frames_done=job.frames_done, frames_total=job.frames_total,
                                     stage=job.stage))
    return messages


def error_text(exc: BaseException) -> str:
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def overall_progress(pending: Sequence[PendingJob]) -> float:
    """Fraction 0..1 of all frames of all jobs (finished jobs count as complete)."""
    total = done = 0
    for job in pending:
        n = job.frames_total or (job.plan.last - job.plan.first + 1)
        total += n
        done += n if job.finished else min(job.frames_done, n)
    return done / total if total else 0.0


def status_text(pending: Sequence[PendingJob]) -> str:
    """One line for the status bar."""
    running = [j for j in pending if not j.finished]
    frames_done = sum(min(j.frames_done, j.frames_total) for j in pending if j.frames_total)
    frames_total = sum(j.frames_total or (j.plan.last - j.plan.first + 1) for j in pending)
    stage = running[0].stage if running else "done"
    return (f"Toonify: {len(pending) - len(running)}/{len(pending)} strips, "
            f"frame {frames_done}/{frames_total} ({stage}) - Esc to cancel")


def cancel(pending: Sequence[PendingJob], client) -> List[str]:
    """Ask the engine to cancel every unfinished job; returns the messages of refusals."""
    problems = []
    for job in pending:
        if job.finished:
            continue
        try:
            client.cancel(job.job_id)
        except Exception as exc:  # the engine may already be gone: nothing left to stop
            problems.append(f"{job.strip_name}: {error_text(exc)}")
        job.finished, job.state = True, "cancelled"
    return problems
