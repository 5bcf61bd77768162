"""Is a saliency map faithful? Three checks that need no human judge.

- Deletion: replace an image's k most salient pixels with the same pixels of its blurred copy and watch the
  explained class's probability. A faithful map makes it fall faster than k pixels drawn at random from the
  garment (pixels > 40) do. Blur, not 0: most of a Fashion-MNIST image is already 0, so blacking out the
  background would "delete" nothing. k counts a fraction of the image's own garment pixels, so the random
  draw always has enough of them and the two curves compare like with like.
- On the garment: the map's mean on garment pixels (> 40) is at least twice its mean on background (<= 10).
- Not the input: a map that merely copies the image's brightness (correlation >= 0.95) explains nothing.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from fmnist_jax.deploy.explain import blur_sigma, blurred

FRACTIONS = tuple(round(0.05 * k, 2) for k in range(1, 11))  # 5% ... 50% of the garment's pixels
GARMENT, BACKGROUND = 40, 10  # grey levels: above is garment, at or below is background
ON_GARMENT_RATIO = 2.0
MAX_CORRELATION = 0.95


def _grey(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, np.float32)
    return images.mean(axis=-1) if images.ndim == 4 else images


def blurred_copy(images: np.ndarray) -> np.ndarray:
    """The uint8 images (N, H, W, C) blurred as the integrated-gradients baseline is."""
    x = jnp.asarray(np.asarray(images, np.float32))
    return np.clip(np.rint(np.asarray(blurred(x, blur_sigma(images.shape[1:])))), 0, 255).astype(np.uint8)


def deletion_curves(model: Any, images: np.ndarray, maps: np.ndarray, classes: np.ndarray,
                    fractions: tuple = FRACTIONS, seed: int = 0) -> dict[str, list[float]]:
    """The explained class's mean probability after deleting k salient pixels ("salient") and k random garment
    pixels ("random"), for each fraction k of the garment; both start from the same images and classes."""
    images = np.asarray(images, np.uint8)
    grey, soft = _grey(images), blurred_copy(images)
    rng = np.random.default_rng(seed)
    height, width = grey.shape[1:]
    edited = {"salient": [], "random": []}
    for image, base, heat, shade in zip(images, soft, np.asarray(maps, np.float32), grey):
        garment = np.flatnonzero(shade.ravel() > GARMENT)
        if garment.size == 0:
            garment = np.arange(height * width)
        order = np.argsort(-heat.ravel(), kind="stable")
        draw = rng.permutation(garment)
        for fraction in fractions:
            k = max(1, int(round(fraction * garment.size)))
            for name, chosen in (("salient", order[:k]), ("random", draw[:k])):
                copy = image.reshape(height * width, -1).copy()
                copy[chosen] = base.reshape(height * width, -1)[chosen]
                edited[name].append(copy.reshape(image.shape))
    n, steps = len(images), len(fractions)
    curves = {}
    for name, stack in edited.items():
        probs = model.predict_proba(np.stack(stack)).reshape(n, steps, -1)
        curves[name] = [float(v) for v in probs[np.arange(n), :, np.asarray(classes)].mean(axis=0)] if n else []
    return curves


def on_garment(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Per image: is the map's mean on garment pixels at least ON_GARMENT_RATIO times its mean on background?"""
    grey, maps = _grey(images), np.asarray(maps, np.float32)
    result = []
    for shade, heat in zip(grey, maps):
        inside, outside = heat[shade > GARMENT], heat[shade <= BACKGROUND]
        high = inside.mean() if inside.size else 0.0
        low = outside.mean() if outside.size else 0.0
        result.append(bool(high > 0 and high >= ON_GARMENT_RATIO * low))
    return np.asarray(result, bool)


def correlation_with_input(images: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Per image: Pearson correlation of the map with the image's brightness (0 where either is flat)."""
    grey = _grey(images).reshape(len(images), -1)
    heat = np.asarray(maps, np.float32).reshape(len(images), -1)
    grey, heat = grey - grey.mean(1, keepdims=True), heat - heat.mean(1, keepdims=True)
    scale = np.sqrt((grey ** 2).sum(1) * (heat ** 2).sum(1))
    return np.where(scale > 0, (grey * heat).sum(1) / np.maximum(scale, 1e-12), 0.0)


def report(model: Any, images: np.ndarray, maps: np.ndarray, classes: np.ndarray, seed: int = 0) -> dict:
    """All three checks for one method's maps: the two curves, their areas (mean probability over the
    fractions; lower deletes faster), the share of maps on the garment and the worst and mean correlations."""
    curves = deletion_curves(model, images, maps, classes, seed=seed)
    correlation = correlation_with_input(images, maps)
    return {"fractions": list(FRACTIONS), "salient": curves["salient"], "random": curves["random"],
            "salient_area": float(np.mean(curves["salient"])), "random_area": float(np.mean(curves["random"])),
            "beats_random": bool(all(s < r for s, r in zip(curves["salient"], curves["random"]))),
            "on_garment": float(on_garment(images, maps).mean()),
            "correlation_mean": float(correlation.mean()), "correlation_max": float(correlation.max())}
