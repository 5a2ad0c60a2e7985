"""Work off the UI thread: `TaskRunner.run(fn, *args, done=, failed=)` runs `fn` on a thread pool and hands
its answer (or a one-line error) back to the UI thread, so previews, submits, polls and cancels never block it.
"""
from __future__ import annotations

from typing import Any, Callable

from PySide6 import QtCore
from PySide6.QtCore import Qt

from .backends import error_text


class _Signals(QtCore.QObject):
    done = QtCore.Signal(object)
    failed = QtCore.Signal(str)


class Task(QtCore.QRunnable):
    """Run `fn(*args)` on the pool; the answer comes back on the UI thread as a signal."""

    def __init__(self, fn: Callable, *args: Any):
        super().__init__()
        self.fn, self.args = fn, args
        self.signals = _Signals()
        self.setAutoDelete(False)

    def run(self) -> None:
        try:
            result = self.fn(*self.args)
        except BaseException as exc:  # noqa: BLE001 - reported in the window, never a traceback
            self.signals.failed.emit(error_text(exc))
        else:
            self.signals.done.emit(result)


class TaskRunner(QtCore.QObject):
    """A thread pool whose answers arrive on the UI thread; keeps each task alive until it has answered."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.pool = QtCore.QThreadPool(self)
        self._tasks: set = set()

    def run(self, fn: Callable, *args: Any, done: Callable[[Any], None], failed: Callable[[str], None]) -> Task:
        """Start `fn(*args)`; `done(result)` or `failed(message)` is called later on the UI thread."""
        task = Task(fn, *args)
        self._tasks.add(task)

        def finish(callback, value):
            self._tasks.discard(task)
            callback(value)

        # queued: the callbacks run on the UI thread (where the signals object lives), never on the worker
        task.signals.done.connect(lambda value: finish(done, value), Qt.QueuedConnection)
        task.signals.failed.connect(lambda message: finish(failed, message), Qt.QueuedConnection)
        self.pool.start(task)
        return task

    def wait(self, msecs: int) -> bool:
        """Wait up to `msecs` for running tasks (on close)."""
        return self.pool.waitForDone(msecs)
