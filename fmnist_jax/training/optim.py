"""Optimizers, learning-rate schedules and the loss.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fmnist_jax.data.label_sets import acceptable_mask
from fmnist_jax.training.config import OPTIMIZER_KINDS, ZERO_MEANS_NONE, TrainConfig

# ----------------------------------------------------------------------------- optimizer and loss

def schedule_plan(cfg: TrainConfig, steps_per_epoch: int) -> dict[str, float]:
    """The schedule's numbers for one run. The training program takes them as an argument rather than as
    constants, so runs that differ only in epochs, training-set size, learning rate or the schedule's
    timing share one compiled program (and a warm-up compiled before Start serves all of them)."""
    total = max(1, cfg.epochs * steps_per_epoch)
    return {"learning_rate": float(cfg.learning_rate), "total": float(total),
            "warmup": float(min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))),
            "every": float(max(1, cfg.step_every_epochs * steps_per_epoch)),
            "drops": float(max(0, math.ceil(cfg.epochs / cfg.step_every_epochs) - 1)),
            "factor": float(cfg.step_factor),
            # augmentation stops at this step (the clean epochs at the end; never when there are none)
            "augment_until": math.inf if cfg.clean_epochs == 0 else float((cfg.epochs - cfg.clean_epochs) * steps_per_epoch)}


def schedule_value(kind: str, count: jax.Array, plan: dict) -> jax.Array:
    """The learning rate at step `count` of a `kind` schedule (traceable in `count` and in every plan value).

    The curves are Optax's constant, cosine_decay (to 0), warmup_cosine_decay (from and to 0),
    cosine_onecycle (its defaults: 30% rising, div_factor 25, final_div_factor 1e4) and
    piecewise_constant schedules, written over run-time numbers; tests/test_config.py compares them."""
    count = jnp.asarray(count, jnp.float32)
    lr, total = plan["learning_rate"], plan["total"]
    if kind == "constant":
        return lr * jnp.ones_like(count)
    if kind == "cosine":
        return lr * _cosine_decay(count, total)
    if kind == "warmup_cosine":
        warmup = plan["warmup"]
        rising = lr * jnp.clip(count, 0.0, warmup) / jnp.maximum(warmup, 1.0)
        return jnp.where(count < warmup, rising, lr * _cosine_decay(count - warmup, total - warmup))
    if kind == "one_cycle":
        peak, low, end = jnp.floor(0.3 * total), lr / 25.0, lr / 25.0 / 1e4
        rising = _cosine_between(low, lr, count / jnp.maximum(peak, 1.0))
        falling = _cosine_between(lr, end, (count - peak) / jnp.maximum(total - peak, 1.0))
        return jnp.where(count < peak, rising, jnp.where(count < total, falling, end))
    if kind == "step":
        return lr * plan["factor"] ** jnp.clip(jnp.floor(count / plan["every"]), 0.0, plan["drops"])
    raise ValueError(f"unknown schedule {kind!r}")


def _cosine_decay(count: jax.Array, steps: jax.Array) -> jax.Array:
    return 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(count, steps) / steps))


def _cosine_between(start: jax.Array, end: jax.Array, fraction: jax.Array) -> jax.Array:
    return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * fraction) + 1.0)


def make_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[Any], float]:
    """The learning-rate schedule over the planned steps, as a host function of the step."""
    schedule = _traceable_schedule(cfg, steps_per_epoch)
    return lambda count: float(schedule(count))


def learning_rate_curve(cfg: TrainConfig, steps_per_epoch: int, points: int = 100) -> list[dict]:
    """(step, epoch, learning_rate) samples of the schedule, for the Hyperparameters page preview."""
    total = max(1, cfg.epochs * steps_per_epoch)
    steps = np.unique(np.linspace(0, total, points).astype(int))  # to the end of the last epoch
    rates = np.asarray(schedule_value(cfg.schedule, steps, schedule_plan(cfg, steps_per_epoch)))
    return [{"step": int(s), "epoch": float(s / steps_per_epoch), "learning_rate": float(r)} for s, r in zip(steps, rates)]


class RunTimeRate:
    """The learning rate Optax's optimizers read, given by the training step at run time.

    Optax takes a schedule `count -> rate`. This one returns the rate that the step being traced gives it
    (`with rate.given(value): tx.update(...)`), so the compiled program takes the learning rate as an
    argument. The optimizers and their state are Optax's own, unchanged (checkpoints keep their layout)."""

    def __init__(self) -> None:
        self._given = threading.local()

    def __call__(self, count: Any) -> Any:
        value = getattr(self._given, "value", None)
        if value is None:
            raise RuntimeError("this optimizer's learning rate is given by the training step (RunTimeRate.given)")
        return value

    @contextlib.contextmanager
    def given(self, value: jax.Array) -> Iterator[None]:
        self._given.value = value
        try:
            yield
        finally:
            self._given.value = None


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int, rate: RunTimeRate | None = None) -> optax.GradientTransformation:
    """The Optax optimizer a config names, with its schedule, weight decay and clipping; with `rate`, the
    learning rate is the one the training step gives it (RunTimeRate)."""
    lr = rate or _traceable_schedule(cfg, steps_per_epoch)
    name = cfg.optimizer
    if name not in OPTIMIZER_KINDS:
        raise ValueError(f"unknown optimizer {name!r}")
    kind = OPTIMIZER_KINDS[name]
    base = getattr(optax, kind.optax_name)(lr, **{
        keyword: (getattr(cfg, field) or None) if field in ZERO_MEANS_NONE else getattr(cfg, field)
        for keyword, field in kind.arguments})
    chain = []
    if cfg.freeze_layers:
        chain.append(_freeze_first_layers(cfg.freeze_layers))
    if cfg.grad_clip:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.weight_decay and name != "adamw":
        chain.append(optax.add_decayed_weights(cfg.weight_decay))
    tx = optax.chain(*chain, base) if chain else base
    if cfg.ensemble > 1:  # an ensemble's weights are stacked: each member its own state and gradient norm (clipping)
        tx = optax.GradientTransformation(jax.vmap(tx.init), jax.vmap(tx.update))
    return tx


def _traceable_schedule(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[Any], jax.Array]:
    plan = schedule_plan(cfg, steps_per_epoch)
    return lambda count: schedule_value(cfg.schedule, count, plan)


def acceptable(labels: jax.Array, num_classes: int) -> jax.Array:
    """(N, C) float mask of the classes that count as right (data.label_sets: labels < 0 are sets)."""
    return acceptable_mask(labels, num_classes, xp=jnp).astype(jnp.float32)


def set_nll(log_probs: jax.Array, labels: jax.Array, outlier_weight: float, best: bool = False) -> jax.Array:
    """Per-example loss for set-valued labels: -log of the acceptable set's total probability (or, with
    `best`, of its most probable class); for examples outside the classes (empty set), `outlier_weight` x
    cross-entropy to the uniform answer (outlier exposure).

    Why `best`: measured on held-out photos, the summed form lets a shoe spread its probability over
    Sandal, Sneaker and Ankle boot, so no class is confident and a "not sure" threshold rejects right
    answers; asking for one confident acceptable class raised held-out accuracy (with the threshold)
    from 0.841 to 0.879 (bench/NOTES.md)."""
    mask = acceptable(labels, log_probs.shape[-1])
    inside = mask.sum(-1) > 0
    masked = jnp.where(mask > 0, log_probs, -jnp.inf)
    set_log_prob = masked.max(axis=-1) if best else jax.nn.logsumexp(masked, axis=-1)
    uniform = -log_probs.mean(-1)
    return jnp.where(inside, -jnp.where(inside, set_log_prob, 0.0), outlier_weight * uniform)


def is_correct(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per example, 1.0 when the top class is in the label's acceptable set (outside-the-classes: never)."""
    return jnp.take_along_axis(acceptable(labels, logits.shape[-1]), logits.argmax(-1)[:, None], axis=1)[:, 0]


def correct_count(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Number of predictions whose top class is acceptable (int32, like the plain count it replaced)."""
    return is_correct(logits, labels).sum().astype(jnp.int32)


def _freeze_first_layers(count: int) -> optax.GradientTransformation:
    """Zero the updates of the first `count` layers (transfer learning keeps what they learnt)."""
    def frozen(params: object) -> object:
        def label(path: tuple, _leaf: object) -> bool:
            keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
            index = next((k for k in keys if isinstance(k, int)), None)
            return index is not None and index < count
        return jax.tree_util.tree_map_with_path(label, params)

    return optax.masked(optax.set_to_zero(), frozen)


def loss_and_correct(logits: jax.Array, labels: jax.Array, cfg: TrainConfig) -> tuple[jax.Array, jax.Array]:
    """Mean training loss (cross-entropy with label smoothing, or focal) and number of correct predictions.

    Set-valued labels (negative, see data.label_sets) take `set_nll` instead: the choice between equally
    acceptable classes is left to the model, and label smoothing does not apply to them.
    """
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits)
    onehot = jax.nn.one_hot(labels, num_classes)
    if cfg.label_smoothing:
        onehot = onehot * (1 - cfg.label_smoothing) + cfg.label_smoothing / num_classes
    if cfg.loss == "focal":
        weight = (1.0 - jnp.exp(log_probs)) ** cfg.focal_gamma
        per_example = -(weight * onehot * log_probs).sum(-1)
    else:
        per_example = -(onehot * log_probs).sum(-1)
    per_example = jnp.where(labels < 0, set_nll(log_probs, labels, cfg.outlier_weight, cfg.set_loss == "best"),
                            per_example)
    return per_example.mean(), correct_count(logits, labels)
