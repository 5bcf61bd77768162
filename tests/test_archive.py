"""A project as one zip: exported with its runs, imported into another workspace with the checks of an upload."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fmnist_jax import store
from fmnist_jax.data import catalogue, splitting
from fmnist_jax.data.uploads.limits import UploadError
from fmnist_jax.studio import archive
from fmnist_jax.training import loop
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.trained import TrainedModel

TINY = [{"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "activation": "relu"}, {"type": "flatten"},
        {"type": "dense", "units": 10}]


@pytest.fixture
def trained_project(tmp_path: Path) -> tuple[store.Workspace, dict]:
    ws = store.Workspace(tmp_path / "mine")
    cfg = TrainConfig(epochs=1, batch_size=32)
    project = ws.create_project("Shirts", "mine", dataset="synthetic", model=TINY, config=cfg.to_dict(),
                                data_dir="/somewhere/only/here")
    splits = splitting.make_splits(catalogue.synthetic_dataset(num_train=200, num_test=50))
    list(loop.train(TINY, cfg, splits, run_dir=ws.new_run_dir(project["id"], "first")))
    return ws, project


def test_a_project_moves_to_another_workspace_with_its_runs(trained_project, tmp_path: Path) -> None:
    ws, project = trained_project
    payload = archive.export_project(ws, project["id"])
    names = zipfile.ZipFile(io.BytesIO(payload)).namelist()
    assert "project.json" in names and "runs/first/model.msgpack" in names and not any(".lock" in n for n in names)
    other = store.Workspace(tmp_path / "yours")
    imported = archive.import_project(other, payload)
    assert imported["name"] == "Shirts" and imported["model"] == project["model"]
    assert imported["config"] == project["config"] and "data_dir" not in imported  # machine-specific: dropped
    assert [r["id"] for r in other.list_runs(imported["id"])] == ["first"]
    before = TrainedModel.from_run(ws.runs_dir(project["id"]) / "first")
    after = TrainedModel.from_run(other.runs_dir(imported["id"]) / "first")
    images = catalogue.synthetic_dataset(num_train=20, num_test=10).test_images
    assert np.array_equal(before.predict_proba(images), after.predict_proba(images))
    again = archive.import_project(other, payload)
    assert again["name"] == "Shirts (imported)"


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return buffer.getvalue()


PROJECT = json.dumps({"format": archive.FORMAT, "project": {"name": "x"}}).encode()


@pytest.mark.parametrize("payload, message", [
    (b"not a zip", "not a project archive"),
    (_zip({"readme.txt": b"hi"}), "unexpected file"),
    (_zip({"project.json": PROJECT, "runs/../../evil.json": b"{}"}), "unexpected file"),
    (_zip({"project.json": PROJECT, "runs/a/script.py": b"import os"}), "unexpected file"),
    (_zip({"runs/a/run.json": b"{}"}), "no project.json"),
    (_zip({"project.json": b'{"format": "other"}'}), "not a project exported by Fashion-MNIST Studio"),
    (_zip({"project.json": PROJECT, "runs/a/model.msgpack": b"\0" * (8 * 2**20)}), "zip bomb"),
])
def test_bad_project_archives_are_refused_with_a_reason(payload: bytes, message: str, tmp_path: Path) -> None:
    ws = store.Workspace(tmp_path / "ws")
    with pytest.raises(UploadError, match=message):
        archive.import_project(ws, payload)
    assert ws.list_projects() == []  # nothing half-imported


def test_a_project_on_an_uploaded_dataset_carries_it_and_trains_and_evaluates_elsewhere(tmp_path: Path) -> None:
    from upload_samples import folder_zip

    from fmnist_jax.data.uploads import importer
    from fmnist_jax.studio import tasks

    mine = store.Workspace(tmp_path / "mine")
    manifest = importer.import_upload(folder_zip(tmp_path / "garments.zip", {"boots": 14, "bags": 14, "hats": 14}),
                                      home=mine.home)
    cfg = TrainConfig(epochs=1, batch_size=8, chunk_steps=5)
    project = mine.create_project("Own data", dataset=manifest["name"], upload_home=str(mine.home),
                                  model=[{"type": "flatten"}, {"type": "dense", "units": 3}], config=cfg.to_dict())
    payload = archive.export_project(mine, project["id"])
    names = zipfile.ZipFile(io.BytesIO(payload)).namelist()
    assert {"dataset/manifest.json", "dataset/meta.json", "dataset/train_images.npy"} <= set(names)
    assert archive.dataset_bytes(mine, project["id"]) > 0
    without = archive.export_project(mine, project["id"], include_dataset=False)
    assert not any(n.startswith("dataset/") for n in zipfile.ZipFile(io.BytesIO(without)).namelist())

    yours = store.Workspace(tmp_path / "yours")  # another studio: the upload is not there
    imported = archive.import_project(yours, payload)
    assert imported["dataset"] == manifest["name"] and imported["upload_home"] == str(yours.home)
    assert [m["name"] for m in importer.list_uploads(home=yours.home)] == [manifest["name"]]
    registry = tasks.get_registry()
    job = tasks.start_training(yours, imported, registry=registry)
    done = registry.wait(job["id"], timeout=300)
    assert done["status"] == "completed", done.get("error")
    (run,) = yours.list_runs(imported["id"])
    evaluation = tasks.evaluate_run(yours, imported["id"], run["id"])
    assert len(evaluation["confusion_matrix"]) == 3 and sum(map(sum, evaluation["confusion_matrix"])) > 0
