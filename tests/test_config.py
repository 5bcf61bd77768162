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
    ({"augment": {"crop": 9}}, "augmentation 'crop' must be at most 8"),
    ({"augment": {"crop": 1.5}}, "augmentation 'crop' must be a whole number"),
    ({"precision": "float8"}, "precision must be one of"),
])
def test_invalid_values_raise_actionable_errors(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig().replace(**changes).validate()


def test_settings_models_share_one_list_of_choices_and_one_line_errors() -> None:
    from fmnist_jax.model.cpu_ops import CONV_IMPLS
    from fmnist_jax.training.config import OPTIMIZERS
    schema = TrainConfig.model_json_schema()["properties"]
    assert tuple(schema["optimizer"]["enum"]) == OPTIMIZERS
    assert tuple(schema["conv_impl"]["enum"]) == CONV_IMPLS and "xla_dots" in CONV_IMPLS
    assert TrainConfig(conv_impl="xla_dots").validate().conv_impl == "xla_dots"
    for bad in ({"epochs": "ten"}, {"nesterov": 1}, {"augment": 3}, {"augment": {"tilt": 1}}, {"bogus": 1, "more": 2}):
        with pytest.raises(ValueError) as caught:
            TrainConfig.from_dict(bad)
        text = str(caught.value)
        assert "\n" not in text and "validation error" not in text and "pydantic" not in text, text
    with pytest.raises(ValueError, match="^unknown training setting\\(s\\): bogus, more$"):
        TrainConfig.from_dict({"bogus": 1, "more": 2})
    with pytest.raises(ValueError, match="^unknown augmentation setting\\(s\\): tilt$"):
        TrainConfig.from_dict({"augment": {"tilt": 1}})
    with pytest.raises(ValueError, match="^nesterov must be true or false, got 1$"):
        TrainConfig.from_dict({"nesterov": 1})


def test_saved_configs_of_the_shipped_models_still_load() -> None:
    import json
    from pathlib import Path
    for folder in ("demo", "fashion-base"):
        saved = json.loads((Path(__file__).resolve().parents[1] / "models" / folder / "config.json").read_text())
        cfg = TrainConfig.from_dict(saved).validate()
        assert cfg.to_dict() == {**TrainConfig().to_dict(), **saved, "augment": {**AugmentConfig().to_dict(), **saved["augment"]}}


def test_assigned_fields_are_checked_by_validate() -> None:
    cfg = TrainConfig()
    cfg.epochs = 0  # the UI and the CLI set fields one by one, then validate
    with pytest.raises(ValueError, match="epochs must be at least 1, got 0"):
        cfg.validate()
    cfg = TrainConfig(epochs=2, warmup_epochs=1)
    cfg.warmup_epochs = 3
    with pytest.raises(ValueError, match="warmup epochs must be at most 2"):
        cfg.validate()


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


@pytest.mark.parametrize("schedule", ["constant", "cosine", "warmup_cosine", "one_cycle", "step"])
@pytest.mark.parametrize("epochs,steps_per_epoch", [(20, 100), (3, 7), (1, 2)])
def test_schedules_follow_optax_curves(schedule: str, epochs: int, steps_per_epoch: int) -> None:
    """The run-time schedules (numbers as program arguments) give Optax's own curves, step by step."""
    import numpy as np
    import optax

    cfg = TrainConfig(epochs=epochs, learning_rate=0.02, schedule=schedule, warmup_epochs=min(2, epochs - 0.5),
                      step_every_epochs=max(1, epochs // 3), step_factor=0.3)
    total = epochs * steps_per_epoch
    warmup = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))
    every = cfg.step_every_epochs * steps_per_epoch
    expected = {
        "constant": optax.constant_schedule(0.02),
        "cosine": optax.cosine_decay_schedule(0.02, total),
        "warmup_cosine": optax.warmup_cosine_decay_schedule(0.0, 0.02, warmup, total, end_value=0.0),
        "one_cycle": optax.cosine_onecycle_schedule(total, 0.02),
        "step": optax.piecewise_constant_schedule(0.02, {e * steps_per_epoch: 0.3 for e in
                                                         range(cfg.step_every_epochs, epochs, cfg.step_every_epochs)}),
    }[schedule]
    steps = np.arange(total + 3)
    ours = np.asarray(optim.schedule_value(schedule, steps, optim.schedule_plan(cfg, steps_per_epoch)))
    theirs = np.asarray([float(expected(int(s))) for s in steps])
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-9)


def test_the_run_time_rate_must_be_given_inside_the_program() -> None:
    rate = optim.RunTimeRate()
    with pytest.raises(RuntimeError, match="given by the training step"):
        rate(0)
    with rate.given(0.5):
        assert rate(7) == 0.5
    with pytest.raises(RuntimeError):
        rate(1)


def test_a_shortened_recipe_keeps_its_clean_last_epochs_within_the_new_length() -> None:
    recipe = TrainConfig(epochs=24, clean_epochs=7, batch_size=32)
    assert recipe.with_epochs(10).clean_epochs == 7 and recipe.with_epochs(10).epochs == 10
    short = recipe.with_epochs(1, batch_size=64)
    assert (short.epochs, short.clean_epochs, short.batch_size) == (1, 1, 64)
    short.validate()  # would refuse 7 clean epochs in a 1-epoch run


def test_one_optimizer_table_serves_training_the_page_and_the_script() -> None:
    import jax.numpy as jnp
    import numpy as np
    import optax

    from fmnist_jax.deploy import script_export
    from fmnist_jax.training.config import OPTIMIZER_KINDS, OPTIMIZERS

    assert OPTIMIZERS == tuple(OPTIMIZER_KINDS)
    table = script_export._optimizer_table()
    for name, kind in OPTIMIZER_KINDS.items():
        assert callable(getattr(optax, kind.optax_name))
        assert all(field in TrainConfig.model_fields for _, field in kind.arguments)
        assert "weight_decay" not in kind.fields()  # shown with the regularisation settings instead
        assert f'"{name}": lambda: optax.{kind.optax_name}(lr, ' in table
        tx = optim.make_optimizer(TrainConfig(optimizer=name, weight_decay=0.01), steps_per_epoch=10)
        params = {"w": jnp.ones(3)}
        updates, _ = tx.update({"w": jnp.full(3, 0.5)}, tx.init(params), params)
        assert np.all(np.isfinite(updates["w"])) and np.any(updates["w"] != 0), name
