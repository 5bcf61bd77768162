"""Sweeps: train many settings without babysitting, and keep the best on validation accuracy.

A sweep varies the preset, learning rate, batch size, epochs and augmentation strength over a grid (every
combination) or a random sample of it, within a budget in minutes: trials run one after another and no new
one starts once the budget is spent. Each trial is an ordinary run (in the project's runs in the studio, in
the output folder from the CLI) tagged with its sweep and its values. The best trial is the one with the
highest validation accuracy; the test set is reported, never used to choose.
"""
from __future__ import annotations

import itertools
import random
import time
from typing import Any, Callable, ClassVar

from pydantic import Field, field_validator

from fmnist_jax.checks import Real, Settings, Whole, choice
from fmnist_jax.model import presets
from fmnist_jax.studio.background import ACTIVE
from fmnist_jax.training.config import TrainConfig

MODES = ("grid", "random")
MAX_TRIALS = 64
# Augmentation strength 0..1 scales one recipe of the studio's garment augmentation.
FULL_AUGMENT = {"flip": 0.5, "shift": 0.1, "rotation": 10.0, "zoom": 0.1, "erasing": 0.5}


class SweepSpec(Settings):
    """What a sweep tries: lists of values per setting, how to combine them, and the time it may take."""

    kind: ClassVar[str] = "sweep"

    presets: list[str] = Field(["fast"], min_length=1, max_length=4, title="presets")
    learning_rates: list[Real] = Field([1e-3], min_length=1, max_length=8, title="learning rates")
    batch_sizes: list[Whole] = Field([128], min_length=1, max_length=8, title="batch sizes")
    epochs: list[Whole] = Field([2], min_length=1, max_length=8, title="epochs")
    augment: list[Real] = Field([0.0], min_length=1, max_length=5, title="augmentation strengths")
    mode: choice(MODES) = Field("grid", title="sweep mode")
    trials: Whole = Field(8, ge=1, le=MAX_TRIALS, title="random trials")
    budget_minutes: Real = Field(30.0, gt=0, le=24 * 60, title="budget (minutes)")
    seed: Whole = Field(0, ge=0, le=2**31 - 1, title="sweep seed")

    @field_validator("presets")
    @classmethod
    def _known_presets(cls, values: list[str]) -> list[str]:
        unknown = [v for v in values if v not in presets.PRESETS]
        if unknown:
            raise ValueError(f"must be among {', '.join(presets.PRESETS)}; unknown: {', '.join(unknown)}")
        return values

    @field_validator("learning_rates")
    @classmethod
    def _positive_rates(cls, values: list[float]) -> list[float]:
        if any(not 0 < v <= 10 for v in values):
            raise ValueError("must each be above 0 and at most 10")
        return values

    @field_validator("batch_sizes", "epochs")
    @classmethod
    def _positive_counts(cls, values: list[int]) -> list[int]:
        if any(v < 1 or v > 65_536 for v in values):
            raise ValueError("must each be at least 1")
        return values

    @field_validator("augment")
    @classmethod
    def _strengths(cls, values: list[float]) -> list[float]:
        if any(not 0 <= v <= 1 for v in values):
            raise ValueError("must each be from 0 to 1")
        return values


def trials(spec: SweepSpec) -> list[dict]:
    """The trials' values, in the order they run: every combination (grid, at most MAX_TRIALS), or `trials`
    distinct combinations drawn with the sweep's seed (random)."""
    grid = [dict(zip(("preset", "learning_rate", "batch_size", "epochs", "augment"), values))
            for values in itertools.product(spec.presets, spec.learning_rates, spec.batch_sizes, spec.epochs,
                                            spec.augment)]
    if spec.mode == "random":
        return random.Random(spec.seed).sample(grid, min(spec.trials, len(grid)))
    if len(grid) > MAX_TRIALS:
        raise ValueError(f"this grid has {len(grid)} combinations; a sweep runs at most {MAX_TRIALS}: give fewer "
                         f"values or use random mode")
    return grid


def trial_config(values: dict, base: TrainConfig | None = None) -> TrainConfig:
    """The TrainConfig of one trial: the preset's recommended recipe (or `base`), with the trial's values."""
    recipe = presets.PRESETS[values["preset"]].train_defaults
    config = base if base is not None else (TrainConfig.from_dict(dict(recipe)) if recipe else TrainConfig())
    strength = float(values["augment"])
    augment = {**config.augment.to_dict(), **{k: v * strength for k, v in FULL_AUGMENT.items()}}
    return config.replace(learning_rate=values["learning_rate"], batch_size=values["batch_size"],
                          epochs=values["epochs"], augment=augment)


def run_sweep(spec: SweepSpec, run_trial: Callable[[int, dict, TrainConfig], dict],
              clock: Callable[[], float] = time.monotonic, base: TrainConfig | None = None,
              on_trial: Callable[[dict], None] | None = None) -> dict:
    """Run the trials one after another with `run_trial(number, values, config) -> result` (which trains and
    returns at least val_accuracy), until they are done or the budget is spent; returns the sweep's report
    (`on_trial` gets the report so far after each trial)."""
    start, results, skipped = clock(), [], 0
    planned = trials(spec)
    for number, values in enumerate(planned, start=1):
        if clock() - start >= spec.budget_minutes * 60:
            skipped = len(planned) - number + 1
            break
        trial_start = clock()
        outcome = run_trial(number, values, trial_config(values, base))
        results.append({"trial": number, **values, **outcome, "seconds": round(clock() - trial_start, 1)})
        if on_trial is not None:
            on_trial(_report(results, 0, len(planned), clock() - start))
    return _report(results, skipped, len(planned), clock() - start)


def _report(results: list[dict], skipped: int, planned: int, seconds: float) -> dict:
    scored = [r for r in results if r.get("val_accuracy") is not None]
    best = max(scored, key=lambda r: r["val_accuracy"]) if scored else None
    return {"trials": list(results), "best": best, "skipped": skipped, "planned": planned, "seconds": round(seconds, 1)}


def table_rows(report: dict) -> list[dict[str, Any]]:
    """The report's trials as table rows (best first)."""
    rows = [{"trial": r["trial"], "preset": r["preset"], "learning rate": r["learning_rate"],
             "batch size": r["batch_size"], "epochs": r["epochs"], "augmentation": r["augment"],
             "val. accuracy": r.get("val_accuracy"), "test accuracy": r.get("test_accuracy"),
             "seconds": r["seconds"], "run": r.get("run", "")} for r in report["trials"]]
    return sorted(rows, key=lambda r: -(r["val. accuracy"] or 0.0))


# ----------------------------------------------------------------------------- sweeps in the studio

def studio_sweep(ws: Any, project: dict, spec: SweepSpec, registry: Any, num_classes: int) -> Callable[[Any], dict]:
    """The background work of a sweep started on the Hyperparameters page: each trial goes through the
    training queue as an ordinary run of the project (the public caps apply to each), one at a time; the
    report so far is saved after every trial (FOLDER/<sweep>.json) for the page to draw."""
    from fmnist_jax import store
    from fmnist_jax.studio.background import Cancelled
    from fmnist_jax.studio.tasks import job_progress, start_training

    planned = trials(spec)  # a grid too large is refused now, not in the background
    sweep_id = time.strftime("sweep-%Y%m%d-%H%M%S")
    path = ws.project_dir(project["id"]) / FOLDER / f"{sweep_id}.json"

    def save(report: dict) -> None:
        store.atomic_write_json(path, {"id": sweep_id, "spec": spec.to_dict(), **report})

    def work(progress: Any) -> dict:
        def run_trial(number: int, values: dict, config: TrainConfig) -> dict:
            trial = {**project, "model": presets.preset(values["preset"], num_classes), "model_preset": values["preset"],
                     "config": config.to_dict(), "init_from": None}
            try:
                job = start_training(ws, trial, f"{sweep_id}-{number:02d}", registry)
            except (ValueError, store.StoreError) as error:  # refused (a cap on a Space, a bad value): said, skipped
                return {"val_accuracy": None, "error": str(error)}
            while (snap := registry.get(job["id"])) and snap["status"] in ACTIVE:
                try:
                    progress((number - 1 + job_progress(snap)["fraction"]) / len(planned),
                             f"trial {number} of {len(planned)} ({values['preset']}, lr {values['learning_rate']:g})")
                except Cancelled:
                    registry.stop(job["id"])
                    raise
                time.sleep(1.0)
            result = (snap or {}).get("result") or {}
            return {"val_accuracy": result.get("best_val_accuracy"), "test_accuracy": result.get("test_accuracy"),
                    "run": job["name"], "status": (snap or {}).get("status")}

        report = run_sweep(spec, run_trial, on_trial=save)
        save(report)
        return {"id": sweep_id, **report}

    save({"trials": [], "best": None, "skipped": 0, "planned": len(planned), "seconds": 0.0})
    return work


FOLDER = "sweeps"


def last_spec(ws: Any, project_id: str) -> dict:
    """What the project's most recent sweep tried (SweepSpec fields), to start the next one's form from; {} if none
    or if it no longer validates (a preset removed since)."""
    report = latest_sweep(ws, project_id)
    try:
        return SweepSpec(**report["spec"]).to_dict() if report and report.get("spec") else {}
    except ValueError:
        return {}


def latest_sweep(ws: Any, project_id: str) -> dict | None:
    """The project's most recent sweep report (as far as it has run), or None."""
    from fmnist_jax import store

    folder = ws.project_dir(project_id) / FOLDER
    for path in sorted(folder.glob("sweep-*.json"), reverse=True) if folder.is_dir() else []:
        try:
            return store.read_json(path)
        except store.StoreError:
            continue
    return None
