"""A trained model: parameters plus what is needed to predict (shapes, class names, preprocessing).
"""
from __future__ import annotations

import math
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from fmnist_jax import store
from fmnist_jax.model import layer_specs, layers
from fmnist_jax.training.checkpoint import state_from_bytes, state_to_bytes
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.program import inference_logits, make_forward

# ----------------------------------------------------------------------------- trained models

class TrainedModel:
    """A trained network ready for inference: spec, weights, class names and preprocessing settings."""

    def __init__(self, spec: list, input_shape: tuple[int, int, int], class_names: tuple[str, ...], weights: dict,
                 preprocess: dict | None = None, card: dict | None = None, conv_impl: str = "auto"):
        self.spec = layer_specs.normalize_spec(spec)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.class_names = tuple(class_names)
        self.preprocess = dict(preprocess or {})
        self.card = dict(card or {})
        model = layers.build_model(self.spec, self.input_shape, len(self.class_names))
        self.graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        template = jax.device_get({"params": params, "batch_stats": batch_stats})
        if not isinstance(weights, (bytes, bytearray)):
            weights = state_to_bytes(weights)  # one validation path for every source of weights
        weights = state_from_bytes(template, bytes(weights))
        self.weights = jax.device_put(weights)
        ctx_cfg = TrainConfig(conv_impl=conv_impl)
        forward = make_forward(self.graphdef, ctx_cfg)
        self._probs = jax.jit(lambda w, x: jax.nn.softmax(inference_logits(forward, w["params"], w["batch_stats"], x)))

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def predict_proba(self, images: np.ndarray, batch: int = 1000) -> np.ndarray:
        """Class probabilities for uint8 images shaped (N, H, W, C); batches are padded to powers of two."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.shape[1:] != self.input_shape:
            raise ValueError(f"images have shape {images.shape[1:]}, the model expects {self.input_shape}")
        out = []
        for start in range(0, len(images), batch):
            part = images[start:start + batch]
            size = 1 << max(0, math.ceil(math.log2(len(part))))  # few distinct shapes -> few compiles
            padded = np.concatenate([part, np.zeros((size - len(part),) + part.shape[1:], part.dtype)]) if size > len(part) else part
            out.append(np.asarray(self._probs(self.weights, padded))[:len(part)])
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def weights_bytes(self) -> bytes:
        """msgpack bytes of the weights (params and batch statistics)."""
        return state_to_bytes(self.weights)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "TrainedModel":
        """Load the final weights of a finished or stopped run (StoreError/ValueError if unusable)."""
        run_path = Path(run_dir)
        run = store.read_json(run_path / "run.json")
        weights_path = run_path / "model.msgpack"
        if not weights_path.exists():
            raise store.StoreError(f"run {run_path.name} has no trained weights yet (still running, or it failed)")
        return cls(run["spec"], tuple(run["input_shape"]), tuple(run["class_names"]), weights_path.read_bytes(),
                   run.get("preprocess"), {k: run.get(k) for k in ("test_accuracy", "best_val_accuracy", "epochs_completed")})
