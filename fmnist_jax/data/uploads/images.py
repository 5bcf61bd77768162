"""One uploaded image -> a fixed-size array like the training data.
"""
from __future__ import annotations

import io

import numpy as np

from fmnist_jax.data.uploads.limits import (
    COLORS,
    MAX_IMAGE_SIZE,
    MIN_IMAGE_SIZE,
    UploadError,
)

# ----------------------------------------------------------------------------- the image pipeline

# The Deploy page's photo pipeline (predict.preprocess_photo) in its plain-resize mode: what a model
# trained on an upload is given at prediction time, so training images go through exactly the same code.
PREPROCESS = {"mode": "resize"}


def prepare_image(payload: bytes, size: int, color: str) -> np.ndarray:
    """Image file bytes -> uint8 (size, size, 1|3) exactly as predict.preprocess_photo prepares a photo for this model.

    Raises predict.ImageError (a ValueError) with the pipeline's own message for unusable images.
    """
    from fmnist_jax.photos import pipeline

    _check_options(size, color)
    shape = (size, size, 1 if color == "gray" else 3)
    return pipeline.preprocess_photo(payload, PREPROCESS, shape).model_input


def _png_bytes(pixels: np.ndarray) -> bytes:
    """Lossless, fast PNG encoding of one uint8 (H, W, C) array, so arrays enter the same pipeline as files."""
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[pixels.shape[2]]
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(buffer, "PNG", compress_level=0)
    return buffer.getvalue()


def _check_options(image_size: int | None, color: str | None) -> None:
    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
                                   or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE):
        raise UploadError(f"image size must be a whole number from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE} pixels, "
                          f"got {image_size!r}")
    if color is not None and color not in COLORS:
        raise UploadError(f"colour must be 'gray' or 'rgb', got {color!r}")
