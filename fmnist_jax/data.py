"""Datasets (TFDS image sets with a local manual-download folder; user uploads) and train/val/test splits.

Arrays are uint8 (N, H, W, C) images and int32 labels. The first load lets TFDS prepare the data
(checksums verified) and caches plain .npy arrays under the workspace; later loads memory-map those.
Uploaded datasets (see uploads.py) are converted once into the same cache as "upload/<id>".
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

from . import settings

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# TFDS's small image-classification sets offered beside Fashion-MNIST (name -> display label).
TFDS_DATASETS = {"fashion_mnist": "Fashion-MNIST", "mnist": "MNIST", "kmnist": "Kuzushiji-MNIST",
                 "emnist/letters": "EMNIST letters", "cifar10": "CIFAR-10"}
# Class names TFDS leaves as numbers (or, for EMNIST letters, numbers 1-26 of 37 slots).
TFDS_CLASS_NAMES = {
    "fashion_mnist": CLASS_NAMES,
    "mnist": tuple(str(d) for d in range(10)),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    "emnist/letters": tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
CACHE_VERSION = 1
DOWNLOAD_PROBE_SECONDS = 5.0  # how long to wait for a download server before saying the network is unreachable

Progress = Callable[[float, str], None]


class DataUnavailable(RuntimeError):
    """The dataset is not cached and could not be prepared (no local files, no network)."""


@dataclass
class Dataset:
    """Images and labels of a dataset's original train and test parts, with class names."""

    name: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    # A validation split the source provides (an upload's val/ folder); None lets make_splits carve one.
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(v) for v in self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    @property
    def has_val(self) -> bool:
        """True when the source gave its own validation split."""
        return self.val_labels is not None


ARRAY_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
VAL_KEYS = ("val_images", "val_labels")


def _cache_dir(name: str, home: str | os.PathLike | None) -> Path:
    return settings.home_dir(home) / "datasets" / name.replace("/", "__")


def _load_cached(name: str, home: str | os.PathLike | None) -> Dataset | None:
    folder = _cache_dir(name, home)
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != CACHE_VERSION:
            return None
        keys = ARRAY_KEYS + (VAL_KEYS if meta.get("val") is not None else ())
        arrays = {key: np.load(folder / f"{key}.npy", mmap_mode="r", allow_pickle=False) for key in keys}
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    return Dataset(name, *(np.asarray(arrays[k]) for k in ARRAY_KEYS), tuple(meta["class_names"]),
                   *(np.asarray(arrays[k]) if k in arrays else None for k in VAL_KEYS))


def save_cached(dataset: Dataset, home: str | os.PathLike | None = None, folder: str | os.PathLike | None = None) -> Path:
    """Write a dataset's arrays as .npy plus meta.json (atomically per file) into the workspace cache.

    `folder` overrides the cache folder (uploads write into a staging folder, then rename it into place).
    """
    folder = Path(folder) if folder is not None else _cache_dir(dataset.name, home)
    folder.mkdir(parents=True, exist_ok=True)
    for key in ARRAY_KEYS + (VAL_KEYS if dataset.has_val else ()):
        tmp = folder / f".{key}.tmp.npy"
        np.save(tmp, np.ascontiguousarray(getattr(dataset, key)), allow_pickle=False)
        os.replace(tmp, folder / f"{key}.npy")
    meta = {"version": CACHE_VERSION, "name": dataset.name, "class_names": list(dataset.class_names),
            "input_shape": list(dataset.input_shape), "train": int(len(dataset.train_labels)),
            "val": int(len(dataset.val_labels)) if dataset.has_val else None,
            "test": int(len(dataset.test_labels))}
    tmp = folder / ".meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, folder / "meta.json")
    return folder


def check_data_dir(data_dir: str | os.PathLike | None, name: str = "fashion_mnist") -> Path | None:
    """Resolve the manual-download folder and check it holds the expected files (ValueError if not)."""
    folder = settings.data_dir(data_dir)
    if folder is None:
        return None
    if not folder.is_dir():
        raise ValueError(f"data folder {folder} does not exist; set FMNIST_DATA_DIR to the folder with "
                         f"Zalando's four *-ubyte.gz files, or unset it to download")
    if name == "fashion_mnist":
        missing = [f for f in FASHION_FILES if not (folder / f).is_file()]
        if missing:
            raise ValueError(f"data folder {folder} lacks {', '.join(missing)}; it must hold Zalando's four *-ubyte.gz files")
    return folder


def manual_dir_for(name: str, data_dir: Path | None) -> Path | None:
    """TFDS's manual folder for a dataset: the data folder itself for Fashion-MNIST, <data folder>/<name> otherwise.

    MNIST and KMNIST use the same file names as Fashion-MNIST, so they need a folder of their own.
    """
    if data_dir is None or name == "fashion_mnist":
        return data_dir
    folder = data_dir / name.replace("/", "__")
    return folder if folder.is_dir() else None


def _check_download_reachable(name: str, builder: object, manual_dir: Path | None) -> None:
    """Fail fast (DataUnavailable) when files must be downloaded and their server cannot be reached.

    TFDS retries a failed download with back-off for minutes; offline, the user should hear at once.
    """
    url_infos = getattr(builder, "url_infos", None) or {}
    missing = {url: info for url, info in url_infos.items()
               if manual_dir is None or not (manual_dir / info.filename).is_file()}
    for url in missing:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((parts.hostname, port), timeout=DOWNLOAD_PROBE_SECONDS).close()
        except OSError as error:
            size = sum(float(getattr(info, "size", 0) or 0) for info in missing.values()) / 2**20
            files = ", ".join(sorted(info.filename for info in missing.values()))
            raise DataUnavailable(
                f"{TFDS_DATASETS.get(name, name)} must be downloaded first ({size:.0f} MB from {parts.hostname}) "
                f"but the network is unreachable ({error.strerror or error}); connect once and load it again, "
                f"or put {files} in {manual_dir or '$FMNIST_DATA_DIR/' + name.replace('/', '__')}") from None


def _prepare_with_tfds(name: str, home: str | os.PathLike | None, manual_dir: Path | None, progress: Progress) -> Dataset:
    import tensorflow_datasets as tfds  # heavy import: only on first preparation

    tfds_dir = settings.home_dir(home) / "tfds"
    builder = tfds.builder(name, data_dir=str(tfds_dir))
    _check_download_reachable(name, builder, manual_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
    done = threading.Event()
    failure: list[BaseException] = []

    def prepare() -> None:
        try:
            builder.download_and_prepare(download_config=download_config)
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)
        finally:
            done.set()

    worker = threading.Thread(target=prepare, daemon=True)
    start = time.monotonic()
    worker.start()
    expected = 25.0  # seconds TFDS takes for Fashion-MNIST on a 2-core CPU
    while not done.wait(0.25):
        elapsed = time.monotonic() - start
        progress(min(0.9, 0.9 * elapsed / expected), f"TFDS is preparing {name} (first time only, {elapsed:.0f} s)")
    if failure:
        error = failure[0]
        if manual_dir is None:
            raise DataUnavailable(f"{name} is not cached and the download failed ({type(error).__name__}: {error}); "
                                  f"check the network or set FMNIST_DATA_DIR to a folder with the files") from error
        raise DataUnavailable(f"TFDS could not prepare {name} from {manual_dir}: {error}") from error
    progress(0.92, "Reading prepared arrays")
    parts = {}
    for split in ("train", "test"):
        # Fixed-size batches rather than batch_size=-1, which relies on split sizes in the metadata.
        batches = list(tfds.as_numpy(builder.as_dataset(split=split, batch_size=4096, as_supervised=True)))
        images = np.concatenate([b[0] for b in batches]).astype(np.uint8, copy=False)
        labels = np.concatenate([b[1] for b in batches]).astype(np.int32)
        if name.startswith("emnist"):
            # TFDS keeps EMNIST's stored orientation (mirrored and rotated); transpose to upright letters.
            images = np.ascontiguousarray(images.transpose(0, 2, 1, 3))
        if name == "emnist/letters":
            labels = labels - 1  # TFDS numbers the letters 1-26
        parts[split] = (images, labels)
    names = TFDS_CLASS_NAMES.get(name) or tuple(builder.info.features["label"].names)
    return Dataset(name, parts["train"][0], parts["train"][1], parts["test"][0], parts["test"][1], names)


def load_dataset(name: str = "fashion_mnist", data_dir: str | os.PathLike | None = None,
                 home: str | os.PathLike | None = None, progress: Progress | None = None) -> Dataset:
    """Load a TFDS dataset or an uploaded one from the workspace cache, preparing it the first time."""
    progress = progress or (lambda fraction, message: None)
    if name in TFDS_DATASETS:
        check_data_dir(data_dir, name)  # a wrong explicit setting is an error even when data is cached
    cached = _load_cached(name, home)
    if cached is not None:
        progress(1.0, "Loaded from cache")
        return cached
    if name.startswith("upload/"):
        raise DataUnavailable(f"uploaded dataset {name[7:]!r} is not in the workspace; upload it again")
    if name not in TFDS_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(TFDS_DATASETS)}")
    manual_dir = manual_dir_for(name, check_data_dir(data_dir, name))
    dataset = _prepare_with_tfds(name, home, manual_dir, progress)
    save_cached(dataset, home)
    progress(1.0, "Prepared and cached")
    return _load_cached(name, home) or dataset


_SHARED: dict[tuple[str, str], Dataset] = {}
_SHARED_LOCK = threading.Lock()


def shared_dataset(name: str = "fashion_mnist", data_dir: str | os.PathLike | None = None,
                   home: str | os.PathLike | None = None, progress: Progress | None = None) -> Dataset:
    """load_dataset, but each dataset is loaded once per process and shared (read-only) by every user."""
    key = (name, str(settings.home_dir(home)))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = load_dataset(name, data_dir, home, progress)
            for array in (_SHARED[key].train_images, _SHARED[key].test_images, _SHARED[key].val_images):
                if array is not None and array.flags.writeable:
                    array.flags.writeable = False
        return _SHARED[key]


def forget_shared(name: str, home: str | os.PathLike | None = None) -> None:
    """Drop a shared dataset (after it was replaced on disk)."""
    with _SHARED_LOCK:
        _SHARED.pop((name, str(settings.home_dir(home))), None)


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, home: str | os.PathLike | None = None,
                       progress: Progress | None = None) -> Dataset:
    """Fashion-MNIST: 60,000 train and 10,000 test 28x28x1 uint8 images."""
    return load_dataset("fashion_mnist", data_dir, home, progress)


def synthetic_dataset(num_train: int = 256, num_test: int = 64, shape: tuple[int, int, int] = (28, 28, 1),
                      num_classes: int = 10, seed: int = 0) -> Dataset:
    """A small learnable dataset (each class a distinct bright blob pattern plus noise) for tests and demos."""
    rng = np.random.default_rng(seed)
    height, width, channels = shape
    prototypes = rng.random((num_classes, height, width, channels)) < 0.3

    def make(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(count) % num_classes
        rng.shuffle(labels)
        noise = rng.random((count, height, width, channels)) < 0.08
        images = np.where(prototypes[labels] ^ noise, 220, 20).astype(np.uint8)
        return images, labels.astype(np.int32)

    train, test = make(num_train), make(num_test)
    names = CLASS_NAMES if num_classes == 10 else tuple(f"class {i}" for i in range(num_classes))
    return Dataset("synthetic", train[0], train[1], test[0], test[1], names)


# ----------------------------------------------------------------------------- splits

@dataclass
class SplitSpec:
    """How to split: 'pooled' (shuffle all, cut by fractions) or 'official' (keep the test set, carve validation)."""

    mode: str = "official"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    val_fraction: float = 0.1
    seed: int = 0
    stratify: bool = True

    def validate(self, num_classes: int | None = None, total: int | None = None,
                 test_total: int | None = None) -> "SplitSpec":
        """Raise ValueError with an actionable message if the spec cannot produce three usable splits."""
        if self.mode not in ("pooled", "official"):
            raise ValueError(f"split mode must be 'pooled' or 'official', got {self.mode!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"split seed must be a non-negative whole number, got {self.seed!r}")
        if self.mode == "pooled":
            fractions = tuple(self.fractions)
            if len(fractions) != 3 or not all(isinstance(f, (int, float)) and np.isfinite(f) for f in fractions):
                raise ValueError(f"fractions must be three numbers (train, validation, test), got {self.fractions!r}")
            if min(fractions) < 0:
                raise ValueError(f"fractions cannot be negative, got {fractions}")
            if abs(sum(fractions) - 1.0) > 1e-6:
                raise ValueError(f"fractions must add up to 1, they add up to {sum(fractions):.4g}")
            if min(fractions) == 0:
                part = ("train", "validation", "test")[fractions.index(min(fractions))]
                raise ValueError(f"the {part} split would be empty; give it a fraction above 0")
        else:
            if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
                raise ValueError(f"validation fraction must be between 0 and 1 (exclusive), got {self.val_fraction!r}")
        if num_classes is not None and total is not None:
            counts = self.counts(total, test_total)
            if self.mode == "official" and test_total is None:
                counts.pop("test")  # the source's own test set is not known here
            for part, count in counts.items():
                if count < num_classes:
                    raise ValueError(f"the {part} split would have {count} examples, fewer than the {num_classes} classes; "
                                     f"give it a larger fraction or use more data")
        return self

    def counts(self, total: int, test_total: int | None, val_total: int | None = None) -> dict[str, int]:
        """Split sizes for `total` training images plus the source's own test (and validation) images.

        pooled: everything is pooled and cut by fractions. official: the source's splits are kept and what
        it lacks is carved from its training images by val_fraction (validation; and test when it has none).
        """
        if self.mode == "pooled":
            all_count = total + (test_total or 0) + (val_total or 0)
            train = int(round(all_count * self.fractions[0]))
            val = int(round(all_count * self.fractions[1]))
            return {"train": train, "validation": val, "test": all_count - train - val}
        carved = int(round(total * self.val_fraction))
        val = val_total if val_total is not None else carved
        test = carved if test_total == 0 else (test_total if test_total is not None else 0)
        return {"train": total - (val_total is None) * carved - (test_total == 0) * carved, "validation": val, "test": test}

    def to_dict(self) -> dict:
        """JSON-ready form."""
        out = asdict(self)
        out["fractions"] = list(self.fractions)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "SplitSpec":
        """Build from JSON (unknown keys raise ValueError)."""
        unknown = set(values) - {"mode", "fractions", "val_fraction", "seed", "stratify"}
        if unknown:
            raise ValueError(f"unknown split setting(s): {', '.join(sorted(unknown))}")
        values = dict(values)
        if "fractions" in values:
            values["fractions"] = tuple(values["fractions"])
        return cls(**values)


@dataclass
class Splits:
    """Train, validation and test arrays ready for training."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    spec: SplitSpec = field(default_factory=SplitSpec)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(v) for v in self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def counts(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train_labels), "validation": len(self.val_labels), "test": len(self.test_labels)}

    def limit_train(self, limit: int | None) -> "Splits":
        """A copy that keeps only the first `limit` training examples (None keeps all)."""
        if limit is None:
            return self
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        return Splits(self.train_images[:limit], self.train_labels[:limit], self.val_images, self.val_labels,
                      self.test_images, self.test_labels, self.class_names, self.spec)


def _cut(labels: np.ndarray, sizes: tuple[int, ...], rng: np.random.Generator, stratify: bool) -> list[np.ndarray]:
    """Indices of consecutive parts of the given sizes, optionally keeping class proportions."""
    if not stratify:
        order = rng.permutation(len(labels))
        bounds = np.cumsum((0,) + sizes)
        return [np.sort(order[bounds[i]:bounds[i + 1]]) for i in range(len(sizes))]
    total = len(labels)
    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    classes = np.unique(labels)
    wanted = np.array(sizes, dtype=np.float64) / total
    assigned = np.zeros(len(sizes), dtype=np.int64)
    for position, cls in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == cls))
        if position == len(classes) - 1:
            share = np.array(sizes) - assigned  # the last class absorbs rounding so sizes are exact
        else:
            share = np.floor(wanted * len(members)).astype(np.int64)
            share[0] += len(members) - share.sum()
        share = np.clip(share, 0, None)
        bounds = np.cumsum(np.concatenate([[0], share]))
        for i in range(len(sizes)):
            parts[i].append(members[bounds[i]:bounds[i + 1]])
        assigned += share
    return [np.sort(np.concatenate(p)) for p in parts]


def split_counts(dataset: Dataset, spec: SplitSpec) -> dict[str, int]:
    """The split sizes make_splits will produce for this dataset (given validation/test splits included)."""
    return spec.counts(len(dataset.train_labels), len(dataset.test_labels),
                       len(dataset.val_labels) if dataset.has_val else None)


def make_splits(dataset: Dataset, spec: SplitSpec | None = None) -> Splits:
    """Split a dataset according to `spec`; the same seed always gives the same split, bit for bit.

    In official mode the splits a source provides are kept (an upload's val/ and test/ folders);
    validation, and test when the source has none, are carved from the training images.
    """
    spec = (spec or SplitSpec()).validate()
    rng = np.random.default_rng(spec.seed)
    counts = split_counts(dataset, spec)
    if spec.mode == "pooled":
        given_val = (dataset.val_images,) if dataset.has_val else ()
        images = np.concatenate([dataset.train_images, *given_val, dataset.test_images])
        labels = np.concatenate([dataset.train_labels, *((dataset.val_labels,) if dataset.has_val else ()), dataset.test_labels])
        sizes = (counts["train"], counts["validation"], counts["test"])
        _check_sizes(sizes, dataset.num_classes)
        train_idx, val_idx, test_idx = _cut(labels, sizes, rng, spec.stratify)
        val_images, val_labels = images[val_idx], labels[val_idx]
        test_images, test_labels = images[test_idx], labels[test_idx]
    else:
        images, labels = dataset.train_images, dataset.train_labels
        carve_val, carve_test = not dataset.has_val, len(dataset.test_labels) == 0
        _check_sizes((counts["train"], counts["validation"], counts["test"]), dataset.num_classes)
        sizes = (counts["train"],) + ((counts["validation"],) if carve_val else ()) + ((counts["test"],) if carve_test else ())
        train_idx, *carved = _cut(labels, sizes, rng, spec.stratify)
        val_images, val_labels = dataset.val_images, dataset.val_labels
        test_images, test_labels = dataset.test_images, dataset.test_labels
        if carve_val:
            val_idx = carved.pop(0)
            val_images, val_labels = images[val_idx], labels[val_idx]
        if carve_test:
            test_idx = carved.pop(0)
            test_images, test_labels = images[test_idx], labels[test_idx]
    # Training order is shuffled every epoch on the device; here we keep index order for reproducibility.
    return Splits(np.ascontiguousarray(images[train_idx]), labels[train_idx].astype(np.int32),
                  np.ascontiguousarray(val_images), np.asarray(val_labels, dtype=np.int32),
                  np.ascontiguousarray(test_images), np.asarray(test_labels, dtype=np.int32),
                  tuple(dataset.class_names), spec)


def _check_sizes(sizes: tuple[int, ...], num_classes: int) -> None:
    for part, count in zip(("train", "validation", "test"), sizes):
        if count < num_classes:
            raise ValueError(f"the {part} split would have {count} examples, fewer than the {num_classes} classes; "
                             f"give it a larger fraction or use more data")


def class_balance(splits: Splits) -> list[dict]:
    """Rows of (split, class, count) for charts and checks."""
    rows = []
    for part, labels in (("train", splits.train_labels), ("validation", splits.val_labels), ("test", splits.test_labels)):
        counts = np.bincount(labels, minlength=splits.num_classes)
        rows += [{"split": part, "class": splits.class_names[i], "count": int(c)} for i, c in enumerate(counts)]
    return rows


def sample_gallery(images: np.ndarray, labels: np.ndarray, per_class: int = 3, seed: int = 0) -> dict[int, np.ndarray]:
    """Up to `per_class` example images for each class label, chosen with a seed."""
    rng = np.random.default_rng(seed)
    out = {}
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        out[int(cls)] = images[rng.choice(members, size=min(per_class, len(members)), replace=False)]
    return out


def pixel_histogram(images: np.ndarray, bins: int = 32, sample: int = 2000, seed: int = 0) -> list[dict]:
    """Histogram of pixel intensities over a random sample of images."""
    rng = np.random.default_rng(seed)
    pick = images[rng.choice(len(images), size=min(sample, len(images)), replace=False)]
    counts, edges = np.histogram(pick, bins=bins, range=(0, 256))
    return [{"intensity": float(edges[i]), "count": int(c)} for i, c in enumerate(counts)]


def array_digest(*arrays: np.ndarray) -> str:
    """Short SHA-256 of arrays' bytes, used in manifests and cache keys."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]
