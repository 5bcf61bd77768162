"""Read-only share links: a token that lets anyone predict with one model, and nothing else.

A share is a small JSON record under FMNIST_HOME/shares/<token>.json naming the model (a run folder, or the
demo model) and the workspace that made it. The token is random (128 bits) and is the whole secret: it does
not reveal the workspace key (?w=) and gives no access to projects, data or runs. The owner lists and revokes
their shares on the Deploy page; revoking deletes the record, and the link stops working at once.
"""
from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path

from fmnist_jax import settings, store

TOKEN = re.compile(r"[A-Za-z0-9_-]{22}")
DEMO = "demo"
MAX_SHARES_PER_WORKSPACE = 50


def _folder(home: str | os.PathLike | None = None) -> Path:
    return settings.home_dir(home) / "shares"


def create_share(workspace: store.Workspace, project_id: str, run_id: str, label: str,
                 home: str | os.PathLike | None = None) -> dict:
    """A new predict-only share of one model (a run of the project, or "demo"); returns its record with its token."""
    if run_id != DEMO:
        weights = store.safe_child(workspace.runs_dir(project_id), run_id) / "model.msgpack"
        if not weights.exists():
            raise ValueError(f"run {run_id} has no trained weights to share")
    if len(list_shares(workspace, home=home)) >= MAX_SHARES_PER_WORKSPACE:
        raise ValueError(f"you already have {MAX_SHARES_PER_WORKSPACE} share links; revoke some first")
    record = {"token": secrets.token_urlsafe(16), "workspace": str(workspace.home), "project_id": project_id,
              "run_id": run_id, "label": str(label)[:120], "created": time.time()}
    store.atomic_write_json(_folder(home) / f"{record['token']}.json", record)
    return record


def resolve_share(token: str | None, home: str | os.PathLike | None = None) -> dict | None:
    """The share a token names, with "source" (the model folder, or "demo"); None for a malformed, unknown or
    revoked token, or one whose model was deleted since."""
    if not token or not TOKEN.fullmatch(str(token)):
        return None
    path = _folder(home) / f"{token}.json"
    if not path.exists():
        return None
    try:
        record = store.read_json(path)
    except store.StoreError:
        return None
    if record.get("run_id") == DEMO:
        return {**record, "source": DEMO}
    workspace = store.Workspace(record["workspace"])
    try:
        run_dir = store.safe_child(workspace.runs_dir(record["project_id"]), record["run_id"])
    except (store.StoreError, ValueError):
        return None
    return {**record, "source": str(run_dir)} if (run_dir / "model.msgpack").exists() else None


def list_shares(workspace: store.Workspace, project_id: str | None = None,
                home: str | os.PathLike | None = None) -> list[dict]:
    """This workspace's shares (optionally of one project), newest first."""
    shares = []
    for path in _folder(home).glob("*.json") if _folder(home).is_dir() else []:
        try:
            record = store.read_json(path)
        except store.StoreError:
            continue
        if record.get("workspace") == str(workspace.home) and project_id in (None, record.get("project_id")):
            shares.append(record)
    return sorted(shares, key=lambda r: r.get("created", 0), reverse=True)


def revoke_share(workspace: store.Workspace, token: str, home: str | os.PathLike | None = None) -> None:
    """Delete one of this workspace's shares (ValueError for a token it does not own)."""
    if not TOKEN.fullmatch(str(token)):
        raise ValueError("not a share token")
    path = _folder(home) / f"{token}.json"
    try:
        owner = store.read_json(path).get("workspace") if path.exists() else None
    except store.StoreError:
        owner = None
    if owner != str(workspace.home):
        raise ValueError("this share link is not one of yours")
    path.unlink(missing_ok=True)
