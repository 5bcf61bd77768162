"""Labels and arrays of an upload: class lists, label indices, shape checks and conversion.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from fmnist_jax import store
from fmnist_jax.data.uploads.images import _png_bytes, prepare_image
from fmnist_jax.data.uploads.limits import (
    CLASS_LIST_FILES,
    DEFAULT_IMAGE_SIZE,
    MAX_CLASSES,
    MIN_CLASSES,
    MIN_IMAGE_SIZE,
    Progress,
    UploadError,
    UploadLimits,
    _size,
)
from fmnist_jax.data.uploads.sources import Member, Source

# ----------------------------------------------------------------------------- labels and arrays

def _class_list(source: Source, members: list[Member]) -> tuple[str, ...] | None:
    """Class names from a classes.txt (one per line), the one nearest the upload's root, if there is one."""
    for member in sorted(members, key=lambda m: m.name.count("/")):
        if member.name.rsplit("/", 1)[-1].lower() in CLASS_LIST_FILES:
            text = source.read(member).decode("utf-8", errors="replace")
            return tuple(_clean_class(line.strip(), member.name) for line in text.splitlines() if line.strip())
    return None


def _clean_class(name: str, where: str) -> str:
    try:
        return store.clean_name(name, f"class name {name[:40]!r} in {where}")
    except ValueError as error:
        raise UploadError(str(error)) from None


def _labels_to_indices(labels: list[str] | np.ndarray, where: str, names: tuple[str, ...] | None,
                       known: tuple[str, ...] | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels (whole numbers 0..K-1, or class-name strings) -> int32 indices and the class names."""
    values = [str(v).strip() for v in labels]
    numeric = all(re.fullmatch(r"[+-]?\d+(\.0*)?", v) for v in values)
    if not numeric and all(_is_number(v) for v in values):
        row = next(i for i, v in enumerate(values) if not re.fullmatch(r"[+-]?\d+(\.0*)?", v))
        raise UploadError(f"{where}: label {values[row]!r} in row {row + 1} is not a whole number; "
                          f"labels are class numbers 0, 1, 2, ... or class names")
    if known is not None and not numeric:
        index = {name: i for i, name in enumerate(known)}
        unknown = sorted({v for v in values if v not in index})
        if unknown:
            raise UploadError(f"{where} has labels {', '.join(map(repr, unknown[:5]))} that the training data lacks")
        return np.array([index[v] for v in values], np.int32), known
    if numeric:
        ints = np.array([int(float(v)) for v in values], np.int64)
        if len(ints) and ints.min() < 0:
            row = int(np.argmin(ints))
            raise UploadError(f"{where}: label {ints[row]} in row {row + 1} is negative; labels must be 0, 1, 2, ...")
        names = names or known
        count = len(names) if names else (int(ints.max()) + 1 if len(ints) else 0)
        if len(ints) and ints.max() >= count:
            row = int(np.argmax(ints))
            raise UploadError(f"{where}: label {ints[row]} in row {row + 1} is out of range; "
                              f"there are {count} class names, so labels must be 0 to {count - 1}")
        if count > MAX_CLASSES:
            raise UploadError(f"{where}: labels go up to {count - 1}, that is {count} classes; the limit is {MAX_CLASSES}")
        return ints.astype(np.int32), names or tuple(str(i) for i in range(count))
    for v in values:
        if not v:
            raise UploadError(f"{where} has an empty label; every row needs a class")
    classes = tuple(sorted(set(values)))
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[v] for v in values], np.int32), tuple(_clean_class(c, where) for c in classes)


def _check_classes(labels: np.ndarray, names: tuple[str, ...], where: str) -> None:
    """At least two classes, at most MAX_CLASSES, none without training examples."""
    if len(names) < MIN_CLASSES:
        raise UploadError(f"{where} has {len(names)} class ({', '.join(names) or 'none'}); "
                          f"a classifier needs at least {MIN_CLASSES} classes")
    if len(names) > MAX_CLASSES:
        raise UploadError(f"{where} has {len(names)} classes; the limit is {MAX_CLASSES}")
    counts = np.bincount(labels, minlength=len(names))
    empty = [names[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise UploadError(f"class {empty[0]!r} has no training images{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}; "
                          f"add images or remove the class")


def _as_image_array(array: np.ndarray, where: str) -> np.ndarray:
    """(N,H,W), (N,H,W,C) or (N,C,H,W) numbers -> uint8 (N,H,W,C); floats in 0-1 are scaled to 0-255."""
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim == 4 and array.shape[1] in (1, 3) and array.shape[3] not in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)  # channels-first (PyTorch style)
    if array.ndim != 4 or array.shape[3] not in (1, 3, 4) or min(array.shape[1:3], default=0) < 1:
        raise UploadError(f"{where} has shape {array.shape}; images must be (count, height, width) or "
                          f"(count, height, width, 1|3|4 channels)")
    if len(array) == 0:
        raise UploadError(f"{where} holds no images")
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if not np.issubdtype(array.dtype, np.number):
        raise UploadError(f"{where} holds {array.dtype} values; images must be numbers")
    values = np.asarray(array, dtype=np.float64)
    if not np.isfinite(values).all():
        raise UploadError(f"{where} contains NaN or infinite pixel values")
    low, high = values.min(), values.max()
    if low < 0 or high > 255:
        raise UploadError(f"{where} has pixel values from {low:g} to {high:g}; they must lie in 0-255 (or 0-1)")
    if np.issubdtype(array.dtype, np.floating) and high <= 1.0:
        values = values * 255.0
    return np.round(values).astype(np.uint8)


def _convert_arrays(images: np.ndarray, size: int, color: str, progress: Progress, start: float, end: float,
                    part: str) -> np.ndarray:
    """Arrays already at the target size and colour pass through; others go through prepare_image one by one."""
    channels = 1 if color == "gray" else 3
    if images.shape[1:] == (size, size, channels):
        return np.ascontiguousarray(images)
    out = np.empty((len(images), size, size, channels), np.uint8)
    step = max(1, len(images) // 50)
    for i, pixels in enumerate(images):
        try:
            out[i] = prepare_image(_png_bytes(pixels), size, color)
        except ValueError as error:
            raise UploadError(f"{part} image {i + 1}: {error}") from None
        if i % step == 0:
            progress(start + (end - start) * i / len(images), f"converting {part} images {i:,}/{len(images):,}")
    return out


@dataclass
class Parts:
    """Converted arrays of each split the upload provides, before class checks."""

    train: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None
    test: tuple[np.ndarray, np.ndarray] | None
    class_names: tuple[str, ...]
    image_size: int
    color: str
    skipped: list[dict]
    format: str = ""
    train_files: list[str] | None = None  # image uploads: the file of each training row, in row order


def _default_options(shapes: list[tuple[int, ...]], image_size: int | None, color: str | None,
                     channels: list[int]) -> tuple[int, str]:
    """Same-size square images up to 64 px keep their size, others get DEFAULT_IMAGE_SIZE; colour follows the data."""
    if image_size is None:
        sizes = {tuple(s[:2]) for s in shapes}
        only = next(iter(sizes)) if len(sizes) == 1 else None
        image_size = only[0] if only and only[0] == only[1] and MIN_IMAGE_SIZE <= only[0] <= 64 else DEFAULT_IMAGE_SIZE
    if color is None:
        color = "gray" if all(c == 1 for c in channels) else "rgb"
    return int(image_size), color


def _check_pixels(count: int, height: int, width: int, where: str, limits: UploadLimits) -> None:
    total = count * height * width
    if total > limits.max_total_pixels:
        raise UploadError(f"{where} declares {count:,} images of {width}x{height}, {total / 1e9:,.1f} gigapixels; "
                          f"the limit is {limits.max_total_pixels / 1e9:,.1f}")


def _check_output(count: int, size: int, color: str, limits: UploadLimits) -> None:
    total = count * size * size * (1 if color == "gray" else 3)
    if total > limits.max_output_bytes:
        raise UploadError(f"{count:,} images at {size}x{size} {color} would take {_size(total)}; the limit is "
                          f"{_size(limits.max_output_bytes)}: choose a smaller image size or grayscale")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
