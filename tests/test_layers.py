"""Layer registry, describe() vs the built model, presets and invalid stacks."""
from __future__ import annotations

import random

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from fmnist_jax.model import cpu_ops, layer_specs, layers, presets

EXPECTED_PARAMS = {"dls": 1_421_194, "lenet": 61_706, "fast": 241_770, "fast256": 390_634, "fastres": 429_802,
                   "wide": 557_386}


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_preset_parameter_counts_are_exact(name: str) -> None:
    spec = presets.preset(name)
    assert layer_specs.describe(spec)["total_params"] == EXPECTED_PARAMS[name]
    assert layers.count_params(layers.build_model(spec)) == EXPECTED_PARAMS[name]


def _check_describe_matches_model(spec: list, input_shape: tuple, num_classes: int) -> None:
    info = layer_specs.describe(spec, input_shape, num_classes)
    model = layers.build_model(spec, input_shape, num_classes)
    assert info["total_params"] == layers.count_params(model)
    x = jnp.zeros((2, *input_shape))
    ctx = layers.Context(train=False)
    for row, layer in zip(info["layers"], model.layers):
        x = layer(x, ctx)
        assert list(x.shape[1:]) == row["output_shape"], row
        params = sum(v.size for v in jax.tree_util.tree_leaves(nnx.state(layer, nnx.Param)))
        assert params == row["params"], row


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_describe_agrees_with_built_model_for_presets(name: str) -> None:
    _check_describe_matches_model(presets.preset(name), (28, 28, 1), 10)


def _random_spec(rng: random.Random, num_classes: int) -> list[dict]:
    spec: list[dict] = []
    size = 28
    for _ in range(rng.randint(1, 4)):
        kernel = rng.choice([1, 3, 5])
        padding = rng.choice(["same", "valid"])
        if padding == "valid" and size - kernel + 1 < 2:
            padding = "same"
        spec.append({"type": "conv2d", "filters": rng.randint(1, 16), "kernel": kernel, "padding": padding,
                     "activation": rng.choice(list(layers.ACTIVATIONS))})
        size = size if padding == "same" else size - kernel + 1
        if rng.random() < 0.4:
            spec.append({"type": "batchnorm"})
        if size >= 4 and rng.random() < 0.5:
            spec.append({"type": rng.choice(["maxpool", "avgpool"]), "pool": 2, "stride": 2})
            size //= 2
        if rng.random() < 0.3:
            spec.append({"type": "dropout", "rate": 0.1})
    spec.append({"type": rng.choice(["flatten", "globalavgpool"])})
    if rng.random() < 0.5:
        spec.append({"type": "dense", "units": rng.randint(1, 32), "activation": "relu"})
    spec.append({"type": "dense", "units": num_classes})
    return spec


@pytest.mark.parametrize("seed", range(8))
def test_describe_agrees_with_built_model_for_random_specs(seed: int) -> None:
    rng = random.Random(seed)
    num_classes = rng.choice([2, 10, 37])
    _check_describe_matches_model(_random_spec(rng, num_classes), (28, 28, rng.choice([1, 3])), num_classes)


def test_dls_flops_match_the_hand_count() -> None:
    forward = layer_specs.describe(presets.preset("dls"))["forward_flops"]
    macs = 26 * 26 * 32 * 9 + 11 * 11 * 64 * 288 + 9 * 9 * 128 * 576 + 10368 * 128 + 128 * 10
    assert 2 * macs <= forward <= 2 * macs * 1.02  # plus activations and pooling


@pytest.mark.parametrize("spec, message", [
    ([{"type": "conv2d", "kernel": 3, "padding": "valid"}] * 14 + [{"type": "flatten"}, {"type": "dense", "units": 10}],
     "layer 13 (Conv2D): a 3x3 window"),
    ([{"type": "dense", "units": 10}], "layer 0 (Dense): gets the image-shaped input"),
    ([{"type": "flatten"}, {"type": "wormhole"}], "layer 1 (wormhole): unknown layer type"),
    ([{"type": "flatten"}, {"type": "dense", "units": 0}], "layer 1 (Dense): 'units' must be at least 1"),
    ([{"type": "flatten"}, {"type": "dense", "units": -5}], "layer 1 (Dense): 'units' must be at least 1"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10, "colour": "red"}], "layer 1 (Dense): unknown parameter(s) colour"),
    ([{"type": "flatten"}, {"type": "dense", "units": 7}], "the dataset has 10 classes"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10, "activation": "relu"}], "must output raw logits"),
    ([{"type": "flatten"}, {"type": "flatten"}, {"type": "dense", "units": 10}], "layer 1 (Flatten): needs an image-shaped input"),
    ([], "no layers"),
    ([{"type": "flatten"}] * 10_000, "the limit is 200"),
    ("conv", "must be a list"),
    ([{"type": "maxpool", "pool": 64, "stride": 2}, {"type": "flatten"}, {"type": "dense", "units": 10}], "layer 0 (MaxPool)"),
])
def test_invalid_stacks_name_the_layer(spec: object, message: str) -> None:
    with pytest.raises(ValueError) as error:
        layer_specs.describe(spec)
    assert message in str(error.value)


def test_aliases_and_activation_shortcuts_normalise() -> None:
    spec = layer_specs.normalize_spec([{"type": "Conv2D", "filters": 4}, {"type": "ReLU"}, {"type": "MaxPooling2D"},
                                  {"type": "Flatten"}, {"type": "Dense", "units": 10}])
    assert [layer["type"] for layer in spec] == ["conv2d", "activation", "maxpool", "flatten", "dense"]
    assert spec[1]["function"] == "relu"


def test_presets_adapt_to_rgb_32_and_other_class_counts() -> None:
    for name in EXPECTED_PARAMS:
        spec = presets.preset(name, num_classes=3)
        _check_describe_matches_model(spec, (32, 32, 3), 3)


def test_a_preset_too_deep_for_tiny_inputs_says_so() -> None:
    table = {row["name"]: row for row in presets.preset_table((8, 8, 1), 10)}
    assert table["dls"]["fits"] is False and "below 1 pixel" in table["dls"]["reason"]


def test_im2col_and_xla_convolutions_agree() -> None:
    key = jax.random.key(0)
    x = jax.random.normal(key, (3, 11, 9, 4))
    for padding in ("same", "valid"):
        for stride in (1, 2):
            kernel = jax.random.normal(jax.random.fold_in(key, stride), (3, 3, 4, 5))
            a = cpu_ops.conv2d_apply(x, kernel, stride, padding, "xla")
            b = cpu_ops.conv2d_apply(x, kernel, stride, padding, "im2col")
            assert a.shape == b.shape
            assert float(jnp.abs(a - b).max()) < 1e-4


def test_fast_presets_recommended_settings_are_the_benchmarked_recipe() -> None:
    """The CLI and the Hyperparameters page recommend exactly what bench/time_to_accuracy.py measured."""
    import json
    from pathlib import Path

    from fmnist_jax.training.config import TrainConfig

    bench = json.loads((Path(__file__).resolve().parents[1] / "bench" / "configs" / "fast_best.json").read_text())
    assert bench["preset"] == "fast"
    recipe = TrainConfig.from_dict(presets.PRESETS["fast"].train_defaults)
    assert recipe.to_dict() == TrainConfig.from_dict(bench["config"]).to_dict()
    assert "93.1%" in presets.PRESETS["fast"].recipe_note


def test_the_best_recipe_is_the_benchmarked_best_94_config() -> None:
    """The Hyperparameters page's 15-minute recipe is exactly what bench/configs/best_94.json measured."""
    import json
    from pathlib import Path

    from fmnist_jax.training.config import TrainConfig

    bench = json.loads((Path(__file__).resolve().parents[1] / "bench" / "configs" / "best_94.json").read_text())
    assert bench["preset"] == presets.BEST_RECIPE["preset"] and "layers" not in bench
    assert bench["val_fraction"] == presets.BEST_RECIPE["val_fraction"]
    assert TrainConfig.from_dict(bench["config"]).to_dict() == TrainConfig.from_dict(presets.BEST_RECIPE["config"]).to_dict()
    assert "%" in presets.BEST_RECIPE["note"] and "bench/time_to_accuracy.py" in presets.BEST_RECIPE["measured_by"]
    assert "bench/" not in presets.BEST_RECIPE["note"] and "bench/" not in presets.PRESETS["fast"].recipe_note
