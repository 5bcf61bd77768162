"""Project-level glue for the studio: stored project records -> split spec, model spec, TrainConfig and data;
background-training submission; previews, estimates and cached evaluations the pages show.

Everything here works without Streamlit (the pages wrap `get_registry` in st.cache_resource).
"""
from __future__ import annotations

import copy
import importlib.util
import math
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import data, layers, settings, store
from .config import AugmentConfig, TrainConfig

Progress = Callable[[float, str], None]

SYNTHETIC = "synthetic"
DATASET_LABELS = {"fashion_mnist": "Fashion-MNIST (Zalando, 70,000 images)",
                  SYNTHETIC: "Synthetic demo data (1,200 images, instant)"}
SAMPLE_PROJECT_NAME = "Fashion-MNIST sample"
SAMPLE_CONFIG = {"epochs": 5, "batch_size": 128, "optimizer": "adam", "learning_rate": 2e-3,
                 "schedule": "cosine", "label_smoothing": 0.05}
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
            from .jobs import JobRegistry
            from .train import enable_compile_cache

            enable_compile_cache()
            if settings.public_mode():
                from . import public

                _REGISTRY = public.make_job_registry()
            else:
                _REGISTRY = JobRegistry(max_running=1)
        return _REGISTRY


_LAST_CLEANUP = [0.0]
CLEANUP_EVERY_SECONDS = 600


def cleanup_public_workspaces(keep: str) -> list[str]:
    """In public mode, delete idle visitor workspaces (at most every CLEANUP_EVERY_SECONDS); returns removed ids."""
    if not settings.public_mode() or time.time() - _LAST_CLEANUP[0] < CLEANUP_EVERY_SECONDS:
        return []
    from . import public

    _LAST_CLEANUP[0] = time.time()
    return public.cleanup_idle(keep=[keep])


def uploads_available() -> bool:
    """True once the bring-your-own-dataset module exists."""
    return importlib.util.find_spec(f"{__package__}.uploads") is not None


# ----------------------------------------------------------------------------- project record -> objects

def split_spec(project: dict) -> data.SplitSpec:
    """The project's split settings (defaults: official test set, 10% validation, seed 0, stratified)."""
    stored = project.get("split")
    return data.SplitSpec.from_dict(stored) if stored else data.SplitSpec()


def train_config(project: dict) -> TrainConfig:
    """The project's TrainConfig (defaults where nothing is stored yet)."""
    stored = project.get("config")
    return TrainConfig.from_dict(stored) if stored else TrainConfig()


def recommended_config(project: dict) -> tuple[TrainConfig, str] | None:
    """(the recommended TrainConfig, what it is and reaches) for a project whose model is an unedited preset
    with a measured recipe; None for custom models and presets without one. Seed, precision and chunk size
    keep the project's values: they are the user's choices, not part of the recipe."""
    name = preset_of(project)
    if name is None or not layers.PRESETS[name].train_defaults:
        return None
    current = train_config(project)
    recipe = TrainConfig.from_dict({**layers.PRESETS[name].train_defaults, "seed": current.seed,
                                    "precision": current.precision, "chunk_steps": current.chunk_steps})
    return recipe, layers.PRESETS[name].recipe_note


def model_spec(project: dict, num_classes: int = 10) -> list[dict]:
    """The project's layer list: its edited model, else its preset."""
    if project.get("model"):
        return copy.deepcopy(project["model"])
    return layers.preset(project.get("model_preset") or "fast", num_classes)


def data_folder(project: dict) -> str | None:
    """The manual-download data folder the project uses (its own setting, else FMNIST_DATA_DIR; public mode: the server's)."""
    value = (None if settings.public_mode() else project.get("data_dir")) or os.environ.get("FMNIST_DATA_DIR")
    return str(value) if value else None


def train_limit(project: dict) -> int | None:
    """How many training examples to use (None: all)."""
    limit = project.get("train_limit")
    return int(limit) if limit else None


def preset_of(project: dict) -> str | None:
    """The preset name if the model is still the unedited preset, else None (custom)."""
    name = project.get("model_preset")
    if not name or name not in layers.PRESETS:
        return None
    if project.get("model") and layers.normalize_spec(project["model"]) != layers.normalize_spec(layers.preset(name)):
        return None
    return name


# ----------------------------------------------------------------------------- data

_SYNTHETIC_LOCK = threading.Lock()
_SYNTHETIC_DATASET: data.Dataset | None = None


def synthetic_dataset() -> data.Dataset:
    """The small synthetic dataset offered for demos and tests (built once per process)."""
    global _SYNTHETIC_DATASET
    with _SYNTHETIC_LOCK:
        if _SYNTHETIC_DATASET is None:
            _SYNTHETIC_DATASET = data.synthetic_dataset(num_train=1000, num_test=200, seed=0)
            for array in (_SYNTHETIC_DATASET.train_images, _SYNTHETIC_DATASET.test_images):
                array.flags.writeable = False
        return _SYNTHETIC_DATASET


def load_dataset(project_or_run: dict, progress: Progress | None = None,
                 home: str | os.PathLike | None = None) -> data.Dataset:
    """The dataset a project (or run record) names, loaded once per process and shared read-only.

    TFDS datasets live in the server's workspace; an upload lives in the workspace it was uploaded to
    (the record's upload_home: a visitor's own folder in public mode).
    """
    name = project_or_run.get("dataset") or "fashion_mnist"
    if name == SYNTHETIC:
        return synthetic_dataset()
    if name.startswith("upload/"):
        return data.shared_dataset(name, home=home or project_or_run.get("upload_home"), progress=progress)
    folder = data_folder(project_or_run)
    if name in data.TFDS_DATASETS:
        data.check_data_dir(folder, name)
    return data.shared_dataset(name, data_dir=folder, home=home, progress=progress)


_SPLITS: OrderedDict[tuple, data.Splits] = OrderedDict()
_SPLITS_LOCK = threading.Lock()
_SPLITS_KEEP = 3


def make_splits(dataset: data.Dataset, spec: data.SplitSpec) -> data.Splits:
    """data.make_splits, remembering the last few results (the pages redraw often; training reuses them)."""
    key = (dataset.name, id(dataset), tuple(sorted((k, str(v)) for k, v in spec.to_dict().items())))
    with _SPLITS_LOCK:
        if key in _SPLITS:
            _SPLITS.move_to_end(key)
            return _SPLITS[key]
    splits = data.make_splits(dataset, spec)
    with _SPLITS_LOCK:
        _SPLITS[key] = splits
        while len(_SPLITS) > _SPLITS_KEEP:
            _SPLITS.popitem(last=False)
    return splits


def load_splits(project_or_run: dict, progress: Progress | None = None) -> data.Splits:
    """The train/validation/test splits of a project or run record (before any training limit)."""
    dataset = load_dataset(project_or_run, progress)
    return make_splits(dataset, split_spec(project_or_run))


def split_counts(dataset: data.Dataset, spec: data.SplitSpec) -> dict[str, int]:
    """Examples per split for a spec, without splitting (instant)."""
    return data.split_counts(dataset, spec)


def checked_split_counts(dataset: data.Dataset, spec: data.SplitSpec) -> dict[str, int]:
    """split_counts after validating the spec; ValueError if a split would hold fewer images than classes."""
    spec.validate()
    counts = split_counts(dataset, spec)
    for part, count in counts.items():
        if count < dataset.num_classes:
            raise ValueError(f"the {part} split would have {count} examples, fewer than the {dataset.num_classes} "
                             f"classes; give it a larger fraction")
    return counts


# ----------------------------------------------------------------------------- training jobs

def _prepare_for(record: dict, spec: list, cfg: TrainConfig, limit: int | None) -> Callable[[], tuple]:
    def prepare() -> tuple[list, TrainConfig, data.Splits]:
        splits = load_splits(record).limit_train(limit)
        return spec, cfg, splits
    return prepare


def check_trainable(project: dict, dataset: data.Dataset | None = None) -> tuple[list, TrainConfig, int]:
    """(spec, config, train size) if the project can train as it stands; ValueError saying what to fix."""
    dataset = dataset or load_dataset(project)
    counts = checked_split_counts(dataset, split_spec(project))
    limit = train_limit(project)
    train_size = min(counts["train"], limit) if limit else counts["train"]
    spec = model_spec(project, dataset.num_classes)
    layers.describe(spec, dataset.input_shape, dataset.num_classes)
    cfg = train_config(project).validate(train_size=train_size)
    return spec, cfg, train_size


def start_training(ws: store.Workspace, project: dict, run_name: str | None = None, registry: Any = None) -> dict:
    """Validate the project's settings and queue a training job; returns the job snapshot (ValueError if refused)."""
    registry = registry or get_registry()
    spec, cfg, train_size = check_trainable(project)
    if settings.public_mode():
        from . import public

        public.check_job_size(cfg.epochs, train_size)
    active = registry.for_project(project["id"], owner_of(ws))
    if active and active["status"] in ("queued", "running"):
        raise ValueError("this project already has a training job queued or running; stop it or wait for it to finish")
    run_dir = ws.new_run_dir(project["id"], run_name or None)
    record = {"dataset": project.get("dataset") or "fashion_mnist", "data_dir": data_folder(project),
              "split": split_spec(project).to_dict(), "upload_home": project.get("upload_home")}
    run_meta = {"preset": preset_of(project), "dataset": record["dataset"], "data_dir": record["data_dir"],
                "limit": train_limit(project), "source": "studio", "project_id": project["id"],
                **({"upload_home": record["upload_home"]} if record["upload_home"] else {})}
    try:
        return registry.submit(project["id"], run_dir, _prepare_for(record, spec, cfg, train_limit(project)),
                               name=run_dir.name, owner=owner_of(ws), run_meta=run_meta)
    except ValueError:
        if run_dir.exists() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise


def resume_training(ws: store.Workspace, project: dict, run_id: str, registry: Any = None) -> dict:
    """Queue a job that continues a stopped run from its last checkpoint, with the run's own settings."""
    registry = registry or get_registry()
    run_dir = store.safe_child(ws.runs_dir(project["id"]), run_id)
    run = store.read_json(run_dir / "run.json")
    if run.get("status") not in ("stopped", "failed", "running"):
        raise ValueError(f"run {run_id} is {run.get('status')}; only a stopped or interrupted run can be resumed")
    store.load_latest_checkpoint(run_dir)  # StoreError with the reason if nothing usable is there
    cfg = TrainConfig.from_dict(run["config"])
    prepare = _prepare_for(run, run["spec"], cfg, run.get("limit"))
    return registry.submit(project["id"], run_dir, prepare, name=run_dir.name, resume=True, owner=owner_of(ws),
                           run_meta={})


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


def runs_table(ws: store.Workspace, project_id: str) -> list[dict]:
    """The run history rows (newest first) with elapsed time and weights availability."""
    rows = []
    for run in ws.list_runs(project_id):
        path = Path(run.get("path", ""))
        rows.append({**run, "has_weights": (path / "model.msgpack").exists()})
    return rows


# ----------------------------------------------------------------------------- previews and estimates

def augment_preview(images: np.ndarray, augment: AugmentConfig | dict, seed: int = 0, copies: int = 1) -> np.ndarray:
    """Augmented uint8 copies of images, through the same augment_batch the training step runs.

    Runs op by op (not jitted): each new slider value would otherwise compile a new program.
    """
    import jax
    import jax.numpy as jnp

    from .augment import augment_batch

    cfg = augment if isinstance(augment, AugmentConfig) else AugmentConfig(**augment)
    cfg.validate()
    batch = np.repeat(np.asarray(images), copies, axis=0)
    floats = jnp.asarray(batch, dtype=jnp.float32) / 255.0
    if cfg.active():
        floats = augment_batch(floats, jax.random.key(seed), cfg)
    return np.asarray(jnp.round(floats * 255.0)).astype(np.uint8)


def upscale(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W[, C]) image so browsers do not blur small images."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def montage(images: np.ndarray, columns: int, factor: int = 3, gap: int = 2) -> np.ndarray:
    """Tile uint8 (N, H, W[, 1]) images into one grid image with grey gaps."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    count, height, width = images.shape
    rows = max(1, math.ceil(count / columns))
    cell_h, cell_w = height * factor, width * factor
    canvas = np.full((rows * cell_h + (rows - 1) * gap, columns * cell_w + (columns - 1) * gap), 90, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (cell_h + gap):r * (cell_h + gap) + cell_h, c * (cell_w + gap):c * (cell_w + gap) + cell_w] = upscale(image, factor)
    return canvas


def device_info() -> dict:
    """JAX backend, device kind and count, plus memory in use."""
    from .train import device_summary

    return {**device_summary(), **memory_in_use()}


def memory_in_use() -> dict:
    """Process resident memory and, where the backend reports it, accelerator memory in bytes."""
    out: dict[str, int | None] = {"process_bytes": None, "device_bytes": None}
    try:
        with open("/proc/self/statm") as stream:
            out["process_bytes"] = int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats:
            out["device_bytes"] = int(stats.get("bytes_in_use", 0))
    except Exception:  # not every backend implements memory_stats
        pass
    return out


_FLOPS_CACHE: dict[str, float] = {}


def measured_flops_per_second() -> float:
    """Matmul FLOP/s of the default device, measured once per process (about a quarter of a second)."""
    if "matmul" not in _FLOPS_CACHE:
        import jax
        import jax.numpy as jnp

        size = 512
        a = jnp.ones((size, size), jnp.float32)
        step = jax.jit(lambda x: (x @ x) * 1e-3)
        step(a).block_until_ready()
        repeats, t0 = 0, time.perf_counter()
        while repeats < 5 or time.perf_counter() - t0 < 0.2:
            step(a).block_until_ready()
            repeats += 1
        _FLOPS_CACHE["matmul"] = 2 * size ** 3 * repeats / (time.perf_counter() - t0)
    return _FLOPS_CACHE["matmul"]


def estimate_epoch_seconds(ws: store.Workspace, project_id: str, spec: list, input_shape: tuple, num_classes: int,
                           train_size: int, val_size: int = 0) -> dict:
    """Estimated seconds per epoch (training plus the validation pass) from the model's FLOPs and a throughput.

    The throughput comes from this project's most recent run with history (its images/s times its
    model's FLOPs per image; its epochs included validation too), or else from a measured matmul rate
    times CONV_EFFICIENCY.
    """
    info = layers.describe(spec, input_shape, num_classes)
    flops_per_image = info["train_flops_per_image"]
    epoch_flops = train_size * flops_per_image + val_size * info["forward_flops"]
    for run in ws.list_runs(project_id):
        history = run_history(run["path"]) if run.get("path") else []
        if not history:
            continue
        try:
            run_record = store.read_json(Path(run["path"]) / "run.json")
            run_flops = layers.describe(run_record["spec"], tuple(run_record["input_shape"]),
                                        len(run_record["class_names"]))["train_flops_per_image"]
        except (store.StoreError, KeyError, ValueError):
            continue
        rate = float(np.median([h["images_per_s"] for h in history])) * run_flops
        return {"seconds": train_size * flops_per_image / rate, "flops_per_s": rate,
                "source": f"speed of run {run['name']}", "flops_per_image": flops_per_image}
    rate = measured_flops_per_second() * CONV_EFFICIENCY
    return {"seconds": epoch_flops / rate, "flops_per_s": rate, "source": "measured matmul rate",
            "flops_per_image": flops_per_image}


# ----------------------------------------------------------------------------- evaluation

def evaluate_run(ws: store.Workspace, project_id: str, run_id: str, progress: Progress | None = None) -> dict:
    """Test-set evaluation of a run (confusion matrix, per-class metrics, mistakes), cached in the run folder."""
    from .evaluate import evaluate_model
    from .train import TrainedModel

    run_dir = store.safe_child(ws.runs_dir(project_id), run_id)
    weights = run_dir / "model.msgpack"
    if not weights.exists():
        raise store.StoreError(f"run {run_id} has no trained weights yet (still running, or it failed)")
    stamp = [weights.stat().st_mtime_ns, weights.stat().st_size]
    cache = run_dir / EVALUATION_FILE
    if cache.exists():
        try:
            cached = store.read_json(cache)
            if cached.get("weights_stamp") == stamp:
                return cached
        except store.StoreError:
            pass
    run = store.read_json(run_dir / "run.json")
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


# ----------------------------------------------------------------------------- projects

def create_sample_project(ws: store.Workspace) -> dict:
    """A ready-to-train project: Fashion-MNIST, official split, the 'fast' preset, 5 epochs of Adam."""
    existing = {p["name"].lower() for p in ws.list_projects()}
    name, n = SAMPLE_PROJECT_NAME, 2
    while name.lower() in existing:
        name, n = f"{SAMPLE_PROJECT_NAME} {n}", n + 1
    cfg = TrainConfig().replace(**SAMPLE_CONFIG)
    return ws.create_project(
        name, "A sample project: the 'fast' CNN on Fashion-MNIST with the official test set. Press Start on Training.",
        split=data.SplitSpec().to_dict(), model=layers.preset("fast"), model_preset="fast",
        config=cfg.to_dict(), data_dir=data_folder({}))


def project_summary(ws: store.Workspace, project: dict) -> dict:
    """One row of the projects table."""
    def pct(value: Any) -> str:
        return f"{value:.2%}" if isinstance(value, (int, float)) and value else "–"
    return {"name": project["name"], "description": project.get("description", ""),
            "dataset": DATASET_LABELS.get(project.get("dataset") or "fashion_mnist", project.get("dataset")),
            "model": preset_of(project) or ("custom" if project.get("model") else project.get("model_preset") or "fast"),
            "runs": project.get("runs", 0), "last_run": project.get("last_run") or "–",
            "best_val_accuracy": pct(project.get("best_val_accuracy")),
            "best_test_accuracy": pct(project.get("best_test_accuracy")),
            "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(project.get("updated", 0)))}


def home_dir() -> Path:
    """The workspace folder (for display)."""
    return settings.home_dir()
