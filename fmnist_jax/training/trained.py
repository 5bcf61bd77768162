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
from fmnist_jax.training.calibrate import softmax
from fmnist_jax.training.checkpoint import state_from_bytes, state_to_bytes
from fmnist_jax.training.config import MAX_ENSEMBLE, TrainConfig
from fmnist_jax.training.members import member_weights
from fmnist_jax.training.program import inference_logits, make_forward

# ----------------------------------------------------------------------------- trained models

class TrainedModel:
    """A trained network ready for inference: spec, weights, class names and preprocessing settings."""

    def __init__(self, spec: list, input_shape: tuple[int, int, int], class_names: tuple[str, ...], weights: dict,
                 preprocess: dict | None = None, card: dict | None = None, conv_impl: str = "auto",
                 calibration: dict | None = None, tta_flip: bool | None = None, members: int | None = None):
        self.spec = layer_specs.normalize_spec(spec)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.class_names = tuple(class_names)
        self.preprocess = dict(preprocess or {})
        self.card = dict(card or {})
        self.calibration = check_calibration(calibration)
        # flip test-time augmentation and the ensemble's size as the model was trained (and measured): its config says
        config = self.card.get("config") if isinstance(self.card.get("config"), dict) else {}
        self.members = int(config.get("ensemble", 1)) if members is None else int(members)
        if not 1 <= self.members <= MAX_ENSEMBLE:
            raise ValueError(f"an ensemble has 1 to {MAX_ENSEMBLE} members, got {self.members}")
        # Shapes only (nnx.eval_shape): the real values come from `weights`, so nothing is initialised twice.
        abstract = nnx.eval_shape(lambda: layers.build_model(self.spec, self.input_shape, len(self.class_names)))
        self.graphdef, params, batch_stats = nnx.split(abstract, nnx.Param, nnx.BatchStat)
        template = {"params": params, "batch_stats": batch_stats}
        if self.members > 1:  # the members' weights stacked along a first axis (program.init_state)
            template = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct((self.members,) + tuple(leaf.shape), leaf.dtype),
                                    template)
        if not isinstance(weights, (bytes, bytearray)):
            weights = state_to_bytes(weights)  # one validation path for every source of weights
        weights = state_from_bytes(template, bytes(weights))
        self.weights = jax.device_put(weights)
        self.conv_impl = conv_impl
        ctx_cfg = TrainConfig(conv_impl=conv_impl)
        forward = make_forward(self.graphdef, ctx_cfg, self.members)
        self.tta_flip = bool(config.get("tta_flip", False)) if tta_flip is None else bool(tta_flip)
        self._logits = jax.jit(lambda w, x: inference_logits(forward, w["params"], w["batch_stats"], x, self.tta_flip))

    @property
    def temperature(self) -> float:
        """Softmax temperature fitted on held-out data (1.0: uncalibrated)."""
        return self.calibration["temperature"]

    @property
    def unsure_threshold(self) -> float:
        """Below this top probability the answer is "not sure" (0.0: never)."""
        return self.calibration["unsure_threshold"]

    def is_unsure(self, probs: np.ndarray) -> np.ndarray:
        """Boolean per row of calibrated probabilities: the top class is below the model's threshold."""
        return np.asarray(probs).max(axis=-1) < self.unsure_threshold

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def predict_proba(self, images: np.ndarray, batch: int = 1000) -> np.ndarray:
        """Calibrated class probabilities (softmax of logits / temperature) for uint8 images (N, H, W, C)."""
        return softmax(self.predict_logits(images, batch), self.temperature).astype(np.float32)

    def predict_logits(self, images: np.ndarray, batch: int = 1000) -> np.ndarray:
        """Logits for uint8 images shaped (N, H, W, C); batches are padded to powers of two (few compiles)."""
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
            out.append(np.asarray(self._logits(self.weights, padded))[:len(part)])
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def member(self, index: int) -> "TrainedModel":
        """Member `index` of an ensemble as a model of its own (its weights, the same layers and settings);
        a single model is its own member 0."""
        if not 0 <= index < self.members:
            raise ValueError(f"member {index} does not exist: the model has {self.members}")
        if self.members == 1:
            return self
        weights = jax.device_get(member_weights(self.weights, index))
        card = dict(self.card)
        if isinstance(card.get("config"), dict):  # one network: saved on its own, it must load as one
            card["config"] = {**card["config"], "ensemble": 1}
        return TrainedModel(self.spec, self.input_shape, self.class_names, weights, self.preprocess, card,
                            conv_impl=self.conv_impl, calibration=self.calibration, tta_flip=self.tta_flip, members=1)

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
                   run.get("preprocess"), {k: run.get(k) for k in ("test_accuracy", "best_val_accuracy", "epochs_completed", "config", "split")},
                   calibration=run.get("calibration"))


def check_calibration(calibration: dict | None) -> dict:
    """{"temperature", "unsure_threshold"} with defaults (1.0, 0.0); ValueError for values that make no sense."""
    calibration = dict(calibration or {})
    temperature = calibration.get("temperature", 1.0)
    threshold = calibration.get("unsure_threshold", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.01 <= temperature <= 100:
        raise ValueError(f"calibration temperature must be a number from 0.01 to 100, got {temperature!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
        raise ValueError(f"the 'not sure' threshold must be a number from 0 to below 1, got {threshold!r}")
    return {**calibration, "temperature": float(temperature), "unsure_threshold": float(threshold)}
