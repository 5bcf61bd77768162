"""A map of the dataset: what a trained model's penultimate layer makes of each image, projected to 2-D.

Images the network finds alike land together, so a class that splits into islands, a cluster of one class
inside another's, a mistake among its neighbours' class or a flagged label far from its class all show at a
glance (Edge Impulse's "data explorer" idea). The projection is UMAP (umap-learn, fixed seed) from
UMAP_FROM points up, and PCA below that, where UMAP's neighbour graph has too little to hold on to. Up to
MAX_POINTS images of one split, drawn with a fixed seed.

The result is cached in the run folder as plain .npy arrays (coordinates, rows of the split, predicted
classes) and a JSON record with the weights stamp, loaded with allow_pickle=False: never a pickled reducer.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fmnist_jax import store

MAX_POINTS = 10_000
UMAP_FROM = 200
SPLITS = ("validation", "test", "train")
MAP_DIR = "maps"
Progress = Callable[[float, str], None]


@dataclass
class DatasetMap:
    """One split's map: 2-D points, the split rows they stand for, true and predicted classes, flagged rows."""

    split: str
    method: str
    coords: np.ndarray      # (N, 2) float32
    rows: np.ndarray        # (N,) int64, rows of the split's arrays
    labels: np.ndarray      # (N,) true class
    predicted: np.ndarray   # (N,) the model's class
    seconds: float

    @property
    def mistakes(self) -> np.ndarray:
        return self.labels != self.predicted


def penultimate_index(spec: list[dict]) -> int:
    """How many layers feed the features: all of them up to the last dense layer (the classifier)."""
    dense = [i for i, layer in enumerate(spec) if layer["type"] == "dense"]
    if not dense:
        raise ValueError("the map reads the input of the model's last dense layer, and this model has none")
    return dense[-1]


def features(model: Any, images: np.ndarray, batch: int = 1000) -> np.ndarray:
    """The penultimate-layer features (N, D) float32 of uint8 images (N, H, W, C), in inference mode; for an
    ensemble, its first member's (the members share the layer stack)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from fmnist_jax.model import layers

    member = model.member(0) if model.members > 1 else model
    cut = penultimate_index(member.spec)
    ctx = layers.Context(train=False)
    cache = member.__dict__.setdefault("_features_fn", {})
    if "fn" not in cache:
        def run(weights: dict, x: jax.Array) -> jax.Array:
            net = nnx.merge(member.graphdef, weights["params"], weights["batch_stats"])
            y = x.astype(jnp.float32) / 255.0
            for layer in net.layers[:cut]:
                y = layer(y, ctx)
            return y.reshape(y.shape[0], -1).astype(jnp.float32)
        cache["fn"] = jax.jit(run)
    parts = [np.asarray(cache["fn"](member.weights, jnp.asarray(images[k:k + batch])))
             for k in range(0, len(images), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def project_2d(points: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """(N, 2) float32 coordinates and the method: UMAP from UMAP_FROM points, PCA below (and for N < 3)."""
    points = np.asarray(points, np.float32)
    if len(points) >= UMAP_FROM:
        import umap

        reducer = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, random_state=seed, n_jobs=1)
        return np.asarray(reducer.fit_transform(points), np.float32), "UMAP"
    centred = points - points.mean(axis=0, keepdims=True)
    if len(points) < 3 or not np.any(centred):
        return np.zeros((len(points), 2), np.float32), "PCA"
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ components[:2].T
    if coords.shape[1] < 2:
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    signs = np.sign(coords[np.abs(coords).argmax(axis=0), range(2)])  # a fixed orientation, run to run
    return (coords * np.where(signs == 0, 1, signs)).astype(np.float32), "PCA"


def sample_rows(count: int, limit: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Which rows of a split the map draws: all of them, or `limit` chosen with a fixed seed, in order."""
    if count <= limit:
        return np.arange(count, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(count, limit, replace=False)).astype(np.int64)


def split_arrays(splits: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    name = {"validation": "val", "test": "test", "train": "train"}[split]
    return getattr(splits, f"{name}_images"), getattr(splits, f"{name}_labels")


def compute(model: Any, splits: Any, split: str, run_dir: str | Path | None = None, limit: int = MAX_POINTS,
            seed: int = 0, progress: Progress | None = None) -> DatasetMap:
    """The map of one split (cached in `run_dir` when given)."""
    progress = progress or (lambda fraction, message: None)
    start = time.perf_counter()
    images, labels = split_arrays(splits, split)
    if not len(images):
        raise ValueError(f"the {split} split of this run is empty: choose another split")
    rows = sample_rows(len(images), limit, seed)
    progress(0.05, f"reading the model's features of {len(rows):,} {split} images")
    chosen = np.asarray(images)[rows]
    feats = features(model, chosen)
    predicted = np.asarray(model.predict_proba(chosen)).argmax(axis=1)
    progress(0.3, f"projecting {len(rows):,} points to 2-D" + (" with UMAP" if len(rows) >= UMAP_FROM else ""))
    coords, method = project_2d(feats, seed)
    result = DatasetMap(split, method, coords, rows, np.asarray(labels)[rows].astype(np.int64),
                        predicted.astype(np.int64), round(time.perf_counter() - start, 2))
    if run_dir is not None:
        save(result, Path(run_dir), store.weights_stamp(run_dir), limit, seed)
    progress(1.0, "done")
    return result


def _paths(run_dir: Path, split: str) -> dict[str, Path]:
    folder = run_dir / MAP_DIR
    return {key: folder / f"{split}-{key}.npy" for key in ("coords", "rows", "labels", "predicted")} | \
        {"meta": folder / f"{split}.json"}


def save(result: DatasetMap, run_dir: Path, stamp: str, limit: int, seed: int) -> None:
    paths = _paths(run_dir, result.split)
    paths["meta"].parent.mkdir(parents=True, exist_ok=True)
    for key in ("coords", "rows", "labels", "predicted"):
        np.save(paths[key], getattr(result, key), allow_pickle=False)
    store.atomic_write_json(paths["meta"], {"split": result.split, "method": result.method, "points": len(result.rows),
                                            "seconds": result.seconds, "weights_stamp": stamp, "limit": limit,
                                            "seed": seed})


def load(run_dir: str | Path, split: str, limit: int = MAX_POINTS, seed: int = 0) -> DatasetMap | None:
    """The cached map of a split, or None when there is none for these weights, limit and seed."""
    run_dir = Path(run_dir)
    paths = _paths(run_dir, split)
    if not paths["meta"].is_file():
        return None
    try:
        meta = store.read_json(paths["meta"])
        if (meta.get("weights_stamp"), meta.get("limit"), meta.get("seed")) != (store.weights_stamp(run_dir), limit, seed):
            return None
        arrays = {key: np.load(paths[key], allow_pickle=False) for key in ("coords", "rows", "labels", "predicted")}
    except (store.StoreError, OSError, ValueError):
        return None  # a damaged cache is computed again
    return DatasetMap(split, meta["method"], seconds=float(meta.get("seconds", 0.0)), **arrays)


def image_digest(image: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=12).hexdigest()


def flagged(images: np.ndarray, flagged_images: np.ndarray) -> np.ndarray:
    """Which of `images` are (pixel for pixel) among the label check's flagged training images: the check
    numbers rows of the dataset's training part, a map numbers rows of a split, and the pixels link the two."""
    wanted = {image_digest(image) for image in flagged_images}
    return np.asarray([image_digest(image) in wanted for image in images], bool) if wanted else \
        np.zeros(len(images), bool)


def in_selection(result: DatasetMap, selection: Any) -> np.ndarray:
    """Positions (into the map) of the points a chart selection holds: an interval {"x": [a, b], "y": [c, d]}
    or a list of points carrying their position as "p"."""
    if isinstance(selection, dict) and "x" in selection and "y" in selection:
        (x0, x1), (y0, y1) = sorted(selection["x"]), sorted(selection["y"])
        x, y = result.coords[:, 0], result.coords[:, 1]
        return np.flatnonzero((x >= x0) & (x <= x1) & (y >= y0) & (y <= y1))
    if isinstance(selection, list):
        return np.asarray(sorted({int(point["p"]) for point in selection if "p" in point}), np.int64)
    return np.zeros(0, np.int64)
