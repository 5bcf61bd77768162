"""Projects on disk: names are sanitised, duplicates keep settings, deletes are atomic."""
from __future__ import annotations

import pytest

from fmnist_jax import store


def test_project_lifecycle_and_duplicate_keeps_every_setting(workspace) -> None:
    ws = store.Workspace()
    project = ws.create_project("Sneakers vs sandals", "first try", data_dir="/data", train_limit=500)
    ws.update_project(project["id"], model_preset="dls", config={"epochs": 3})
    copy = ws.duplicate_project(project["id"], "Sneakers again")
    assert copy["id"] != project["id"] and copy["model_preset"] == "dls" and copy["config"] == {"epochs": 3}
    assert copy["data_dir"] == "/data" and copy["train_limit"] == 500 and copy["deployed_run"] is None
    ws.update_project(copy["id"], name="Renamed")
    assert {p["name"] for p in ws.list_projects()} == {"Sneakers vs sandals", "Renamed"}
    with pytest.raises(ValueError, match="already exists"):
        ws.update_project(copy["id"], name="sneakers VS sandals")
    ws.delete_project(project["id"])
    assert [p["name"] for p in ws.list_projects()] == ["Renamed"]


@pytest.mark.parametrize("name, message", [
    ("   ", "empty"), ("a" * 10_000, "the limit is 80"), ("bad\x00name", "control characters"), (None, "must be text"),
])
def test_bad_project_names_are_refused(name, message, workspace) -> None:
    with pytest.raises(ValueError, match=message):
        store.Workspace().create_project(name)
    assert store.Workspace().list_projects() == []


@pytest.mark.parametrize("name", ["../../etc", "a/b", "..", "/abs"])
def test_names_with_path_characters_stay_inside_the_workspace(name, workspace) -> None:
    project = store.Workspace().create_project(name)
    folder = store.Workspace().project_dir(project["id"])
    assert folder.parent == (workspace / "projects").resolve() and "/" not in project["id"]
    with pytest.raises(ValueError):
        store.Workspace().project_dir("../outside")


def test_written_files_get_the_usual_permissions(tmp_path) -> None:
    import os
    import stat

    target = tmp_path / "model.onnx"
    store.atomic_write_bytes(target, b"payload")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
