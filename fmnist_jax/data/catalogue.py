"""Dataset catalogue: TFDS datasets with a manual-download folder (checksums verified), the .npy cache
under the workspace, the shared in-memory copies, and synthetic data for tests.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import numpy as np

from fmnist_jax import settings
from fmnist_jax.errors import UserError

LOG = logging.getLogger(__name__)

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# TFDS's small image-classification sets offered beside Fashion-MNIST (name -> display label).
# The made-up dataset of 10 patterns that needs no files: trying the workflow offline (never for accuracy).
SYNTHETIC = "synthetic"
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


class DataUnavailable(UserError):
    """The dataset is not cached and could not be prepared (no local files, no network)."""


class ImageShapes:
    """Shape facts shared by datasets and splits (anything with train_images and class_names)."""

    train_images: np.ndarray
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(v) for v in self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


@dataclass
class Dataset(ImageShapes):
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


def check_data_dir(data_dir: str | os.PathLike | None, name: str = "fashion_mnist",
                   origin: str = "the data folder setting") -> Path | None:
    """Resolve the manual-download folder and check it holds the expected files (ValueError if not).

    `origin` names where an explicit `data_dir` came from (the CLI's --data-dir, the Data page's box), so the
    message names what the user typed; a folder from the environment is named FMNIST_DATA_DIR."""
    folder = settings.data_dir(data_dir)
    if folder is None:
        return None
    origin = origin if data_dir else "FMNIST_DATA_DIR"
    if not folder.is_dir():
        raise ValueError(f"data folder {folder} ({origin}) does not exist; point {origin} at the folder with "
                         f"Zalando's four *-ubyte.gz files, or leave it out to download them")
    if name == "fashion_mnist":
        missing = [f for f in FASHION_FILES if not (folder / f).is_file()]
        if missing:
            raise ValueError(f"data folder {folder} ({origin}) lacks {', '.join(missing)}; it must hold Zalando's "
                             f"four *-ubyte.gz files")
    return folder


def manual_dir_for(name: str, data_dir: Path | None) -> Path | None:
    """TFDS's manual folder for a dataset: the data folder itself for Fashion-MNIST, <data folder>/<name> otherwise.

    MNIST and KMNIST use the same file names as Fashion-MNIST, so they need a folder of their own.
    """
    if data_dir is None or name == "fashion_mnist":
        return data_dir
    folder = data_dir / name.replace("/", "__")
    return folder if folder.is_dir() else None


def _manual_folder_hint(name: str) -> str:
    """Where the files of a dataset go, as check_data_dir and manual_dir_for accept them."""
    return "$FMNIST_DATA_DIR" if name == "fashion_mnist" else f"$FMNIST_DATA_DIR/{name.replace('/', '__')}"


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
                f"or put {files} directly in {manual_dir or _manual_folder_hint(name)} (the Data page's data-folder "
                f"box sets it, the CLI's --data-dir too), or use the synthetic dataset, which works offline (the Data "
                f"page's 'Synthetic demo data', the CLI's --dataset synthetic)") from None


def _quiet(tfds: object, builder: object, name: str, manual_dir: Path | None) -> None:
    """TFDS's own output goes to the log: the caller's progress callback is the only progress bar. TFDS prints
    "Downloading and preparing dataset Unknown size" to stdout even when it reads the manual folder, and draws
    tqdm bars that tangled with the CLI's own; say what really happens instead."""
    tfds.display_progress_bar(False)
    source = f"the files in {manual_dir}" if manual_dir else "files it downloads"
    builder._log_download_bytes = lambda: LOG.info("TFDS is preparing %s from %s", name, source)
    builder._log_download_done = lambda: LOG.info("TFDS prepared %s in %s", name, builder.data_dir)


def _prepare_with_tfds(name: str, home: str | os.PathLike | None, manual_dir: Path | None, progress: Progress) -> Dataset:
    # TensorFlow's C++ start-up notes (oneDNN, absl) are not the user's business; a user's own setting wins. TFDS
    # only reads and writes records with TensorFlow, so its oneDNN kernels are not needed either.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow_datasets as tfds  # heavy import: only on first preparation

    tfds_dir = settings.home_dir(home) / "tfds"
    builder = tfds.builder(name, data_dir=str(tfds_dir))
    _check_download_reachable(name, builder, manual_dir)
    _quiet(tfds, builder, name, manual_dir)
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
                 home: str | os.PathLike | None = None, progress: Progress | None = None,
                 origin: str = "the data folder setting") -> Dataset:
    """Load a TFDS dataset or an uploaded one from the workspace cache, preparing it the first time; "synthetic"
    is the small made-up dataset that needs no files. `origin` names where `data_dir` came from, for messages."""
    progress = progress or (lambda fraction, message: None)
    if name in TFDS_DATASETS:
        check_data_dir(data_dir, name, origin)  # a wrong explicit setting is an error even when data is cached
    cached = _load_cached(name, home)
    if cached is not None:
        progress(1.0, "Loaded from cache")
        return cached
    if name == SYNTHETIC:  # made, not cached: 1,200 small images take milliseconds
        progress(1.0, "Made the synthetic dataset")
        return synthetic_dataset(num_train=1000, num_test=200, seed=0)
    if name.startswith("upload/"):
        raise DataUnavailable(f"uploaded dataset {name[7:]!r} is not in the workspace; upload it again")
    if name not in TFDS_DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join((*TFDS_DATASETS, SYNTHETIC))}")
    manual_dir = manual_dir_for(name, check_data_dir(data_dir, name, origin))
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


def forget_workspace(home: str | os.PathLike) -> None:
    """Drop every shared dataset loaded from one workspace (a visitor's, when it is cleaned up)."""
    folder = str(Path(home).expanduser())
    with _SHARED_LOCK:
        for key in [key for key in _SHARED if key[1] == folder]:
            del _SHARED[key]


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
