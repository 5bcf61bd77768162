"""Projects and runs on disk: atomic JSON and checkpoint files with a schema version, no pickle.

Layout under the workspace (FMNIST_HOME):
    projects/<project_id>/project.json
    projects/<project_id>/runs/<run_id>/run.json, history.jsonl, checkpoints/, model.msgpack
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any, Iterator

from . import settings
from .errors import UserError

SCHEMA_VERSION = 1
MAX_NAME_LENGTH = 80
KEEP_CHECKPOINTS = 2


class StoreError(UserError):
    """A workspace read or write failed (read-only or full disk, missing or corrupt file)."""


# ----------------------------------------------------------------------------- atomic files

def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_FILE_MODE = 0o666 & ~_umask()  # what open() would give: 0644 under the usual umask 022

def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` via a temp file in the same folder and os.replace (never half-written)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise StoreError(f"cannot write to {path.parent}: {error.strerror or error} (is the workspace read-only or full?)") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp_name, _FILE_MODE)  # mkstemp makes 0600; exported files are meant to be shared
        os.replace(tmp_name, path)
    except OSError as error:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise StoreError(f"cannot write {path.name}: {error.strerror or error} (is the workspace read-only or full?)") from None


class Busy(StoreError):
    """Another process or thread holds the lock."""


@contextlib.contextmanager
def file_lock(path: Path, wait: bool = True) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing) between threads and processes, held for the block.

    With wait=False, Busy is raised at once if someone else holds it. Uses flock where the system has it
    (Linux, macOS); elsewhere the lock covers this process's threads only.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise Busy(f"{path.parent} is in use") from None
        else:
            lock = _THREAD_LOCKS.setdefault(str(path.resolve()), threading.Lock())
            if not lock.acquire(blocking=wait):
                raise Busy(f"{path.parent} is in use")
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            else:
                lock.release()


_THREAD_LOCKS: dict[str, Any] = {}


def atomic_write_json(path: Path, value: Any) -> None:
    """Atomically write a JSON file, adding the schema version to dicts."""
    if isinstance(value, dict):
        value = {"schema": SCHEMA_VERSION, **value}
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=False, default=_json_default).encode())


def weights_stamp(source: str | os.PathLike) -> str:
    """The cache key of a model's weights: "demo" for the shipped model (it never changes), "" where a folder has no
    model.msgpack yet, else the file's modification time and size, which change whenever training rewrites it."""
    if str(source) == "demo":
        return "demo"
    try:
        info = (Path(source) / "model.msgpack").stat()
    except OSError:
        return ""
    return f"{info.st_mtime_ns}-{info.st_size}"


def update_run(run_dir: str | os.PathLike, **changes: Any) -> dict:
    """Change fields of a run's run.json in one atomic write (the one way every module changes it); returns it."""
    path = Path(run_dir) / "run.json"
    record = read_json(path)
    record.pop("schema", None)
    record.update(changes)
    atomic_write_json(path, record)
    return record


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def read_json(path: Path) -> Any:
    """Read a JSON file written by this module (StoreError if missing, corrupt, or from a newer schema)."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StoreError(f"{path} does not exist") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StoreError(f"{path} is unreadable or corrupt: {error}") from None
    if isinstance(value, dict) and value.get("schema", SCHEMA_VERSION) > SCHEMA_VERSION:
        raise StoreError(f"{path} was written by a newer version (schema {value['schema']}); upgrade Fashion-MNIST Studio")
    return value


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line (metrics stream; a torn last line is skipped by read_jsonl)."""
    with open(path, "a") as stream:
        stream.write(json.dumps(record, default=_json_default) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """All complete JSON lines of a file (missing file -> empty list)."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(run_dir: Path, payload: bytes, meta: dict) -> Path:
    """Write checkpoint bytes and their meta (with SHA-256) atomically; keep the last KEEP_CHECKPOINTS."""
    folder = Path(run_dir) / "checkpoints"
    tag = f"epoch-{meta['epoch']:04d}-step-{meta['step_in_epoch']:06d}"
    data_path = folder / f"{tag}.msgpack"
    atomic_write_bytes(data_path, payload)
    atomic_write_json(folder / f"{tag}.json", {**meta, "sha256": hashlib.sha256(payload).hexdigest(),
                                                "size": len(payload), "written": time.time()})
    for old in sorted(folder.glob("epoch-*.json"))[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
        old.with_suffix(".msgpack").unlink(missing_ok=True)
    return data_path


def load_latest_checkpoint(run_dir: Path) -> tuple[bytes, dict, list[str]]:
    """Newest checkpoint whose bytes match its recorded hash; returns (bytes, meta, warnings) or raises StoreError."""
    folder = Path(run_dir) / "checkpoints"
    warnings: list[str] = []
    for meta_path in sorted(folder.glob("epoch-*.json"), reverse=True):
        try:
            meta = read_json(meta_path)
            payload = meta_path.with_suffix(".msgpack").read_bytes()
        except (StoreError, OSError) as error:
            warnings.append(f"skipped checkpoint {meta_path.stem}: {error}")
            continue
        if hashlib.sha256(payload).hexdigest() != meta.get("sha256"):
            warnings.append(f"checkpoint {meta_path.stem} is corrupt or truncated; using the previous one")
            continue
        return payload, meta, warnings
    raise StoreError(f"no usable checkpoint in {run_dir}" + (f" ({'; '.join(warnings)})" if warnings else ""))


# ----------------------------------------------------------------------------- names and ids

def clean_name(name: Any, what: str = "project name") -> str:
    """Validate a user-given display name: 1-80 printable characters, not only spaces."""
    if not isinstance(name, str):
        raise ValueError(f"{what} must be text")
    if "\x00" in name or any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError(f"{what} contains control characters; use letters, digits, spaces and punctuation")
    name = " ".join(name.split())
    if not name:
        raise ValueError(f"{what} is empty; type a name")
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}")
    return name


def slugify(name: str) -> str:
    """A safe folder name derived from a display name (never contains '/', '..' or NUL)."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")[:40]
    return slug or "project"


def safe_child(parent: Path, child: str) -> Path:
    """parent/child, refusing anything that would escape `parent`."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", child or "") or ".." in child:
        raise ValueError(f"invalid identifier {child!r}")
    path = (parent / child).resolve()
    if path.parent != parent.resolve():
        raise ValueError(f"invalid identifier {child!r}")
    return path


# ----------------------------------------------------------------------------- projects

class Workspace:
    """Projects and runs under one workspace folder (one per visitor in public mode)."""

    def __init__(self, home: str | os.PathLike | None = None):
        self.home = settings.home_dir(home)
        self.projects_dir = self.home / "projects"

    def project_dir(self, project_id: str) -> Path:
        """Folder of a project (ValueError for ids that are not safe folder names)."""
        return safe_child(self.projects_dir, project_id)

    def list_projects(self) -> list[dict]:
        """All projects, newest first, each with its last run and best accuracy."""
        out = []
        if not self.projects_dir.exists():
            return out
        for folder in self.projects_dir.iterdir():
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            try:
                project = read_json(folder / "project.json")
            except StoreError:
                continue
            runs = self.list_runs(folder.name)
            finished = [r for r in runs if r.get("test_accuracy") is not None or r.get("best_val_accuracy") is not None]
            project["runs"] = len(runs)
            project["last_run"] = runs[0]["name"] if runs else None
            project["best_val_accuracy"] = max((r.get("best_val_accuracy") or 0 for r in finished), default=None)
            project["best_test_accuracy"] = max((r.get("test_accuracy") or 0 for r in finished), default=None)
            out.append(project)
        return sorted(out, key=lambda p: p.get("updated", 0), reverse=True)

    def create_project(self, name: str, description: str = "", **settings_: Any) -> dict:
        """Create a project with default settings; returns its record."""
        name = clean_name(name)
        if not isinstance(description, str) or len(description) > 2000:
            raise ValueError("description must be text of at most 2000 characters")
        if any(p["name"].lower() == name.lower() for p in self.list_projects()):
            raise ValueError(f"a project named {name!r} already exists; choose another name")
        base = slugify(name)
        project_id, n = base, 2
        while (self.projects_dir / project_id).exists():
            project_id, n = f"{base}-{n}", n + 1
        now = time.time()
        project = {"id": project_id, "name": name, "description": description.strip(), "created": now,
                   "updated": now, "dataset": "fashion_mnist", "split": None, "model": None,
                   "model_preset": "fast", "config": None, "deployed_run": None, **settings_}
        folder = self.project_dir(project_id)
        try:
            atomic_write_json(folder / "project.json", project)
        except StoreError:
            shutil.rmtree(folder, ignore_errors=True)  # no half-made project left behind on a full or read-only disk
            raise
        return read_json(folder / "project.json")

    def get_project(self, project_id: str) -> dict:
        """A project's record (StoreError if it does not exist)."""
        return read_json(self.project_dir(project_id) / "project.json")

    def update_project(self, project_id: str, **changes: Any) -> dict:
        """Change fields of a project and return the new record. Read, change and write happen under the
        project's lock, so two tabs (or a tab and a job) changing different fields never undo each other."""
        self.get_project(project_id)  # a clear error for a missing project before any lock file is made
        with file_lock(self.project_dir(project_id) / ".lock"):
            project = self.get_project(project_id)
            if "name" in changes:
                changes["name"] = clean_name(changes["name"])
                clash = [p for p in self.list_projects()
                         if p["name"].lower() == changes["name"].lower() and p["id"] != project_id]
                if clash:
                    raise ValueError(f"a project named {changes['name']!r} already exists; choose another name")
            project.update(changes, updated=time.time())
            project.pop("schema", None)
            atomic_write_json(self.project_dir(project_id) / "project.json", project)
            return project

    def duplicate_project(self, project_id: str, new_name: str) -> dict:
        """Copy a project's settings (not its runs) under a new name."""
        source = self.get_project(project_id)
        copied = {"id", "name", "description", "created", "updated", "deployed_run", "schema", "runs", "last_run",
                  "best_val_accuracy", "best_test_accuracy"}
        keep = {k: v for k, v in source.items() if k not in copied}  # every setting, whatever the pages store
        return self.create_project(new_name, source.get("description", ""), **keep)

    def delete_project(self, project_id: str) -> None:
        """Delete a project and all its runs."""
        folder = self.project_dir(project_id)
        if not (folder / "project.json").exists():
            raise StoreError(f"project {project_id!r} does not exist")
        trash = folder.with_name(f".deleted-{project_id}-{int(time.time() * 1000)}")
        os.replace(folder, trash)  # atomic: the project disappears at once, then the files go
        shutil.rmtree(trash, ignore_errors=True)

    # ------------------------------------------------------------------------- runs

    def runs_dir(self, project_id: str) -> Path:
        """Folder holding a project's runs."""
        return self.project_dir(project_id) / "runs"

    def new_run_dir(self, project_id: str, name: str | None = None) -> Path:
        """Create a fresh, uniquely named run folder."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        base = slugify(clean_name(name, "run name")) if name else f"run-{stamp}"
        runs = self.runs_dir(project_id)
        runs.mkdir(parents=True, exist_ok=True)
        run_id, n = base, 2
        while (runs / run_id).exists():
            run_id, n = f"{base}-{n}", n + 1
        path = safe_child(runs, run_id)
        path.mkdir()
        return path

    def list_runs(self, project_id: str) -> list[dict]:
        """Summaries of a project's runs, newest first."""
        return [summarize_run(d) for d in sorted(self.runs_dir(project_id).glob("*"), key=_mtime, reverse=True)
                if (d / "run.json").exists()]

    def delete_run(self, project_id: str, run_id: str) -> None:
        """Delete one run folder."""
        shutil.rmtree(safe_child(self.runs_dir(project_id), run_id), ignore_errors=True)


def _mtime(path: Path) -> float:
    try:
        return (path / "run.json").stat().st_mtime
    except OSError:
        return 0.0


def summarize_run(run_dir: Path) -> dict:
    """One row for the run history table."""
    try:
        run = read_json(Path(run_dir) / "run.json")
    except StoreError as error:
        return {"id": Path(run_dir).name, "name": Path(run_dir).name, "status": f"unreadable: {error}"}
    config = run.get("config", {})
    return {"id": Path(run_dir).name, "name": run.get("name", Path(run_dir).name), "path": str(run_dir),
            "status": run.get("status"), "preset": run.get("preset") or "custom", "optimizer": config.get("optimizer"),
            "learning_rate": config.get("learning_rate"), "epochs": run.get("epochs_completed", 0),
            "planned_epochs": config.get("epochs"), "best_val_accuracy": run.get("best_val_accuracy"),
            "test_accuracy": run.get("test_accuracy"), "seconds": run.get("seconds"), "created": run.get("created")}
