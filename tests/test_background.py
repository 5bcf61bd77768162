"""Background tasks (imports, exports, evaluations): progress, cancel, one task per piece of work, errors."""
from __future__ import annotations

import threading
import time

import pytest

from fmnist_jax.studio.background import TaskRegistry


def test_a_task_reports_progress_and_its_result_and_is_not_started_twice() -> None:
    registry = TaskRegistry(workers=1)
    gate = threading.Event()

    def work(progress):
        progress(0.5, "half way")
        assert gate.wait(10)
        return {"rows": 3}

    first = registry.submit("me", "import", "file-a", work, "file-a")
    deadline = time.time() + 10
    while registry.get(first["id"])["progress"] < 0.5 and time.time() < deadline:
        time.sleep(0.01)
    running = registry.get(first["id"])
    assert (running["status"], running["progress"], running["message"]) == ("running", 0.5, "half way")
    again = registry.submit("me", "import", "file-a", work)  # a rerun asks again: the same task, not a second one
    assert again["id"] == first["id"]
    gate.set()
    done = registry.wait(first["id"])
    assert done["status"] == "done" and done["result"] == {"rows": 3} and done["progress"] == 1.0
    assert registry.submit("me", "import", "file-a", work)["id"] == first["id"]  # its result is kept
    assert registry.submit("other", "import", "file-a", lambda p: 1)["id"] != first["id"]  # per owner


def test_cancel_stops_a_running_task_at_its_next_progress_report() -> None:
    registry = TaskRegistry(workers=1)
    steps = []

    def slow(progress):
        for step in range(1000):
            progress(step / 1000, f"step {step}")
            steps.append(step)
            time.sleep(0.005)
        return "finished"

    task = registry.submit("me", "export", "model", slow)
    while not steps:
        time.sleep(0.01)
    registry.cancel(task["id"])
    ended = registry.wait(task["id"])
    assert ended["status"] == "cancelled" and ended["result"] is None and len(steps) < 1000
    queued = registry.submit("me", "export", "other", slow)
    registry.cancel(queued["id"])
    assert registry.wait(queued["id"])["status"] == "cancelled"


def test_a_users_mistake_is_said_plainly_and_a_bug_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    registry = TaskRegistry(workers=1)

    def bad_file(progress):
        raise ValueError("archive.zip is not a zip file")

    def bug(progress):
        return {}["missing"]

    assert registry.wait(registry.submit("me", "import", "a", bad_file)["id"])["error"] == "archive.zip is not a zip file"
    with caplog.at_level("ERROR", logger="fmnist_jax.studio.background"):
        failed = registry.wait(registry.submit("me", "import", "b", bug)["id"])
    assert failed["status"] == "failed" and failed["error"] == "unexpected KeyError; see the server log"
    assert any("KeyError" in record.getMessage() for record in caplog.records)
    retried = registry.submit("me", "import", "a", lambda p: "fixed")  # a failed task can be tried again
    assert registry.wait(retried["id"])["result"] == "fixed"
    registry.forget(retried["id"])
    assert registry.get(retried["id"]) is None


def test_drain_at_exit_cancels_everything_and_waits_for_the_running_task() -> None:
    """Registered with atexit: a worker torn down inside a compilation would abort the process instead."""
    registry = TaskRegistry(workers=1)
    started, ended = threading.Event(), threading.Event()

    def busy(progress):
        started.set()
        try:
            for step in range(2000):
                time.sleep(0.005)  # work that only notices the cancel at its next report
                progress(step / 2000, "working")
        finally:
            ended.set()

    running = registry.submit("me", "evaluate", "a", busy)
    queued = registry.submit("me", "evaluate", "b", busy)
    assert started.wait(10)
    assert registry.drain(timeout=10) is True
    assert ended.is_set()  # drain returned only after the running task had ended
    assert registry.get(running["id"])["status"] == "cancelled"
    assert registry.get(queued["id"])["status"] == "cancelled"
