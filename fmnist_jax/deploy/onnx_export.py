"""ONNX export: a forward pass written with ONNX-friendly ops, checked against JAX at export time.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax.deploy.bundle import ONNX_TOLERANCE, ExportError
from fmnist_jax.model import cpu_ops, layer_specs, layers
from fmnist_jax.training.trained import TrainedModel

# ----------------------------------------------------------------------------- ONNX

def _pool(x: jax.Array, kind: str, window: int, stride: int, padding: str) -> jax.Array:
    """Max/average pooling as an elementwise max/sum of strided slices (ops every ONNX runtime has)."""
    height, width = x.shape[1], x.shape[2]
    if padding == "same":
        pads = (layer_specs._same_pads(height, window, stride), layer_specs._same_pads(width, window, stride))
        fill = -jnp.inf if kind == "maxpool" else 0.0
        x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=fill)
        out_h, out_w = -(-height // stride), -(-width // stride)
    else:
        pads = ((0, 0), (0, 0))
        out_h, out_w = (height - window) // stride + 1, (width - window) // stride + 1
    parts = [x[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride, :]
             for i in range(window) for j in range(window)]
    if kind == "maxpool":
        out = parts[0]
        for part in parts[1:]:
            out = jnp.maximum(out, part)
        return out
    total = sum(parts[1:], parts[0])
    ones = np.pad(np.ones((height, width), np.float32), pads)
    counts = sum(ones[i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride]
                 for i in range(window) for j in range(window))
    return total / counts[None, :, :, None]


def _folded(norm: Any) -> tuple[np.ndarray, np.ndarray]:
    """A BatchNorm at inference as (scale, shift): x * scale + shift."""
    mean, var = norm.running_stats()
    inv = np.asarray(jax.lax.rsqrt(var + norm.epsilon) * norm.scale[...])
    return inv, np.asarray(norm.bias[...] - mean * inv)


def _fold_into(kernel: np.ndarray, norm: Any) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of a bias-free convolution followed by `norm`, as one convolution."""
    scale, shift = _folded(norm)
    return kernel * scale, shift


def _residual(x: jax.Array, spec: dict, block: dict) -> jax.Array:
    """A residual block with folded BatchNorms, in the ops the rest of the export uses."""
    def conv(inputs: jax.Array, folded: tuple, stride: int, padding: str = "same") -> jax.Array:
        kernel, bias = folded
        return cpu_ops.conv2d_apply(inputs, jnp.asarray(kernel), stride, padding, "xla") + jnp.asarray(bias)

    stride = spec["stride"]
    y = jax.nn.relu(conv(layers.residual_padded(x, stride), block["conv1"], stride, layers.residual_padding(stride)))
    y = conv(y, block["conv2"], 1)
    shortcut = x if block["project"] is None else conv(x, block["project"], stride)
    return jax.nn.relu(y + shortcut)


def _member_steps(member: TrainedModel) -> list:
    """One network's layers as (kind, spec, weight, bias) steps, BatchNorm folded into an affine step."""
    from flax import nnx

    network = nnx.merge(member.graphdef, member.weights["params"], member.weights["batch_stats"])
    steps = []
    for spec, module in zip(member.spec, network.layers):
        kind = spec["type"]
        if kind == "conv2d":
            steps.append(("conv2d", spec, np.asarray(module.kernel[...]),
                          None if module.bias is None else np.asarray(module.bias[...])))
        elif kind == "dense":
            steps.append(("dense", spec, np.asarray(module.kernel[...]),
                          None if module.bias is None else np.asarray(module.bias[...])))
        elif kind == "batchnorm":
            steps.append(("affine", spec, *_folded(module)))
        elif kind == "residual":  # each convolution with its BatchNorm folded into the kernel and a bias
            block = {"conv1": _fold_into(np.asarray(module.conv1[...]), module.bn1),
                     "conv2": _fold_into(np.asarray(module.conv2[...]), module.bn2),
                     "project": None if module.project is None else _fold_into(np.asarray(module.project[...]),
                                                                               module.bn_project)}
            steps.append(("residual", spec, block, None))
        else:
            steps.append((kind, spec, None, None))
    return steps


def export_forward(model: TrainedModel) -> Any:
    """probabilities(images float32 (N, H, W, C) in [0, 1]) from the model's weights, in plain jnp ops.

    The layers' own pooling uses lax.reduce_window, which jax2onnx turns into a MaxPool that
    onnxruntime rejects for NHWC windows; this forward is the same network written with ops that
    convert cleanly, and export_onnx checks that it agrees with the real model.
    """
    # an ensemble's logits are the mean of its members', as TrainedModel predicts
    members = [_member_steps(model.member(k)) for k in range(model.members)]

    def probabilities(images: jax.Array) -> jax.Array:
        if model.tta_flip:  # the mean logits of the image and its mirror image, as TrainedModel predicts
            logits = (logits_of(images) + logits_of(images[:, :, ::-1])) / 2
            return jax.nn.softmax(logits / temperature, axis=-1)
        return jax.nn.softmax(logits_of(images) / temperature, axis=-1)

    def logits_of(images: jax.Array) -> jax.Array:
        if len(members) == 1:
            return member_logits(members[0], images)
        return sum(member_logits(steps, images) for steps in members) / len(members)

    def member_logits(steps: list, images: jax.Array) -> jax.Array:
        x = images
        for kind, spec, weight, bias in steps:
            if kind == "conv2d":
                x = cpu_ops.conv2d_apply(x, jnp.asarray(weight), spec["stride"], spec["padding"], "xla")
            elif kind == "dense":
                x = x @ jnp.asarray(weight)
            elif kind == "affine":
                x = x * jnp.asarray(weight) + jnp.asarray(bias)
            elif kind in ("maxpool", "avgpool"):
                x = _pool(x, kind, spec["pool"], spec["stride"], spec["padding"])
            elif kind == "globalavgpool":
                x = x.mean(axis=(1, 2))
            elif kind == "flatten":
                x = x.reshape(x.shape[0], -1)
            elif kind == "activation":
                x = layers.ACTIVATIONS[spec["function"]](x)
            elif kind == "residual":
                x = _residual(x, spec, weight)
            if kind in ("conv2d", "dense"):
                if bias is not None:
                    x = x + jnp.asarray(bias)
                x = layers.ACTIVATIONS[spec["activation"]](x)
        return x

    temperature = float(model.temperature)  # calibrated probabilities, as every other path serves them
    return probabilities


def metadata(model: TrainedModel) -> dict[str, str]:
    """What a consumer of the ONNX file needs to answer like the studio: classes, calibration, the photo pipeline."""
    import json

    return {"class_names": json.dumps(list(model.class_names)), "temperature": repr(model.temperature),
            "unsure_threshold": repr(model.unsure_threshold), "preprocess": json.dumps(model.preprocess)}


def check_images(model: TrainedModel, count: int = 64, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 batch to compare exports on: dataset-like blobs, noise, black and white."""
    from fmnist_jax.data.catalogue import synthetic_dataset

    height, width, channels = model.input_shape
    rng = np.random.default_rng(seed)
    blobs = synthetic_dataset(count, count, (height, width, channels), model.num_classes, seed).train_images[:count // 2]
    noise = rng.integers(0, 256, (count - len(blobs) - 2, height, width, channels), dtype=np.uint8)
    extremes = np.stack([np.zeros((height, width, channels), np.uint8), np.full((height, width, channels), 255, np.uint8)])
    return np.concatenate([blobs, noise, extremes])


def onnx_bytes(model: TrainedModel, images: np.ndarray | None = None, tolerance: float = ONNX_TOLERANCE) -> tuple[bytes, float]:
    """(ONNX model bytes, max |p_onnx - p_jax|), checked with onnxruntime; ExportError if it exceeds `tolerance`."""
    import onnxruntime
    from jax2onnx import to_onnx

    height, width, channels = model.input_shape
    try:
        proto = to_onnx(export_forward(model), [("N", height, width, channels)], model_name="fmnist_studio",
                        input_names=["images"], output_names=["probabilities"])
    except Exception as error:  # jax2onnx reports unsupported primitives with many exception types
        raise ExportError(f"jax2onnx could not convert this model: {type(error).__name__}: {error}") from None
    proto.doc_string = ("Fashion-MNIST Studio model. Input 'images': float32 (N, H, W, C) in [0, 1]; "
                        "output 'probabilities': (N, classes), calibrated. Answer 'not sure' when the top "
                        "probability is below metadata 'unsure_threshold'. Classes: " + ", ".join(model.class_names))
    for key, value in metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    payload = proto.SerializeToString()
    images = check_images(model) if images is None else np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {"images": images.astype(np.float32) / 255.0})[0]
    jax_probs = model.predict_proba(images)
    difference = float(np.abs(onnx_probs - jax_probs).max())
    if not np.isfinite(difference) or difference > tolerance:
        raise ExportError(f"the ONNX model's probabilities differ from JAX's by {difference:.2e} (limit {tolerance:.0e}) "
                          f"on {len(images)} check images; the export was not written")
    return payload, difference


def export_onnx(model: TrainedModel, path: str | Path, images: np.ndarray | None = None) -> float:
    """Write the checked ONNX model to `path`; returns the max probability difference to JAX."""
    from fmnist_jax import store

    payload, difference = onnx_bytes(model, images)
    store.atomic_write_bytes(Path(path), payload)
    return difference
