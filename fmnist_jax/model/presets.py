"""Preset architectures (fast, fast256, fastres, dls, lenet, wide) with their recommended training settings.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

from fmnist_jax.model.layer_specs import describe

# ----------------------------------------------------------------------------- presets

def _conv(filters: int, kernel: int = 3, padding: str = "valid", activation: str = "relu", **kw: Any) -> dict:
    return {"type": "conv2d", "filters": filters, "kernel": kernel, "padding": padding, "activation": activation, **kw}


def _dls(num_classes: int) -> list[dict]:
    return [_conv(32), {"type": "maxpool", "pool": 2, "stride": 2}, {"type": "dropout", "rate": 0.25},
            _conv(64), {"type": "dropout", "rate": 0.25}, _conv(128), {"type": "dropout", "rate": 0.4},
            {"type": "flatten"}, {"type": "dense", "units": 128, "activation": "relu"},
            {"type": "dropout", "rate": 0.4}, {"type": "dense", "units": num_classes}]


def _lenet(num_classes: int) -> list[dict]:
    return [_conv(6, 5, "same", "tanh"), {"type": "avgpool", "pool": 2, "stride": 2},
            _conv(16, 5, "valid", "tanh"), {"type": "avgpool", "pool": 2, "stride": 2},
            {"type": "flatten"}, {"type": "dense", "units": 120, "activation": "tanh"},
            {"type": "dense", "units": 84, "activation": "tanh"}, {"type": "dense", "units": num_classes}]


def _bn_block(filters: int) -> list[dict]:
    return [_conv(filters, 3, "same", "linear", use_bias=False), {"type": "batchnorm"}, {"type": "activation", "function": "relu"}]


def _fast(num_classes: int, dense_units: int = 128) -> list[dict]:
    return [*_bn_block(32), {"type": "maxpool", "pool": 2, "stride": 2},
            *_bn_block(64), {"type": "maxpool", "pool": 2, "stride": 2},
            *_bn_block(128), {"type": "maxpool", "pool": 2, "stride": 2},
            {"type": "flatten"}, {"type": "dropout", "rate": 0.3},
            {"type": "dense", "units": dense_units, "activation": "relu"}, {"type": "dense", "units": num_classes}]


def _fast256(num_classes: int) -> list[dict]:
    # the fast model with a dense layer twice as wide (+2% FLOPs): +0.20 points of validation accuracy over three
    # seeds of the best-accuracy recipe (bench/NOTES.md, attempt 50)
    return _fast(num_classes, dense_units=256)


def _fastres(num_classes: int) -> list[dict]:
    # fast256 with its 64-filter convolution at 14 px replaced by a residual block (two 64-filter convolutions and
    # a 1x1 projection shortcut from 32 channels): bench/NOTES.md, round 20
    layers = _fast256(num_classes)
    layers[4:7] = [{"type": "residual", "filters": 64}]
    return layers


def _wide(num_classes: int) -> list[dict]:
    return [*_bn_block(64), *_bn_block(64), {"type": "maxpool", "pool": 2, "stride": 2}, {"type": "dropout", "rate": 0.2},
            *_bn_block(128), *_bn_block(128), {"type": "maxpool", "pool": 2, "stride": 2}, {"type": "dropout", "rate": 0.3},
            *_bn_block(256), {"type": "globalavgpool"}, {"type": "dropout", "rate": 0.3},
            {"type": "dense", "units": num_classes}]


@dataclass(frozen=True)
class Preset:
    """A named model recipe."""

    name: str
    description: str
    make: Callable[[int], list[dict]] = field(repr=False)
    # TrainConfig settings this model trains best with when the user gives none (chosen on validation accuracy)
    train_defaults: dict = field(default_factory=dict)
    # what the recommended settings are and what they were measured to reach, for the Hyperparameters page
    recipe_note: str = ""


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("fast", "BatchNorm conv blocks tuned for accuracy per second on a 2-core CPU (default)", _fast,
           # the recipe bench/configs/fast_best.json holds (a test keeps the two equal), chosen on validation
           # accuracy by bench/sweep.py: see bench/NOTES.md, attempt 15
           {"epochs": 10, "batch_size": 32, "optimizer": "adam", "learning_rate": 3e-3, "schedule": "one_cycle",
            "label_smoothing": 0.1, "augment": {"flip": 0.5}},
           # measured by bench/time_to_accuracy.py on a 2-core AMD EPYC, 2026-11-29 (293 s to 93.12%)
           "10 epochs of batch 32, Adam 3e-3 with a one-cycle schedule, label smoothing 0.1 and random "
           "horizontal flips, chosen on validation accuracy: it reached 93.1% test accuracy in about 5 minutes "
           "on a 2-core CPU."),
    Preset("fast256", "The fast model with a 256-unit dense layer (the 15-minute recipe's model until 2026-12-05)",
           _fast256),
    Preset("fastres", "fast256 with a residual block (two 64-filter convolutions and a shortcut) at 14 px: the "
           "15-minute best-accuracy recipe's model", _fastres),
    Preset("dls", "The seed article's Deep Learning Studio CNN, layer for layer (1,421,194 params)", _dls),
    Preset("lenet", "LeNet-5 style: two tanh conv layers with average pooling", _lenet),
    Preset("wide", "Wider VGG-style BatchNorm network for GPUs and long CPU runs", _wide),
)}


# The recipe for the best accuracy within 15 minutes on a 2-core CPU: bench/configs/best_94.json holds the
# same (a test keeps them equal). Its settings were chosen on a 10% validation split (bench/NOTES.md, attempts
# 20-25, 44, 50 and 75); the recipe then keeps 2% for validation and trains on the rest, for the same number of steps.
BEST_RECIPE: dict = {
    "preset": "fastres",
    "val_fraction": 0.02,
    "config": {"epochs": 21, "batch_size": 32, "optimizer": "adam", "learning_rate": 3e-3, "schedule": "one_cycle",
               "label_smoothing": 0.1, "ema_decay": 0.999, "tta_flip": True, "augment": {"flip": 0.5, "crop": 1}},
    "note": ("The fastres model (the fast model with a residual block at 14 px and a 256-unit dense layer) for 21 "
             "epochs of batch 32: Adam with a one-cycle schedule, label smoothing, random flips and 1-pixel crops, "
             "weight averaging and mirror test-time augmentation, all chosen on validation accuracy. It keeps 2% of "
             "the training images for validation and trains on the rest. On a 2-core CPU with AVX-512 it reached "
             "94% test accuracy after about 10 minutes and 94.4% at the end of its 14; CPUs without AVX-512 take up "
             "to twice as long, and the time estimate below is this machine's."),
    # Where the note's figures come from (for the docs and the tests, not the page).
    "measured_by": "bench/time_to_accuracy.py --config bench/configs/best_94.json (2-core Intel Xeon, 2026-12-05)",
}


def preset(name: str, num_classes: int = 10) -> list[dict]:
    """The spec list of a preset, with its last layer sized for `num_classes`."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name].make(num_classes))


def preset_table(input_shape: Any = (28, 28, 1), num_classes: int = 10) -> list[dict]:
    """Name, parameters, FLOPs and description of every preset that fits the input shape."""
    rows = []
    for p in PRESETS.values():
        try:
            info = describe(p.make(num_classes), input_shape, num_classes)
            rows.append({"name": p.name, "params": info["total_params"], "flops": info["forward_flops"],
                         "description": p.description, "fits": True})
        except ValueError as error:
            rows.append({"name": p.name, "params": None, "flops": None, "description": p.description,
                         "fits": False, "reason": str(error)})
    return rows
