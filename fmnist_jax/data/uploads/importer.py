"""Import an upload: detect its format, convert it once, cache it as a dataset under the workspace.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from fmnist_jax import settings, store
from fmnist_jax.data import catalogue, splitting
from fmnist_jax.data.uploads.arrays import _check_classes
from fmnist_jax.data.uploads.csv_format import _parse_csv
from fmnist_jax.data.uploads.folders import _parse_folders
from fmnist_jax.data.uploads.formats import _parse_idx, _parse_npz
from fmnist_jax.data.uploads.images import PREPROCESS, _check_options
from fmnist_jax.data.uploads.limits import (
    IDX_NAME,
    IMAGE_SUFFIXES,
    MAX_SKIPPED_LISTED,
    MIB,
    Progress,
    UploadError,
    UploadLimits,
    _size,
    browser_limits,
    limits_for_mode,
)
from fmnist_jax.data.uploads.sources import Member, _useful, open_source

# ----------------------------------------------------------------------------- detection and import

def detect_format(members: list[Member]) -> str:
    """'idx', 'npz', 'csv' or 'folders' from the upload's file names (UploadError if none fits)."""
    names = [m.name.lower() for m in members]
    if any(IDX_NAME.search(n.rsplit("/", 1)[-1]) for n in names):
        return "idx"
    if any(n.endswith(".npz") for n in names) or any(n.rsplit("/", 1)[-1] in ("x_train.npy", "train_images.npy") for n in names):
        return "npz"
    if any(n.endswith(".csv") for n in names):
        return "csv"
    if any(n.endswith(IMAGE_SUFFIXES) for n in names):
        return "folders"
    if not names:
        raise UploadError("the upload holds no files")
    raise UploadError(f"cannot tell the dataset format from files like {', '.join(n[:60] for n in names[:3])}; "
                      f"use class folders of images, a CSV, an .npz or IDX files")


FORMAT_LABELS = {"idx": "IDX files", "npz": "NumPy .npz", "csv": "CSV of labels and pixels (Kaggle)",
                 "folders": "class folders of images"}
PARSERS = {"idx": _parse_idx, "npz": _parse_npz, "csv": _parse_csv, "folders": _parse_folders}


def source_digest(path: Path) -> str:
    """SHA-256 of an upload (a file's bytes, or a folder's relative paths and bytes)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(MIB), b""):
                digest.update(block)
    return digest.hexdigest()


def upload_id(path: Path, digest: str, image_size: int | None, color: str | None) -> str:
    """A stable, path-safe id: the file's name as a slug plus a hash of its bytes and the chosen options."""
    stem = path.name.split(".")[0] if path.is_file() else path.name
    options = hashlib.sha256(f"{digest}:{image_size or 'auto'}:{color or 'auto'}".encode()).hexdigest()[:12]
    return f"{store.slugify(stem)[:30]}-{options}"


def _datasets_dir(home: str | os.PathLike | None) -> Path:
    return settings.home_dir(home) / "datasets"


def import_upload(path: str | os.PathLike, image_size: int | None = None, color: str | None = None,
                  progress: Progress | None = None, limits: UploadLimits | None = None,
                  home: str | os.PathLike | None = None, display_name: str | None = None) -> dict:
    """Convert an upload once into the workspace (arrays + manifest); returns the manifest (cached after the first time)."""
    progress = progress or (lambda fraction, message: None)
    limits = limits or limits_for_mode()
    _check_options(image_size, color)
    path = Path(path)
    source = open_source(path, limits)  # size, count, ratio and path checks: nothing is read yet
    try:
        progress(0.02, "hashing the upload")
        digest = source_digest(path)
        identifier = upload_id(path, digest, image_size, color)
        name = f"upload/{identifier}"
        final = _datasets_dir(home) / name.replace("/", "__")
        if (final / "manifest.json").exists():
            try:
                manifest = store.read_json(final / "manifest.json")
                progress(1.0, "already converted")
                return manifest
            except store.StoreError:
                shutil.rmtree(final, ignore_errors=True)  # a damaged earlier import: convert again
        started = time.perf_counter()
        members = _useful(source.members)
        kind = detect_format(members)
        progress(0.05, f"reading {FORMAT_LABELS[kind]}")
        parts = PARSERS[kind](source, members, image_size, color, limits, progress)
    finally:
        source.close()
    _check_classes(parts.train[1], parts.class_names, "the training data")
    empty_test = np.zeros((0,) + parts.train[0].shape[1:], np.uint8), np.zeros(0, np.int32)
    test = parts.test or empty_test
    dataset = catalogue.Dataset(name, parts.train[0], parts.train[1], test[0], test[1], parts.class_names,
                           *(parts.val or (None, None)))
    manifest = {
        "id": identifier, "name": name, "display_name": display_name or path.name, "format": parts.format or FORMAT_LABELS[kind],
        "source": {"file": path.name, "sha256": digest, "bytes": _total_bytes(path)},
        "image_size": parts.image_size, "color": parts.color, "input_shape": list(dataset.input_shape),
        "class_names": list(parts.class_names), "num_classes": len(parts.class_names),
        "counts": {"train": len(parts.train[1]), "validation": len(parts.val[1]) if parts.val else None,
                   "test": len(test[1])},
        "class_counts": {part: np.bincount(labels, minlength=len(parts.class_names)).tolist()
                         for part, labels in (("train", parts.train[1]), ("validation", (parts.val or (None, None))[1]),
                                              ("test", test[1])) if labels is not None},
        "preprocess": dict(PREPROCESS),
        "skipped_count": len(parts.skipped), "skipped": parts.skipped[:MAX_SKIPPED_LISTED],
        "arrays": {key: splitting.array_digest(getattr(dataset, key)) for key in catalogue.ARRAY_KEYS + catalogue.VAL_KEYS
                   if getattr(dataset, key) is not None},
        "created": time.time(), "seconds": round(time.perf_counter() - started, 3),
        "limits": limits.to_dict(),
    }
    if parts.train_files is not None:  # which file each training row came from (the label check names them)
        manifest["train_files"] = parts.train_files
    progress(0.96, "saving arrays")
    _save_atomically(dataset, manifest, final)
    catalogue.forget_shared(name, home)
    progress(1.0, f"converted {manifest['counts']['train']:,} training images of {len(parts.class_names)} classes")
    return store.read_json(final / "manifest.json")


def _total_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _save_atomically(dataset: catalogue.Dataset, manifest: dict, final: Path) -> None:
    """Write into a staging folder, then rename it into place: an import is all there or not there at all."""
    staging = final.with_name(f".staging-{final.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        catalogue.save_cached(dataset, folder=staging)
        store.atomic_write_json(staging / "manifest.json", manifest)
        try:
            os.replace(staging, final)
        except OSError:
            if not (final / "manifest.json").exists():  # not a lost race with an identical import
                raise
    except OSError as error:
        raise store.StoreError(f"cannot save the converted dataset in {final.parent}: "
                               f"{error.strerror or error} (is the workspace read-only or full?)") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_upload(path: str | os.PathLike, image_size: int | None = None, color: str | None = None,
                progress: Progress | None = None, limits: UploadLimits | None = None,
                home: str | os.PathLike | None = None) -> catalogue.Dataset:
    """Import an upload (once) and load it from the workspace cache as "upload/<id>"."""
    manifest = import_upload(path, image_size, color, progress, limits, home)
    return catalogue.load_dataset(manifest["name"], home=home)


def import_stream(stream: IO[bytes], filename: str, image_size: int | None = None, color: str | None = None,
                  progress: Progress | None = None, limits: UploadLimits | None = None,
                  home: str | os.PathLike | None = None) -> dict:
    """import_upload for an uploaded file object (Streamlit, REST): copied to a temp file under the browser
    upload limit, then removed."""
    limits = limits or browser_limits()
    safe_name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(filename)).name)[-80:].lstrip(".") or "upload"
    folder = _datasets_dir(home) / ".incoming"
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f"{os.getpid()}-{time.monotonic_ns()}-{safe_name}"
    try:
        written = 0
        with open(temp, "wb") as out:
            for block in iter(lambda: stream.read(MIB), b""):
                written += len(block)
                if written > limits.max_archive_bytes:
                    raise UploadError(f"{safe_name} is larger than the upload limit of {_size(limits.max_archive_bytes)}")
                out.write(block)
        return import_upload(temp, image_size, color, progress, limits, home, display_name=str(filename)[:200])
    except OSError as error:
        raise store.StoreError(f"cannot store the upload: {error.strerror or error} (is the workspace full?)") from None
    finally:
        temp.unlink(missing_ok=True)


def import_files(files: list[tuple[str, bytes]], display_name: str, image_size: int | None = None,
                 color: str | None = None, progress: Progress | None = None, limits: UploadLimits | None = None,
                 home: str | os.PathLike | None = None) -> dict:
    """import_upload for a folder sent as files (a browser's folder upload, where each name is the file's path
    inside the folder): packed into a zip under the browser upload limit, checked and imported like any zip."""
    limits = limits or browser_limits()
    members = [(_member_name(name), data) for name, data in files]
    members = [(name, data) for name, data in members if name]
    if not members:
        raise UploadError("the folder has no files; choose a folder with one subfolder of images per class")
    total = sum(len(data) for _, data in members)
    if total > limits.max_archive_bytes:
        raise UploadError(f"the folder holds {_size(total)}; the upload limit is {_size(limits.max_archive_bytes)}")
    folder = _datasets_dir(home) / ".incoming"
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f"{os.getpid()}-{time.monotonic_ns()}-folder.zip"
    try:
        with zipfile.ZipFile(temp, "w", zipfile.ZIP_STORED) as archive:
            for name, data in members:
                archive.writestr(name, data)
        return import_upload(temp, image_size, color, progress, limits, home, display_name=str(display_name)[:200])
    except OSError as error:
        raise store.StoreError(f"cannot store the upload: {error.strerror or error} (is the workspace full?)") from None
    finally:
        temp.unlink(missing_ok=True)


def _member_name(name: str) -> str:
    """A browser-reported path as a zip member name: forward slashes, no empty, '.' or '..' parts."""
    return "/".join(part for part in str(name).replace("\\", "/").split("/") if part not in ("", ".", ".."))


def list_uploads(home: str | os.PathLike | None = None) -> list[dict]:
    """Manifests of the uploaded datasets in a workspace, newest first."""
    out = []
    for folder in sorted(_datasets_dir(home).glob("upload__*")):
        try:
            out.append(store.read_json(folder / "manifest.json"))
        except store.StoreError:
            continue
    return sorted(out, key=lambda m: m.get("created", 0), reverse=True)


def read_manifest(name: str, home: str | os.PathLike | None = None) -> dict:
    """The manifest of "upload/<id>" (or a bare id); StoreError if it is not in the workspace."""
    identifier = name[len("upload/"):] if name.startswith("upload/") else name
    folder = store.safe_child(_datasets_dir(home), f"upload__{identifier}")
    return store.read_json(folder / "manifest.json")


def preprocess_settings(dataset_name: str, home: str | os.PathLike | None = None) -> dict | None:
    """The prediction-time photo settings of an uploaded dataset, or None for TFDS datasets."""
    if not dataset_name.startswith("upload/"):
        return None
    return read_manifest(dataset_name, home).get("preprocess")


def delete_upload(name: str, home: str | os.PathLike | None = None) -> None:
    """Remove an uploaded dataset from the workspace."""
    identifier = name[len("upload/"):] if name.startswith("upload/") else name
    folder = store.safe_child(_datasets_dir(home), f"upload__{identifier}")
    trash = folder.with_name(f".deleted-{folder.name}-{time.monotonic_ns()}")
    try:
        os.replace(folder, trash)
    except FileNotFoundError:
        raise store.StoreError(f"uploaded dataset {identifier!r} does not exist") from None
    shutil.rmtree(trash, ignore_errors=True)
    catalogue.forget_shared(f"upload/{identifier}", home)
