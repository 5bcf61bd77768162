"""The shipped demo model: small, loadable without pickle, documented, and as accurate as its card says."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_real_data

from fmnist_jax.data import catalogue
from fmnist_jax.deploy import predict
from fmnist_jax.evaluate import evaluate_model
from fmnist_jax.photos import pipeline_params
from fmnist_jax.training.config import TrainConfig

DEMO = Path(predict.DEMO_DIR)


def test_demo_files_are_small_and_documented():
    assert sorted(p.name for p in DEMO.iterdir()) == ["card.json", "config.json", "model.json", "model.msgpack"]
    assert sum(p.stat().st_size for p in DEMO.iterdir()) < 5_000_000
    card = json.loads((DEMO / "card.json").read_text())
    for key in ("test_accuracy", "photo_like", "date", "command", "best_val_accuracy", "trained_on", "real_photos",
                "calibration"):
        assert key in card, key
    assert card["command"].startswith("python -m fmnist_jax train --init-from models/fashion-base --photos")
    assert card["trained_on"]["pipeline"] == "grabcut" and card["trained_on"]["photos"] == "real-photos-train"
    real = card["real_photos"]
    assert real["folder"] == "real-photos"  # measured on the development set, never trained on
    assert sum(f["total"] for f in real["per_folder"].values()) == real["photos"]
    assert all(0 <= f["interval"][0] <= f["right"] / f["total"] <= f["interval"][1] <= 1 for f in real["per_folder"].values())
    TrainConfig.from_dict(json.loads((DEMO / "config.json").read_text())).validate()
    description = json.loads((DEMO / "model.json").read_text())
    assert description["class_names"] == list(catalogue.CLASS_NAMES)
    assert pipeline_params.resolve_preprocess(description["preprocess"]) == description["preprocess"]


def test_demo_loads_without_pickle(monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle must not be used to load a model")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    model = predict.load_model("demo")
    assert model.input_shape == (28, 28, 1) and model.num_classes == 10
    assert model.card["test_accuracy"] >= 0.9
    assert model.preprocess["mode"] == "grabcut"
    assert model.calibration == {**model.card["calibration"], "temperature": model.temperature,
                                 "unsure_threshold": model.unsure_threshold}
    assert 0 < model.unsure_threshold < 1


@requires_real_data
def test_demo_test_accuracy_matches_its_card(real_home):
    model = predict.load_model("demo")
    dataset = catalogue.load_dataset("fashion_mnist")
    metrics = evaluate_model(model, dataset.test_images, dataset.test_labels)
    # Up to 2 of 10,000 predictions may flip between CPU and GPU float rounding.
    assert metrics["accuracy"] == pytest.approx(model.card["test_accuracy"], abs=2e-4)
    assert metrics["count"] == model.card["test_count"] == 10_000
    assert np.isfinite(metrics["loss"])


def test_the_base_model_is_kept_for_reproducing_the_demo():
    base = predict.load_model(str(DEMO.parent / "fashion-base"))
    assert base.preprocess["mode"] == "garment" and base.unsure_threshold == 0.0
    card = json.loads((DEMO.parent / "fashion-base" / "card.json").read_text())
    assert "--config models/fashion-base/config.json" in card["command"]
