"""A project's label check and its label versions: what the Data page's "Label check" section runs and keeps.

The check (fmnist_jax/label_issues.py) runs on the project's dataset as its source has it (version 0), so
a flag's row is the same whichever version is selected. Its findings are kept in the project's folder
(label-check.json). The user's keep / relabel / exclude choices become a numbered version in the project
record ("label_versions"), and "label_version" selects the one training uses (0: the original). A run
records its version and that version's edits, so resume and evaluation rebuild the same data. A project
has at most MAX_VERSIONS of them.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

from fmnist_jax import label_issues, store
from fmnist_jax.data import catalogue, label_versions
from fmnist_jax.data.label_versions import LabelEditError, LabelEdits

Progress = Callable[[float, str], None]
CHECK_FILE = "label-check.json"
MAX_VERSIONS = 20


def upload_files(project: dict) -> list[str] | None:
    """An image upload's file of each training row (its import manifest), else None."""
    name = project.get("dataset") or ""
    if not name.startswith("upload/"):
        return None
    from fmnist_jax.data.uploads import importer

    return importer.read_manifest(name, home=project.get("upload_home")).get("train_files")


def run_check(ws: store.Workspace, project: dict, dataset: catalogue.Dataset, check: label_issues.LabelCheck,
              progress: Progress, stop: threading.Event | None = None) -> dict:
    """Run the label check on the project's original dataset and keep its findings; returns them."""
    result = label_issues.find_issues(dataset, check, upload_files(project), progress, stop)
    result.update(dataset=project.get("dataset") or "fashion_mnist", finished=time.time(),
                  settings={"folds": check.folds, "preset": check.preset, "epochs": check.epochs, "limit": check.limit})
    store.atomic_write_json(ws.project_dir(project["id"]) / CHECK_FILE, result)
    return result


def last_check(ws: store.Workspace, project: dict) -> dict | None:
    """The project's latest label check on its current dataset, or None."""
    path = ws.project_dir(project["id"]) / CHECK_FILE
    if not path.is_file():
        return None
    result = store.read_json(path)
    result.pop("schema", None)  # the store's own field
    return result if result.get("dataset") == (project.get("dataset") or "fashion_mnist") else None


def versions(project: dict) -> list[dict]:
    """The project's label versions, oldest first: {version, created, note, relabel, exclude}."""
    return list(project.get("label_versions") or [])


def save_version(ws: store.Workspace, project: dict, edits: LabelEdits, dataset: catalogue.Dataset,
                 note: str = "") -> dict:
    """Keep `edits` as the next version and select it; returns the updated project."""
    if not edits:
        raise LabelEditError("nothing to save: relabel or exclude at least one image first")
    edits.check(dataset)
    existing = versions(project)
    if len(existing) >= MAX_VERSIONS:
        raise LabelEditError(f"this project has {MAX_VERSIONS} label versions; delete one first")
    number = max((v["version"] for v in existing), default=0) + 1
    entry = {"version": number, "created": time.time(), "note": note[:200], **edits.to_dict()}
    return ws.update_project(project["id"], label_versions=[*existing, entry], label_version=number)


def select_version(ws: store.Workspace, project: dict, number: int) -> dict:
    """Make `number` (0: the original labels) the version training uses."""
    if number and number not in {v["version"] for v in versions(project)}:
        raise LabelEditError(f"label version {number} does not exist")
    return ws.update_project(project["id"], label_version=int(number))


def delete_version(ws: store.Workspace, project: dict, number: int) -> dict:
    """Drop a version (runs trained on it keep their own copy of its edits); the original is selected if it was."""
    kept = [v for v in versions(project) if v["version"] != number]
    selected = project.get("label_version") or 0
    return ws.update_project(project["id"], label_versions=kept, label_version=0 if selected == number else selected)


def overlay(record: dict) -> tuple[LabelEdits, int]:
    """(edits, version) a project or run record trains on; a run carries its own copy of the edits."""
    number = int(record.get("label_version") or 0)
    if not number:
        return LabelEdits(), 0
    if "label_edits" in record:
        return LabelEdits.from_dict(record["label_edits"]), number
    for entry in versions(record):
        if entry["version"] == number:
            return LabelEdits.from_dict(entry), number
    raise LabelEditError(f"label version {number} no longer exists; choose another on the Data page")


def run_fields(record: dict) -> dict[str, Any]:
    """What a run records of its labels: the version and, for a version, its edits."""
    edits, number = overlay(record)
    return {"label_version": number, **({"label_edits": edits.to_dict()} if number else {})}


def version_label(record: dict) -> str:
    """'original labels' or 'labels v2 (5 relabelled, 3 excluded)', for tables and captions."""
    edits, number = overlay(record)
    if not number:
        return "original labels"
    return f"labels v{number} ({len(edits.relabel)} relabelled, {len(edits.exclude)} excluded)"


def apply(dataset: catalogue.Dataset, record: dict) -> catalogue.Dataset:
    """The dataset as the record's label version has it."""
    edits, number = overlay(record)
    return label_versions.apply(dataset, edits, number)
