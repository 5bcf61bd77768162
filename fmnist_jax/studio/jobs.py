"""Background training jobs: a thread-safe registry with a queue, stop signals and live metric history.

The Streamlit app keeps one JobRegistry per server process (through st.cache_resource); pages only
read snapshots. Jobs write their metrics and checkpoints to the run folder as they go, so a refresh,
a page switch or a server restart loses at most the current chunk.

"""
from __future__ import annotations

import functools
import itertools
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from fmnist_jax import store
from fmnist_jax.data.splitting import Splits
from fmnist_jax.deploy import predict
from fmnist_jax.errors import UserError
from fmnist_jax.studio.background import ACTIVE, poll_until
from fmnist_jax.train_and_test import train_and_test
from fmnist_jax.training.config import TrainConfig

MAX_CHUNK_RECORDS = 5000
FINISHED_CHUNK_RECORDS = 200   # a finished job keeps this many live-chart points (its epochs stay whole)
KEEP_FINISHED = 100            # finished jobs the registry keeps (newest first); their runs stay on disk
KEEP_FINISHED_SECONDS = 3600.0  # and for at most this long after they ended


@dataclass
class Job:
    """One training request and everything the Training page shows about it."""

    id: int
    project_id: str
    run_dir: Path
    name: str
    owner: str
    prepare: Callable[[], tuple[Any, TrainConfig, Splits]] = field(repr=False)
    resume: bool = False
    run_meta: dict = field(default_factory=dict)
    init_from: str | None = None   # transfer learning: the model (demo, run folder, bundle) whose weights start the run
    status: str = "queued"
    phase: str = "training"   # then "testing" (the test-set pass after training), then "done"
    time_limited: bool = False  # stopped by the registry's time limit, not by its owner
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    start_info: dict = field(default_factory=dict)
    chunks: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    result: dict = field(default_factory=dict)
    error: str | None = None
    stop_event: threading.Event = field(default_factory=threading.Event, repr=False)

    def snapshot(self) -> dict:
        """A copy safe to read from another thread."""
        return {"id": self.id, "project_id": self.project_id, "run_dir": str(self.run_dir), "name": self.name,
                "owner": self.owner, "status": self.status, "created": self.created, "started": self.started,
                "finished": self.finished, "start": dict(self.start_info), "chunks": list(self.chunks),
                "epochs": list(self.epochs), "result": dict(self.result), "error": self.error,
                "stop_requested": self.stop_event.is_set(), "resume": self.resume, "phase": self.phase,
                "time_limited": self.time_limited}


class JobRegistry:
    """Queue and run training jobs in background threads, at most `max_running` at a time."""

    def __init__(self, max_running: int = 1, max_queued_per_owner: int | None = None, max_total: int | None = None,
                 max_seconds: float | None = None):
        """`max_seconds`: a running job is stopped (its checkpoint kept, resumable) once it has run this long."""
        self.max_running, self.max_seconds = max_running, max_seconds
        self.keep_finished, self.keep_finished_seconds = KEEP_FINISHED, KEEP_FINISHED_SECONDS
        self.max_queued_per_owner = max_queued_per_owner
        self.max_total = max_total
        self._lock = threading.Lock()
        self._jobs: dict[int, Job] = {}
        self._ids = itertools.count(1)
        self._wake = threading.Condition(self._lock)
        self._workers = [threading.Thread(target=self._work, name=f"fmnist-train-{i}", daemon=True) for i in range(max_running)]
        for worker in self._workers:
            worker.start()

    def submit(self, project_id: str, run_dir: Path, prepare: Callable[[], tuple[Any, TrainConfig, Splits]],
               name: str | None = None, resume: bool = False, owner: str = "local", run_meta: dict | None = None,
               init_from: str | None = None) -> dict:
        """Queue a job; ValueError if this project already has one queued or running, or a cap is reached."""
        with self._lock:
            active = [j for j in self._jobs.values() if j.status in ACTIVE]
            if any(j.project_id == project_id and j.owner == owner for j in active):
                raise ValueError("this project already has a training job queued or running; stop it or wait for it to finish")
            if self.max_queued_per_owner is not None and sum(j.owner == owner for j in active) >= self.max_queued_per_owner:
                raise ValueError(f"you already have {self.max_queued_per_owner} training job(s) queued or running; wait for one to finish")
            if self.max_total is not None and len(active) >= self.max_total:
                raise ValueError(f"the server is busy ({len(active)} jobs queued or running); try again in a few minutes")
            job = Job(next(self._ids), project_id, Path(run_dir), name or Path(run_dir).name, owner, prepare,
                      resume=resume, run_meta=dict(run_meta or {}), init_from=init_from)
            self._jobs[job.id] = job
            self._prune()
            self._wake.notify_all()
            return job.snapshot()

    def stop(self, job_id: int) -> None:
        """Ask a job to stop (it stops within one chunk); a queued job is cancelled at once."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return
            job.stop_event.set()
            if job.status == "queued":
                job.status, job.finished = "cancelled", time.time()

    def drain(self, timeout: float = 60.0) -> bool:
        """Stop every job (queued ones are cancelled) and wait up to `timeout` s for the running ones to save their
        stop checkpoint and end; True when none runs. Registered at exit: the workers are daemon threads, and one
        torn down inside a compiled chunk aborts the process; drained, the runs can be resumed after a restart."""
        with self._lock:
            ids = list(self._jobs)
        for job_id in ids:
            self.stop(job_id)
        def idle() -> bool:
            with self._lock:
                return not any(j.status == "running" for j in self._jobs.values())
        return poll_until(idle, timeout)

    def get(self, job_id: int) -> dict | None:
        """Snapshot of one job."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.snapshot() if job else None

    def for_project(self, project_id: str, owner: str = "local") -> dict | None:
        """The project's active job, else its most recent one, as a snapshot."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.project_id == project_id and j.owner == owner]
            if not jobs:
                return None
            active = [j for j in jobs if j.status in ACTIVE]
            return (active or sorted(jobs, key=lambda j: j.id))[-1].snapshot()

    def _prune(self, now: float | None = None) -> None:
        """Finished jobs leave the registry (oldest first) past KEEP_FINISHED or KEEP_FINISHED_SECONDS; their run
        folders keep everything, and the Training page reads those. Caller holds the lock."""
        now = time.time() if now is None else now
        finished = sorted((j for j in self._jobs.values() if j.status not in ACTIVE),
                          key=lambda j: j.finished or 0.0, reverse=True)
        for index, job in enumerate(finished):
            if index >= self.keep_finished or now - (job.finished or now) > self.keep_finished_seconds:
                del self._jobs[job.id]

    def __len__(self) -> int:
        with self._lock:
            return len(self._jobs)

    def queue(self) -> list[dict]:
        """Queued and running jobs in order (small dicts, no metric history)."""
        with self._lock:
            jobs = sorted((j for j in self._jobs.values() if j.status in ACTIVE), key=lambda j: j.id)
            return [{"id": j.id, "project_id": j.project_id, "name": j.name, "status": j.status, "owner": j.owner,
                     "position": i} for i, j in enumerate(jobs)]

    def finished(self) -> list[dict]:
        """Snapshots of the finished jobs the registry still keeps (for queue estimates)."""
        with self._lock:
            return [j.snapshot() for j in self._jobs.values() if j.status not in ACTIVE]

    def wait(self, job_id: int, timeout: float | None = None) -> dict | None:
        """Block until a job has ended, its test-set pass included (for tests and the CLI)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            snap = self.get(job_id)
            if snap is None or (snap["status"] not in ACTIVE and snap["phase"] != "testing"):
                return snap
            if deadline is not None and time.monotonic() > deadline:
                return snap
            time.sleep(0.05)

    # ------------------------------------------------------------------------- worker

    def _next(self) -> Job:
        with self._lock:
            while True:
                queued = sorted((j for j in self._jobs.values() if j.status == "queued"), key=lambda j: j.id)
                if queued:
                    job = queued[0]
                    job.status, job.started = "running", time.time()
                    return job
                self._wake.wait()

    def _work(self) -> None:
        while True:
            job = self._next()
            timer = threading.Timer(self.max_seconds, self._time_up, args=(job,)) if self.max_seconds else None
            if timer is not None:
                timer.daemon = True
                timer.start()
            handed_off = False
            try:
                self._wait_for_test_pass(job)
                spec, cfg, splits = job.prepare()
                init_weights = predict.load_model(job.init_from).weights if job.init_from and not job.resume else None
                records = train_and_test(spec, cfg, splits, job.run_dir, job.stop_event, job.resume, job.run_meta,
                                         init_weights=init_weights, test_progress=functools.partial(self._tested, job))
                for record in records:
                    self._record(job, record)
                    if record["kind"] == "trained" and record["status"] == "stopped":
                        # stopped and saved: the job has ended for its owner and for the queue; the test-set pass
                        # goes on in a thread of its own, so the next queued job need not wait for it
                        threading.Thread(target=self._test_after_stop, args=(job, records), daemon=True,
                                         name=f"fmnist-test-{job.id}").start()
                        handed_off = True
                        break
            except (UserError, ValueError) as error:  # TrainingError, StoreError and the checks: said plainly
                self._fail(job, str(error))
            except Exception as error:  # a crash must not take the registry down
                self._fail(job, f"{type(error).__name__}: {error}")
                traceback.print_exc()
            finally:
                if timer is not None:
                    timer.cancel()
                with self._lock:
                    job.prepare = _released  # drop references to data and model
                    if job.status in ACTIVE:
                        job.status = "failed"
                    if not handed_off:
                        job.phase = "done"
                    job.finished = job.finished or time.time()
                    self._prune()

    def _test_after_stop(self, job: Job, records: Iterator[dict]) -> None:
        """Finish a stopped job's test-set pass: its 'test' and 'done' records reach the job as they come."""
        try:
            for record in records:
                self._record(job, record)
        except Exception as error:  # the run is saved and stopped: a failed test pass is said, not a failed run
            with self._lock:
                job.result["test_error"] = f"{type(error).__name__}: {error}"
            traceback.print_exc()
        finally:
            with self._lock:
                job.phase = "done"

    def _wait_for_test_pass(self, job: Job) -> None:
        """A run resumed straight after its stop waits for that stop's test pass, which still writes to the run's
        folder: the two never write run.json at once."""
        def measured() -> bool:
            with self._lock:
                return not any(j.run_dir == job.run_dir and j.phase == "testing" and j is not job
                               for j in self._jobs.values())
        poll_until(measured, timeout=600.0)

    def _tested(self, job: Job, fraction: float) -> None:
        with self._lock:
            job.result["test_progress"] = fraction

    def _time_up(self, job: Job) -> None:
        with self._lock:
            if job.status == "running":
                job.time_limited = True
                job.stop_event.set()  # stops after the current chunk, like the Stop button: the run is saved

    def _record(self, job: Job, record: dict) -> None:
        with self._lock:
            kind = record["kind"]
            if kind == "start":
                job.start_info = record
                if job.resume:  # the live chart shows the whole run, not only the epochs after the resume
                    job.epochs = [r for r in store.read_jsonl(job.run_dir / "history.jsonl") if r.get("kind") == "epoch"]
            elif kind == "chunk":
                job.chunks.append(record)
                if len(job.chunks) > MAX_CHUNK_RECORDS:
                    del job.chunks[: len(job.chunks) - MAX_CHUNK_RECORDS]
            elif kind == "epoch":
                job.epochs.append(record)
            elif kind == "error":
                job.error = record["message"]
            elif kind == "trained":
                job.phase = "testing"
                job.result.update(training_status=record["status"], epochs_completed=record["epochs_completed"])
                if record["status"] == "stopped":  # "stopped" at once: the test pass after it is the run's own step
                    job.status, job.finished = "stopped", time.time()
                    self._prune()
            elif kind == "test":
                job.result.update(record)
            elif kind == "done":
                job.result.update({k: v for k, v in record.items() if isinstance(v, (int, float, str, type(None)))})
                job.status, job.phase = record["status"], "done"
                job.finished = job.finished or time.time()  # a stopped job ended when its run was saved
                del job.chunks[: max(0, len(job.chunks) - FINISHED_CHUNK_RECORDS)]
                self._prune()

    def _fail(self, job: Job, message: str) -> None:
        with self._lock:
            job.status, job.error, job.finished = "failed", message, time.time()
        try:
            if (job.run_dir / "run.json").exists():
                store.update_run(job.run_dir, status="failed", error=message)
        except store.StoreError:
            pass


def _released() -> tuple[Any, TrainConfig, Splits]:
    raise RuntimeError("this job has finished")
