"""Small generated datasets in every upload format (3 classes, mixed image sizes and modes).

Each class has a distinct shape (horizontal bar, vertical bar, filled square) in a random colour on a
random background, so a tiny model can learn it in one epoch and any resize keeps it recognisable.
"""
from __future__ import annotations

import gzip
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("bars", "columns", "squares")
SIZES = ((20, 20), (40, 30), (64, 64), (33, 50), (28, 28))
MODES = ("L", "RGB", "RGBA", "P", "RGB")


def pattern(label: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB uint8 image of class `label`: dark background, a bright shape, a little noise."""
    background = rng.integers(0, 60, 3)
    foreground = rng.integers(180, 256, 3)
    image = np.empty((height, width, 3), np.uint8)
    image[...] = background
    if label == 0:
        image[height // 3: height // 3 + max(2, height // 4), :] = foreground
    elif label == 1:
        image[:, width // 3: width // 3 + max(2, width // 4)] = foreground
    else:
        image[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = foreground
    noise = rng.integers(-15, 16, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def pil_image(label: int, index: int, rng: np.random.Generator) -> Image.Image:
    """A class image at one of SIZES in one of MODES (cycling with `index`)."""
    width, height = SIZES[index % len(SIZES)]
    pixels = pattern(label, width, height, rng)
    mode = MODES[index % len(MODES)]
    image = Image.fromarray(pixels, "RGB")
    if mode == "L":
        return image.convert("L")
    if mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(255)
        return image
    if mode == "P":
        return image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return image


def encode(image: Image.Image, index: int) -> tuple[bytes, str]:
    """PNG or JPEG bytes (JPEG only for modes it supports) and the file suffix."""
    buffer = io.BytesIO()
    if index % 3 == 1 and image.mode in ("L", "RGB"):
        image.save(buffer, "JPEG", quality=92)
        return buffer.getvalue(), ".jpg"
    image.save(buffer, "PNG")
    return buffer.getvalue(), ".png"


def split_counts(per_class: dict[str, int]) -> dict[str, int]:
    """Total images per split for a per-class count."""
    return {part: count * len(CLASSES) for part, count in per_class.items()}


def folder_zip(path: Path, per_class: dict[str, int], seed: int = 0, root: str = "") -> Path:
    """A zip of <split>/<class>/<image> (or <class>/<image> when per_class has only 'train' and root='flat')."""
    rng = np.random.default_rng(seed)
    flat = list(per_class) == ["train"] and root == "flat"
    with zipfile.ZipFile(path, "w") as archive:
        for part, count in per_class.items():
            for label, name in enumerate(CLASSES):
                for i in range(count):
                    payload, suffix = encode(pil_image(label, i, rng), i)
                    folder = f"{name}" if flat else f"{part}/{name}"
                    archive.writestr(f"{folder}/{part}-{i}{suffix}", payload)
        archive.writestr("__MACOSX/._junk", b"junk")
    return path


def arrays(count_per_class: int, size: int = 28, channels: int = 1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, channels) uint8 images and int labels, classes interleaved."""
    rng = np.random.default_rng(seed)
    labels = np.tile(np.arange(len(CLASSES)), count_per_class)
    images = np.stack([pattern(int(label), size, size, rng) for label in labels])
    if channels == 1:
        images = np.asarray([np.asarray(Image.fromarray(im).convert("L")) for im in images])[..., None]
    return images, labels.astype(np.int64)


def kaggle_csv_text(images: np.ndarray, labels: np.ndarray) -> str:
    """label,pixel1,...,pixelN rows."""
    flat = images.reshape(len(images), -1)
    header = "label," + ",".join(f"pixel{i + 1}" for i in range(flat.shape[1]))
    return header + "\n" + "\n".join(f"{label}," + ",".join(map(str, row)) for label, row in zip(labels, flat)) + "\n"


def dls_zip(path: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """train.csv / test.csv with image paths and class-name labels, images under images/."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as archive:
        for part, count in per_class.items():
            rows = ["image,label"]
            for label, name in enumerate(CLASSES):
                for i in range(count):
                    payload, suffix = encode(pil_image(label, i, rng), i)
                    file_name = f"images/{part}_{name}_{i}{suffix}"
                    archive.writestr(file_name, payload)
                    rows.append(f"{file_name},{name}")
            archive.writestr(f"{part}.csv", "\n".join(rows) + "\n")
    return path


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding of a uint8 array (images (N,H,W) or labels (N,))."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def idx_files(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
              gz: bool = True) -> Path:
    """Write the four IDX files (gzipped like Zalando's, or raw) into a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        for kind, array in (("images-idx3", images[..., 0]), ("labels-idx1", labels)):
            payload = idx_bytes(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(payload))
            else:
                (folder / name).write_bytes(payload)
    return folder
