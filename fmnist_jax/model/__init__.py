"""Layer specs -> Flax NNX model. Importing the package registers every layer type (model.layers)."""
from fmnist_jax.model import layers  # noqa: F401  (fills layer_specs.REGISTRY)
