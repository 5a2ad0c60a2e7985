"""Scheduling: one worker thread per device, one job at a time on each, oldest first.

Workers claim jobs from the JobStore and hand each to the JobRunner. Cancel and shutdown both stop a
running job through its cancel event (the renderer checks it after every projection step); the
runner asks which of the two it was. Frames a failed or cancelled job kept for a retry are removed
KEEP_FRAMES_DAYS after it ended (at the next start).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..core.errors import UserError
from .devices import resolve_device
from .requests import JobSpec
from .runner import JobRunner
from .store import JobStore

log = logging.getLogger("toon_ofx.service.workers")

KEEP_FRAMES_DAYS = 14


@dataclass
class _Run:
    """A job a worker is running: `cancel` asks it to stop, `stopped` is set once its end is recorded."""

    cancel: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)


class JobQueue:
    """Runs queued jobs: one worker thread per device, one job at a time on each, oldest first.

    Jobs keep the device they asked for ("auto", "cpu", "cuda:0", ...); `device_resolver` maps that to the
    real device (it may import torch, so it runs in a background thread, never in a request), and the
    worker of a real device takes jobs for every name that resolves to it.
    """

    def __init__(self, store: JobStore, render_fn: Optional[Callable] = None, progress_interval: float = 0.1,
                 device_resolver: Callable[[str], str] = resolve_device):
        self.store = store
        self.runner = JobRunner(store, render_fn, progress_interval, stopped_by_shutdown=self._stopped_by_shutdown)
        self.device_resolver = device_resolver
        self._cond = threading.Condition()
        self._workers: Dict[str, threading.Thread] = {}
        self._serves: Dict[str, set] = {}       # real device -> requested device names
        self._resolved: Dict[str, str] = {}     # requested device name -> real device
        self._resolving: set = set()
        self._runs: Dict[str, _Run] = {}
        self._shutdown_cancel: set = set()
        self._stopping = False

    # -- lifecycle
    def start(self) -> List[str]:
        """Recover the queue after a restart, drop long-kept frames, start the workers; returns resumed ids."""
        resumed = self.store.recover(drop_partial=self.runner.drop_partial)
        if resumed:
            log.info("resuming %d interrupted job(s): %s", len(resumed), ", ".join(resumed))
        for job in self.store.finished_before(time.time() - KEEP_FRAMES_DAYS * 86400):
            self.runner.drop_work_dir(job)
        for device in self.store.devices_with_queued():
            self._ensure_worker(device)
        return resumed

    def stop(self, timeout: float = 10.0) -> List[str]:
        """Stop workers; a running job stops within one projection step and goes back to the queue.

        Returns the ids of jobs whose worker did not stop within `timeout` (a frame stage that cannot be
        interrupted); the caller requeues them.
        """
        with self._cond:
            self._stopping = True
            for job_id, run in self._runs.items():
                self._shutdown_cancel.add(job_id)
                run.cancel.set()
            self._cond.notify_all()
            workers = list(self._workers.values())
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return self.running()

    # -- API
    def submit(self, spec: JobSpec) -> Dict[str, Any]:
        job = self.store.add(spec)
        self._wake(spec.device)
        return job

    def cancel(self, job_id: str, wait: float = 1.0) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        """Cancel a job; a running one is asked to stop and waited for up to `wait` s (no polling).

        Returns (state before, job now): "cancelled", or "cancelling" while its worker is still stopping.
        """
        previous, job = self.store.request_cancel(job_id)
        if previous in ("running", "cancelling"):
            with self._cond:
                run = self._runs.get(job_id)
            if run is not None:
                run.cancel.set()
                if run.stopped.wait(wait):
                    job = self.store.get(job_id)
        return previous, job

    def retry(self, job_id: str) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        """Queue a failed or cancelled job again; returns (state before, job now)."""
        previous, job = self.store.retry(job_id)
        if job is not None and previous in ("failed", "cancelled"):
            self._wake(job["device"])
        return previous, job

    def running(self) -> List[str]:
        with self._cond:
            return list(self._runs)

    def busy(self) -> bool:
        """True while any job is queued or running."""
        return self.store.count_active() > 0

    def _wake(self, device: str) -> None:
        self._ensure_worker(device)
        with self._cond:
            self._cond.notify_all()

    def _stopped_by_shutdown(self, job_id: str) -> bool:
        with self._cond:
            return job_id in self._shutdown_cancel

    # -- workers
    def _ensure_worker(self, requested: str) -> None:
        with self._cond:
            if self._stopping:
                return
            device = self._resolved.get(requested)
            if device is None:
                if requested not in self._resolving:
                    self._resolving.add(requested)
                    threading.Thread(target=self._resolve, args=(requested,), name=f"toon-ofx-resolve-{requested}",
                                     daemon=True).start()
                return
            worker = self._workers.get(device)
            if worker is None or not worker.is_alive():
                worker = threading.Thread(target=self._work, args=(device,), name=f"toon-ofx-worker-{device}",
                                          daemon=True)
                self._workers[device] = worker
                worker.start()

    def _resolve(self, requested: str) -> None:
        try:
            device = self.device_resolver(requested)
        except UserError as exc:
            with self._cond:
                self._resolving.discard(requested)
            failed = self.store.fail_queued(requested, exc.message)
            log.warning("device %s is not available: %s (%d job(s) failed)", requested, exc.message, len(failed))
            return
        except Exception as exc:  # pragma: no cover - torch trouble
            log.exception("cannot resolve device %s", requested)
            with self._cond:
                self._resolving.discard(requested)
            self.store.fail_queued(requested, f"cannot use device {requested}: {exc}")
            return
        with self._cond:
            self._resolving.discard(requested)
            self._resolved[requested] = device
            self._serves.setdefault(device, set()).add(requested)
        self._ensure_worker(requested)
        with self._cond:
            self._cond.notify_all()

    def _work(self, device: str) -> None:
        trouble = 0   # consecutive failures to read or write the queue (a full disk): back off, say it once
        while True:
            with self._cond:
                if self._stopping:
                    return
                names = set(self._serves.get(device, ()))
            try:
                row = self.store.claim_next(names)
                trouble = 0
            except Exception as exc:  # database trouble: keep the worker alive and try again
                if not trouble:
                    log.error("cannot take the next job from the queue: %s", exc)
                trouble += 1
                row = None
            if row is None:
                with self._cond:
                    if self._stopping:
                        return
                    self._cond.wait(timeout=min(1.0 + trouble, 5.0))
                continue
            run = _Run()
            with self._cond:
                self._runs[row["id"]] = run
                if self._stopping:
                    self._shutdown_cancel.add(row["id"])
                    run.cancel.set()
            current = self.store.row(row["id"])
            if current is not None and current["cancel_requested"]:  # cancelled between claim and now
                run.cancel.set()
            try:
                self.runner.run(row, run.cancel)
            except Exception as exc:  # never let one job kill the worker, nor stay "running"
                log.exception("job %s: unexpected error in the worker", row["id"])
                try:
                    self.store.finish(row["id"], "failed", error=f"internal error: {type(exc).__name__}: {exc}")
                except Exception:
                    log.exception("job %s: cannot record its failure", row["id"])
            finally:
                with self._cond:
                    self._runs.pop(row["id"], None)
                    self._shutdown_cancel.discard(row["id"])
                run.stopped.set()
