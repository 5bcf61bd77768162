"""Charts as Vega-Lite reads them: every encoded field is a plain name that the chart's own rows carry."""
from __future__ import annotations

from fmnist_jax.studio import charts, sweeps


def _fields(spec: dict) -> set[str]:
    found = set()
    for channel in spec["encoding"].values():
        for item in channel if isinstance(channel, list) else [channel]:
            if isinstance(item, dict) and "field" in item:
                found.add(item["field"])
            elif isinstance(item, str):
                found.add(item.split(":")[0])
    return found


def test_the_sweep_chart_draws_every_trial_coloured_by_its_score() -> None:
    # Issue 46: the parallel-coordinates chart of a 2-trial sweep was blank. Its colour field, "val. accuracy",
    # has a dot, which Vega-Lite reads as a nested field: every point was invalid and filtered out.
    report = {"trials": [
        {"trial": 1, "preset": "lenet", "learning_rate": 1e-3, "batch_size": 32, "epochs": 2, "augment": 0.0,
         "val_accuracy": 0.61, "test_accuracy": 0.6, "seconds": 38.0, "run": "run-1"},
        {"trial": 2, "preset": "lenet", "learning_rate": 3e-3, "batch_size": 32, "epochs": 2, "augment": 0.0,
         "val_accuracy": 0.72, "test_accuracy": 0.7, "seconds": 35.0, "run": "run-2"}]}
    axes = ["preset", "learning rate", "batch size", "epochs", "augmentation", "val. accuracy"]
    spec = charts.parallel_coordinates(sweeps.table_rows(report), axes).to_dict()
    rows = next(iter(spec["datasets"].values()))
    fields = _fields(spec)
    assert all("." not in field for field in fields), fields
    assert all(field in rows[0] for field in fields), (fields, sorted(rows[0]))
    assert len(rows) == 2 * len(axes)  # one point per trial and axis
    assert sorted({row["score"] for row in rows}) == [0.61, 0.72]
    learning_rate = sorted(row["position"] for row in rows if row["setting"] == "learning rate")
    assert learning_rate == [0.0, 1.0]  # each axis scaled to its own range
