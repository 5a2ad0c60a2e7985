"""Scheduling: one worker thread per device, one job at a time on each, oldest first.

Workers claim jobs from the JobStore and hand each to the JobRunner. Cancel and shutdown both stop a
running job between frames through its cancel event; the runner asks which of the two it was.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..core.errors import UserError
from .devices import resolve_device
from .requests import JobSpec
from .runner import JobRunner
from .store import JobStore

log = logging.getLogger("toon_ofx.service.workers")


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
        self._cancel: Dict[str, threading.Event] = {}
        self._shutdown_cancel: set = set()
        self._stopping = False

    # -- lifecycle
    def start(self) -> List[str]:
        resumed = self.store.recover()
        if resumed:
            log.info("resuming %d interrupted job(s): %s", len(resumed), ", ".join(resumed))
        for device in self.store.devices_with_queued():
            self._ensure_worker(device)
        return resumed

    def stop(self, timeout: float = 10.0) -> None:
        """Stop workers; a running job is interrupted between frames and left queued (it resumes next start)."""
        with self._cond:
            self._stopping = True
            for job_id, event in self._cancel.items():
                self._shutdown_cancel.add(job_id)
                event.set()
            self._cond.notify_all()
            workers = list(self._workers.values())
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    # -- API
    def submit(self, spec: JobSpec) -> Dict[str, Any]:
        job = self.store.add(spec)
        self._ensure_worker(spec.device)
        with self._cond:
            self._cond.notify_all()
        return job

    def cancel(self, job_id: str, wait: float = 2.0) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
        previous, job = self.store.request_cancel(job_id)
        if previous == "running":
            with self._cond:
                event = self._cancel.get(job_id)
                if event is not None:
                    event.set()
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                job = self.store.get(job_id)
                if job is None or job["state"] != "running":
                    break
                time.sleep(0.05)
        return previous, job

    def running(self) -> List[str]:
        with self._cond:
            return list(self._cancel)

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
        while True:
            with self._cond:
                if self._stopping:
                    return
                names = set(self._serves.get(device, ()))
            try:
                row = self.store.claim_next(names)
            except Exception:  # pragma: no cover - database trouble: keep the worker alive
                log.exception("cannot read the job queue")
                row = None
                time.sleep(1.0)
            if row is None:
                with self._cond:
                    if self._stopping:
                        return
                    self._cond.wait(timeout=1.0)
                continue
            event = threading.Event()
            with self._cond:
                self._cancel[row["id"]] = event
                if self._stopping:
                    self._shutdown_cancel.add(row["id"])
                    event.set()
            try:
                self.runner.run(row, event)
            except Exception:  # pragma: no cover - never let one job kill the worker
                log.exception("job %s: unexpected error in the worker", row["id"])
            finally:
                with self._cond:
                    self._cancel.pop(row["id"], None)
                    self._shutdown_cancel.discard(row["id"])
