"""Fashion-MNIST Studio: data, layer-spec models, jit training, evaluation and prediction in JAX."""

__version__ = "0.1.0"
