"""Background tasks of a project: training (start, resume, progress), run tables and evaluation.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fmnist_jax import settings, store
from fmnist_jax.data import catalogue, splitting
from fmnist_jax.deploy import predict
from fmnist_jax.model import layer_specs
from fmnist_jax.studio import label_check
from fmnist_jax.studio.background import ACTIVE
from fmnist_jax.studio.projects import (
    EVALUATION_FILE,
    Progress,
    checked_split_counts,
    data_folder,
    get_registry,
    load_dataset,
    load_splits,
    model_spec,
    owner_of,
    preset_of,
    split_spec,
    train_config,
    train_limit,
)
from fmnist_jax.training.config import TrainConfig

# ----------------------------------------------------------------------------- training jobs

def _prepare_for(record: dict, spec: list, cfg: TrainConfig, limit: int | None,
                 warming: Callable[[], bool] | None = None) -> Callable[[], tuple]:
    def prepare() -> tuple[list, TrainConfig, splitting.Splits]:
        # A warm-up of these very settings still compiling: let it finish and load its program, rather than
        # compile the same thing beside it on the same cores.
        deadline = time.monotonic() + WARM_UP_WAIT_SECONDS
        while warming is not None and warming() and time.monotonic() < deadline:
            time.sleep(0.2)
        splits = load_splits(record).limit_train(limit)
        return spec, cfg, splits
    return prepare


WARM_UP_WAIT_SECONDS = 120.0


def check_trainable(project: dict, dataset: catalogue.Dataset | None = None) -> tuple[list, TrainConfig, int]:
    """(spec, config, train size) if the project can train as it stands; ValueError saying what to fix."""
    dataset = dataset or load_dataset(project)
    counts = checked_split_counts(dataset, split_spec(project, dataset))
    limit = train_limit(project)
    train_size = min(counts["train"], limit) if limit else counts["train"]
    spec = model_spec(project, dataset.num_classes)
    layer_specs.describe(spec, dataset.input_shape, dataset.num_classes)
    cfg = train_config(project).validate(train_size=train_size)
    return spec, cfg, train_size


def start_training(ws: store.Workspace, project: dict, run_name: str | None = None, registry: Any = None) -> dict:
    """Validate the project's settings and queue a training job; returns the job snapshot (ValueError if refused)."""
    registry = registry if registry is not None else get_registry()  # an empty registry is falsy (len 0)
    dataset = load_dataset(project)
    spec, cfg, train_size = check_trainable(project, dataset)
    if settings.public_mode():
        from fmnist_jax.studio import public

        figures = public.job_figures(spec, dataset.input_shape, dataset.num_classes, cfg.batch_size, cfg.epochs,
                                     train_size, cfg.ensemble)
        public.check_job(figures)
        public.check_disk(ws.home, public.run_bytes(figures["params"]))
    active = registry.for_project(project["id"], owner_of(ws))
    if active and active["status"] in ACTIVE:
        raise ValueError("this project already has a training job queued or running; stop it or wait for it to finish")
    init_from = starting_model(ws, project, spec) if project.get("init_from") else None
    run_dir = ws.new_run_dir(project["id"], run_name or None)
    record = _data_record(project, dataset)
    run_meta = {"preset": preset_of(project), "dataset": record["dataset"], "data_dir": record["data_dir"],
                "limit": train_limit(project), "source": "studio", "project_id": project["id"],
                **({"upload_home": record["upload_home"]} if record["upload_home"] else {}),
                **({"init_from": project["init_from"]} if init_from else {}),
                **{k: record[k] for k in ("label_version", "label_edits") if k in record}}
    warming = _warming(ws, project, spec, cfg, dataset, train_size)
    try:
        return registry.submit(project["id"], run_dir, _prepare_for(record, spec, cfg, train_limit(project), warming),
                               name=run_dir.name, owner=owner_of(ws), run_meta=run_meta, init_from=init_from)
    except ValueError:
        if run_dir.exists() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise


def _data_record(project: dict, dataset: catalogue.Dataset) -> dict:
    """Where a job's data comes from (dataset, folder, split), as its run records it."""
    return {"dataset": project.get("dataset") or "fashion_mnist", "data_dir": data_folder(project),
            "split": split_spec(project, dataset).to_dict(), "upload_home": project.get("upload_home"),
            **label_check.run_fields(project)}


def _warm_key(spec: list, cfg: TrainConfig, dataset: catalogue.Dataset, train_size: int) -> str:
    """The compiled training program's key: runs that differ only in epochs, training-set size (within its
    size class), learning rate or seed share it, so a warm-up for the settings the user started from still
    serves the settings they end up with."""
    from fmnist_jax.training.program import program_key

    return program_key(spec, cfg, dataset.input_shape, dataset.num_classes, train_size)


def _warming(ws: store.Workspace, project: dict, spec: list, cfg: TrainConfig, dataset: catalogue.Dataset,
             train_size: int) -> Callable[[], bool]:
    """Whether a warm-up of this job's compiled program is still running (queued or compiling)."""
    from fmnist_jax.studio.projects import get_task_registry

    key = f"{project['id']}:{_warm_key(spec, cfg, dataset, train_size)}"

    def running() -> bool:
        snap = get_task_registry().find(owner_of(ws), "warm", key)
        if snap and snap["status"] == "queued":  # not started yet: the job compiles itself rather than wait for a worker
            get_task_registry().cancel(snap["id"])
            return False
        return bool(snap and snap["status"] == "running")
    return running


def warm_up(ws: store.Workspace, project: dict) -> tuple[str, Callable[[Progress], dict]]:
    """(key, background work) that prepares the project's splits and compiles its training program now, while
    the user is still on the Hyperparameters or Training page: the compiled program lands in the persistent
    compilation cache, so Start only loads it. ValueError when the project cannot train as it stands (or, on a
    public Space, is over a cap): then there is nothing to warm up."""
    dataset = load_dataset(project)
    spec, cfg, train_size = check_trainable(project, dataset)
    if settings.public_mode():
        from fmnist_jax.studio import public

        public.check_job(public.job_figures(spec, dataset.input_shape, dataset.num_classes, cfg.batch_size, cfg.epochs,
                                            train_size, cfg.ensemble))
    record, limit = _data_record(project, dataset), train_limit(project)
    key = _warm_key(spec, cfg, dataset, train_size)

    def work(progress: Progress) -> dict:
        from fmnist_jax.training.loop import train
        from fmnist_jax.training.program import enable_compile_cache

        enable_compile_cache()
        progress(0.1, "preparing the splits")
        splits = load_splits(record).limit_train(limit)
        progress(0.3, "compiling the training program")
        records = train(spec, cfg, splits)  # no run folder: nothing is written, and nothing trains
        start = next(records)  # the 'start' record comes once the chunk program is compiled
        records.close()
        return {"compile_seconds": start["compile_seconds"], "setup_seconds": start["setup_seconds"]}

    return key, work


# Run statuses a run can continue from: stopped by its owner or a time limit, failed, or interrupted (run.json
# still says "running" because the server stopped mid-run; runs_table shows it as "interrupted").
RESUMABLE = ("stopped", "failed", "running", "interrupted")


def resume_training(ws: store.Workspace, project: dict, run_id: str, registry: Any = None) -> dict:
    """Queue a job that continues a stopped run from its last checkpoint, with the run's own settings."""
    registry = registry if registry is not None else get_registry()  # an empty registry is falsy (len 0)
    run_dir = store.safe_child(ws.runs_dir(project["id"]), run_id)
    run = store.read_json(run_dir / "run.json")
    if run.get("status") not in RESUMABLE:
        raise ValueError(f"run {run_id} is {run.get('status')}; only a stopped or interrupted run can be resumed")
    store.load_latest_checkpoint(run_dir)  # StoreError with the reason if nothing usable is there
    cfg = TrainConfig.from_dict(run["config"])
    prepare = _prepare_for(run, run["spec"], cfg, run.get("limit"))
    return registry.submit(project["id"], run_dir, prepare, name=run_dir.name, resume=True, owner=owner_of(ws),
                           run_meta={})


def queue_wait(registry: Any, job_id: int) -> dict | None:
    """Where a queued job stands: {"position": jobs ahead, "eta": expected seconds to its start (None: unknown),
    "latest": seconds by which it starts at the latest (None without a time limit)}; None if it is not queued.

    Running jobs ahead count with their own ETA; queued ones with the median length of the jobs that ran
    before (nothing known yet: the ETA is unknown); the time limit per job bounds the wait.
    """
    queue = registry.queue()
    if not any(j["id"] == job_id and j["status"] == "queued" for j in queue):
        return None
    ahead = [j for j in queue if j["id"] < job_id]
    running = [registry.get(j["id"]) for j in ahead if j["status"] == "running"]
    etas = [job_progress(snap)["eta"] for snap in running if snap]
    finished = [snap["finished"] - snap["started"] for snap in registry.finished() if snap.get("started")]
    typical = float(np.median(finished)) if finished else None
    workers = max(1, registry.max_running)
    eta = None
    if all(e is not None for e in etas) and (typical is not None or len(running) == len(ahead)):
        eta = (sum(etas) + (len(ahead) - len(running)) * (typical or 0.0)) / workers
    latest = len(ahead) * registry.max_seconds / workers if registry.max_seconds else None
    return {"position": len(ahead), "eta": eta, "latest": latest}


def job_progress(snapshot: dict) -> dict:
    """Figures for the progress panel: epoch x/N, fraction done, images/s, s/epoch, elapsed, ETA, best epoch."""
    start, chunks, epochs = snapshot.get("start") or {}, snapshot.get("chunks") or [], snapshot.get("epochs") or []
    total_epochs = start.get("epochs") or 0
    steps_per_epoch = start.get("steps_per_epoch") or 0
    resumed = (start.get("resumed_from") or {}).get("epoch", 0)
    last_chunk = chunks[-1] if chunks else None
    if last_chunk and steps_per_epoch and total_epochs:
        done_fraction = min(1.0, last_chunk["step"] / (steps_per_epoch * total_epochs))
        current_epoch = last_chunk["epoch"]
    else:
        done_fraction = len(epochs) / total_epochs if total_epochs else 0.0
        current_epoch = (epochs[-1]["epoch"] if epochs else resumed) or 0
        if snapshot.get("status") == "running" and current_epoch < total_epochs:
            current_epoch += 1  # compiled, first chunk on its way: the epoch in progress, as the page says after it
    if snapshot.get("status") == "completed":
        done_fraction = 1.0
    # wall time since the job left the queue: data preparation and compilation included, as the user waits for both
    started, finished = snapshot.get("started"), snapshot.get("finished")
    elapsed = ((finished or time.time()) - started) if started else (last_chunk["elapsed"] if last_chunk else 0.0)
    recent = [c["images_per_s"] for c in chunks[-5:]]
    images_per_s = float(np.median(recent)) if recent else None
    seconds_per_epoch = epochs[-1]["seconds"] if epochs else None
    eta = None
    if images_per_s and steps_per_epoch and total_epochs and last_chunk:
        remaining_steps = steps_per_epoch * total_epochs - last_chunk["step"]
        batch = (start.get("train_size") or 0) / max(1, steps_per_epoch)
        eta = remaining_steps * batch / images_per_s
    best = max(epochs, key=lambda e: e["val_accuracy"]) if epochs else None
    return {"epoch": current_epoch, "epochs": total_epochs, "fraction": done_fraction, "images_per_s": images_per_s,
            "seconds_per_epoch": seconds_per_epoch, "elapsed": elapsed, "eta": eta,
            "best_epoch": best["epoch"] if best else None, "best_val_accuracy": best["val_accuracy"] if best else None}


def run_history(run_dir: str | os.PathLike) -> list[dict]:
    """The per-epoch metric records a run wrote (empty if none yet)."""
    return [r for r in store.read_jsonl(Path(run_dir) / "history.jsonl") if r.get("kind") == "epoch"]


DEMO_CHOICE = "demo"


def starting_models(ws: store.Workspace, project: dict, spec: list, num_classes: int) -> dict[str, str]:
    """Models a run of this project can start from (transfer learning): {choice id: label}. Only models with
    exactly this project's layers and number of classes qualify: their weights must fit (a single model starts
    every member of an ensemble; an ensemble starts only an ensemble of its own size)."""
    wanted, members = layer_specs.normalize_spec(spec), train_config(project).ensemble
    choices = {}
    demo = store.read_json(predict.DEMO_DIR / "model.json")  # the description only: this runs on every page rerun
    if layer_specs.normalize_spec(demo["spec"]) == wanted and len(demo["class_names"]) == num_classes:
        choices[DEMO_CHOICE] = "The demo model (Fashion-MNIST + real photos)"
    for run in runs_table(ws, project["id"]):
        if not run["has_weights"]:
            continue
        record = store.read_json(Path(run["path"]) / "run.json")
        their_members = int((record.get("config") or {}).get("ensemble", 1))
        if (layer_specs.normalize_spec(record["spec"]) == wanted and len(record["class_names"]) == num_classes
                and their_members in (1, members)):
            accuracy = run.get("test_accuracy")
            choices[run["id"]] = f"Run {run['id']}" + (f" ({accuracy:.1%} test)" if accuracy is not None else "")
    return choices


def _described_model(source: str) -> tuple[list, int]:
    """(layers, ensemble members) of a starting model from its small JSON files: the weights are loaded by the
    job's own thread, so pressing Start never waits for them (the page had frozen on it)."""
    if source == DEMO_CHOICE:
        folder = predict.DEMO_DIR
        return store.read_json(folder / "model.json")["spec"], int(store.read_json(folder / "config.json").get("ensemble", 1))
    if not (Path(source) / "model.msgpack").is_file():
        raise store.StoreError("it has no trained weights")
    record = store.read_json(Path(source) / "run.json")
    return record["spec"], int((record.get("config") or {}).get("ensemble", 1))


def starting_model(ws: store.Workspace, project: dict, spec: list) -> str:
    """The model source (demo or a run folder) the project's next run starts from; ValueError if it no longer fits."""
    choice = project["init_from"]
    if choice == DEMO_CHOICE:
        source = DEMO_CHOICE
    else:
        source = str(store.safe_child(ws.runs_dir(project["id"]), choice))
    try:
        their_spec, their_members = _described_model(source)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"the starting model {choice} cannot be loaded ({error}); choose another or start from scratch") from None
    if layer_specs.normalize_spec(their_spec) != layer_specs.normalize_spec(spec):
        raise ValueError(f"the starting model {choice} has different layers from this project's model; "
                         f"choose a model with the same layers or start from scratch")
    members = train_config(project).ensemble
    if their_members not in (1, members):
        raise ValueError(f"the starting model {choice} is an ensemble of {their_members} and this project trains "
                         f"{members} member{'s' if members != 1 else ''}; set Ensemble members to {their_members}, "
                         f"choose another model or start from scratch")
    return source


def runs_table(ws: store.Workspace, project_id: str, registry: Any = None) -> list[dict]:
    """The run history rows (newest first) with elapsed time and weights availability. A run whose run.json
    still says "running" while no job of this server trains it was cut off (the server stopped or died): it is
    "interrupted", and resumable from its last checkpoint."""
    registry = registry if registry is not None else get_registry()  # an empty registry is falsy (len 0)
    training = {job["name"] for job in registry.queue()
                if job["project_id"] == project_id and job["owner"] == owner_of(ws)}
    rows = []
    for run in ws.list_runs(project_id):
        path = Path(run.get("path", ""))
        status = "interrupted" if run.get("status") == "running" and run.get("id") not in training else run.get("status")
        rows.append({**run, "status": status, "has_weights": (path / "model.msgpack").exists(),
                     "labels": label_check.version_label(run)})
    return rows


def best_run(runs: list[dict]) -> dict:
    """The run with the best validation accuracy (the newest among equals; the newest if none has one)."""
    scored = [r for r in runs if r.get("best_val_accuracy") is not None]
    return max(scored, key=lambda r: r["best_val_accuracy"]) if scored else runs[0]


# ----------------------------------------------------------------------------- evaluation

def evaluate_run(ws: store.Workspace, project_id: str, run_id: str, progress: Progress | None = None) -> dict:
    """Test-set evaluation of a run (confusion matrix, per-class metrics, mistakes), cached in the run folder."""
    from fmnist_jax.evaluate import evaluate_model
    from fmnist_jax.training.trained import TrainedModel

    run_dir = store.safe_child(ws.runs_dir(project_id), run_id)
    weights = run_dir / "model.msgpack"
    if not weights.exists():
        raise store.StoreError(f"run {run_id} has no trained weights yet (still running, or it failed)")
    stamp = store.weights_stamp(run_dir)
    run = store.read_json(run_dir / "run.json")
    cache = run_dir / EVALUATION_FILE
    if cache.exists():
        try:
            cached = store.read_json(cache)
            ensemble = int((run.get("config") or {}).get("ensemble", 1)) > 1
            # older caches lack the calibration, and an ensemble's its members' accuracies
            if cached.get("weights_stamp") == stamp and "calibration" in cached and (not ensemble or "members" in cached):
                return cached
        except store.StoreError:
            pass
    progress = progress or (lambda fraction, message: None)
    progress(0.0, "Loading the test split")
    splits = load_splits(run)
    progress(0.05, "Loading the model")
    model = TrainedModel.from_run(run_dir)
    metrics = evaluate_model(model, splits.test_images, splits.test_labels,
                             progress=lambda f, m: progress(0.05 + 0.95 * f, m), batch=1000)
    metrics["weights_stamp"] = stamp
    try:
        store.atomic_write_json(cache, metrics)
    except store.StoreError:
        pass  # a read-only workspace only loses the cache
    return metrics


def gallery_images(run_or_project: dict) -> tuple[np.ndarray, np.ndarray]:
    """The test images and labels of a run (or project) split, for galleries."""
    splits = load_splits(run_or_project)
    return splits.test_images, splits.test_labels


def read_run(ws: store.Workspace, project_id: str, run_id: str) -> dict:
    """A run's stored record (StoreError if missing)."""
    return store.read_json(store.safe_child(ws.runs_dir(project_id), run_id) / "run.json")


def run_dir_of(ws: store.Workspace, project_id: str, run_id: str) -> Path:
    """A run's folder (ValueError for unsafe ids)."""
    return store.safe_child(ws.runs_dir(project_id), run_id)
