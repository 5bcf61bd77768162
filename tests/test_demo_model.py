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
    for key in ("test_accuracy", "photo_like", "date", "command", "best_val_accuracy"):
        assert key in card, key
    assert card["command"].startswith("python -m fmnist_jax train") and "--config models/demo/config.json" in card["command"]
    assert card["photo_like"]["pipeline_accuracy"] > card["photo_like"]["naive_accuracy"]
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


@requires_real_data
def test_demo_test_accuracy_matches_its_card(real_home):
    model = predict.load_model("demo")
    dataset = catalogue.load_dataset("fashion_mnist")
    metrics = evaluate_model(model, dataset.test_images, dataset.test_labels)
    # Up to 2 of 10,000 predictions may flip between CPU and GPU float rounding.
    assert metrics["accuracy"] == pytest.approx(model.card["test_accuracy"], abs=2e-4)
    assert metrics["count"] == model.card["test_count"] == 10_000
    assert np.isfinite(metrics["loss"])
