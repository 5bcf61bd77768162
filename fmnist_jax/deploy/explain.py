"""Why a prediction was made: saliency maps over the model's input.

- Grad-CAM (conv stacks): the last convolution block's feature maps, weighted by how much the predicted
  class's logit grows with each channel (its gradient averaged over the map), summed, kept where positive,
  and resized to the input: where the evidence for the answer sits.
- HiResCAM (conv stacks): the same feature maps times their gradient element by element, before summing over
  channels. Grad-CAM's channel average throws away where in the map each channel's gradient is large, which is
  exactly what a flatten + dense head encodes; HiResCAM keeps it, and is provably the head's own attribution.
- Gradient x input, integrated gradients (any differentiable model): attributions on the input pixels.
  Integrated gradients averages the gradient along straight paths to the image from two baselines, black and
  a blurred copy (8 midpoint steps each), times the distance travelled. Black alone credits only bright pixels
  and misses fine detail; blur alone asks exactly the deletion test's question but also credits the dark
  background just outside the silhouette (the model wants it dark), so its maps sat on the garment for only
  a third of test images. The pair keeps both halves: it deletes fastest of the methods whose maps stay on
  the garment.
- Occlusion (any model): a blank patch slid over the input; the drop in the predicted class's probability
  where it covers the image is how much that region mattered.

All are jit-compiled per model and batch size; a map is float32 (H, W) in [0, 1], 1 = most important. The
default is the method that won the deletion test on the demo model (`bench/explanations.py`, numbers in
bench/NOTES.md "Faithful explanations"); `faithfulness.py` holds that test.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fmnist_jax.model import layers
from fmnist_jax.training.members import member_weights

METHODS = ("integrated", "hirescam", "gradinput", "gradcam", "occlusion")
TITLES = {"integrated": "integrated gradients", "hirescam": "HiResCAM", "gradinput": "gradient x input",
          "gradcam": "Grad-CAM", "occlusion": "occlusion"}
BEST = "integrated"  # the deletion test's winner on the demo model; works for any differentiable model
IG_STEPS = 8  # per baseline: 16 gradients per image, ~9 ms on one CPU core; 16 steps changed the test by 0.002
NEEDS_CONV = ("gradcam", "hirescam")
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
    """The deletion test's winner, which every model can use (its input gradients exist for any layer stack)."""
    return BEST


def blur_sigma(input_shape: tuple) -> float:
    """The Gaussian blur of the baseline and of the deletion test: about a tenth of the image's side (2.8 px at
    28), enough to wash out a seam or a strap while keeping the garment's rough shape."""
    return max(1.0, max(input_shape[:2]) / 10.0)


def blurred(images: jax.Array, sigma: float) -> jax.Array:
    """A separable Gaussian blur of float images (N, H, W, C), edges padded by reflection."""
    radius = max(1, int(3 * sigma))
    taps = jnp.exp(-0.5 * (jnp.arange(-radius, radius + 1, dtype=jnp.float32) / sigma) ** 2)
    taps = taps / taps.sum()
    x = jnp.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    x = sum(taps[k] * x[:, k:k + height] for k in range(2 * radius + 1))
    return sum(taps[k] * x[:, :, k:k + width] for k in range(2 * radius + 1))


def _network(model: Any, weights: dict) -> Any:
    return nnx.merge(model.graphdef, jax.tree.map(lambda v: v, weights["params"]),
                     jax.tree.map(lambda v: v, weights["batch_stats"]))


def _chosen_logit(logits: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The summed logit of each image's target class (given, or the top one when the target is -1)."""
    chosen = jnp.where(target >= 0, target, jnp.argmax(logits, axis=-1))
    return jnp.take_along_axis(logits, chosen[:, None], axis=1).sum(), chosen


def _input_grad_fn(model: Any, method: str) -> Any:
    ctx = layers.Context(train=False)
    sigma = blur_sigma(model.input_shape)

    def run(weights: dict, images: jax.Array, target: jax.Array) -> tuple[jax.Array, jax.Array]:
        net = _network(model, weights)
        x = images.astype(jnp.float32) / 255.0

        def logit(inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
            return _chosen_logit(net(inputs, ctx).astype(jnp.float32), target)

        if method == "gradinput":
            grads, chosen = jax.grad(logit, has_aux=True)(x)
            attribution = grads * x
        else:
            # The class is fixed by the real image; then the gradient is averaged along both paths.
            chosen = _chosen_logit(net(x, ctx).astype(jnp.float32), target)[1]
            fixed = lambda inputs: _chosen_logit(net(inputs, ctx).astype(jnp.float32), chosen)[0]  # noqa: E731
            alphas = (jnp.arange(IG_STEPS, dtype=jnp.float32) + 0.5) / IG_STEPS
            attribution = 0.0
            for base in (jnp.zeros_like(x), blurred(x, sigma)):
                path = base[None] + alphas[:, None, None, None, None] * (x - base)[None]
                attribution = attribution + 0.5 * jax.vmap(jax.grad(fixed))(path).mean(axis=0) * (x - base)
        return _normalise(jax.nn.relu(attribution.sum(axis=-1))), chosen

    return jax.jit(run)


def _gradcam_fn(model: Any, elementwise: bool = False) -> Any:
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
            return _chosen_logit(y.astype(jnp.float32), target)

        grads, chosen = jax.grad(top_logit, has_aux=True)(features)
        weights_of = grads if elementwise else grads.mean(axis=(1, 2), keepdims=True)  # HiResCAM : Grad-CAM
        cam = jax.nn.relu((weights_of * features).sum(axis=-1))
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


def _compiled(model: Any, method: str) -> Any:
    if method in NEEDS_CONV:
        return _gradcam_fn(model, elementwise=method == "hirescam")
    if method == "occlusion":
        side = max(model.input_shape[:2])
        return _occlusion_fn(model, max(2, side // 7), max(1, side // 14))
    return _input_grad_fn(model, method)


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
    if method in NEEDS_CONV and gradcam_layer(model.spec) is None:
        raise ValueError(f"{TITLES[method]} needs a convolution layer and this model has none; "
                         f"use --method integrated or occlusion")
    cache = model.__dict__.setdefault("_explainers", {})
    if method not in cache:
        cache[method] = _compiled(model, method)
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
