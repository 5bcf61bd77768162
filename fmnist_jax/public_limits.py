"""Public mode's caps (FMNIST_PUBLIC_*), at the settings floor so every stage can read them: the upload limits
(fmnist_jax/data/uploads/limits.py) as well as the studio's public mode (fmnist_jax/studio/public.py)."""
from __future__ import annotations

import os
from typing import Any, ClassVar, Mapping

from pydantic import ConfigDict, Field

from fmnist_jax.checks import Real, Settings, Whole


class PublicLimits(Settings):
    """Caps that keep a shared public Space responsive."""

    model_config = ConfigDict(frozen=True)
    kind: ClassVar[str] = "public limit"

    max_jobs_per_visitor: Whole = Field(1, gt=0, title="jobs per visitor")  # queued or running, per workspace
    max_jobs_total: Whole = Field(6, gt=0, title="jobs in total")  # queued or running, all visitors together
    max_running: Whole = Field(1, gt=0, title="trainings at a time")  # the rest wait in the queue
    # Epochs x training images per job: 10 epochs of Fashion-MNIST's 60,000.
    max_epoch_images: Whole = Field(600_000, gt=0, title="training images per job")
    # Model and job size, checked before anything is allocated; the defaults admit every preset's recipe
    # (the largest, 'wide': 0.56 M parameters, ~0.5 GiB at batch 128, 283 TFLOP for its 10 epochs).
    max_params: Whole = Field(5_000_000, gt=0, title="parameters")
    max_memory_mb: Whole = Field(2048, gt=0, title="training memory (MiB)")
    max_job_tflop: Real = Field(300.0, gt=0, title="compute per job (TFLOP)")
    max_job_minutes: Real = Field(60.0, gt=0, title="minutes per job")  # then the job stops, its checkpoint kept
    workspace_mb: Whole = Field(1024, gt=0, title="disk per workspace (MB)")  # uploads, runs and checkpoints
    # All workspaces together; unset: what the workspace's disk has free, less DISK_RESERVE (check_disk).
    disk_gb: Real | None = Field(None, gt=0, title="disk for all workspaces (GB)")
    upload_cap_mb: Whole = Field(100, gt=0, title="upload size (MB)")  # also STREAMLIT_SERVER_MAX_UPLOAD_SIZE (Dockerfile)
    idle_hours: Real = Field(24.0, gt=0, title="idle hours")  # workspaces untouched this long are deleted

    ENV: ClassVar[dict[str, str]] = {
        "max_jobs_per_visitor": "FMNIST_PUBLIC_MAX_JOBS_PER_VISITOR", "max_jobs_total": "FMNIST_PUBLIC_MAX_JOBS",
        "max_running": "FMNIST_PUBLIC_MAX_RUNNING", "max_epoch_images": "FMNIST_PUBLIC_MAX_EPOCH_IMAGES",
        "upload_cap_mb": "FMNIST_PUBLIC_UPLOAD_MB", "idle_hours": "FMNIST_PUBLIC_IDLE_HOURS",
        "max_params": "FMNIST_PUBLIC_MAX_PARAMS", "max_memory_mb": "FMNIST_PUBLIC_MAX_MEMORY_MB",
        "max_job_tflop": "FMNIST_PUBLIC_MAX_JOB_TFLOP", "max_job_minutes": "FMNIST_PUBLIC_MAX_JOB_MINUTES",
        "workspace_mb": "FMNIST_PUBLIC_WORKSPACE_MB", "disk_gb": "FMNIST_PUBLIC_DISK_GB"}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "PublicLimits":
        """Defaults overridden by FMNIST_PUBLIC_* variables (ValueError naming a bad one)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field_name, variable in cls.ENV.items():
            raw = environ.get(variable)
            if raw is None or not raw.strip():
                continue
            try:
                value = float(raw)
                cls(**{field_name: int(value) if value.is_integer() else value})
            except ValueError:
                what = "a number" if field_name == "idle_hours" else "a whole number"
                raise ValueError(f"{variable} must be {what} above 0, got {raw!r}") from None
            values[field_name] = int(value) if value.is_integer() else value
        return cls(**values)

    def describe(self) -> list[str]:
        """Lines for the app's 'public Space limits' note."""
        return [f"{self.max_jobs_per_visitor} training job(s) per visitor, {self.max_jobs_total} queued in total, "
                f"{self.max_running} running at a time",
                f"at most {self.max_epoch_images:,} training images per job (epochs x training set size)",
                f"models up to {count_text(self.max_params)} parameters and {self.max_memory_mb:,} MiB of training memory, "
                f"{self.max_job_tflop:g} TFLOP and {self.max_job_minutes:g} minutes per job",
                f"uploads up to {self.upload_cap_mb} MB; {self.workspace_mb:,} MB of disk per visitor",
                f"workspaces idle for {self.idle_hours:g} hours are deleted"]


def limits() -> PublicLimits:
    """The public-mode caps in force (from the environment)."""
    return PublicLimits.from_env()


def upload_cap_bytes() -> int:
    """The upload size cap of public mode, in bytes."""
    return int(limits().upload_cap_mb) * 2**20


def count_text(value: float) -> str:
    """1.6 billion, 5 million, 241,770."""
    for size, word in ((1e9, "billion"), (1e6, "million")):
        if value >= size:
            return f"{value / size:.2g} {word}" if value / size < 10 else f"{value / size:,.0f} {word}"
    return f"{int(value):,}"
