"""A whole project as one zip: its settings (data reference, split, model, hyperparameters) and its runs with
their weights, checkpoints, histories and event files; imported back with the checks of any other upload.

Layout: project.json at the top, runs/<run id>/..., and, for a project on an uploaded dataset, dataset/ with that
dataset's converted arrays (.npy, loaded without pickle) and its manifest, so the zip is whole: imported into
another workspace it trains and evaluates with no missing file. Only those paths, only JSON, JSONL, msgpack,
.npy and TensorBoard event files; names are checked before anything is extracted, sizes and counts are bound by
the upload limits, and weights are msgpack (never pickle). TFDS datasets (Fashion-MNIST) are referenced, not
copied: every studio prepares them itself.
"""
from __future__ import annotations

import io
import json
import re
import time
import zipfile
from typing import Any

from fmnist_jax import settings, store
from fmnist_jax.data.uploads.limits import UploadError, UploadLimits, browser_limits

FORMAT = "fmnist-studio-project/1"
RUN_FILE = re.compile(r"runs/([A-Za-z0-9][A-Za-z0-9._-]{0,99})/((?:checkpoints/|tensorboard/)?"
                      r"[A-Za-z0-9][A-Za-z0-9._-]{0,150})")
ALLOWED_SUFFIXES = (".json", ".jsonl", ".msgpack")
KEEP_OUT = {"id", "created", "updated", "schema", "upload_home", "deployed_run", "init_from", "data_dir"}  # machine-specific
MAX_JSON_BYTES = 8 * 2**20
# An uploaded dataset's cache folder, as the importer writes it: arrays, meta.json and manifest.json.
DATASET_FILE = re.compile(r"dataset/(manifest\.json|meta\.json|(?:train|val|test)_(?:images|labels)\.npy)")


def export_project(ws: store.Workspace, project_id: str, include_dataset: bool = True) -> bytes:
    """The project's zip (deflated), ready to download; with its uploaded dataset unless told to leave it out."""
    project = ws.get_project(project_id)
    record = {"format": FORMAT, "exported": time.time(),
              "project": {k: v for k, v in project.items() if k not in KEEP_OUT}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("project.json", json.dumps(record, indent=2, sort_keys=True))
        runs = ws.runs_dir(project_id)
        for path in sorted(runs.rglob("*")) if runs.is_dir() else []:
            name = f"runs/{path.relative_to(runs).as_posix()}"
            if path.is_file() and _allowed(name):
                archive.write(path, name)
        for path in _dataset_files(project) if include_dataset else []:
            archive.write(path, f"dataset/{path.name}")
    return buffer.getvalue()


def _upload_folder(name: str, home: str | None) -> Any:
    """The cache folder of an uploaded dataset "upload/<id>" in a workspace (StoreError for an unsafe id)."""
    return store.safe_child(settings.home_dir(home) / "datasets", f"upload__{name[len('upload/'):]}")


def _dataset_files(project: dict) -> list:
    """The files of the project's uploaded dataset that travel in its zip (none for a TFDS dataset, or when the
    upload was deleted: then the zip holds the settings and runs, and an import says the data is missing)."""
    name = project.get("dataset") or ""
    if not name.startswith("upload/"):
        return []
    folder = _upload_folder(name, project.get("upload_home"))
    return sorted(p for p in folder.glob("*") if p.is_file() and DATASET_FILE.fullmatch(f"dataset/{p.name}"))


def dataset_bytes(ws: store.Workspace, project_id: str) -> int:
    """How much of a project's zip its uploaded dataset takes (uncompressed; 0 without one)."""
    return sum(path.stat().st_size for path in _dataset_files(ws.get_project(project_id)))


def _allowed(name: str) -> bool:
    match = RUN_FILE.fullmatch(name)
    return bool(match) and (name.endswith(ALLOWED_SUFFIXES) or "/tensorboard/events.out.tfevents." in name)


def import_project(ws: store.Workspace, payload: bytes, limits: UploadLimits | None = None) -> dict:
    """A new project in `ws` from an exported zip (UploadError saying what is wrong with a bad one); its name
    gets ' (imported)' (and a number) when the workspace already has it."""
    limits = limits or browser_limits()
    if len(payload) > limits.max_archive_bytes:
        raise UploadError(f"the project archive is {len(payload) / 2**20:,.0f} MB; the upload limit is "
                          f"{limits.max_archive_bytes / 2**20:,.0f} MB")
    try:
        archive = zipfile.ZipFile(io.BytesIO(payload))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise UploadError(f"this is not a project archive (a zip file): {error}") from None
    _check_members(members, limits)
    record = _read_json(archive, "project.json")
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("project"), dict):
        raise UploadError("this zip is not a project exported by Fashion-MNIST Studio (project.json is missing or "
                          "of another format)")
    fields = {k: v for k, v in record["project"].items() if k not in KEEP_OUT}
    dataset = [m for m in members if m.filename.startswith("dataset/")]
    if dataset:  # the project's own uploaded dataset travels with it, into this workspace
        if not str(fields.get("dataset", "")).startswith("upload/"):
            raise UploadError("this project archive holds a dataset/ folder but its project is not on an upload")
        fields["upload_home"] = str(ws.home)
    name = _free_name(ws, str(fields.pop("name", "Imported project")))
    project = ws.create_project(name, str(fields.pop("description", "")), **fields)
    runs = ws.runs_dir(project["id"])
    try:
        for member in members:
            if member.filename.startswith("runs/"):
                _extract(archive, member, runs / member.filename[len("runs/"):])
        if dataset:
            _import_dataset(archive, dataset, _upload_folder(fields["dataset"], str(ws.home)))
    except (OSError, zipfile.BadZipFile) as error:
        ws.delete_project(project["id"])
        raise UploadError(f"the project archive is damaged: {error}") from None
    return ws.get_project(project["id"])


def _extract(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Any) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with archive.open(member) as source, open(target, "wb") as out:
        out.write(source.read(member.file_size + 1)[:member.file_size])


def _import_dataset(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], folder: Any) -> None:
    """Write the zip's dataset/ files as the upload's cache folder, unless this workspace has that upload already
    (the same id is the same content: ids are digests of what was imported). Staged, then renamed into place."""
    if (folder / "manifest.json").exists():
        return
    staging = folder.with_name(f".import-{folder.name}-{time.monotonic_ns()}")
    for member in members:
        _extract(archive, member, staging / member.filename[len("dataset/"):])
    staging.replace(folder)


def _check_members(members: list[zipfile.ZipInfo], limits: UploadLimits) -> None:
    if len(members) > limits.max_files:
        raise UploadError(f"the archive holds {len(members):,} files; the limit is {limits.max_files:,}")
    total = 0
    for member in members:
        if member.filename != "project.json" and not _allowed(member.filename) and not DATASET_FILE.fullmatch(
                member.filename):
            raise UploadError(f"unexpected file in a project archive: {member.filename[:120]!r}")
        if member.file_size > limits.max_member_bytes:
            raise UploadError(f"{member.filename} is {member.file_size / 2**20:,.0f} MB; the limit per file is "
                              f"{limits.max_member_bytes / 2**20:,.0f} MB")
        if member.compress_size and member.file_size / member.compress_size > limits.max_ratio and member.file_size > 2**20:
            raise UploadError(f"{member.filename} expands {member.file_size / member.compress_size:,.0f} times: "
                              f"refused as a possible zip bomb")
        total += member.file_size
    if total > limits.max_uncompressed_bytes:
        raise UploadError(f"the archive expands to {total / 2**20:,.0f} MB; the limit is "
                          f"{limits.max_uncompressed_bytes / 2**20:,.0f} MB")


def _read_json(archive: zipfile.ZipFile, name: str) -> Any:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise UploadError("this zip is not a project archive: it has no project.json") from None
    if info.file_size > MAX_JSON_BYTES:
        raise UploadError(f"{name} is too large")
    try:
        return json.loads(archive.read(info).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UploadError(f"{name} is not valid JSON: {error}") from None


def _free_name(ws: store.Workspace, name: str) -> str:
    taken = {p["name"].lower() for p in ws.list_projects()}
    name = store.clean_name(name)
    if name.lower() not in taken:
        return name
    base, n = f"{name[:60]} (imported)", 2
    candidate = base
    while candidate.lower() in taken:
        candidate, n = f"{base} {n}", n + 1
    return candidate
