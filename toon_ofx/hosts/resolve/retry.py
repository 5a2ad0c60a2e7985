"""Failed and cancelled renders, kept so that `Toon Faces --retry` resumes them.

After a run, `remember()` writes the clips whose engine job failed or was cancelled (with the job ids)
and where their results were to go into `<toon-ofx config dir>/resolve-retry.json`; the report says
so. `--retry` reads them back (`recall()`, for the same project and timeline only), asks the engine
to retry each job (it resumes from the frames it kept on disk) and places the results as a first run
would. A run with nothing left to retry removes the file. Standard library only.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

from .api import BridgeError
from .engine import config_path, write_json_atomic
from .placement import Placement
from .timeline import Clip

RETRY_NAME = "resolve-retry.json"
RETRYABLE = ("engine-failed", "cancelled")


def retry_path() -> str:
    return os.path.join(os.path.dirname(config_path()), RETRY_NAME)


@dataclass
class Pending:
    """What `--retry` needs: the clips with their jobs, and where the results go."""
    project: str
    timeline: str
    source_track: int
    target: Any
    jobs: List[Tuple[Clip, str]]


def remember(placements: Sequence[Placement], *, project: str, timeline: str, source_track: int, target: Any,
             path: str = "") -> int:
    """Keep the failed and cancelled renders for `--retry` (or forget them all); returns how many."""
    path = path or retry_path()
    entries = [{"clip": p.clip.to_json(), "job": p.job_id} for p in placements
               if p.status in RETRYABLE and p.job_id]
    if not entries:
        if os.path.exists(path):
            os.remove(path)
        return 0
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, {"project": project, "timeline": timeline, "source_track": source_track,
                             "target": target, "jobs": entries})
    return len(entries)


def recall(project: str, timeline: str, path: str = "") -> Pending:
    """The renders to retry on this project's timeline; BridgeError when there are none for it."""
    path = path or retry_path()
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        jobs = [(Clip.from_json(e["clip"]), str(e["job"])) for e in doc["jobs"]]
        pending = Pending(doc["project"], doc["timeline"], int(doc["source_track"]), doc.get("target", "new"), jobs)
    except FileNotFoundError:
        raise BridgeError("nothing to retry: no render failed or was cancelled since the last run.") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BridgeError(f"cannot read the renders to retry from {path}: {exc}") from None
    if (pending.project, pending.timeline) != (project, timeline):
        raise BridgeError(f"the renders to retry belong to timeline {pending.timeline!r} of project "
                          f"{pending.project!r}; open it and run --retry again.")
    return pending
