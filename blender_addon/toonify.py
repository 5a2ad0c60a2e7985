"""One Toonify press (`Run`): connect, submit, poll, and place each result as its job finishes.

The modal operator (UI) and `execute()` (scripts, headless Blender, tests) both
drive a `Run` by calling `tick()`; `finish_message()` places a finished result
(its source strip looked up by name) and says what to report.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import bpy

from . import compat
from .jobs import (Cancelled, Failed, Finished, Message, PendingJob, cancel, error_text, overall_progress, poll,
                   resume, status_text, submit_plans)
from .placement import covered_strips, place_result
from .planning import StripPlan, ToonifyError

class Run:
    """One Toonify press: connect (starting the engine if needed), submit, poll, finish.

    Plain Python driven by whoever owns it: the modal operator calls `tick()` on
    each timer event, `execute()` calls it in a loop. With ``background=True``
    connecting and submitting happen on a worker thread, because starting the
    engine can take many seconds; the thread never touches bpy.
    """

    def __init__(self, plans: Sequence[StripPlan], params: Dict[str, Any], output_root: str,
                 connect: Callable[[], Any]):
        self.plans = list(plans)
        self.params = params
        self.output_root = output_root
        self._connect = connect
        self.client = None
        self.pending: List[PendingJob] = []
        self.error: Optional[str] = None
        self.cancel_requested = False
        self.cancelled = False
        self.finals: List[Message] = []
        self._thread = None
        self._submitted = False
        self._retry: Optional[List[PendingJob]] = None

    @classmethod
    def retrying(cls, pending: Sequence[PendingJob], connect: Callable[[], Any]) -> "Run":
        """A run that resumes earlier failed or cancelled jobs instead of submitting new ones."""
        run = cls([job.plan for job in pending], {}, "", connect)
        run._retry = list(pending)
        return run

    # the worker: no bpy in here
    def _connect_and_submit(self) -> None:
        try:
            client = self._connect()
            self.client = client
            if self.cancel_requested:
                return
            if self._retry is not None:
                pending = resume(self._retry, client)
            else:
                pending = submit_plans(self.plans, client, self.params, self.output_root)
            self.pending = pending
            if self.cancel_requested:  # Esc while submitting: stop what was just queued
                cancel(pending, client)
        except Exception as exc:
            self.error = error_text(exc)
        finally:
            self._submitted = True

    def start(self, background: bool = True) -> "Run":
        if background:
            import threading
            self._thread = threading.Thread(target=self._connect_and_submit, name="toon-ofx submit", daemon=True)
            self._thread.start()
        else:
            self._connect_and_submit()
        return self

    @property
    def starting(self) -> bool:
        return not self._submitted

    @property
    def done(self) -> bool:
        if not self._submitted:
            return False
        return self.error is not None or self.cancelled or all(j.finished for j in self.pending)

    def tick(self) -> List[Message]:
        """Poll once (nothing while the engine is still starting); returns this tick's messages."""
        if not self._submitted or self.done:
            return []
        if self.cancel_requested:
            self.cancel()
            return []
        messages = poll(self.pending, self.client)
        self.finals.extend(m for m in messages if m.final)
        return messages

    def request_cancel(self) -> None:
        """Ask for cancellation from anywhere (a panel button, Esc); acted on at the next tick."""
        self.cancel_requested = True
        if self._submitted:
            self.cancel()

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancel_requested = True
        if self.client is not None:
            unfinished = [j for j in self.pending if not j.finished]
            cancel(unfinished, self.client)
            self.finals.extend(Cancelled(j) for j in unfinished)
        self.cancelled = True

    @property
    def progress(self) -> float:
        return overall_progress(self.pending) if self.pending else 0.0

    @property
    def status(self) -> str:
        if not self._submitted:
            return "Toonify: connecting to the engine (starting it if needed) - Esc to cancel"
        if not self.pending:
            return "Toonify"
        return status_text(self.pending)


def place_finished(message: Finished) -> Tuple[Any, List[str]]:
    """Place a Finished job's result next to its source strip (looked up by name); (new strip, covered names)."""
    plan = message.job.plan
    scene = bpy.data.scenes.get(plan.scene_name)
    source = compat.find_strip(scene, plan.strip_name) if scene is not None else None
    if source is None:
        raise ToonifyError(f"strip {plan.strip_name!r} is gone; its result is in {message.job.folder}")
    strip = place_result(scene, source, message.result, message.job.output_kind, plan.mapping)
    return strip, covered_strips(scene, source, strip)


def finish_message(message: Message):
    """Handle one final message: place a finished result. Returns (level, text) for a report.

    The level is INFO or WARNING for a placed result (WARNING: it covers strips that showed above its
    source), ERROR or WARNING otherwise.
    """
    job = message.job
    if isinstance(message, Finished):
        try:
            strip, covered = place_finished(message)
        except ToonifyError as exc:
            return "ERROR", f"Toonify {job.strip_name!r}: {exc}"
        text = (f"Toonify {job.strip_name!r}: added {strip.name!r} in channel {strip.channel}, "
                f"frames {strip.frame_final_start}-{strip.frame_final_end - 1}")
        if covered:
            names = ", ".join(repr(n) for n in covered)
            return "WARNING", f"{text}; it now covers {names}, which showed above the source"
        return "INFO", text
    if isinstance(message, Failed):
        return "ERROR", f"Toonify {job.strip_name!r} failed: {message.error} (Retry resumes it)"
    if isinstance(message, Cancelled):
        return "WARNING", f"Toonify {job.strip_name!r} cancelled (Retry resumes it)"
    return "INFO", ""
