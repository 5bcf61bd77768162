"""TrainConfig validation and JSON round trip; learning-rate schedules."""
from __future__ import annotations

import math

import pytest

from fmnist_jax.data.augment import AugmentConfig
from fmnist_jax.training import optim
from fmnist_jax.training.config import TrainConfig


def test_json_round_trip_is_exact() -> None:
    cfg = TrainConfig(epochs=3, optimizer="sgd", nesterov=True, schedule="warmup_cosine",
                      augment=AugmentConfig(flip=0.5, rotation=10))
    again = TrainConfig.from_json(cfg.to_json())
    assert again == cfg and again.augment.rotation == 10


@pytest.mark.parametrize("changes, message", [
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"epochs": 2.5}, "whole number"),
    ({"learning_rate": float("nan")}, "learning rate must be a finite number"),
    ({"learning_rate": float("inf")}, "learning rate must be a finite number"),
    ({"learning_rate": -0.1}, "learning rate must be above 0"),
    ({"learning_rate": 1e6}, "learning rate must be at most 10"),
    ({"batch_size": 0}, "batch size must be at least 1"),
    ({"optimizer": "lbfgs"}, "optimizer must be one of"),
    ({"label_smoothing": 0.9}, "label smoothing must be at most 0.5"),
    ({"augment": {"flip": 2.0}}, "augmentation 'flip' must be at most 1"),
    ({"precision": "float8"}, "precision must be one of"),
])
def test_invalid_values_raise_actionable_errors(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig().replace(**changes).validate()


def test_batch_larger_than_training_split_is_explained() -> None:
    with pytest.raises(ValueError, match="larger than the training split"):
        TrainConfig(batch_size=512).validate(train_size=100)


def test_unknown_keys_and_bad_json_raise() -> None:
    with pytest.raises(ValueError, match="unknown training setting"):
        TrainConfig.from_dict({"epochs": 3, "warp_speed": 9})
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainConfig.from_json("{epochs: 3")


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup_cosine", "one_cycle", "step"])
def test_schedules_start_peak_and_end_sensibly(schedule: str) -> None:
    cfg = TrainConfig(epochs=20, learning_rate=0.01, schedule=schedule, warmup_epochs=2, step_every_epochs=5)
    curve = optim.learning_rate_curve(cfg, steps_per_epoch=100, points=400)
    rates = [p["learning_rate"] for p in curve]
    assert max(rates) <= 0.01 + 1e-9 and all(math.isfinite(r) and r >= 0 for r in rates)
    if schedule == "constant":
        assert min(rates) == pytest.approx(0.01)
    else:
        assert rates[-1] < 0.002
    if schedule == "step":
        assert sorted({round(r, 8) for r in rates}, reverse=True)[:2] == [0.01, 0.001]


@pytest.mark.parametrize("name", ["sgd", "rmsprop", "adadelta", "adagrad", "adamax", "adam", "nadam", "adamw"])
def test_every_optimizer_builds(name: str) -> None:
    import jax.numpy as jnp
    tx = optim.make_optimizer(TrainConfig(optimizer=name, weight_decay=1e-4, grad_clip=1.0), 10)
    params = {"w": jnp.ones(3)}
    updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
    assert updates["w"].shape == (3,) and bool(jnp.all(jnp.isfinite(updates["w"])))
