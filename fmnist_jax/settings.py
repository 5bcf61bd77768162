"""Workspace and data-folder settings, read from the environment with explicit overrides."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path.home() / ".fmnist_jax"
# A Hugging Face Space's optional persistent storage is mounted here; the rest of a Space's disk is wiped by
# every restart and rebuild.
SPACE_STORAGE = Path("/data")


def space_storage() -> Path | None:
    """The Space's persistent storage when this runs on a Space that has it (a writable /data), else None."""
    if not os.environ.get("SPACE_ID"):
        return None
    return SPACE_STORAGE if SPACE_STORAGE.is_dir() and os.access(SPACE_STORAGE, os.W_OK | os.X_OK) else None


def default_home() -> Path:
    """Where the workspace goes when nothing names it: `FMNIST_HOME`; else, on a Space with persistent storage,
    /data/fmnist-home, so projects outlive restarts; else ~/.fmnist_jax."""
    if os.environ.get("FMNIST_HOME"):
        return Path(os.environ["FMNIST_HOME"]).expanduser()
    storage = space_storage()
    return storage / "fmnist-home" if storage else DEFAULT_HOME


def home_dir(home: str | os.PathLike | None = None) -> Path:
    """The workspace folder (`home`, else default_home()), created on first use."""
    path = Path(home).expanduser() if home else default_home()
    path.mkdir(parents=True, exist_ok=True)
    return path


def storage_is_ephemeral() -> bool:
    """True on a Space whose workspace is not on its persistent storage: a restart or rebuild deletes it."""
    if not os.environ.get("SPACE_ID"):
        return False
    home = default_home().resolve()
    return not home.is_relative_to(SPACE_STORAGE.resolve()) or space_storage() is None


def data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The folder with Zalando's four *-ubyte.gz files (`FMNIST_DATA_DIR`), or None to let TFDS download."""
    value = data_dir or os.environ.get("FMNIST_DATA_DIR")
    return Path(value).expanduser().resolve() if value else None


def photos_dir(photos_dir: str | os.PathLike | None = None) -> Path | None:
    """Labelled real garment photos to calibrate int8 exports of photo models on (`FMNIST_PHOTOS_DIR`): by
    default the `real-photos-train` folder beside the Fashion-MNIST data folder, when there is one."""
    value = photos_dir or os.environ.get("FMNIST_PHOTOS_DIR")
    if value:
        return Path(value).expanduser().resolve()
    data = data_dir()
    beside = data.parent / "real-photos-train" if data is not None else None
    return beside if beside is not None and (beside / "classes.json").is_file() else None


def public_mode() -> bool:
    """True when running as a public deployment (a Hugging Face Space, or FMNIST_PUBLIC=1)."""
    explicit = os.environ.get("FMNIST_PUBLIC")
    if explicit is not None:
        return explicit.strip().lower() in {"1", "true", "yes", "on"}
    return bool(os.environ.get("SPACE_ID"))


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
