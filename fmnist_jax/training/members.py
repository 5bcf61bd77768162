"""Ensembles: N copies of a network trained side by side, their weights stacked along a first axis.

Member k starts, shuffles, augments and drops out exactly as a single run with seed + k would (the keys and
initial weights below), every step computes all the members' own losses and gradients in one compiled program,
and the ensemble predicts with the mean of its members' logits.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from fmnist_jax.data.augment import AugmentConfig, augment_batch


def member_loop() -> str:
    """How a step runs the members: "map" (one after another inside the compiled step) on a CPU, where a vmapped
    step trained at 0.84x two single runs' speed per image and the loop at 0.975x (bench/NOTES.md attempt 71);
    "vmap" (all at once, larger batched kernels) on accelerators. FMNIST_MEMBER_LOOP=map|vmap overrides it, for
    benchmarks."""
    chosen = os.environ.get("FMNIST_MEMBER_LOOP", "")
    if chosen in ("map", "vmap"):
        return chosen
    return "map" if jax.default_backend() == "cpu" else "vmap"


def stack_members(trees: list) -> Any:
    """Equal-structured pytrees (one per member) as one with each leaf stacked along a first axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member_weights(weights: Any, member: int) -> Any:
    """One member's slice of an ensemble's stacked weights (any pytree of stacked arrays)."""
    return jax.tree.map(lambda x: x[member], weights)


def mean_forward(one: Callable) -> Callable:
    """The ensemble's forward pass from one member's: every member sees the same images, and the logits are the
    mean of the members' (inference; training computes each member's own loss, member_gradients)."""
    def forward(params: Any, batch_stats: Any, images: jax.Array, train: bool, rng: jax.Array | None,
                row_offset: jax.Array | int = 0):
        def member(p: Any, s: Any) -> tuple:
            return one(p, s, images, train, rng, row_offset)

        if member_loop() == "map":
            logits, stats = jax.lax.map(lambda weights: member(*weights), (params, batch_stats))
        else:
            logits, stats = jax.vmap(member)(params, batch_stats)
        return logits.mean(axis=0), stats
    return forward


def member_gradients(one_member: Callable, members: int) -> Callable:
    """(state, images, labels, keys) -> ((mean loss, (stats, mean correct)), gradients) with each member's own
    batch (images (members, batch, ...)), key, loss and gradient, from one member's batch_gradients."""
    def batch_gradients(state: dict, images: jax.Array, labels: jax.Array, key: jax.Array):
        weights = {"params": state["params"], "batch_stats": state["batch_stats"]}
        if member_loop() == "map":
            (loss, (stats, correct)), grads = jax.lax.map(lambda args: one_member(*args), (weights, images, labels, key))
        else:
            (loss, (stats, correct)), grads = jax.vmap(one_member)(weights, images, labels, key)
        return (loss.mean(), (stats, correct.sum() / members)), grads
    return batch_gradients


def augment(x: jax.Array, key: jax.Array, cfg: AugmentConfig, members: int) -> jax.Array:
    """The training batch augmented; for an ensemble, each member's batch with its own key."""
    if members == 1:
        return augment_batch(x, jax.random.fold_in(key, 7919), cfg)
    return jax.vmap(lambda xs, k: augment_batch(xs, jax.random.fold_in(k, 7919), cfg))(x, key)


def step_keys(epoch_key: jax.Array, step: jax.Array, members: int) -> jax.Array:
    """The step's key, or each member's (epoch_key then holds one per member)."""
    if members == 1:
        return jax.random.fold_in(epoch_key, step)
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(epoch_key, step)


def member_batch(perm: jax.Array, step: jax.Array, batch: int, members: int) -> jax.Array:
    """The rows of the step's batch in the epoch's permutation, or each member's (perm (members, rows))."""
    if members == 1:
        return jax.lax.dynamic_slice(perm, (step * batch,), (batch,))
    return jax.lax.dynamic_slice(perm, (0, step * batch), (members, batch))
