"""Why a prediction was made: saliency maps over the model's input.

- Grad-CAM (conv stacks): the last convolution block's feature maps, weighted by how much the predicted
  class's logit grows with each channel (its gradient averaged over the map), summed, kept where positive,
  and resized to the input: where the evidence for the answer sits.
- Occlusion (any model): a blank patch slid over the input; the drop in the predicted class's probability
  where it covers the image is how much that region mattered.

Both are jit-compiled per model and batch size; a map is float32 (H, W) in [0, 1], 1 = most important.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmnist_jax.model import layers
from fmnist_jax.training.members import member_weights

METHODS = ("gradcam", "occlusion")
# Layers that only transform a convolution's output in place; Grad-CAM reads the block after them.
_SAME_BLOCK = ("batchnorm", "activation", "dropout")


def gradcam_layer(spec: list[dict]) -> int | None:
    """Index of the layer whose output Grad-CAM reads: the last convolution (or residual block), or the
    normalisation and activation right after it; None when the model has no convolution (use occlusion)."""
    convs = [i for i, layer in enumerate(spec) if layer["type"] in ("conv2d", "residual")]
    if not convs:
        return None
    cut = convs[-1]
    while cut + 1 < len(spec) and spec[cut + 1]["type"] in _SAME_BLOCK:
        cut += 1
    return cut


def default_method(model: Any) -> str:
    """Grad-CAM where the model has a convolution, occlusion otherwise."""
    return "gradcam" if gradcam_layer(model.spec) is not None else "occlusion"


def _network(model: Any, weights: dict) -> Any:
    return nnx.merge(model.graphdef, jax.tree.map(lambda v: v, weights["params"]),
                     jax.tree.map(lambda v: v, weights["batch_stats"]))


def _gradcam_fn(model: Any) -> Any:
    cut = gradcam_layer(model.spec)
    ctx = layers.Context(train=False)
    height, width = model.input_shape[:2]

    def run(weights: dict, images: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
        net = _network(model, weights)
        x = images.astype(jnp.float32) / 255.0
        for layer in net.layers[:cut + 1]:
            x = layer(x, ctx)
        features = x

        def top_logit(maps: jax.Array) -> tuple[jax.Array, jax.Array]:
            y = maps
            for layer in net.layers[cut + 1:]:
                y = layer(y, ctx)
            logits = y.astype(jnp.float32)
            chosen = jnp.where(target >= 0, target, jnp.argmax(logits, axis=-1))  # given, or the top class
            return jnp.take_along_axis(logits, chosen[:, None], axis=1).sum(), chosen

        grads, chosen = jax.grad(top_logit, has_aux=True)(features)
        channel_weights = grads.mean(axis=(1, 2), keepdims=True)
        cam = jax.nn.relu((channel_weights * features).sum(axis=-1))
        cam = jax.image.resize(cam, (cam.shape[0], height, width), method="bilinear")
        return _normalise(cam), chosen

    return jax.jit(run)


def _occlusion_fn(model: Any, patch: int, stride: int) -> Any:
    height, width, _ = model.input_shape
    rows = list(range(0, height - patch + 1, stride)) or [0]
    cols = list(range(0, width - patch + 1, stride)) or [0]
    positions = [(r, c) for r in rows for c in cols]
    masks = np.ones((len(positions), height, width, 1), np.float32)
    for k, (r, c) in enumerate(positions):
        masks[k, r:r + patch, c:c + patch] = 0.0  # blank: the background of a Fashion-MNIST image
    masks = jnp.asarray(masks)
    ctx = layers.Context(train=False)

    def probs_of(net: Any, x: jax.Array) -> jax.Array:
        return jax.nn.softmax(net(x, ctx).astype(jnp.float32), axis=-1)

    def one(net: Any, image: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = image.astype(jnp.float32) / 255.0
        base = probs_of(net, x[None])[0]
        chosen = jnp.where(target >= 0, target, jnp.argmax(base))  # given, or the top class
        covered = probs_of(net, x[None] * masks)[:, chosen]  # one forward pass for every patch position
        drop = jax.nn.relu(base[chosen] - covered)
        heat = (drop[:, None, None] * (1.0 - masks[..., 0])).sum(0)
        counts = (1.0 - masks[..., 0]).sum(0)
        return heat / jnp.maximum(counts, 1.0), chosen

    def run(weights: dict, images: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
        net = _network(model, weights)
        heat, chosen = jax.lax.map(lambda pair: one(net, *pair), (images, target))
        return _normalise(heat), chosen

    return jax.jit(run)


def _normalise(maps: jax.Array) -> jax.Array:
    low = maps.min(axis=(1, 2), keepdims=True)
    high = maps.max(axis=(1, 2), keepdims=True)
    return jnp.where(high - low > 1e-12, (maps - low) / jnp.maximum(high - low, 1e-12), 0.0)


def explain(model: Any, images: np.ndarray, method: str | None = None,
            classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Saliency maps (N, H, W) float32 in [0, 1] for uint8 model inputs (N, H, W, C), and the explained class of
    each: the predicted one, or `classes` (one per image) when given. ValueError for an unknown method, a class
    out of range, or Grad-CAM on a model without convolutions."""
    method = method or default_method(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "gradcam" and gradcam_layer(model.spec) is None:
        raise ValueError("Grad-CAM needs a convolution layer and this model has none; use --method occlusion")
    cache = model.__dict__.setdefault("_explainers", {})
    if method not in cache:
        side = max(model.input_shape[:2])
        cache[method] = _gradcam_fn(model) if method == "gradcam" else _occlusion_fn(model, max(2, side // 7),
                                                                                     max(1, side // 14))
    images = jnp.asarray(np.asarray(images, np.uint8))
    if classes is not None:
        classes = np.asarray(classes, np.int64).reshape(-1)
        if classes.shape != (images.shape[0],) or classes.min(initial=0) < 0 or classes.max(initial=0) >= model.num_classes:
            raise ValueError(f"classes must be one class index from 0 to {model.num_classes - 1} per image")
    if model.members == 1:
        target = jnp.asarray(classes if classes is not None else np.full(images.shape[0], -1), jnp.int32)
        maps, chosen = cache[method](model.weights, images, target)
        return np.asarray(maps, np.float32), np.asarray(chosen)
    # An ensemble: each member's map of the ensemble's predicted class (the members share the layers, so one
    # compiled explainer), averaged over the members and normalised again.
    chosen = classes if classes is not None else np.asarray(model.predict_logits(np.asarray(images))).argmax(axis=-1)
    target = jnp.asarray(chosen, jnp.int32)
    parts = [cache[method](member_weights(model.weights, k), images, target)[0] for k in range(model.members)]
    return np.asarray(_normalise(sum(parts) / len(parts)), np.float32), chosen


def heatmap_png(saliency: np.ndarray) -> np.ndarray:
    """The map as a grayscale uint8 image (white = most important), at the model input's size."""
    return np.clip(np.rint(np.asarray(saliency) * 255.0), 0, 255).astype(np.uint8)


def overlay(image: np.ndarray, saliency: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """RGB uint8: the model input in grey under the map in warm colours (for the UI; the CLI writes the map)."""
    grey = np.asarray(image, np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    heat = np.asarray(saliency, np.float32)
    colour = np.stack([np.clip(2.0 * heat, 0, 1), np.clip(2.0 * heat - 0.6, 0, 1), np.zeros_like(heat)], axis=-1)
    base = np.repeat((grey / 255.0)[..., None], 3, axis=-1) * (1.0 - strength * heat[..., None])
    return np.clip(np.rint((base + strength * heat[..., None] * colour) * 255.0), 0, 255).astype(np.uint8)
