"""Render progress: the events a render reports, their JSON form and their one-line description.

Stdlib-only, so every consumer can read the same fields: the CLI (tqdm bar, `--json`
lines, `--openjd` lines), the engine process's job JSON (`progress`), the panel and the
host add-ons. The JSON form only ever gains fields.

Stages, in order: "loading" (models, one event per model: `model`, `step` of `steps`),
"rendering" (after every written frame), "projecting" (inside a frame's projection:
`step` of `steps`, while frames_done stays), "encoding" (a movie output), "done".
"""
from __future__ import annotations

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
