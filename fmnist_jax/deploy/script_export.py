"""The model as code: one standalone, readable Flax NNX + Optax training script for a model and its config.

The script imports no part of this project: the data come through TFDS (the four Fashion-MNIST files from
FMNIST_DATA_DIR when it is set), the layers are plain nnx modules written out one by one, and the
optimizer, schedule, loss, training loop and test evaluation are spelled out. It runs with
`--epochs N --limit N --seed S [--members M] --json` and prints a JSON last line with `test_accuracy`.
"""
from __future__ import annotations

import pprint
from typing import Any

from fmnist_jax.model import layer_specs
from fmnist_jax.training.config import OPTIMIZER_KINDS, ZERO_MEANS_NONE

ACTIVATION_CODE = {"relu": "jax.nn.relu(x)", "gelu": "jax.nn.gelu(x)", "elu": "jax.nn.elu(x)",
                   "leaky_relu": "jax.nn.leaky_relu(x, 0.01)", "tanh": "jnp.tanh(x)", "sigmoid": "jax.nn.sigmoid(x)"}
HE = ("relu", "leaky_relu", "elu", "gelu")


def _init(activation: str) -> str:
    return "nnx.initializers.he_uniform()" if activation in HE else "nnx.initializers.glorot_uniform()"


def _layer_code(index: int, layer: dict, in_shape: list[int]) -> tuple[list[str], list[str]]:  # long: one branch per layer type
    """(lines for __init__, lines for __call__) of one layer."""
    kind, name = layer["type"], f"self.layer{index}"
    init, call = [], []
    activation = layer.get("activation") or layer.get("function")
    if kind == "conv2d":
        k, s = layer["kernel"], layer["stride"]
        init.append(f"{name} = nnx.Conv({in_shape[-1]}, {layer['filters']}, kernel_size=({k}, {k}), strides=({s}, {s}), "
                    f"padding={layer['padding'].upper()!r}, use_bias={layer['use_bias']}, "
                    f"kernel_init={_init(activation)}, rngs=rngs)")
        call.append(f"x = {name}(x)  # Conv2D {layer['filters']} filters {k}x{k}, stride {s}, {layer['padding']}")
    elif kind == "dense":
        init.append(f"{name} = nnx.Linear({in_shape[0]}, {layer['units']}, use_bias={layer['use_bias']}, "
                    f"kernel_init={_init(activation)}, rngs=rngs)")
        call.append(f"x = {name}(x)  # Dense {layer['units']}")
    elif kind == "batchnorm":
        init.append(f"{name} = nnx.BatchNorm({in_shape[-1]}, momentum={layer['momentum']}, epsilon={layer['epsilon']}, "
                    f"rngs=rngs)")
        call.append(f"x = {name}(x)  # BatchNorm (batch statistics in training, running averages in evaluation)")
    elif kind == "residual":
        init.append(f"{name} = Residual({in_shape[-1]}, {layer['filters']}, stride={layer['stride']}, "
                    f"momentum={layer['momentum']}, epsilon={layer['epsilon']}, rngs=rngs)")
        call.append(f"x = {name}(x)  # Residual block, {layer['filters']} filters, stride {layer['stride']}")
    elif kind == "dropout":
        init.append(f"{name} = nnx.Dropout({layer['rate']}, rngs=rngs)")
        call.append(f"x = {name}(x)  # Dropout {layer['rate']} (training only)")
    elif kind in ("maxpool", "avgpool"):
        p, s = layer["pool"], layer["stride"]
        call.append(f"x = nnx.{'max_pool' if kind == 'maxpool' else 'avg_pool'}(x, window_shape=({p}, {p}), "
                    f"strides=({s}, {s}), padding={layer['padding'].upper()!r})")
    elif kind == "globalavgpool":
        call.append("x = x.mean(axis=(1, 2))  # global average pooling")
    elif kind == "flatten":
        call.append("x = x.reshape(x.shape[0], -1)  # flatten")
    elif kind != "activation":
        raise ValueError(f"the script export does not know the layer type {kind!r}")
    if activation and activation != "linear":
        call.append(f"x = {ACTIVATION_CODE[activation]}")
    return init, call


def training_script(spec: list, config: Any, input_shape: tuple, class_names: tuple, title: str = "model",
                    val_fraction: float = 0.1) -> str:
    """The script's text for `spec` trained with `config` (a TrainConfig) on inputs of `input_shape`, holding out
    `val_fraction` of the training images for validation (the official test set stays the test set)."""
    spec = layer_specs.normalize_spec(spec)
    rows = layer_specs.describe(spec, input_shape, len(class_names))["layers"]
    init_lines, call_lines = [], []
    for index, (layer, row) in enumerate(zip(spec, rows)):
        init, call = _layer_code(index, layer, row["input_shape"])
        init_lines += init
        call_lines += call
    cfg = config.to_dict()
    augment = {k: v for k, v in cfg["augment"].items() if v}
    settings = {k: cfg[k] for k in ("epochs", "batch_size", "optimizer", "learning_rate", "momentum", "nesterov",
                                    "beta1", "beta2", "rho", "epsilon", "schedule", "warmup_epochs",
                                    "step_every_epochs", "step_factor", "weight_decay", "grad_clip", "loss",
                                    "label_smoothing", "focal_gamma", "seed", "tta_flip", "ema_decay", "clean_epochs",
                                    "ensemble")}
    settings["flip"], settings["shift"], settings["crop"] = (cfg["augment"]["flip"], cfg["augment"]["shift"],
                                                             cfg["augment"]["crop"])
    settings["val_fraction"] = float(val_fraction)
    omitted = [f"augmentation {name}" for name in sorted(set(augment) - {"flip", "shift", "crop"})]
    return TEMPLATE.format(
        title=title, held_out=f"{val_fraction:.0%}", settings=pprint.pformat(settings, indent=4, sort_dicts=True),
        classes=repr(list(class_names)),
        shape=tuple(int(v) for v in input_shape), init="\n".join(f"        {line}" for line in init_lines) or "        pass",
        call="\n".join(f"        {line}" for line in call_lines),
        blocks=RESIDUAL_CODE if any(layer["type"] == "residual" for layer in spec) else "",
        optimizers=_optimizer_table(),
        omitted=(f"# Not included: the studio's {', '.join(omitted)} (flip, shift and crop augmentation are).\n" if omitted else ""))


def _optimizer_table() -> str:
    """The script's optimizer table, written from the studio's own (training/config.OPTIMIZER_KINDS), so an
    optimizer added there trains the same in the script."""
    lines = []
    for name, kind in OPTIMIZER_KINDS.items():
        arguments = ", ".join(f'{keyword}=s["{field}"]' + (" or None" if field in ZERO_MEANS_NONE else "")
                              for keyword, field in kind.arguments)
        lines.append(f'        "{name}": lambda: optax.{kind.optax_name}(lr, {arguments}),')
    return "\n".join(lines)


def model_script(model: Any, title: str = "model") -> str:
    """training_script for a loaded model (a run, a bundle, the demo): its layers and its training config
    (the defaults where it has none)."""
    from fmnist_jax.training.config import TrainConfig

    card = getattr(model, "card", None) or {}
    stored, split = card.get("config"), card.get("split")
    config = TrainConfig.from_dict(stored) if isinstance(stored, dict) else TrainConfig()
    official = isinstance(split, dict) and split.get("mode", "official") == "official"
    val_fraction = float(split.get("val_fraction", 0.1)) if official else 0.1  # the run's own validation share
    return training_script(model.spec, config, model.input_shape, model.class_names, title, val_fraction)


RESIDUAL_CODE = '''
class Residual(nnx.Module):
    """A ResNet basic block: 3x3 convolution, BatchNorm, ReLU, 3x3 convolution, BatchNorm, plus the shortcut (the
    input, or a 1x1 convolution with BatchNorm where the block strides or changes the channel count), then ReLU."""

    def __init__(self, channels, filters, stride, momentum, epsilon, rngs):
        he = nnx.initializers.he_uniform()
        # stride 2 pads one pixel on every side, so the windows centre on the pixels the 1x1 shortcut samples
        self.conv1 = nnx.Conv(channels, filters, kernel_size=(3, 3), strides=(stride, stride),
                              padding="SAME" if stride == 1 else ((1, 1), (1, 1)), use_bias=False, kernel_init=he,
                              rngs=rngs)
        self.bn1 = nnx.BatchNorm(filters, momentum=momentum, epsilon=epsilon, rngs=rngs)
        self.conv2 = nnx.Conv(filters, filters, kernel_size=(3, 3), padding="SAME", use_bias=False, kernel_init=he,
                              rngs=rngs)
        self.bn2 = nnx.BatchNorm(filters, momentum=momentum, epsilon=epsilon, rngs=rngs)
        if stride != 1 or channels != filters:
            self.project = nnx.Conv(channels, filters, kernel_size=(1, 1), strides=(stride, stride), padding="SAME",
                                    use_bias=False, kernel_init=nnx.initializers.glorot_uniform(), rngs=rngs)
            self.bn_project = nnx.BatchNorm(filters, momentum=momentum, epsilon=epsilon, rngs=rngs)
        else:
            self.project = self.bn_project = None

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.project is None else self.bn_project(self.project(x))
        return jax.nn.relu(y + shortcut)

'''

TEMPLATE = '''#!/usr/bin/env python
"""Train {title} on Fashion-MNIST: a standalone Flax NNX + Optax script exported by Fashion-MNIST Studio.

Data: TFDS `fashion_mnist`; with FMNIST_DATA_DIR set, TFDS reads Zalando's four *-ubyte.gz files from there
(its manual-download folder) instead of downloading them. {held_out} of the training images are held out for
validation, as in the run's split; the test set is the official one.

    python this_script.py --epochs 10 --json
"""
import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorflow_datasets as tfds
from flax import nnx

SETTINGS = {settings}
CLASS_NAMES = {classes}
INPUT_SHAPE = {shape}
{omitted}
{blocks}
class Net(nnx.Module):
    """The layers, as the studio's Model page listed them."""

    def __init__(self, rngs: nnx.Rngs):
{init}

    def __call__(self, x):
{call}
        return x


def load_data(seed, limit):
    """uint8 images (N, H, W, C) and int labels: train (first `limit`), validation and test."""
    manual = os.environ.get("FMNIST_DATA_DIR")
    config = tfds.download.DownloadConfig(manual_dir=manual) if manual else None
    train, test = tfds.load("fashion_mnist", split=["train", "test"], batch_size=-1, as_supervised=True,
                            download_and_prepare_kwargs={{"download_config": config}} if config else None)
    (x, y), (x_test, y_test) = tfds.as_numpy(train), tfds.as_numpy(test)
    order = np.random.default_rng(seed).permutation(len(y))
    held_out = int(round(SETTINGS["val_fraction"] * len(y)))
    val, keep = order[:held_out], np.sort(order[held_out:])
    keep = keep[:limit] if limit else keep
    return (x[keep], y[keep]), (x[val], y[val]), (x_test, y_test)


def schedule(steps_per_epoch):
    s, total = SETTINGS, max(1, SETTINGS["epochs"] * steps_per_epoch)
    if s["schedule"] == "cosine":
        return optax.cosine_decay_schedule(s["learning_rate"], total)
    if s["schedule"] == "warmup_cosine":
        warmup = min(total - 1, int(s["warmup_epochs"] * steps_per_epoch))
        return optax.warmup_cosine_decay_schedule(0.0, s["learning_rate"], warmup, total, end_value=0.0)
    if s["schedule"] == "one_cycle":
        return optax.cosine_onecycle_schedule(total, s["learning_rate"])
    if s["schedule"] == "step":
        every = s["step_every_epochs"]
        return optax.piecewise_constant_schedule(
            s["learning_rate"], {{e * steps_per_epoch: s["step_factor"] for e in range(every, s["epochs"], every)}})
    return optax.constant_schedule(s["learning_rate"])


def optimizer(steps_per_epoch):
    s, lr = SETTINGS, schedule(steps_per_epoch)
    base = {{
{optimizers}
    }}[s["optimizer"]]()
    chain = []
    if s["grad_clip"]:
        chain.append(optax.clip_by_global_norm(s["grad_clip"]))
    if s["weight_decay"] and s["optimizer"] != "adamw":
        chain.append(optax.add_decayed_weights(s["weight_decay"]))
    return optax.chain(*chain, base)


def loss_fn(logits, labels):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, len(CLASS_NAMES)), SETTINGS["label_smoothing"])
    if SETTINGS["loss"] == "focal":
        log_probs = jax.nn.log_softmax(logits)
        weight = (1.0 - jnp.exp(log_probs)) ** SETTINGS["focal_gamma"]
        return -(targets * weight * log_probs).sum(-1).mean()
    return optax.softmax_cross_entropy(logits, targets).mean()


def augment(images, key):
    """Random horizontal flips and whole-pixel shifts (pixels moved in from outside are black), per image: up to
    the shift's share of the side plus the crop's pixels either way."""
    flip_key, shift_key = jax.random.split(key)
    flipped = jax.random.uniform(flip_key, (images.shape[0], 1, 1, 1)) < SETTINGS["flip"]
    images = jnp.where(flipped, images[:, :, ::-1], images)
    limit = int(round(SETTINGS["shift"] * images.shape[1])) + int(SETTINGS["crop"])
    if limit:
        shifts = jax.random.randint(shift_key, (images.shape[0], 2), -limit, limit + 1)
        padded = jnp.pad(images, ((0, 0), (limit, limit), (limit, limit), (0, 0)))
        images = jax.vmap(lambda image, d: jax.lax.dynamic_slice(
            image, (limit - d[0], limit - d[1], 0), images.shape[1:]))(padded, shifts)
    return images


@nnx.jit
def train_step(model, opt, images, labels, key, augmenting):
    images = images.astype(jnp.float32) / 255.0
    if SETTINGS["flip"] or SETTINGS["shift"] or SETTINGS["crop"]:  # off in the last SETTINGS["clean_epochs"] epochs
        images = jax.lax.cond(augmenting, lambda x: augment(x, key), lambda x: x, images)

    def loss_of(model):
        return loss_fn(model(images), labels)

    loss, grads = nnx.value_and_grad(loss_of)(model)
    opt.update(model, grads)
    return loss


@nnx.jit
def average(model, averaged, step):
    """Weight averaging: `averaged` moves towards the model's weights and batch statistics by 1 - decay per
    step; the decay ramps up as (1 + step) / (10 + step) to SETTINGS["ema_decay"], so the random initial
    weights are forgotten within the first steps. Evaluation and the result use the averaged model."""
    rate = jnp.minimum(SETTINGS["ema_decay"], (1.0 + step) / (10.0 + step))
    kinds = (nnx.Param, nnx.BatchStat)
    nnx.update(averaged, jax.tree.map(lambda a, c: (rate * a + (1.0 - rate) * c).astype(a.dtype),
                                      nnx.state(averaged, kinds), nnx.state(model, kinds)))


@nnx.jit
def predict(model, images):
    x = images.astype(jnp.float32) / 255.0
    logits = model(x)
    if SETTINGS["tta_flip"]:  # test-time augmentation: the mean logits of each image and its mirror image
        logits = (logits + model(x[:, :, ::-1])) / 2
    return logits


def evaluate(models, images, labels, batch=1000):
    """(accuracy, loss) of the mean logits of `models` (one model, or an ensemble's members)."""
    logits = 0
    for model in models:
        model.eval()
        logits = logits + np.concatenate([np.asarray(predict(model, images[i:i + batch]))
                                          for i in range(0, len(labels), batch)])
        model.train()
    logits = logits / len(models)
    log_probs = jax.nn.log_softmax(logits)
    return float((logits.argmax(1) == labels).mean()), float(-np.take_along_axis(log_probs, labels[:, None], 1).mean())


def train_member(seed, x, y, x_val, y_val, epochs, report):
    """One network trained from `seed` (initial weights, order, augmentation); returns the model to keep."""
    steps = max(1, len(y) // SETTINGS["batch_size"])
    model = Net(nnx.Rngs(params=seed, dropout=seed + 1))
    opt = nnx.Optimizer(model, optimizer(steps), wrt=nnx.Param)
    averaged = nnx.clone(model) if SETTINGS["ema_decay"] else None
    kept = averaged or model  # the model evaluated and reported
    rng, key = np.random.default_rng(seed), jax.random.key(seed)
    for epoch in range(1, epochs + 1):
        augmenting = jnp.bool_(epoch <= epochs - min(SETTINGS["clean_epochs"], epochs))
        order = rng.permutation(len(y))
        for step in range(steps):
            batch = order[step * SETTINGS["batch_size"]:(step + 1) * SETTINGS["batch_size"]]
            key, step_key = jax.random.split(key)
            loss = train_step(model, opt, jnp.asarray(x[batch]), jnp.asarray(y[batch]), step_key, augmenting)
            if averaged is not None:
                average(model, averaged, jnp.float32((epoch - 1) * steps + step))
        if report:
            val_accuracy, _ = evaluate([kept], x_val, y_val)
            print(f"seed {{seed}}, epoch {{epoch}}: loss {{float(loss):.4f}}, validation accuracy {{val_accuracy:.4f}}")
    return kept


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=SETTINGS["epochs"])
    parser.add_argument("--limit", type=int, default=0, help="train on the first N training images (0: all)")
    parser.add_argument("--seed", type=int, default=SETTINGS["seed"])
    parser.add_argument("--members", type=int, default=SETTINGS["ensemble"],
                        help="an ensemble: train this many networks (seeds seed, seed + 1, ...) and average their logits")
    parser.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    args = parser.parse_args()
    SETTINGS["epochs"] = args.epochs
    (x, y), (x_val, y_val), (x_test, y_test) = load_data(args.seed, args.limit)
    start = time.time()
    members = [train_member(args.seed + k, x, y, x_val, y_val, args.epochs, not args.json)
               for k in range(max(1, args.members))]
    val_accuracy, _ = evaluate(members, x_val, y_val)
    test_accuracy, test_loss = evaluate(members, x_test, y_test)
    result = {{"test_accuracy": test_accuracy, "test_loss": test_loss, "val_accuracy": val_accuracy,
              "epochs": args.epochs, "members": len(members), "train_size": int(len(y)),
              "seconds": round(time.time() - start, 1)}}
    print(json.dumps(result) if args.json else f"test accuracy {{test_accuracy:.4f}}, loss {{test_loss:.4f}}")


if __name__ == "__main__":
    main()
'''
