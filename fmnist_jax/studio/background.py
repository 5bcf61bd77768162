"""Background work other than training: dataset imports, ONNX exports, test-set evaluations.

A page submits a task and redraws from its snapshot; the task runs in a worker thread of this process, so it
survives reruns, page switches and reloads, reports progress, and can be cancelled (between progress
reports). Tasks are keyed by (owner, kind, key): asking again for the same work while it runs, or after it
finished and is still kept, returns the same task instead of starting a second one. Finished tasks leave
the registry after a while (their results are files, or cheap to make again).
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from fmnist_jax.errors import UserError

# The statuses of a job or task still to finish, in both registries (training jobs here and in jobs.py).
ACTIVE = ("queued", "running")
KEEP_FINISHED = 200
KEEP_FINISHED_SECONDS = 1800.0
_LOG = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


class Cancelled(Exception):
    """Raised inside a task, at its next progress report, once someone asked to cancel it."""


@dataclass
class Task:
    """One piece of background work and what a page shows of it."""

    id: int
    owner: str
    kind: str
    key: str
    label: str
    work: Callable[[Progress], Any] = field(repr=False)
    status: str = "queued"
    progress: float = 0.0
    message: str = ""
    result: Any = field(default=None, repr=False)
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def snapshot(self) -> dict:
        """A copy safe to read from another thread (the result is shared, not copied)."""
        return {"id": self.id, "owner": self.owner, "kind": self.kind, "key": self.key, "label": self.label,
                "status": self.status, "progress": self.progress, "message": self.message, "result": self.result,
                "error": self.error, "created": self.created, "finished": self.finished}


def poll_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Check `condition` every `interval` s until it holds (True) or `timeout` s have passed (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


class TaskRegistry:
    """Runs submitted tasks on `workers` threads, oldest first."""

    def __init__(self, workers: int = 1, max_per_owner: int = 3):
        self.max_per_owner = max_per_owner
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._tasks: dict[int, Task] = {}
        self._ids = itertools.count(1)
        for number in range(workers):
            threading.Thread(target=self._work, name=f"fmnist-task-{number}", daemon=True).start()

    def submit(self, owner: str, kind: str, key: str, work: Callable[[Progress], Any], label: str = "") -> dict:
        """Queue `work(progress)`, or return the task already doing (or done with) the same thing."""
        with self._lock:
            same = [t for t in self._tasks.values() if (t.owner, t.kind, t.key) == (owner, kind, key)
                    and t.status in (*ACTIVE, "done")]
            if same:
                return same[-1].snapshot()
            if sum(t.owner == owner and t.status in ACTIVE for t in self._tasks.values()) >= self.max_per_owner:
                raise ValueError(f"you already have {self.max_per_owner} tasks running; wait for one to finish")
            task = Task(next(self._ids), owner, kind, key, label or kind, work)
            self._tasks[task.id] = task
            self._prune()
            self._wake.notify_all()
            return task.snapshot()

    def find(self, owner: str, kind: str, key: str) -> dict | None:
        """The newest task for this work, if the registry still has one."""
        with self._lock:
            same = [t for t in self._tasks.values() if (t.owner, t.kind, t.key) == (owner, kind, key)]
            return same[-1].snapshot() if same else None

    def owned(self, owner: str, kind: str, key_prefix: str = "") -> list[dict]:
        """An owner's tasks of one kind (keys starting with `key_prefix`), oldest first: what a page reloaded
        from scratch finds still running or finished for it."""
        with self._lock:
            return [t.snapshot() for t in self._tasks.values()
                    if t.owner == owner and t.kind == kind and t.key.startswith(key_prefix)]

    def get(self, task_id: int) -> dict | None:
        with self._lock:
            task = self._tasks.get(task_id)
            return task.snapshot() if task else None

    def cancel(self, task_id: int) -> None:
        """Cancel a queued task at once, a running one at its next progress report."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return
            task.cancel.set()
            if task.status == "queued":
                task.status, task.finished = "cancelled", time.time()

    def forget(self, task_id: int) -> None:
        """Drop a finished task (a page took its result, or its owner dismissed its error)."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and task.status not in ACTIVE:
                del self._tasks[task_id]

    def wait(self, task_id: int, timeout: float = 60.0) -> dict | None:
        """Block until the task has ended (tests, the CLI)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            snap = self.get(task_id)
            if snap is None or snap["status"] not in ACTIVE:
                return snap
            time.sleep(0.02)
        return self.get(task_id)

    def drain(self, timeout: float = 30.0) -> bool:
        """Cancel every task and wait up to `timeout` s for the running ones to end; True when none runs.

        Registered at exit: the workers are daemon threads, and one torn down inside a compilation aborts the
        whole process ("terminate called ...") instead of letting it exit."""
        with self._lock:
            for task in self._tasks.values():
                task.cancel.set()
                if task.status == "queued":
                    task.status, task.finished = "cancelled", time.time()
        def idle() -> bool:
            with self._lock:
                return not any(t.status == "running" for t in self._tasks.values())
        return poll_until(idle, timeout)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tasks)

    def _prune(self) -> None:
        now = time.time()
        finished = sorted((t for t in self._tasks.values() if t.status not in ACTIVE),
                          key=lambda t: t.finished or 0.0, reverse=True)
        for index, task in enumerate(finished):
            if index >= KEEP_FINISHED or now - (task.finished or now) > KEEP_FINISHED_SECONDS:
                del self._tasks[task.id]

    def _next(self) -> Task:
        with self._lock:
            while True:
                queued = [t for t in self._tasks.values() if t.status == "queued"]
                if queued:
                    task = min(queued, key=lambda t: t.id)
                    task.status = "running"
                    return task
                self._wake.wait()

    def _work(self) -> None:
        while True:
            task = self._next()

            def progress(fraction: float, message: str, task: Task = task) -> None:
                if task.cancel.is_set():
                    raise Cancelled()
                with self._lock:
                    task.progress, task.message = max(0.0, min(1.0, float(fraction))), str(message)

            try:
                result = task.work(progress)
            except Cancelled:
                outcome = {"status": "cancelled"}
            # What a user's input can cause, said plainly: a UserError (store, data, export, training errors and the
            # settings checks), another ValueError from a check, or the disk (OSError).
            except (UserError, ValueError, OSError) as error:
                outcome = {"status": "failed", "error": str(error)}
            except Exception as error:  # a bug: logged in full, reported by type; the worker lives on
                _LOG.error("background task %s failed\n%s", task.label, traceback.format_exc())
                outcome = {"status": "failed", "error": f"unexpected {type(error).__name__}; see the server log"}
            else:
                outcome = {"status": "done", "result": result, "progress": 1.0}
            with self._lock:
                for name, value in outcome.items():
                    setattr(task, name, value)
                task.finished, task.work = time.time(), _spent
                self._prune()


def _spent(progress: Progress) -> Any:
    raise RuntimeError("this task already ran")
