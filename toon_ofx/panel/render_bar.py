"""Render jobs: the progress bar with Render, Cancel and Retry. Submits one job per clip, polls the engine
until every job has ended, cancels on request; all engine calls run on the worker pool. The window decides
what to submit (`start`) and what happens when the jobs end (`finished`).

Resuming: a clip whose earlier job (this session's, or one the engine still lists) was cancelled or
failed with the same source, frames, parameters and output is not submitted again (which would start
a new output from frame 0) but retried: the engine resumes it from its frames on disk. Retry does that
for every cancelled or failed job of the last run.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from PySide6 import QtCore, QtWidgets

from ..core.progress import describe
from .backends import TERMINAL
from .workers import TaskRunner

RESUMABLE = ("failed", "cancelled")


def _same_path(a: Any, b: Any) -> bool:
    return bool(a) and bool(b) and os.path.realpath(str(a)) == os.path.realpath(str(b))


def resumable_job(jobs: Iterable[Dict[str, Any]], item: Dict[str, Any], folder: str, params: Dict[str, Any],
                  kind: str) -> Optional[Dict[str, Any]]:
    """The newest cancelled or failed job (of `jobs`, oldest first) that renders exactly `item` (source,
    frames) with `params` into `folder` as `kind`, or None."""
    for job in reversed(list(jobs)):
        output = job.get("output") or {}
        if job.get("state") in RESUMABLE and _same_path(job.get("source"), item["source"]) \
                and list(job.get("frames") or []) == list(item["frames"] or []) and job.get("params") == params \
                and _same_path(output.get("folder"), folder) and output.get("kind") == kind:
            return job
    return None


class RenderBar(QtWidgets.QWidget):
    """Progress, Render, Cancel and Retry. `entries` are {"clip": id, "name", "job": the engine's job dict}."""

    finished = QtCore.Signal(str)          # "done", "cancelled", "failed"
    states_changed = QtCore.Signal(dict)   # clip id -> job state, after every update

    def __init__(self, backend, tasks: TaskRunner, *, set_status: Callable[..., None], label: str,
                 poll_ms: int = 400, parent=None):
        super().__init__(parent)
        self.backend, self.tasks, self.set_status = backend, tasks, set_status
        self.entries: List[Dict[str, Any]] = []
        self.params_used = None
        self._polling = False
        self._cancelling = False
        run = QtWidgets.QHBoxLayout(self)
        run.setContentsMargins(0, 0, 0, 0)
        self.progress = QtWidgets.QProgressBar()
        self.progress.setObjectName("progress")
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        self.render_button = QtWidgets.QPushButton(label)
        self.render_button.setObjectName("render_button")
        self.render_button.setDefault(True)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setObjectName("cancel_button")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.retry_button = QtWidgets.QPushButton("Retry")
        self.retry_button.setObjectName("retry_button")
        self.retry_button.setToolTip("Run the cancelled or failed clips again; finished frames are kept")
        self.retry_button.setEnabled(False)
        self.retry_button.clicked.connect(self.retry)
        run.addWidget(self.progress, 1)
        run.addWidget(self.render_button)
        run.addWidget(self.cancel_button)
        run.addWidget(self.retry_button)
        self._poll_timer = QtCore.QTimer(self)
        self._poll_timer.setInterval(poll_ms)
        self._poll_timer.timeout.connect(self._poll)

    def busy(self) -> bool:
        return any(e["job"].get("state") not in TERMINAL for e in self.entries)

    def _active_ids(self) -> List[str]:
        return [e["job"]["id"] for e in self.entries if e["job"].get("state") not in TERMINAL]

    # -------------------------------------------------------------- submit
    def _running(self, text: str) -> None:
        self.render_button.setEnabled(False)
        self.retry_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self._cancelling = False
        self.progress.setValue(0)
        self.set_status(text)

    def start(self, plan: Sequence[Tuple[Dict[str, Any], str]], params: Dict[str, Any], kind: str) -> None:
        """Submit each (work item, output folder) of `plan` with `params`, written as `kind`; a clip whose
        earlier job stopped (cancelled or failed) with the same settings is resumed instead."""
        self._running(f"Submitting {len(plan)} clip(s)…")
        earlier = [e["job"] for e in self.entries]

        def submit_all():
            jobs = self._engine_jobs() + earlier
            out = []
            for item, folder in plan:
                previous = resumable_job(jobs, item, folder, params, kind)
                job = self._resume(previous) if previous is not None else None
                if job is None:
                    job = self.backend.submit(item["source"], item["frames"], params, folder, kind)
                out.append({"clip": item["clip"], "name": item["name"], "job": job})
            return out

        self.params_used = params
        self.tasks.run(submit_all, done=self._submitted, failed=self._submit_failed)

    def _resume(self, job: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The job queued again (on the pool), or None when the engine cannot (then it is submitted anew)."""
        try:
            resumed = self.backend.retry(job["id"])
        except Exception:  # noqa: BLE001 - an engine without retry, or the job is gone
            return None
        return resumed if resumed.get("state") not in RESUMABLE else None

    def _engine_jobs(self) -> List[Dict[str, Any]]:
        """The engine's jobs, oldest first (on the pool); none when it cannot list them."""
        try:
            return list(self.backend.jobs())
        except Exception:  # noqa: BLE001 - an engine without the listing: only this session's jobs resume
            return []

    def retry(self) -> None:
        """Run every cancelled or failed job of the last run again, into the same outputs (on the pool)."""
        stopped = [e for e in self.entries if e["job"].get("state") in RESUMABLE]
        if not stopped or self.busy():
            return
        self._running(f"Resuming {len(stopped)} clip(s)…")

        def retry_all():
            out = []
            for entry in self.entries:
                job = self.backend.retry(entry["job"]["id"]) if entry in stopped else entry["job"]
                out.append(dict(entry, job=job))
            return out

        self.tasks.run(retry_all, done=self._submitted, failed=self._submit_failed)

    def _submitted(self, entries: List[Dict[str, Any]]) -> None:
        self.entries = entries
        self.set_status(f"Rendering {len(entries)} clip(s)…")
        if self._cancelling:
            self.cancel()
        self._update_progress()
        self._poll_timer.start()

    def _submit_failed(self, message: str) -> None:
        self.render_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.retry_button.setEnabled(any(e["job"].get("state") in RESUMABLE for e in self.entries))
        self.set_status(f"Could not start the render: {message}", error=True)

    # ---------------------------------------------------------------- poll
    def _poll(self) -> None:
        if self._polling or not self.entries:
            return
        active = self._active_ids()
        if not active:
            self._finish()
            return
        self._polling = True
        self.tasks.run(lambda ids: {i: self.backend.job(i) for i in ids}, active, done=self._polled,
                       failed=self._poll_failed)

    def _polled(self, answers: Dict[str, Dict[str, Any]]) -> None:
        self._polling = False
        for entry in self.entries:
            if entry["job"]["id"] in answers:
                entry["job"] = answers[entry["job"]["id"]]
        self._update_progress()
        if not self.busy():
            self._finish()

    def _poll_failed(self, message: str) -> None:
        self._polling = False
        self.set_status(f"Lost the engine: {message}", error=True)

    def _update_progress(self) -> None:
        done = total = 0
        running, eta, notice = None, None, ""
        for entry in self.entries:
            pr = entry["job"].get("progress") or {}
            total += int(pr.get("frames_total") or 0)
            done += int(pr.get("frames_done") or 0)
            notice = pr.get("notice") or notice
            if entry["job"].get("state") == "running":
                running, eta = pr, pr.get("eta_seconds")
        self.progress.setValue(int(100 * done / total) if total else 0)
        if self.busy() and not self._cancelling:
            pr = running or {}
            stage = pr.get("stage") or "queued"
            if pr.get("model") or pr.get("steps"):   # which model loads, which projection step (minutes on a CPU)
                text = f"{describe(pr)}; {done}/{total} frames"
            else:
                text = f"{stage}: {done}/{total} frames"
            if eta:
                text += f", about {int(eta) // 60}:{int(eta) % 60:02d} left"
            if notice:  # e.g. no face encoder installed: the render fell back to projection
                text += f". Note: {notice}"
            self.set_status(text)
        self.states_changed.emit({e["clip"]: e["job"].get("state") for e in self.entries})

    # -------------------------------------------------------------- cancel
    def cancel(self) -> None:
        """Cancel every unfinished job (on the pool); finished frames are kept."""
        self._cancelling = True
        self.cancel_button.setEnabled(False)
        self.set_status("Cancelling… finished frames are kept.")
        ids = self._active_ids()
        if not ids:
            return  # still submitting: _submitted() cancels what it gets

        def cancel_all(job_ids):
            out = {}
            for job_id in job_ids:
                try:
                    out[job_id] = self.backend.cancel(job_id)
                except Exception:  # noqa: BLE001 - finished meanwhile: the next poll tells
                    pass
            return out

        self.tasks.run(cancel_all, ids, done=self._polled, failed=lambda m: self.set_status(m, error=True))

    def cancel_now(self) -> None:
        """Cancel every unfinished job on this thread: the window is closing and keeps what finished."""
        for entry in self.entries:
            if entry["job"].get("state") not in TERMINAL:
                try:
                    entry["job"] = self.backend.cancel(entry["job"]["id"])
                except Exception:  # noqa: BLE001
                    pass

    def stop_polling(self) -> None:
        self._poll_timer.stop()

    def _finish(self) -> None:
        self._poll_timer.stop()
        states = [e["job"].get("state") for e in self.entries]
        outcome = "done" if all(s == "done" for s in states) else ("cancelled" if "cancelled" in states
                                                                   else "failed")
        done = states.count("done")
        errors = [f"{e['name']}: {e['job'].get('error')}" for e in self.entries if e["job"].get("state") == "failed"]
        self.render_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.retry_button.setEnabled(outcome != "done")
        if outcome == "done":
            self.progress.setValue(100)
            where = self.entries[0]["job"].get("result") or {}
            self.set_status(f"Done: {done} clip(s) rendered" + (f" to {where.get('path')}." if where else "."))
        elif outcome == "cancelled":
            self.set_status(f"Cancelled; {done} clip(s) finished. Finished frames are kept: Retry (or Render with "
                            "the same settings) resumes from them.")
        else:
            self.set_status("Failed: " + "; ".join(errors), error=True)
        self.finished.emit(outcome)
