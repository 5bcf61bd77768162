"""Real photo -> model input like the training data (the one path every prediction takes).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from fmnist_jax.photos.decode import ImageError, PhotoResult, _open, decode_image
from fmnist_jax.photos.grabcut import grabcut_photo
from fmnist_jax.photos.pipeline_params import resolve_preprocess
from fmnist_jax.photos.segment import (
    _background,
    _border_ring,
    _channels,
    _features,
    _garment_mask,
    _luma,
    _place,
    _shadow_free,
    _to_uint8,
)

# ----------------------------------------------------------------------------- the pipeline

def _flatten_alpha(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Flatten transparency onto the background a product photo would have: white, or black under a light garment."""
    opaque = alpha >= 0.5
    light_garment = opaque.any() and float(_luma(rgb)[opaque].mean()) > 0.6
    backdrop = 0.0 if light_garment else 1.0
    return rgb * alpha[..., None] + backdrop * (1.0 - alpha[..., None])


def _garment_values(luma: np.ndarray, mask: np.ndarray, background_luma: np.ndarray, light_background: bool,
                    params: dict) -> tuple[np.ndarray, bool]:
    """Garment brightness in [0, 1] on black (the dataset's look), and whether the photo was negated."""
    # Negate on a light background, and for a garment darker than a dark one (black shoes on a dark floor).
    inverted = light_background or float(np.median(luma[mask] - background_luma[mask])) < 0
    if inverted:
        # A product photo on white, negated: darkness relative to the local background brightness (flat-field).
        white = np.maximum(background_luma, np.percentile(luma[mask], 99) if mask.any() else 1.0)
        values = 1.0 - luma / np.maximum(white, 0.05)
    else:
        # Already garment-bright-on-dark: brightness above the background.
        values = (luma - background_luma) / np.maximum(1.0 - background_luma, 0.05)
    values = np.clip(values, 0.0, 1.0)
    garment = values[mask]
    reference = np.percentile(garment, params["stretch_percentile"]) if garment.size else 1.0
    values = np.clip(values / max(float(reference), 1.0 / params["max_gain"]), 0.0, 1.0)
    return np.where(mask, np.maximum(values, params["fill"]), 0.0), inverted


def preprocess_photo(data: bytes, params: dict | None = None, input_shape: tuple[int, ...] = (28, 28, 1)) -> PhotoResult:
    """Turn uploaded image bytes into the model's input, with every intermediate step; ImageError if unusable."""
    params = resolve_preprocess(params, tuple(input_shape))
    canvas_h, canvas_w, channels = (int(v) for v in input_shape)
    rgb, alpha = decode_image(data, params["work_size"])
    notes: list[str] = []
    if alpha is not None:
        rgb = _flatten_alpha(rgb, alpha)
    original = _to_uint8(rgb)
    steps: list[tuple[str, np.ndarray]] = [("original", original)]
    luma = _luma(rgb)
    if params["mode"] == "resize":
        resized = np.asarray(Image.fromarray(original).resize((canvas_w, canvas_h), Image.Resampling.LANCZOS))
        model_input = _channels(resized, channels)
        steps.append(("model input", model_input[..., 0] if channels == 1 else model_input))
        return PhotoResult(model_input, steps, {"mode": "resize", "notes": notes})
    if np.ptp(luma) < 0.02 and np.ptp(rgb, axis=(0, 1)).max() < 0.02:
        raise ImageError("the image is a single flat colour with nothing to recognise; upload a photo of a garment")

    ring = _border_ring(luma.shape, params["border"])
    border_luma = float(np.median(luma[ring]))
    if (luma.shape == (canvas_h, canvas_w) and border_luma < 0.1 and alpha is None):
        # Already in the dataset's format (model-sized, dark background, e.g. a Fashion-MNIST test PNG): used as is.
        model_input = _channels(original, channels)
        steps.append(("model input", model_input[..., 0] if channels == 1 else model_input))
        return PhotoResult(model_input, steps, {"mode": "garment", "passthrough": True, "inverted": False, "notes": notes})

    if params["mode"] == "grabcut":
        return grabcut_photo(rgb, original, params, (canvas_h, canvas_w), channels, notes)
    features = _features(rgb, params["chroma_weight"])
    background, inliers = _background(features, ring)
    background_luma = background[..., 0]
    light_background = float(np.median(background_luma[ring])) >= params["dark_background"]
    shadow_free = _shadow_free(features, background, params) if light_background and params["shadow"] else None
    mask = _garment_mask(features, background, inliers, params, alpha, notes, shadow_free)
    values, inverted = _garment_values(luma, mask, background_luma, light_background, params)

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    cropped = values[top:bottom, left:right]
    canvas = _place(cropped, (canvas_h, canvas_w), params)
    model_gray = _to_uint8(canvas)
    removed = np.where(mask[..., None], original, np.uint8(255 if inverted else 0))
    steps += [("background removed", removed), ("cropped", _to_uint8(cropped)), ("model input", model_gray)]
    model_input = np.repeat(model_gray[..., None], channels, axis=2)
    info = {"mode": "garment", "passthrough": False, "inverted": inverted,
            "background": [round(float(v), 4) for v in np.median(rgb[inliers], axis=0)] if inliers.any() else None,
            "crop_box": [left, top, right, bottom], "work_size": [int(luma.shape[1]), int(luma.shape[0])],
            "garment_fraction": round(float(mask.mean()), 4), "notes": notes}
    return PhotoResult(model_input, steps, info)


def naive_input(data: bytes, input_shape: tuple[int, ...] = (28, 28, 1)) -> np.ndarray:
    """The baseline the pipeline is measured against: grayscale and squash to the input size, nothing else."""
    image = _open(data)
    image.load()
    gray = image.convert("RGB").convert("L").resize((int(input_shape[1]), int(input_shape[0])), Image.Resampling.BILINEAR)
    return _channels(np.asarray(gray), int(input_shape[2]))
