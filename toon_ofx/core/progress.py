"""Render progress: the events a render reports, their JSON form and their one-line description.

Stdlib-only, so every consumer can read the same fields: the CLI (tqdm bar, `--json`
lines, `--openjd` lines), the engine process's job JSON (`progress`), the panel and the
host add-ons. The JSON form only ever gains fields.

Stages, in order: "loading" (models, one event per model: `model`, `step` of `steps`),
"rendering" (after every written frame), "projecting" (inside a frame's projection:
`step` of `steps`, while frames_done stays), "encoding" (a movie output), "done".
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Optional


@dataclass
class ProgressEvent:
    stage: str                    # "loading", "rendering", "projecting", "encoding", "done"
    frames_done: int
    frames_total: int
    faces: int                    # faces found so far
    eta_seconds: Optional[float]
    model: Optional[str] = None   # "loading": the model being loaded (manifest name or file name)
    step: int = 0                 # "loading": this model's number (from 1); "projecting": steps done
    steps: int = 0                # "loading": models to load; "projecting": steps of this projection
    notice: Optional[str] = None  # a one-line notice for the user (e.g. a fallback), on the first event only
    warning: Optional[str] = None  # one thing the output could not keep (a codec switch, a dropped stream or
    #                                alpha, a still with no face), one event each, at the stage it is known

    def to_dict(self) -> Dict[str, Any]:
        """The JSON form (CLI --json lines, the job's `progress`)."""
        return asdict(self)


def describe(progress: Mapping[str, Any]) -> str:
    """One line for people: "loading toonify (model 2 of 4)", "projecting faces: step 120 of 500",
    "rendering 3/20"; a job dict's `progress` or `ProgressEvent.to_dict()`."""
    stage = str(progress.get("stage") or "")
    step, steps = int(progress.get("step") or 0), int(progress.get("steps") or 0)
    if stage == "loading" and progress.get("model"):
        return f"loading {progress['model']}" + (f" (model {step} of {steps})" if steps else "")
    if stage == "projecting" and steps:
        return f"projecting faces: step {step} of {steps}"
    total = int(progress.get("frames_total") or 0)
    if stage in ("rendering", "encoding", "done") and total:
        return f"{stage} {int(progress.get('frames_done') or 0)}/{total}"
    return stage


class Reporter:
    """A render's progress: turns frame completions and projection steps into ProgressEvents with an ETA.

    Projection steps are reported at most every PROJECTING_INTERVAL seconds (and always the
    first and the last step): a slow projection shows every step, a fast one does not flood.
    """

    PROJECTING_INTERVAL = 0.2

    def __init__(self, callback, total: int, skipped: int, notice: Optional[str] = None):
        self.callback, self.total, self.done, self.faces = callback, total, skipped, 0
        self._start, self._fresh, self._eta, self._step_time = time.monotonic(), 0, None, 0.0
        self.warnings: list = []
        self._stage = "rendering"
        self._emit("rendering", None, notice=notice)

    def warn(self, message: str) -> None:
        """One warning: an event of the current stage carrying it (kept in `warnings`)."""
        self.warnings.append(message)
        self._emit(self._stage, self._eta if self._stage == "rendering" else None, warning=message)

    def frame(self, faces: int) -> None:
        self.done += 1
        self._fresh += 1
        self.faces += faces
        rate = self._fresh / max(time.monotonic() - self._start, 1e-9)
        self._eta = (self.total - self.done) / rate
        self._emit("rendering", self._eta)

    def projecting(self, step: int, steps: int) -> None:
        now = time.monotonic()
        if step in (1, steps) or now - self._step_time >= self.PROJECTING_INTERVAL:
            self._step_time = now
            self._emit("projecting", self._eta, step=step, steps=steps)

    def stage(self, name: str) -> None:
        self._stage = name
        self._emit(name, 0.0 if name == "done" else None)

    def _emit(self, stage: str, eta: Optional[float], **extra) -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(stage, self.done, self.total, self.faces, eta, **extra))


class StepReporter:
    """One frame's progress (a preview): "loading" per model, then "projecting" steps with an ETA from the
    current projection's step rate (a new face's projection restarts it); throttled like Reporter."""

    def __init__(self, callback):
        self.callback = callback
        self._start, self._first, self._last, self._sent = 0.0, 0, 0, 0.0
        callback(ProgressEvent("loading", 0, 1, 0, None))

    def loading(self, model: str, number: int, count: int) -> None:
        self.callback(ProgressEvent("loading", 0, 1, 0, None, model=model, step=number, steps=count))

    def projecting(self, step: int, steps: int) -> None:
        now = time.monotonic()
        if step <= self._last or not self._start:   # the first step of a projection
            self._start, self._first = now, step
        self._last = step
        done = step - self._first
        eta = (now - self._start) / done * (steps - step) if done > 0 else None
        if step in (1, steps) or now - self._sent >= Reporter.PROJECTING_INTERVAL:
            self._sent = now
            self.callback(ProgressEvent("projecting", 0, 1, 0, eta, step=step, steps=steps))
