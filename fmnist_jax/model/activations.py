"""Activation functions by name (the registry's choices and the modules' implementations)."""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}
