"""Public mode (a Hugging Face Space): private per-visitor workspaces, job and size caps, idle clean-up.

A visitor gets a random workspace id (kept in the page URL so they can come back); their projects,
runs and uploads live under FMNIST_HOME/visitors/<id>/ and nobody can list another visitor's.
The caps come from the environment (FMNIST_PUBLIC_*), with defaults a 2-core Space can carry.
Local mode (settings.public_mode() is False) uses none of this.

"""
from __future__ import annotations

import math
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from fmnist_jax import settings
# The caps live at the settings floor, where the upload limits read them too; public.limits() etc. stay the names
# the studio uses.
from fmnist_jax.public_limits import PublicLimits, count_text, limits, upload_cap_bytes  # noqa: F401

WORKSPACE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{15,63}")
MARKER = ".last_used"
LOCAL_COMMAND = "pip install -r requirements.txt && python -m fmnist_jax train --epochs N"


# ----------------------------------------------------------------------------- workspaces

def new_workspace_id() -> str:
    """A random, URL-safe workspace id (128 bits; starts with a letter or digit)."""
    while True:
        candidate = secrets.token_urlsafe(16)  # 22 characters of [A-Za-z0-9_-]
        if candidate[0].isalnum():
            return candidate


def valid_workspace_id(value: Any) -> bool:
    """True for strings shaped like ids from new_workspace_id (nothing that could be a path)."""
    return isinstance(value, str) and WORKSPACE_ID.fullmatch(value) is not None


def check_workspace_id(value: Any) -> str:
    """The id itself, or ValueError for anything that is not a workspace id."""
    if not valid_workspace_id(value):
        raise ValueError("invalid workspace id; open the app without one to get a new private workspace")
    return value


def visitors_root(home: str | os.PathLike | None = None) -> Path:
    """The folder holding every visitor's workspace."""
    return settings.home_dir(home) / "visitors"


def workspace_home(workspace_id: str, home: str | os.PathLike | None = None) -> Path:
    """A visitor's private FMNIST_HOME (created, and marked as used now)."""
    folder = visitors_root(home) / check_workspace_id(workspace_id)
    folder.mkdir(parents=True, exist_ok=True)
    touch(workspace_id, home)
    return folder


def workspace_for(requested: str | None, home: str | os.PathLike | None = None) -> tuple[str, Path]:
    """The visitor's (id, workspace folder): the id from their URL if it is valid, else a new one."""
    workspace_id = requested if valid_workspace_id(requested) else new_workspace_id()
    return workspace_id, workspace_home(workspace_id, home)  # type: ignore[arg-type]


def touch(workspace_id: str, home: str | os.PathLike | None = None) -> None:
    """Record that a workspace was used now (idle clean-up reads this)."""
    marker = visitors_root(home) / check_workspace_id(workspace_id) / MARKER
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def last_used(folder: Path) -> float:
    """When a workspace folder was last used (its marker's time, else the folder's)."""
    for path in (folder / MARKER, folder):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return 0.0


def cleanup_idle(home: str | os.PathLike | None = None, idle_seconds: float | None = None,
                 now: float | None = None, keep: Iterable[str] = ()) -> list[str]:
    """Delete workspaces idle for longer than idle_seconds (default: the idle_hours cap), except `keep`; returns their ids."""
    idle_seconds = limits().idle_hours * 3600 if idle_seconds is None else idle_seconds
    now = time.time() if now is None else now
    keep = set(keep)
    root = visitors_root(home)
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or not valid_workspace_id(folder.name) or folder.name in keep:
            continue
        if now - last_used(folder) <= idle_seconds:
            continue
        trash = root / f".deleted-{folder.name}-{time.monotonic_ns()}"
        try:
            os.replace(folder, trash)  # the workspace disappears at once; a visitor arriving now gets a fresh one
        except OSError:
            continue
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(folder.name)
    for leftover in root.glob(".deleted-*") if root.is_dir() else []:
        shutil.rmtree(leftover, ignore_errors=True)  # from a clean-up that was interrupted
    return removed


# ----------------------------------------------------------------------------- disk quotas

def disk_bytes(folder: Path) -> int:
    """Bytes of the files under a folder (0 if it does not exist); links are not followed."""
    total = 0
    for root, _, files in os.walk(folder) if folder.is_dir() else []:
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


# Without FMNIST_PUBLIC_DISK_GB, visitors may fill the disk up to this much left free (the larger of the two),
# for the server's own caches, logs and the running jobs' next checkpoints.
DISK_RESERVE_BYTES = 2 * 2**30
DISK_RESERVE_SHARE = 0.05


def check_disk(workspace: Path, adding_bytes: int = 0, caps: PublicLimits | None = None,
               home: str | os.PathLike | None = None) -> None:
    """ValueError when writing `adding_bytes` more would take a visitor's workspace, or all of them together,
    past the Space's disk quota; the message says what to delete."""
    caps = caps or limits()
    used = disk_bytes(Path(workspace))
    if used + adding_bytes > caps.workspace_mb * 2**20:
        raise ValueError(f"your workspace uses {used / 2**20:,.0f} MB of its {caps.workspace_mb:,} MB and this needs "
                         f"about {adding_bytes / 2**20:,.0f} MB more; delete runs (Training page) or uploaded datasets "
                         f"(Data page) first")
    later = "try again later, when idle workspaces have been cleaned up, or run the studio on your own machine"
    if caps.disk_gb is None:  # the disk itself is the cap: a Space's disk size depends on its hardware
        disk = shutil.disk_usage(visitors_root(home))
        reserve = max(DISK_RESERVE_BYTES, DISK_RESERVE_SHARE * disk.total)
        if adding_bytes > disk.free - reserve:
            raise ValueError(f"this Space's disk is full ({disk.free / 2**30:,.1f} GB free, {reserve / 2**30:,.1f} GB "
                             f"of it kept for the server); {later}")
        return
    everyone = disk_bytes(visitors_root(home))
    if everyone + adding_bytes > caps.disk_gb * 2**30:
        raise ValueError(f"this Space's disk is full ({everyone / 2**30:,.1f} of {caps.disk_gb:g} GB); {later}")


def run_bytes(params: int) -> int:
    """Disk a run needs at most, from its parameter count: float32 weights with their optimizer state in the
    newest checkpoints, the best epoch's weights and the final model, plus its small JSON files."""
    return int(params) * 4 * 10 + 2**20


# ----------------------------------------------------------------------------- job caps

def job_figures(spec: Any, input_shape: tuple, num_classes: int, batch_size: int, epochs: int, train_size: int,
                members: int = 1) -> dict:
    """What a training job would take, from the layer list alone (nothing is allocated): parameters, training
    memory (float32 weights, gradients and two optimizer moments, plus every layer's activations and their
    gradients at the batch size), compute (training FLOPs x images x epochs) and epochs x images; an ensemble
    of `members` networks takes `members` times the parameters, memory and compute of one."""
    from fmnist_jax.model import layer_specs

    info = layer_specs.describe(spec, input_shape, num_classes)
    activations = math.prod(input_shape) + sum(layer["activations"] for layer in info["layers"])
    members = int(members)
    return {"params": info["total_params"] * members,
            "memory_mb": members * 4 * (4 * info["total_params"] + 2 * int(batch_size) * activations) / 2**20,
            "job_tflop": members * info["train_flops_per_image"] * int(train_size) * int(epochs) / 1e12,
            "members": members,
            "epoch_images": int(epochs) * int(train_size)}


def check_job(figures: dict, caps: PublicLimits | None = None) -> None:
    """ValueError naming the first limit a job exceeds, with its figure ("this model has 1.6 billion
    parameters; this Space allows 5 million"), and how to run it without limits."""
    caps = caps or limits()
    local = f"; run it on your own machine without limits: {LOCAL_COMMAND}"
    members = int(figures.get("members", 1))
    model = f"this ensemble of {members} models" if members > 1 else "this model"
    fewer = " or fewer ensemble members" if members > 1 else ""
    if figures["params"] > caps.max_params:
        raise ValueError(f"{model} has {count_text(figures['params'])} parameters; this Space allows "
                         f"{count_text(caps.max_params)}. Use fewer or smaller layers{fewer}{local}")
    if figures["memory_mb"] > caps.max_memory_mb:
        raise ValueError(f"training {model} at this batch size needs about {figures['memory_mb']:,.0f} MiB; this "
                         f"Space allows {caps.max_memory_mb:,} MiB per job. Lower the batch size or the "
                         f"filters{fewer}{local}")
    if figures["job_tflop"] > caps.max_job_tflop:
        raise ValueError(f"this job would compute {figures['job_tflop']:,.0f} TFLOP (model x images x epochs); this "
                         f"Space allows {caps.max_job_tflop:g} per job. Use fewer epochs or training images, or a "
                         f"smaller model{fewer}{local}")
    if figures["epoch_images"] > caps.max_epoch_images:
        raise ValueError(f"this job would train on {figures['epoch_images']:,} images (epochs x training images); this "
                         f"Space allows {caps.max_epoch_images:,} per job. Use fewer epochs or a smaller training "
                         f"split{local}")


def usage_lines(figures: dict, caps: PublicLimits | None = None) -> list[str]:
    """The Model and Hyperparameters pages' figures against the Space's limits, before Start is pressed."""
    caps = caps or limits()
    return [f"parameters {count_text(figures['params'])} of {count_text(caps.max_params)}",
            f"training memory {figures['memory_mb']:,.0f} of {caps.max_memory_mb:,} MiB",
            f"compute {figures['job_tflop']:,.1f} of {caps.max_job_tflop:g} TFLOP",
            f"images {figures['epoch_images']:,} of {caps.max_epoch_images:,} (epochs x training set)"]


def make_job_registry(caps: PublicLimits | None = None) -> Any:
    """A JobRegistry with the public caps (per visitor, in total, running at once)."""
    from fmnist_jax.studio.jobs import JobRegistry

    caps = caps or limits()
    return JobRegistry(max_running=caps.max_running, max_queued_per_owner=caps.max_jobs_per_visitor,
                       max_total=caps.max_jobs_total, max_seconds=caps.max_job_minutes * 60)


# ----------------------------------------------------------------------------- rate limits

class RateLimiter:
    """At most `limit` events per `window` seconds per key (a visitor, a client address); thread-safe.

    Bounded: at most `max_keys` keys are remembered (the least recently seen are forgotten first), so a
    flood of new visitors cannot grow it without end.
    """

    def __init__(self, limit: int, window: float = 60.0, max_keys: int = 10_000):
        self.limit, self.window, self.max_keys = int(limit), float(window), int(max_keys)
        self._events: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str, count: int = 1, now: float | None = None) -> float:
        """Record `count` events for `key` and return 0.0, or return the seconds to wait (nothing recorded)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            recent = [t for t in self._events.pop(key, []) if now - t < self.window]
            if len(recent) + count > self.limit:
                self._events[key] = recent
                return max(0.1, self.window - (now - recent[0])) if recent else self.window
            self._events[key] = recent + [now] * count
            while len(self._events) > self.max_keys:
                self._events.pop(next(iter(self._events)))
            return 0.0


DEMO_PREDICTIONS_PER_MINUTE = 30  # per visitor on a public Space: plenty for people, a brake on scripts
DEMO_LIMITER = RateLimiter(DEMO_PREDICTIONS_PER_MINUTE)
