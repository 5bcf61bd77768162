"""Project-level glue for the studio: stored project records -> split spec, model spec, TrainConfig and data;
background-training submission; previews, estimates and cached evaluations the pages show.

Everything here works without Streamlit (the pages wrap `get_registry` in st.cache_resource).

"""
from __future__ import annotations

import atexit
import copy
import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from fmnist_jax import settings, store
from fmnist_jax.data import catalogue, splitting
from fmnist_jax.model import layer_specs, presets
from fmnist_jax.training.config import TrainConfig

Progress = Callable[[float, str], None]

SYNTHETIC = catalogue.SYNTHETIC
DATASET_LABELS = {"fashion_mnist": "Fashion-MNIST (Zalando, 70,000 images)",
                  SYNTHETIC: "Synthetic demo data (1,200 images, instant)"}
SAMPLE_PROJECT_NAME = "Fashion-MNIST sample"
# The sample project trains with the 'fast' preset's measured recipe, the same one the Hyperparameters page offers.
SAMPLE_CONFIG = dict(presets.PRESETS["fast"].train_defaults)
# Matmul throughput overstates what a small CNN reaches; the 'fast' preset trained at about this share of it
# on a busy 2-core CPU (183 images/s against 97 GFLOP/s of matmul; validation time included).
CONV_EFFICIENCY = 0.15
EVALUATION_FILE = "evaluation-studio.json"


# ----------------------------------------------------------------------------- workspace and jobs

def workspace(home: str | os.PathLike | None = None) -> store.Workspace:
    """The projects workspace (FMNIST_HOME unless `home` is given)."""
    return store.Workspace(home)


def owner_of(ws: store.Workspace) -> str:
    """The job-registry owner for a workspace (its folder name is the visitor id in public mode): jobs of
    different workspaces never clash, and public per-visitor caps count per workspace."""
    return ws.home.name if settings.public_mode() else str(ws.home)


_REGISTRY = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> Any:
    """The process-wide JobRegistry: one training job at a time, others queue (public mode adds per-visitor caps)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            from fmnist_jax.studio.jobs import JobRegistry
            from fmnist_jax.training.program import enable_compile_cache

            enable_compile_cache()
            if settings.public_mode():
                from fmnist_jax.studio import public

                _REGISTRY = public.make_job_registry()
            else:
                _REGISTRY = JobRegistry(max_running=1)
            atexit.register(_REGISTRY.drain)  # running jobs stop and save a resumable checkpoint at shutdown
        return _REGISTRY


_TASKS = None


def get_task_registry() -> Any:
    """The process-wide registry of background tasks (imports, exports, evaluations): one worker on a public
    Space, where training needs the cores, two locally."""
    global _TASKS
    with _REGISTRY_LOCK:
        if _TASKS is None:
            from fmnist_jax.studio.background import TaskRegistry

            _TASKS = TaskRegistry(workers=1 if settings.public_mode() else 2)
            atexit.register(_TASKS.drain)
        return _TASKS


_LAST_CLEANUP = [0.0]
CLEANUP_EVERY_SECONDS = 600


def cleanup_public_workspaces(keep: str) -> list[str]:
    """In public mode, delete idle visitor workspaces (at most every CLEANUP_EVERY_SECONDS); returns removed ids."""
    if not settings.public_mode() or time.time() - _LAST_CLEANUP[0] < CLEANUP_EVERY_SECONDS:
        return []
    from fmnist_jax.studio import public

    _LAST_CLEANUP[0] = time.time()
    removed = public.cleanup_idle(keep=[keep])
    for workspace_id in removed:
        release_workspace(public.workspace_home(workspace_id))
    return removed


def release_workspace(home: str | os.PathLike) -> None:
    """Drop what this process keeps in memory for a deleted workspace: its shared datasets, cached splits."""
    catalogue.forget_workspace(home)
    with _SPLITS_LOCK:
        _SPLITS.clear()  # a few entries, rebuilt on demand; they may hold that workspace's images


def check_import_quota(ws: store.Workspace, upload_bytes: int) -> None:
    """On a public Space: ValueError if importing an upload of this size would exceed the visitor's disk quota
    (the converted arrays take about as much as the file; both are kept until the import ends)."""
    if settings.public_mode():
        from fmnist_jax.studio import public

        public.check_disk(ws.home, 2 * int(upload_bytes))


# ----------------------------------------------------------------------------- project record -> objects

def split_spec(project: dict, dataset: catalogue.Dataset | None = None) -> splitting.SplitSpec:
    """The project's split settings; where none are stored, the default that fits the dataset (official test
    set, 10% validation, more for small datasets; seed 0, stratified)."""
    stored = project.get("split")
    if stored:
        return splitting.SplitSpec.from_dict(stored)
    return splitting.default_spec(dataset) if dataset is not None else splitting.SplitSpec()


def train_config(project: dict) -> TrainConfig:
    """The project's TrainConfig (defaults where nothing is stored yet)."""
    stored = project.get("config")
    return TrainConfig.from_dict(stored) if stored else TrainConfig()


def recommended_config(project: dict) -> tuple[TrainConfig, str] | None:
    """(the recommended TrainConfig, what it is and reaches) for a project whose model is an unedited preset
    with a measured recipe; None for custom models and presets without one. Seed, precision and chunk size
    keep the project's values: they are the user's choices, not part of the recipe."""
    name = preset_of(project)
    if name is None or not presets.PRESETS[name].train_defaults:
        return None
    current = train_config(project)
    recipe = TrainConfig.from_dict({**presets.PRESETS[name].train_defaults, "seed": current.seed,
                                    "precision": current.precision, "chunk_steps": current.chunk_steps})
    return recipe, presets.PRESETS[name].recipe_note


def best_recipe_changes(project: dict, dataset: catalogue.Dataset) -> dict:
    """The project changes that apply the best-accuracy recipe (presets.BEST_RECIPE): its preset model, its
    training settings (seed, precision and chunk size keep the project's values) and, on a split that keeps
    an official test set, its validation share, where every split still holds an image per class."""
    current = train_config(project)
    cfg = TrainConfig.from_dict({**presets.BEST_RECIPE["config"], "seed": current.seed, "precision": current.precision,
                                 "chunk_steps": current.chunk_steps})
    name = presets.BEST_RECIPE["preset"]
    changes = {"model": presets.preset(name, dataset.num_classes), "model_preset": name, "config": cfg.to_dict()}
    split = split_spec(project, dataset)
    if split.mode == "official":
        narrower = splitting.SplitSpec.from_dict({**split.to_dict(), "val_fraction": presets.BEST_RECIPE["val_fraction"]})
        try:
            checked_split_counts(dataset, narrower)
            changes["split"] = narrower.to_dict()
        except ValueError:
            pass  # too few images for a 2% validation split: the project's split stays
    return changes


def best_recipe_fits(dataset: catalogue.Dataset) -> bool:
    """The 15-minute recipe was chosen and measured on Fashion-MNIST: it is offered for that dataset only (not for
    a three-class upload, where its epochs, model and figures mean nothing)."""
    return dataset.name == "fashion_mnist"


def fitting_batch_size(train_size: int, choices: tuple[int, ...] = (8, 16, 32, 64, 128)) -> int:
    """The largest usual batch size a training split of `train_size` images can fill (at least 1)."""
    return max([size for size in choices if size <= train_size] or [max(1, train_size)])


def uses_best_recipe(project: dict, dataset: catalogue.Dataset) -> bool:
    """True when the project's model, settings and validation share are the best-accuracy recipe already."""
    wanted = best_recipe_changes(project, dataset)
    return (preset_of(project) == wanted["model_preset"] and train_config(project).to_dict() == wanted["config"]
            and ("split" not in wanted or split_spec(project, dataset).to_dict() == wanted["split"]))


def model_spec(project: dict, num_classes: int = 10) -> list[dict]:
    """The project's layer list: its edited model, else its preset."""
    if project.get("model"):
        return copy.deepcopy(project["model"])
    return presets.preset(project.get("model_preset") or "fast", num_classes)


def data_folder(project: dict) -> str | None:
    """The manual-download data folder the project uses (its own setting, else FMNIST_DATA_DIR; public mode: the server's)."""
    value = (None if settings.public_mode() else project.get("data_dir")) or os.environ.get("FMNIST_DATA_DIR")
    return str(value) if value else None


def train_limit(project: dict) -> int | None:
    """How many training examples to use (None: all)."""
    limit = project.get("train_limit")
    return int(limit) if limit else None


def train_size(project: dict, dataset: catalogue.Dataset) -> int:
    """Training images a run of this project uses: its split's training part, cut to the training limit."""
    count = split_counts(dataset, split_spec(project, dataset))["train"]
    limit = train_limit(project)
    return min(count, limit) if limit else count


def preset_of(project: dict) -> str | None:
    """The preset name if the model is still the unedited preset, else None (custom)."""
    name = project.get("model_preset")
    if not name or name not in presets.PRESETS:
        return None
    if not project.get("model"):
        return name
    saved = layer_specs.normalize_spec(project["model"])
    classes = saved[-1].get("units", 10) if saved else 10  # a preset loaded for a 3-class upload ends in Dense(3)
    try:
        return name if saved == layer_specs.normalize_spec(presets.preset(name, classes)) else None
    except ValueError:
        return None


# ----------------------------------------------------------------------------- data

_SYNTHETIC_LOCK = threading.Lock()
_SYNTHETIC_DATASET: catalogue.Dataset | None = None


def synthetic_dataset() -> catalogue.Dataset:
    """The small synthetic dataset offered for demos and tests (built once per process)."""
    global _SYNTHETIC_DATASET
    with _SYNTHETIC_LOCK:
        if _SYNTHETIC_DATASET is None:
            _SYNTHETIC_DATASET = catalogue.synthetic_dataset(num_train=1000, num_test=200, seed=0)
            for array in (_SYNTHETIC_DATASET.train_images, _SYNTHETIC_DATASET.test_images):
                array.flags.writeable = False
        return _SYNTHETIC_DATASET


def load_dataset(project_or_run: dict, progress: Progress | None = None,
                 home: str | os.PathLike | None = None, labels: bool = True) -> catalogue.Dataset:
    """The dataset a project (or run record) names, loaded once per process and shared read-only, with the
    record's label version applied (studio/label_check.py; `labels=False`: as its source has it).

    TFDS datasets live in the server's workspace; an upload lives in the workspace it was uploaded to
    (the record's upload_home: a visitor's own folder in public mode).
    """
    source = _source_dataset(project_or_run, progress, home)
    if not labels or not project_or_run.get("label_version"):
        return source
    from fmnist_jax.studio import label_check

    key = (source.name, id(source), json.dumps(label_check.run_fields(project_or_run), sort_keys=True))
    return _remembered(_VERSIONED, key, lambda: label_check.apply(source, project_or_run))


def _source_dataset(project_or_run: dict, progress: Progress | None, home: str | os.PathLike | None) -> catalogue.Dataset:
    name = project_or_run.get("dataset") or "fashion_mnist"
    if name == SYNTHETIC:
        return synthetic_dataset()
    if name.startswith("upload/"):
        return catalogue.shared_dataset(name, home=home or project_or_run.get("upload_home"), progress=progress)
    folder = data_folder(project_or_run)
    if name in catalogue.TFDS_DATASETS:
        catalogue.check_data_dir(folder, name)
    return catalogue.shared_dataset(name, data_dir=folder, home=home, progress=progress)


_SPLITS: OrderedDict[tuple, splitting.Splits] = OrderedDict()
_VERSIONED: OrderedDict[tuple, catalogue.Dataset] = OrderedDict()  # datasets with a label version applied
_SPLITS_LOCK = threading.Lock()
_SPLITS_KEEP = 3


def make_splits(dataset: catalogue.Dataset, spec: splitting.SplitSpec) -> splitting.Splits:
    """data.make_splits, remembering the last few results (the pages redraw often; training reuses them)."""
    key = (dataset.name, id(dataset), tuple(sorted((k, str(v)) for k, v in spec.to_dict().items())))
    return _remembered(_SPLITS, key, lambda: splitting.make_splits(dataset, spec))


def _remembered(cache: OrderedDict, key: tuple, make: Callable[[], Any]) -> Any:
    """cache[key], made (outside the lock) when missing; the _SPLITS_KEEP most recently used entries stay."""
    with _SPLITS_LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _SPLITS_LOCK:
        cache[key] = value
        while len(cache) > _SPLITS_KEEP:
            cache.popitem(last=False)
    return value


def load_splits(project_or_run: dict, progress: Progress | None = None) -> splitting.Splits:
    """The train/validation/test splits of a project or run record (before any training limit)."""
    dataset = load_dataset(project_or_run, progress)
    return make_splits(dataset, split_spec(project_or_run, dataset))


def split_counts(dataset: catalogue.Dataset, spec: splitting.SplitSpec) -> dict[str, int]:
    """Examples per split for a spec, without splitting (instant)."""
    return splitting.split_counts(dataset, spec)


def checked_split_counts(dataset: catalogue.Dataset, spec: splitting.SplitSpec) -> dict[str, int]:
    """split_counts after validating the spec; ValueError if a split would hold fewer images than classes."""
    spec.validate()
    counts = split_counts(dataset, spec)
    for part, count in counts.items():
        if count < dataset.num_classes:
            total = sum(counts.values())
            advice = ("give it a larger share" if total >= 3 * dataset.num_classes else
                      f"the dataset has {total} images in all; add images so that each split can hold one of each class")
            raise ValueError(f"the {part} split would have {count} examples, fewer than the {dataset.num_classes} "
                             f"classes; {advice}")
    return counts


# ----------------------------------------------------------------------------- projects

def create_sample_project(ws: store.Workspace) -> dict:
    """A ready-to-train project: Fashion-MNIST, official split, the 'fast' preset with its recommended recipe."""
    existing = {p["name"].lower() for p in ws.list_projects()}
    name, n = SAMPLE_PROJECT_NAME, 2
    while name.lower() in existing:
        name, n = f"{SAMPLE_PROJECT_NAME} {n}", n + 1
    cfg = TrainConfig.from_dict(SAMPLE_CONFIG)
    return ws.create_project(
        name, "A sample project: the 'fast' CNN on Fashion-MNIST with the official test set. Press Start on Training.",
        split=splitting.SplitSpec().to_dict(), model=presets.preset("fast"), model_preset="fast",
        config=cfg.to_dict(), data_dir=data_folder({}))


def dataset_label(project: dict) -> str:
    """The dataset's name as a person knows it: the catalogue's label, or an upload's own name (never its id)."""
    name = project.get("dataset") or "fashion_mnist"
    if not name.startswith("upload/"):
        return DATASET_LABELS.get(name, name)
    from fmnist_jax.data.uploads import importer

    try:
        return importer.read_manifest(name, home=project.get("upload_home"))["display_name"]
    except (store.StoreError, KeyError):
        return "an uploaded dataset (no longer in the workspace)"


def project_summary(ws: store.Workspace, project: dict) -> dict:
    """One row of the projects table."""
    def pct(value: Any) -> str:
        return f"{value:.2%}" if isinstance(value, (int, float)) and value else "–"
    return {"name": project["name"], "description": project.get("description", ""),
            "dataset": dataset_label(project),
            "model": preset_of(project) or ("custom" if project.get("model") else project.get("model_preset") or "fast"),
            "runs": project.get("runs", 0), "last_run": project.get("last_run") or "–",
            "best_val_accuracy": pct(project.get("best_val_accuracy")),
            "best_test_accuracy": pct(project.get("best_test_accuracy")),
            "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(project.get("updated", 0)))}


def home_dir() -> Path:
    """The workspace folder (for display)."""
    return settings.home_dir()
