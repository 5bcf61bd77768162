"""Sweeps: which trials run (grid, random, the cap), the budget, the best chosen on validation only, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fmnist_jax.cli import main as cli
from fmnist_jax.data import catalogue
from fmnist_jax.studio import sweeps


def test_grid_random_and_the_trial_cap() -> None:
    spec = sweeps.SweepSpec(presets=["fast", "lenet"], learning_rates=[1e-3, 3e-3], batch_sizes=[64], epochs=[1, 2],
                            augment=[0.0])
    grid = sweeps.trials(spec)
    assert len(grid) == 8 and grid[0] == {"preset": "fast", "learning_rate": 1e-3, "batch_size": 64, "epochs": 1,
                                          "augment": 0.0}
    sample = sweeps.trials(spec.model_copy(update={"mode": "random", "trials": 3}))
    assert len(sample) == 3 and all(t in grid for t in sample) and len({json.dumps(t) for t in sample}) == 3
    assert sample == sweeps.trials(spec.model_copy(update={"mode": "random", "trials": 3}))  # seeded
    big = sweeps.SweepSpec(learning_rates=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2], batch_sizes=[32, 64, 128, 256],
                           epochs=[1, 2, 3, 5], augment=[0.0])
    with pytest.raises(ValueError, match="this grid has 80 combinations; a sweep runs at most 64"):
        sweeps.trials(big)
    for bad, message in (({"presets": ["huge"]}, "presets must be among"), ({"learning_rates": [0]}, "above 0"),
                         ({"augment": [2]}, "from 0 to 1"), ({"budget_minutes": 0}, "budget")):
        with pytest.raises(ValueError, match=message):
            sweeps.SweepSpec(**bad)


def test_the_budget_stops_new_trials_and_the_best_is_chosen_on_validation() -> None:
    spec = sweeps.SweepSpec(learning_rates=[1e-4, 1e-3, 1e-2], epochs=[1, 2], budget_minutes=1.0)
    now = [0.0]
    scores = {1e-4: (0.80, 0.95), 1e-3: (0.90, 0.85), 1e-2: (0.70, 0.70)}  # (validation, test)

    def run_trial(number: int, values: dict, config) -> dict:
        assert config.learning_rate == values["learning_rate"] and config.epochs == values["epochs"]
        now[0] += 15.0  # each trial takes 15 s
        val, test = scores[values["learning_rate"]]
        return {"val_accuracy": val, "test_accuracy": test}

    report = sweeps.run_sweep(spec, run_trial, clock=lambda: now[0])
    assert len(report["trials"]) == 4 and report["skipped"] == 2  # no trial starts after 60 s
    assert report["best"]["learning_rate"] == 1e-3  # 0.90 validation, although another trial tests better


def test_augmentation_strength_scales_one_recipe() -> None:
    values = {"preset": "fast", "learning_rate": 1e-3, "batch_size": 64, "epochs": 3, "augment": 0.5}
    config = sweeps.trial_config(values)
    assert (config.augment.flip, config.augment.rotation, config.batch_size) == (0.25, 5.0, 64)
    assert sweeps.trial_config({**values, "augment": 0.0}).augment.active() is False


@pytest.mark.slow
def test_sweep_cli_trains_each_trial_and_reports_the_best(workspace: Path, tmp_path: Path, capsys) -> None:
    catalogue.save_cached(catalogue.synthetic_dataset(num_train=400, num_test=100))
    code = cli.main(["sweep", "--dataset", "synthetic", "--preset", "lenet", "--lr", "1e-3,3e-3", "--batch-size", "32",
                     "--epochs", "1", "--out", str(tmp_path / "sweep"), "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [t["learning_rate"] for t in report["trials"]] == [1e-3, 3e-3]
    assert all((Path(t["run"]) / "model.msgpack").exists() and t["test_accuracy"] is not None for t in report["trials"])
    assert report["best"]["val_accuracy"] == max(t["val_accuracy"] for t in report["trials"])
