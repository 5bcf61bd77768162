"""One TrainConfig (with nested augmentation settings) shared by the UI, the CLI and saved runs.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fmnist_jax.checks import _choice, _number
from fmnist_jax.data.augment import AugmentConfig
from fmnist_jax.model.cpu_ops import CONV_IMPLS

OPTIMIZERS = ("sgd", "rmsprop", "adadelta", "adagrad", "adamax", "adam", "nadam", "adamw")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "one_cycle", "step")
LOSSES = ("cross_entropy", "focal")
MONITORS = ("val_accuracy", "val_loss")
PRECISIONS = ("float32", "bfloat16")
DATA_PARALLEL = ("auto", "off", "on")
SET_LOSSES = ("best", "any")


@dataclass
class TrainConfig:
    """Everything that decides how a model trains; validate() before use."""

    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    nesterov: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    rho: float = 0.9
    epsilon: float = 1e-7
    schedule: str = "constant"
    warmup_epochs: float = 1.0
    step_every_epochs: int = 10
    step_factor: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    loss: str = "cross_entropy"
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    early_stopping: bool = False
    patience: int = 5
    min_delta: float = 0.0
    monitor: str = "val_accuracy"
    restore_best: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    precision: str = "float32"
    chunk_steps: int = 50
    eval_batch_size: int = 1000
    data_parallel: str = "auto"
    conv_impl: str = "auto"
    outlier_weight: float = 1.0   # weight of the "not sure" loss for examples outside the classes (set labels)
    set_loss: str = "best"        # set labels: "best" = -log of the likeliest acceptable class, "any" = of their sum
    freeze_layers: int = 0        # transfer learning: the first N layers keep the starting model's weights

    def validate(self, train_size: int | None = None) -> "TrainConfig":
        """Raise ValueError with a message a user can act on; returns self for chaining."""
        _number("epochs", self.epochs, 1, 10_000, whole=True)
        _number("batch size", self.batch_size, 1, 65_536, whole=True)
        if train_size is not None and self.batch_size > train_size:
            raise ValueError(f"batch size {self.batch_size} is larger than the training split ({train_size} examples); "
                             f"lower it to at most {train_size}")
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _number("learning rate", self.learning_rate, 0, 10.0, low_open=True)
        _number("momentum", self.momentum, 0, 0.9999)
        _number("beta1", self.beta1, 0, 0.9999)
        _number("beta2", self.beta2, 0, 0.99999)
        _number("rho", self.rho, 0, 0.9999)
        _number("epsilon", self.epsilon, 0, 1.0, low_open=True)
        _choice("schedule", self.schedule, SCHEDULES)
        _number("warmup epochs", self.warmup_epochs, 0, self.epochs)
        _number("step every (epochs)", self.step_every_epochs, 1, 10_000, whole=True)
        _number("step factor", self.step_factor, 0, 1, low_open=True)
        _number("weight decay", self.weight_decay, 0, 1)
        _number("gradient clipping", self.grad_clip, 0, 1e6)
        _choice("loss", self.loss, LOSSES)
        _number("label smoothing", self.label_smoothing, 0, 0.5)
        _number("focal gamma", self.focal_gamma, 0, 10)
        _number("patience", self.patience, 1, 10_000, whole=True)
        _number("outlier weight", self.outlier_weight, 0, 100)
        _choice("set loss", self.set_loss, SET_LOSSES)
        _number("frozen layers", self.freeze_layers, 0, 200, whole=True)
        _number("min delta", self.min_delta, 0, 1)
        _choice("early-stopping monitor", self.monitor, MONITORS)
        _number("seed", self.seed, 0, 2**31 - 1, whole=True)
        _choice("precision", self.precision, PRECISIONS)
        _number("chunk steps", self.chunk_steps, 1, 100_000, whole=True)
        _number("evaluation batch size", self.eval_batch_size, 1, 65_536, whole=True)
        _choice("data parallel", self.data_parallel, DATA_PARALLEL)
        _choice("convolution implementation", self.conv_impl, CONV_IMPLS)
        for name in ("nesterov", "early_stopping", "restore_best"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.augment, AugmentConfig):
            raise ValueError("augment must be an augmentation settings object")
        self.augment.validate()
        return self

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    def to_json(self) -> str:
        """JSON text that from_json reads back to an equal config."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        """Build from a dict; unknown keys raise ValueError naming them. Does not validate values."""
        if not isinstance(values, dict):
            raise ValueError("a training config must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        values = dict(values)
        augment = values.pop("augment", {}) or {}
        if isinstance(augment, dict):
            aug_known = {f.name for f in fields(AugmentConfig)}
            bad = sorted(set(augment) - aug_known)
            if bad:
                raise ValueError(f"unknown augmentation setting(s): {', '.join(bad)}")
            augment = AugmentConfig(**augment)
        else:
            raise ValueError("'augment' must be a JSON object")
        return cls(augment=augment, **values)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        """Parse JSON text (ValueError on malformed JSON or unknown keys)."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config is not valid JSON: {error}") from None
        return cls.from_dict(values)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (nested augment may be a dict)."""
        values = self.to_dict()
        values.update(changes)
        if isinstance(values.get("augment"), AugmentConfig):
            values["augment"] = asdict(values["augment"])
        return TrainConfig.from_dict(values)
