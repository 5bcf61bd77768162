"""One TrainConfig (with nested augmentation settings) shared by the UI, the CLI and saved runs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field, StrictBool

from fmnist_jax.checks import Real, Settings, Whole, choice
from fmnist_jax.data.augment import AugmentConfig
from fmnist_jax.model.cpu_ops import CONV_IMPLS



@dataclass(frozen=True)
class OptimizerKind:
    """One optimizer, in the one table that make_optimizer, the Hyperparameters page and the exported training
    script all read: its label, its Optax function, and which TrainConfig field feeds each of that function's
    keyword arguments (in the order the page shows them)."""

    label: str
    optax_name: str
    arguments: tuple[tuple[str, str], ...]  # (Optax keyword, TrainConfig field)

    def fields(self) -> tuple[str, ...]:
        """The settings the Hyperparameters page shows for it (weight decay has its own place there)."""
        return tuple(field for _, field in self.arguments if field != "weight_decay")


_ADAM_LIKE = (("b1", "beta1"), ("b2", "beta2"), ("eps", "epsilon"))
OPTIMIZER_KINDS: dict[str, OptimizerKind] = {
    "sgd": OptimizerKind("SGD", "sgd", (("momentum", "momentum"), ("nesterov", "nesterov"))),
    "rmsprop": OptimizerKind("RMSprop", "rmsprop", (("decay", "rho"), ("momentum", "momentum"), ("eps", "epsilon"))),
    "adadelta": OptimizerKind("Adadelta", "adadelta", (("rho", "rho"), ("eps", "epsilon"))),
    "adagrad": OptimizerKind("Adagrad", "adagrad", (("eps", "epsilon"),)),
    "adamax": OptimizerKind("Adamax", "adamax", _ADAM_LIKE),
    "adam": OptimizerKind("Adam", "adam", _ADAM_LIKE),
    "nadam": OptimizerKind("Nadam", "nadam", _ADAM_LIKE),
    "adamw": OptimizerKind("AdamW", "adamw", (*_ADAM_LIKE, ("weight_decay", "weight_decay"))),
}
OPTIMIZERS = tuple(OPTIMIZER_KINDS)
# Settings whose 0 means "none" to Optax (a momentum of 0 is plain SGD, not a zero-momentum trace).
ZERO_MEANS_NONE = ("momentum",)
SCHEDULES = ("constant", "cosine", "warmup_cosine", "one_cycle", "step")
LOSSES = ("cross_entropy", "focal")
MONITORS = ("val_accuracy", "val_loss")
PRECISIONS = ("float32", "bfloat16")
DATA_PARALLEL = ("auto", "off", "on")
SET_LOSSES = ("best", "any")
MAX_ENSEMBLE = 8  # members of an ensemble (TrainConfig.ensemble)


def _num(default: Any, title: str, **bounds: Any) -> Any:
    return Field(default, title=title, **bounds)


class TrainConfig(Settings):
    """Everything that decides how a model trains; validate() before use (it adds the checks across fields)."""

    kind: ClassVar[str] = "training"

    epochs: Whole = _num(10, "epochs", ge=1, le=10_000)
    batch_size: Whole = _num(128, "batch size", ge=1, le=65_536)
    optimizer: choice(OPTIMIZERS) = _num("adam", "optimizer")
    learning_rate: Real = _num(1e-3, "learning rate", gt=0, le=10.0)
    momentum: Real = _num(0.9, "momentum", ge=0, le=0.9999)
    nesterov: StrictBool = _num(False, "nesterov")
    beta1: Real = _num(0.9, "beta1", ge=0, le=0.9999)
    beta2: Real = _num(0.999, "beta2", ge=0, le=0.99999)
    rho: Real = _num(0.9, "rho", ge=0, le=0.9999)
    epsilon: Real = _num(1e-7, "epsilon", gt=0, le=1.0)
    schedule: choice(SCHEDULES) = _num("constant", "schedule")
    warmup_epochs: Real = _num(1.0, "warmup epochs", ge=0, le=10_000)  # and at most `epochs` (validate)
    step_every_epochs: Whole = _num(10, "step every (epochs)", ge=1, le=10_000)
    step_factor: Real = _num(0.1, "step factor", gt=0, le=1)
    weight_decay: Real = _num(0.0, "weight decay", ge=0, le=1)
    grad_clip: Real = _num(0.0, "gradient clipping", ge=0, le=1e6)
    loss: choice(LOSSES) = _num("cross_entropy", "loss")
    label_smoothing: Real = _num(0.0, "label smoothing", ge=0, le=0.5)
    focal_gamma: Real = _num(2.0, "focal gamma", ge=0, le=10)
    early_stopping: StrictBool = _num(False, "early_stopping")
    patience: Whole = _num(5, "patience", ge=1, le=10_000)
    min_delta: Real = _num(0.0, "min delta", ge=0, le=1)
    monitor: choice(MONITORS) = _num("val_accuracy", "early-stopping monitor")
    restore_best: StrictBool = _num(True, "restore_best")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, title="augment")
    # The last N epochs train on the images as they are (augmentation off), as evaluation sees them.
    clean_epochs: Whole = _num(0, "epochs without augmentation at the end", ge=0, le=10_000)
    seed: Whole = _num(0, "seed", ge=0, le=2**31 - 1)
    precision: choice(PRECISIONS) = _num("float32", "precision")
    chunk_steps: Whole = _num(50, "chunk steps", ge=1, le=100_000)
    eval_batch_size: Whole = _num(1000, "evaluation batch size", ge=1, le=65_536)
    data_parallel: choice(DATA_PARALLEL) = _num("auto", "data parallel")
    conv_impl: choice(CONV_IMPLS) = _num("auto", "convolution implementation")
    # Weight of the "not sure" loss for examples outside the classes (set labels).
    outlier_weight: Real = _num(1.0, "outlier weight", ge=0, le=100)
    # Set labels: "best" = -log of the likeliest acceptable class, "any" = of their sum.
    set_loss: choice(SET_LOSSES) = _num("best", "set loss")
    # Transfer learning: the first N layers keep the starting model's weights.
    freeze_layers: Whole = _num(0, "frozen layers", ge=0, le=200)
    # Weight averaging: evaluate and keep an exponential moving average of the weights (0: off).
    ema_decay: Real = _num(0.0, "weight averaging (EMA) decay", ge=0, le=0.99999)
    # Test-time augmentation: predict from the mean logits of each image and its mirror image.
    tta_flip: StrictBool = _num(False, "flip test-time augmentation")
    # An ensemble: N copies of the layers, member k initialised, shuffled and augmented as a run with seed + k
    # would be, trained side by side (one compiled step); predictions are the mean of the members' logits.
    ensemble: Whole = _num(1, "ensemble members", ge=1, le=MAX_ENSEMBLE)

    def validate(self, train_size: int | None = None) -> "TrainConfig":  # type: ignore[override]
        """Raise ValueError with a message a user can act on; returns self for chaining."""
        self.recheck()
        if train_size is not None and self.batch_size > train_size:
            raise ValueError(f"batch size {self.batch_size} is larger than the training split ({train_size} examples); "
                             f"lower it to at most {train_size}")
        if self.clean_epochs > self.epochs:
            raise ValueError(f"epochs without augmentation at the end must be at most {self.epochs} (the number of "
                             f"epochs), got {self.clean_epochs!r}")
        if self.ensemble > 1 and self.data_parallel == "on":
            raise ValueError(f"an ensemble of {self.ensemble} trains its members side by side on one device; set data "
                             f"parallel to 'auto' or 'off', or train a single model (ensemble members 1)")
        if self.warmup_epochs > self.epochs:
            raise ValueError(f"warmup epochs must be at most {self.epochs:g} (the number of epochs), "
                             f"got {self.warmup_epochs!r}")
        return self

    def to_json(self) -> str:
        """JSON text that from_json reads back to an equal config."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        """Parse JSON text (ValueError on malformed JSON, unknown keys or bad values)."""
        try:
            values = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"config is not valid JSON: {error}") from None
        return cls.from_dict(values)

    def with_epochs(self, epochs: int, **changes: Any) -> "TrainConfig":
        """A copy that runs `epochs` epochs (and any other changes), its clean last epochs capped at that length:
        for shortened runs of a recipe (benchmarks' --epochs and --quick)."""
        return self.replace(epochs=epochs, clean_epochs=min(self.clean_epochs, int(epochs)), **changes)

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (nested augment may be a dict or an AugmentConfig)."""
        values = self.to_dict()
        values.update({k: v.to_dict() if isinstance(v, AugmentConfig) else v for k, v in changes.items()})
        return TrainConfig.from_dict(values)
