"""The Data page's Label check (issue 44 item 1): findings kept per project, a gallery where each flag is kept,
relabelled or excluded, the choices saved as a label version that training then uses, and undo."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from fmnist_jax import label_issues, store
from fmnist_jax.data.label_versions import LabelEditError, LabelEdits
from fmnist_jax.studio import label_check, tasks
from fmnist_jax.studio import projects as proj
from test_app import seeded  # noqa: F401  (the fixture)

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def project(seeded: dict) -> dict:  # noqa: F811  (the fixture imported above)
    """test_app's seeded project: synthetic data, a one-layer model, one epoch."""
    return seeded


def _findings(monkeypatch, project: dict, rows: dict[int, int]) -> dict:
    """A finished label check whose flags are `rows` (row -> suggested class), without training fold models."""
    source = proj.load_dataset(project, labels=False)

    def designed(dataset, check, files=None, progress=None, stop=None) -> dict:
        progress(0.5, "fold 1 of 2")
        issues = [{"index": row, "given": int(dataset.train_labels[row]), "suggested": cls, "quality": 0.01}
                  for row, cls in rows.items()]
        return {"n": len(dataset.train_labels), "folds": check.folds, "seconds": 1.0, "out_of_fold_accuracy": 0.9,
                "issues": issues}

    monkeypatch.setattr(label_issues, "find_issues", designed)
    return label_check.run_check(store.Workspace(), project, source, label_issues.LabelCheck(folds=2),
                                 progress=lambda fraction, message: None)


def _open_data(pid: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["project_id"] = pid
    at.run()
    at.switch_page("pages/1_Data.py").run()
    return at


def test_findings_are_kept_for_the_project_and_its_dataset(project, monkeypatch) -> None:
    found = _findings(monkeypatch, project, {4: 1, 9: 3})
    assert [i["index"] for i in found["issues"]] == [4, 9] and found["dataset"] == proj.SYNTHETIC
    ws = store.Workspace()
    assert label_check.last_check(ws, project) == found
    other = ws.update_project(project["id"], dataset="fashion_mnist")
    assert label_check.last_check(ws, other) is None  # findings of another dataset are not shown


def test_the_gallery_relabels_and_excludes_and_training_uses_the_saved_version(project, monkeypatch) -> None:
    source = proj.load_dataset(project, labels=False)
    _findings(monkeypatch, project, {4: (int(source.train_labels[4]) + 1) % 10, 9: 3, 12: 5})
    at = _open_data(project["id"])
    assert not at.exception, at.exception
    assert any("**3 likely label issues** among" in str(m.value) for m in at.markdown)
    at.radio(key=f"label-choice-{project['id']}-4").set_value("relabel").run()
    at.radio(key=f"label-choice-{project['id']}-9").set_value("exclude").run()
    assert any("1 relabelled and 1 excluded so far" in str(c.value) for c in at.caption)
    at.button(key=f"label-save-{project['id']}").click().run()
    assert not at.exception, at.exception
    saved = store.Workspace().get_project(project["id"])
    assert saved["label_version"] == 1
    (version,) = saved["label_versions"]
    assert version["relabel"] == {"4": (int(source.train_labels[4]) + 1) % 10} and version["exclude"] == [9]
    # training uses the version: one image fewer, row 4 relabelled; the source's shared arrays unchanged
    cleaned = proj.load_dataset(saved)
    assert len(cleaned.train_labels) == len(source.train_labels) - 1
    assert cleaned.train_labels[4] == (int(source.train_labels[4]) + 1) % 10
    assert proj.load_dataset(saved, labels=False) is source
    record = tasks._data_record(saved, cleaned)
    assert record["label_version"] == 1 and record["label_edits"] == {"relabel": version["relabel"], "exclude": [9]}
    assert len(proj.load_splits(record).train_labels) + len(proj.load_splits(record).val_labels) == len(cleaned.train_labels)


def test_undo_goes_back_to_the_original_labels_and_a_run_keeps_its_own_copy(project, monkeypatch) -> None:
    ws = store.Workspace()
    source = proj.load_dataset(project, labels=False)
    saved = label_check.save_version(ws, project, LabelEdits({2: 7}, {5}), source)
    run_record = {"dataset": proj.SYNTHETIC, **label_check.run_fields(saved)}
    assert label_check.version_label(run_record) == "labels v1 (1 relabelled, 1 excluded)"
    back = label_check.select_version(ws, saved, 0)
    assert proj.load_dataset(back) is source and label_check.version_label(back) == "original labels"
    again = label_check.select_version(ws, back, 1)
    gone = label_check.delete_version(ws, again, 1)
    assert gone["label_version"] == 0 and label_check.versions(gone) == []
    assert len(proj.load_dataset(run_record).train_labels) == len(source.train_labels) - 1  # the run still has it
    with pytest.raises(LabelEditError, match="label version 1 no longer exists"):
        label_check.overlay({**gone, "label_version": 1})
    with pytest.raises(LabelEditError, match="nothing to save"):
        label_check.save_version(ws, gone, LabelEdits(), source)


def test_the_check_runs_in_the_background_from_the_page(project, monkeypatch) -> None:
    release = threading.Event()
    source = proj.load_dataset(project, labels=False)

    def slow(dataset, check, files=None, progress=None, stop=None) -> dict:
        progress(0.3, "fold 1 of 4")
        release.wait(30)
        return {"n": len(dataset.train_labels), "folds": check.folds, "seconds": 2.0, "out_of_fold_accuracy": 0.8,
                "issues": [{"index": 1, "given": int(dataset.train_labels[1]), "suggested": 0, "quality": 0.02}]}

    monkeypatch.setattr(label_issues, "find_issues", slow)
    at = _open_data(project["id"])
    at.button(key=f"label-run-{project['id']}").click().run()
    assert not at.exception, at.exception
    assert not (store.Workspace().project_dir(project["id"]) / label_check.CHECK_FILE).exists()  # still running
    release.set()
    label_check_file = store.Workspace().project_dir(project["id"]) / label_check.CHECK_FILE
    for _ in range(100):
        if label_check_file.exists():
            break
        threading.Event().wait(0.1)
    assert label_check_file.exists()
    at.run()
    assert any("**1 likely label issue** among 1,000" in str(m.value) for m in at.markdown), [str(m.value) for m in at.markdown]
    assert len(source.train_labels) == 1000
    assert np.isfinite(store.read_json(label_check_file)["seconds"])
