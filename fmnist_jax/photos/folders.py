"""Folders of labelled real photos (one subfolder per kind of garment, a classes.json mapping each folder to
the model classes that count as right) -> model inputs through the photo pipeline, cached on disk.

Training on photos runs the pipeline once per photo and keeps its output (`photo_inputs`); augmentation
comes after it, on the device, like any dataset. The same pipeline serves predictions, so what the model
learns from is exactly what it will see.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fmnist_jax import settings, store
from fmnist_jax.data import label_sets
from fmnist_jax.data.splitting import _cut
from fmnist_jax.photos import pipeline, pool
from fmnist_jax.photos.decode import ImageError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MAX_PHOTOS = 50_000
CACHE_VERSION = 1
PIPELINE_WINDOW = 48  # photos in the pipeline's workers at once (one per core runs; the rest wait, bounded in memory)
Progress = Callable[[float, str], None]


@dataclass
class PhotoFolder:
    """A labelled photo folder: each folder's acceptable classes (empty: outside the classes) and its photos."""

    root: Path
    class_names: tuple[str, ...]
    acceptable: dict[str, list[int]]
    files: list[tuple[str, Path]]           # (folder, photo), sorted

    def label_of(self, folder: str) -> int:
        """The folder's int32 label: a class, a set of classes, or label_sets.OUTSIDE."""
        classes = self.acceptable[folder]
        return label_sets.encode_set(classes, len(self.class_names)) if classes else label_sets.OUTSIDE


def read_photo_folder(root: str | os.PathLike, class_names: tuple[str, ...]) -> PhotoFolder:
    """Read `root`/classes.json ({"acceptable": {folder: [class index, ...]}}) and list the photos; ValueError if unusable."""
    root = Path(root)
    mapping_path = root / "classes.json"
    if not mapping_path.is_file():
        raise ValueError(f"{root} has no classes.json: it must map each folder to the classes that count as right, "
                         f'e.g. {{"acceptable": {{"shoes": [5, 7, 9], "hat": []}}}}')
    try:
        mapping = json.loads(mapping_path.read_text())
        acceptable = {str(k): [int(i) for i in v] for k, v in mapping["acceptable"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{mapping_path} is not a folder -> class-list mapping ({type(error).__name__}: {error})") from None
    named = mapping.get("fashion_mnist_classes") or mapping.get("class_names")
    if named and tuple(named) != tuple(class_names):
        raise ValueError(f"{mapping_path} names the classes {named}, the model has {list(class_names)}")
    for folder, classes in acceptable.items():
        label_sets.encode_set(classes, len(class_names)) if classes else None  # range check with a clear message
        if not (root / folder).is_dir():
            raise ValueError(f"classes.json names the folder {folder!r}, which is not in {root}")
    files = [(folder, path) for folder in sorted(acceptable) for path in sorted((root / folder).iterdir())
             if path.suffix.lower() in PHOTO_SUFFIXES and path.is_file()]
    if not files:
        raise ValueError(f"{root} has no photos ({', '.join(PHOTO_SUFFIXES)}) in the folders classes.json names")
    if len(files) > MAX_PHOTOS:
        raise ValueError(f"{root} has {len(files):,} photos; at most {MAX_PHOTOS:,} are supported")
    return PhotoFolder(root, tuple(class_names), acceptable, files)


def _digest(folder: PhotoFolder, preprocess: dict, input_shape: tuple[int, ...]) -> str:
    hasher = hashlib.sha256(json.dumps([preprocess, list(input_shape), folder.acceptable], sort_keys=True).encode())
    for name, path in folder.files:
        stat = path.stat()
        hasher.update(f"{name}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return hasher.hexdigest()[:16]


@dataclass
class PhotoInputs:
    """Pipeline outputs of a photo folder: images (N, H, W, C) uint8, int32 labels (sets allowed), and sources."""

    images: np.ndarray
    labels: np.ndarray
    folders: list[str]
    files: list[str]
    skipped: list[dict]


def photo_inputs(folder: PhotoFolder, preprocess: dict, input_shape: tuple[int, ...] = (28, 28, 1),
                 home: str | os.PathLike | None = None, progress: Progress | None = None) -> PhotoInputs:
    """Run every photo through the pipeline once; later calls with the same photos and settings read the cache."""
    cache = settings.home_dir(home) / "datasets" / f"photos-{_digest(folder, preprocess, input_shape)}"
    if (cache / "meta.json").is_file():
        meta = store.read_json(cache / "meta.json")
        arrays = np.load(cache / "arrays.npz", allow_pickle=False)
        return PhotoInputs(arrays["images"], arrays["labels"], meta["folders"], meta["files"], meta["skipped"])
    images, labels, folders, files, skipped = [], [], [], [], []
    for start in range(0, len(folder.files), PIPELINE_WINDOW):
        if progress:
            progress(start / len(folder.files), f"Photo pipeline: {start:,} of {len(folder.files):,} photos")
        window = folder.files[start:start + PIPELINE_WINDOW]
        queued = [pool.submit(pipeline.preprocess_photo, path.read_bytes(), preprocess, input_shape) for _, path in window]
        for (name, path), photo in zip(window, queued):
            try:
                model_input = photo.result().model_input
            except ImageError as error:
                skipped.append({"file": f"{name}/{path.name}", "reason": str(error)})
                continue
            images.append(model_input)
            labels.append(folder.label_of(name))
            folders.append(name)
            files.append(f"{name}/{path.name}")
    inputs = PhotoInputs(np.stack(images), np.asarray(labels, np.int32), folders, files, skipped)
    buffer = io.BytesIO()
    np.savez(buffer, images=inputs.images, labels=inputs.labels)
    store.atomic_write_bytes(cache / "arrays.npz", buffer.getvalue())
    store.atomic_write_json(cache / "meta.json", {"folders": folders, "files": files, "skipped": skipped,
                                                  "root": str(folder.root), "preprocess": preprocess})
    return inputs


def split_photos(inputs: PhotoInputs, held_out: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a per-folder stratified cut, the same for the same seed."""
    return _split_folders(inputs.folders, held_out, seed)


def held_out_part(folder: PhotoFolder, held_out: float, seed: int = 0) -> PhotoFolder:
    """The photos `train --photos` with this held-out share and seed kept out of training (when the pipeline
    skipped none of the folder's photos): what a model adapted on the folder can be measured on."""
    _, held = _split_folders([name for name, _ in folder.files], held_out, seed)
    return PhotoFolder(folder.root, folder.class_names, folder.acceptable, [folder.files[i] for i in held])


def _split_folders(names: list[str], held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    folder_ids = np.unique(np.asarray(names), return_inverse=True)[1]
    held = int(round(held_out * len(folder_ids)))
    train, rest = _cut(folder_ids, (len(folder_ids) - held, held), np.random.default_rng(seed), True)
    return np.sort(train), np.sort(rest)
