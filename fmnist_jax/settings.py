"""Workspace and data-folder settings, read from the environment with explicit overrides."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path.home() / ".fmnist_jax"


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """The workspace folder (`FMNIST_HOME`, default ~/.fmnist_jax), created on first use."""
    path = Path(home or os.environ.get("FMNIST_HOME") or DEFAULT_HOME).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder with Zalando's four *-ubyte.gz files (`FMNIST_DATA_DIR`), or None to let TFDS download."""
    value = data_dir or os.environ.get("FMNIST_DATA_DIR")
    return Path(value).expanduser().resolve() if value else None


def public_mode() -> bool:
    """True when running as a public deployment (a Hugging Face Space, or FMNIST_PUBLIC=1)."""
    explicit = os.environ.get("FMNIST_PUBLIC")
    if explicit is not None:
        return explicit.strip().lower() in {"1", "true", "yes", "on"}
    return bool(os.environ.get("SPACE_ID"))
