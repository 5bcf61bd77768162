"""A whole project as one zip: its settings (data reference, split, model, hyperparameters) and its runs with
their weights, checkpoints, histories and event files; imported back with the checks of any other upload.

Layout: project.json at the top, then runs/<run id>/... Only those paths, only JSON, JSONL, msgpack and
TensorBoard event files; names are checked before anything is extracted, sizes and counts are bound by the
upload limits, and weights are msgpack (never pickle). The dataset itself is referenced, not copied: an
imported project on an uploaded dataset needs that dataset uploaded to the new workspace too.
"""
from __future__ import annotations

import io
import json
import re
import time
import zipfile
from typing import Any

from fmnist_jax import store
from fmnist_jax.data.uploads.limits import UploadError, UploadLimits, browser_limits

FORMAT = "fmnist-studio-project/1"
RUN_FILE = re.compile(r"runs/([A-Za-z0-9][A-Za-z0-9._-]{0,99})/((?:checkpoints/|tensorboard/)?"
                      r"[A-Za-z0-9][A-Za-z0-9._-]{0,150})")
ALLOWED_SUFFIXES = (".json", ".jsonl", ".msgpack")
KEEP_OUT = {"id", "created", "updated", "schema", "upload_home", "deployed_run", "init_from", "data_dir"}  # machine-specific
MAX_JSON_BYTES = 8 * 2**20


def export_project(ws: store.Workspace, project_id: str) -> bytes:
    """The project's zip (deflated), ready to download."""
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
    return buffer.getvalue()


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
    settings = {k: v for k, v in record["project"].items() if k not in KEEP_OUT}
    name = _free_name(ws, str(settings.pop("name", "Imported project")))
    project = ws.create_project(name, str(settings.pop("description", "")), **settings)
    runs = ws.runs_dir(project["id"])
    try:
        for member in members:
            if member.filename == "project.json":
                continue
            target = runs / member.filename[len("runs/"):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, open(target, "wb") as out:
                out.write(source.read(member.file_size + 1)[:member.file_size])
    except (OSError, zipfile.BadZipFile) as error:
        ws.delete_project(project["id"])
        raise UploadError(f"the project archive is damaged: {error}") from None
    return ws.get_project(project["id"])


def _check_members(members: list[zipfile.ZipInfo], limits: UploadLimits) -> None:
    if len(members) > limits.max_files:
        raise UploadError(f"the archive holds {len(members):,} files; the limit is {limits.max_files:,}")
    total = 0
    for member in members:
        if member.filename != "project.json" and not _allowed(member.filename):
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
