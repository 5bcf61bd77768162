"""Opening a page never rewrites what a project stores: every widget over a stored setting can show the stored value
as it is, and only values the user changes are saved (the Data page once clamped rotation 90 to its slider's 45 and
saved that just by rendering)."""
from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from fmnist_jax import checks, store
from fmnist_jax.data import splitting
from fmnist_jax.data.augment import AugmentConfig
from fmnist_jax.model import layer_specs
from fmnist_jax.studio import projects as proj
from fmnist_jax.training import config

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = ["pages/1_Data.py", "pages/2_Model.py", "pages/3_Hyperparameters.py", "pages/4_Training.py",
         "pages/5_Evaluation.py", "pages/6_Deploy.py"]

# Values at the edges of (or between the stops of) what the widgets used to offer: each of them was rewritten once.
EDGE_AUGMENT = {"rotation": 90.0, "shift": 0.5, "noise": 1.0, "zoom": 0.9, "shear": 1.0, "brightness": 0.7,
                "crop": 3, "flip": 0.5}
EDGE_CONFIG = {"epochs": 150, "learning_rate": 7e-4, "clean_epochs": 120, "batch_size": 32, "chunk_steps": 5,
               "patience": 1500, "grad_clip": 2500.0}


@pytest.fixture
def edge_project(workspace: Path) -> dict:
    """A synthetic-data project whose stored settings sit outside the old widget ranges, with a pooled split whose
    fractions are not whole percents and a layer spec stored without its defaults filled in."""
    cfg = config.TrainConfig(**EDGE_CONFIG, augment=AugmentConfig(**EDGE_AUGMENT))
    split = splitting.SplitSpec(mode="pooled", fractions=(0.855, 0.0725, 0.0725), seed=7)
    return store.Workspace().create_project("Edges", "stored settings at the edges", dataset=proj.SYNTHETIC,
                                            split=split.to_dict(), model=[{"type": "flatten"},
                                                                          {"type": "dense", "units": 10}],
                                            model_preset="fast", config=cfg.to_dict())


def _project_file(project: dict) -> Path:
    return store.Workspace().project_dir(project["id"]) / "project.json"


@pytest.mark.parametrize("page", PAGES)
def test_opening_a_page_leaves_the_project_file_byte_identical(edge_project: dict, page: str) -> None:
    path = _project_file(edge_project)
    before = path.read_bytes()
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["project_id"] = edge_project["id"]
    at.run()
    at.switch_page(page).run()
    assert not at.exception
    at.run()  # a second rerun, as any click would cause, writes nothing either
    assert path.read_bytes() == before


def test_the_data_page_shows_the_stored_augmentation_and_saves_only_a_moved_slider(edge_project: dict) -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["project_id"] = edge_project["id"]
    at.run()
    at.switch_page("pages/1_Data.py").run()
    sliders = {s.label: s for s in at.slider}
    assert sliders["Rotation (degrees)"].value == 90.0
    assert sliders["Rotation (degrees)"].max == 180.0  # the config's own range
    assert sliders["Shift (fraction of the side)"].value == 0.5
    assert sliders["Noise"].value == 1.0
    sliders["Horizontal flip (probability)"].set_value(0.25).run()
    stored = store.Workspace().get_project(edge_project["id"])["config"]["augment"]
    assert stored == {**AugmentConfig().to_dict(), **EDGE_AUGMENT, "flip": 0.25}


def test_saving_the_hyperparameters_form_unchanged_keeps_every_stored_value(edge_project: dict) -> None:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["project_id"] = edge_project["id"]
    at.run()
    at.switch_page("pages/3_Hyperparameters.py").run()
    epochs = next(s for s in at.slider if s.label == "Epochs")
    assert epochs.value == 150
    next(b for b in at.button if b.label == "Save settings").click().run()
    assert not at.exception
    stored = store.Workspace().get_project(edge_project["id"])["config"]
    assert {name: stored[name] for name in EDGE_CONFIG} == EDGE_CONFIG  # 7e-4 is between the 1-2-5 stops


def test_a_pooled_split_between_whole_percents_is_kept_until_a_slider_moves(edge_project: dict) -> None:
    saved = splitting.SplitSpec(mode="pooled", fractions=(0.855, 0.0725, 0.0725))
    assert splitting.edited_spec(saved, {}) == saved
    moved = splitting.edited_spec(saved, {"val": 10})
    assert moved.fractions == (0.855, 0.1, 0.045)
    assert splitting.edited_spec(saved, {"mode": "official", "val_fraction": 20}).val_fraction == 0.2


def test_widget_metadata_spans_the_fields_own_bounds() -> None:
    for name in AugmentConfig.GEOMETRY + AugmentConfig.PHOTO:
        meta = checks.widget(AugmentConfig, name)
        assert meta["min"] == 0
        field = AugmentConfig.model_fields[name]
        assert meta["max"] == next(c.le for c in field.metadata if getattr(c, "le", None) is not None)
        assert meta["label"] and meta["help"] and meta["step"] > 0
    assert set(AugmentConfig.GEOMETRY + AugmentConfig.PHOTO) == set(AugmentConfig.model_fields)
    assert checks.widget(AugmentConfig, "rotation")["max"] == 180
    with pytest.raises(KeyError):
        checks.widget(config.TrainConfig, "optimizer")


def test_edits_are_only_the_values_a_widget_changed() -> None:
    assert checks.edits({"a": 1, "b": 0.5}, {"a": 1, "b": 0.5}) == {}
    assert checks.edits({"a": 1, "b": 0.5}, {"a": 2, "b": 0.5}) == {"a": 2}
    assert checks.edits({"a": 1}, {"a": 1, "c": True}) == {"c": True}


def test_a_layer_spec_stored_without_defaults_is_not_rewritten_normalised(edge_project: dict) -> None:
    stored = store.Workspace().get_project(edge_project["id"])["model"]
    assert stored != layer_specs.normalize_spec(stored)  # the precondition that makes the page test meaningful


def test_a_dataset_without_a_test_set_is_not_offered_an_official_one() -> None:
    from fmnist_jax.data import catalogue

    with_test = catalogue.synthetic_dataset(num_train=100, num_test=20)
    without = catalogue.Dataset("upload/x", with_test.train_images, with_test.train_labels,
                                with_test.train_images[:0], with_test.train_labels[:0], with_test.class_names)
    assert splitting.mode_labels(with_test)["official"] == "Official test set + validation"
    assert "has no test set of its own" in splitting.mode_labels(without)["official"]
    counts = splitting.split_counts(without, splitting.SplitSpec(mode="official", val_fraction=0.2))
    assert counts == {"train": 60, "validation": 20, "test": 20}  # what the label says: both carved
