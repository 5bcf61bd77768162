"""The photo pipeline's workers for a server: one thread per core, at a lower CPU priority.

Every prediction the studio, `serve` and the REST API make goes through here. GrabCut is CPU-bound and
releases the GIL, so one photo per core is the most that helps: more at once only share the cores and
thrash their caches, while the rest wait their turn in arrival order and the slowest answers stay close to
the typical one. The workers run `PRIORITY_STEP` nice levels below the server (Linux): with nothing else
running they use the whole machine, and beside a training job of the same session (the studio's own jobs
are threads of its process) they take about a seventh of each core instead of half, so the job keeps most
of its speed (bench/photo_load.py --training). Linux's autogroup scheduling shares the cores fairly between
sessions whatever their nice values: a job started from another terminal still gets an even share.
"""
from __future__ import annotations

import os
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from fmnist_jax import settings

PRIORITY_STEP = 8  # nice levels: CFS weight 172 against a training thread's 1024
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def cores() -> int:
    """Workers in the pool: one per core this process may run on."""
    return settings.usable_cores()


def _lower_priority() -> None:
    """Make the calling thread nicer: on Linux a thread's nice value is its own; elsewhere it stays as it is."""
    if not sys.platform.startswith("linux"):
        return
    try:
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + PRIORITY_STEP))
    except OSError:  # a sandbox that refuses it: the photos simply share the cores at the same priority
        pass


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(cores(), thread_name_prefix="photo-pipeline", initializer=_lower_priority)
        return _POOL


def submit(function: Callable[..., Any], *args: Any) -> Future:
    """Queue `function(*args)` (one photo's pipeline) for the workers; the future holds its result or error."""
    return _pool().submit(function, *args)
