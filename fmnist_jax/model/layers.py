"""The Flax NNX modules behind each registered layer type, their registration, and `build_model`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from fmnist_jax.model.activations import ACTIVATIONS
from fmnist_jax.model.cpu_ops import _keep_mask, _tiled_pool, conv2d_apply, conv_impl_for
from fmnist_jax.model.layer_specs import (
    LayerType,
    Param,
    Shape,
    _same_pads,
    _spatial_out,
    _walk,
    check_input_shape,
    register,
)

# ----------------------------------------------------------------------------- forward context

@dataclass
class Context:
    """What a forward pass needs besides the input: train mode, dropout key, compute dtype, and the row of the
    whole batch the input starts at (a piece of a micro-batched gradient draws its slice of the batch's masks)."""

    train: bool = False
    rng: jax.Array | None = None
    dtype: Any = jnp.float32
    conv_impl: str = "xla"
    row_offset: Any = 0


def _initializer(activation: str) -> Callable:
    """He initialisation before ReLU-like activations, Glorot otherwise (Keras' default)."""
    if activation in ("relu", "leaky_relu", "elu", "gelu"):
        return jax.nn.initializers.he_uniform()
    return jax.nn.initializers.glorot_uniform()


class Conv2D(nnx.Module):
    """Convolution with bias and an optional activation."""

    def __init__(self, params: dict, in_shape: Shape, rngs: nnx.Rngs):
        shape = (params["kernel"], params["kernel"], in_shape[-1], params["filters"])
        self.kernel = nnx.Param(_initializer(params["activation"])(rngs.params(), shape))
        self.bias = nnx.Param(jnp.zeros((params["filters"],))) if params["use_bias"] else None
        self.stride, self.padding, self.activation = params["stride"], params["padding"], params["activation"]

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        impl = conv_impl_for(ctx.conv_impl, ctx.train)
        y = conv2d_apply(x.astype(ctx.dtype), self.kernel[...].astype(ctx.dtype), self.stride, self.padding, impl)
        if self.bias is not None:
            y = y + self.bias[...].astype(ctx.dtype)
        return ACTIVATIONS[self.activation](y)


class Dense(nnx.Module):
    """Fully connected layer with an optional activation."""

    def __init__(self, params: dict, in_shape: Shape, rngs: nnx.Rngs):
        self.kernel = nnx.Param(_initializer(params["activation"])(rngs.params(), (in_shape[0], params["units"])))
        self.bias = nnx.Param(jnp.zeros((params["units"],))) if params["use_bias"] else None
        self.activation = params["activation"]

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        y = x.astype(ctx.dtype) @ self.kernel[...].astype(ctx.dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(ctx.dtype)
        return ACTIVATIONS[self.activation](y)


class BatchNorm(nnx.Module):
    """Batch normalisation over all axes but the last, with bias-corrected running statistics.

    The running averages start at zero and are divided by (1 - momentum**updates), as Adam does
    with its moments, so a model trained for only a few dozen steps evaluates with the statistics
    of the data it saw instead of a blend dominated by the initial (0, 1).
    """

    def __init__(self, params: dict, in_shape: Shape, rngs: nnx.Rngs):
        features = in_shape[-1]
        self.scale = nnx.Param(jnp.ones((features,)))
        self.bias = nnx.Param(jnp.zeros((features,)))
        self.mean = nnx.BatchStat(jnp.zeros((features,)))
        self.var = nnx.BatchStat(jnp.zeros((features,)))
        self.updates = nnx.BatchStat(jnp.zeros((), jnp.float32))
        self.momentum, self.epsilon = params["momentum"], params["epsilon"]

    def running_stats(self) -> tuple[jax.Array, jax.Array]:
        """(mean, variance) used at inference: bias-corrected averages, or (0, 1) before any update."""
        correction = 1.0 - self.momentum ** self.updates[...]
        trained = self.updates[...] > 0
        safe = jnp.where(trained, correction, 1.0)
        return (jnp.where(trained, self.mean[...] / safe, 0.0), jnp.where(trained, self.var[...] / safe, 1.0))

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        axes = tuple(range(x.ndim - 1))
        if ctx.train:
            x32 = x.astype(jnp.float32)
            mean = x32.mean(axes)
            var = jnp.maximum((x32 * x32).mean(axes) - mean * mean, 0.0)
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
            self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var)
            self.updates[...] = self.updates[...] + 1.0
        else:
            mean, var = self.running_stats()
        inv = jax.lax.rsqrt(var + self.epsilon) * self.scale[...]
        return (x * inv.astype(x.dtype) + (self.bias[...] - mean * inv).astype(x.dtype)).astype(x.dtype)


class Residual(nnx.Module):
    """A ResNet basic block: 3x3 convolution, BatchNorm, ReLU, 3x3 convolution, BatchNorm, plus the shortcut, then
    ReLU. The shortcut is the input itself, or a 1x1 convolution with BatchNorm where the block changes the number
    of channels or strides (He et al. 2016, option B)."""

    def __init__(self, params: dict, in_shape: Shape, rngs: nnx.Rngs):
        filters, channels = params["filters"], in_shape[-1]
        norm = {"momentum": params["momentum"], "epsilon": params["epsilon"]}
        he = jax.nn.initializers.he_uniform()
        self.conv1 = nnx.Param(he(rngs.params(), (3, 3, channels, filters)))
        self.bn1 = BatchNorm(norm, in_shape[:-1] + (filters,), rngs)
        self.conv2 = nnx.Param(he(rngs.params(), (3, 3, filters, filters)))
        self.bn2 = BatchNorm(norm, in_shape[:-1] + (filters,), rngs)
        self.stride = params["stride"]
        if residual_projects(params, in_shape):
            self.project = nnx.Param(jax.nn.initializers.glorot_uniform()(rngs.params(), (1, 1, channels, filters)))
            self.bn_project = BatchNorm(norm, in_shape[:-1] + (filters,), rngs)
        else:
            self.project, self.bn_project = None, None

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        impl = conv_impl_for(ctx.conv_impl, ctx.train)
        x = x.astype(ctx.dtype)
        y = conv2d_apply(residual_padded(x, self.stride), self.conv1[...].astype(ctx.dtype), self.stride,
                         residual_padding(self.stride), impl)
        y = jax.nn.relu(self.bn1(y, ctx))
        y = self.bn2(conv2d_apply(y, self.conv2[...].astype(ctx.dtype), 1, "same", impl), ctx)
        shortcut = x
        if self.project is not None:
            shortcut = self.bn_project(conv2d_apply(x, self.project[...].astype(ctx.dtype), self.stride, "same", impl), ctx)
        return jax.nn.relu(y + shortcut)


def residual_padded(x: jax.Array, stride: int) -> jax.Array:
    """The input of a residual block's first convolution: with stride 2, padded by one pixel on every side, so
    its windows centre on the pixels (2i, 2j) the 1x1 shortcut samples ('same' padding would pad (0, 1) on an
    even side and centre them one pixel off, as TensorFlow's 'SAME' does); with stride 1, as it is."""
    return x if stride == 1 else jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


def residual_padding(stride: int) -> str:
    """The padding mode of a residual block's first convolution, after `residual_padded`."""
    return "same" if stride == 1 else "valid"


def residual_projects(params: dict, in_shape: Shape) -> bool:
    """Whether a residual block needs the 1x1 projection shortcut (it strides, or changes the channel count)."""
    return params["stride"] != 1 or in_shape[-1] != params["filters"]


class Stateless(nnx.Module):
    """A layer with no parameters: pooling, dropout, flatten, activation."""

    def __init__(self, kind: str, params: dict, index: int):
        self.kind, self.index = kind, index
        self.opts = tuple(sorted(params.items()))

    def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
        opts = dict(self.opts)
        if self.kind in ("maxpool", "avgpool"):
            window, stride = opts["pool"], opts["stride"]
            if window == stride and (opts["padding"] == "valid" or (x.shape[1] % window == 0 and x.shape[2] % window == 0)):
                return _tiled_pool(x, window, self.kind)
            if window == stride and self.kind == "maxpool":  # SAME: pad with -inf the way XLA pads, then tile
                pads = ((0, 0), _same_pads(x.shape[1], window, stride), _same_pads(x.shape[2], window, stride), (0, 0))
                return _tiled_pool(jnp.pad(x, pads, constant_values=-jnp.inf), window, self.kind)
            pad = "SAME" if opts["padding"] == "same" else "VALID"
            dims, strides = (1, window, window, 1), (1, stride, stride, 1)
            if self.kind == "maxpool":
                return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, pad)
            summed = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, pad)
            counts = jax.lax.reduce_window(jnp.ones_like(x[:1, ..., :1]), 0.0, jax.lax.add, dims, strides, pad)
            return summed / counts
        if self.kind == "globalavgpool":
            return x.mean(axis=(1, 2))
        if self.kind == "flatten":
            return x.reshape(x.shape[0], -1)
        if self.kind == "activation":
            return ACTIVATIONS[opts["function"]](x)
        if self.kind == "dropout":
            rate = opts["rate"]
            if not ctx.train or rate == 0.0 or ctx.rng is None:
                return x
            keep = _keep_mask(jax.random.fold_in(ctx.rng, self.index), 1.0 - rate, x.shape, ctx.row_offset)
            return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)
        raise ValueError(f"unknown stateless layer {self.kind}")


# ----------------------------------------------------------------------------- registry

_ACT = Param("activation", str, "linear", "Activation after the layer", choices=tuple(ACTIVATIONS))
_PAD = Param("padding", str, "valid", "'same' keeps the size (stride 1); 'valid' shrinks it", choices=("same", "valid"))


def _no_params(params: dict, shape: Shape) -> dict[str, Shape]:
    return {}


register(LayerType(
    "conv2d", "Conv2D", "2-D convolution over the image",
    (Param("filters", int, 32, "Number of output channels", 1, 4096),
     Param("kernel", int, 3, "Kernel size (square)", 1, 31),
     Param("stride", int, 1, "Step between windows", 1, 8),
     _PAD, _ACT,
     Param("use_bias", bool, True, "Add a learned bias")),
    out_shape=lambda p, s, w: _spatial_out(p, s, p["filters"], "kernel", w),
    param_shapes=lambda p, s: {"kernel": (p["kernel"], p["kernel"], s[-1], p["filters"]),
                               **({"bias": (p["filters"],)} if p["use_bias"] else {})},
    flops=lambda p, s, o: 2 * o[0] * o[1] * o[2] * p["kernel"] ** 2 * s[-1] + (o[0] * o[1] * o[2] if p["activation"] != "linear" else 0),
    module=lambda p, s, rngs, i: Conv2D(p, s, rngs), spatial_input=True))

for _pool in ("maxpool", "avgpool"):
    register(LayerType(
        _pool, "MaxPool" if _pool == "maxpool" else "AvgPool",
        "Keeps the largest value of each window" if _pool == "maxpool" else "Averages each window",
        (Param("pool", int, 2, "Window size (square)", 1, 16),
         Param("stride", int, 2, "Step between windows", 1, 16), _PAD),
        out_shape=lambda p, s, w: _spatial_out(p, s, s[-1], "pool", w),
        param_shapes=_no_params,
        flops=lambda p, s, o: o[0] * o[1] * o[2] * p["pool"] ** 2,
        module=(lambda kind: lambda p, s, rngs, i: Stateless(kind, p, i))(_pool), spatial_input=True))

register(LayerType(
    "globalavgpool", "GlobalAvgPool", "Averages each channel over the whole image -> a vector", (),
    out_shape=lambda p, s, w: (s[-1],), param_shapes=_no_params,
    flops=lambda p, s, o: s[0] * s[1] * s[2],
    module=lambda p, s, rngs, i: Stateless("globalavgpool", p, i), spatial_input=True))

register(LayerType(
    "batchnorm", "BatchNorm", "Normalises each channel with batch statistics",
    (Param("momentum", float, 0.9, "Running-average momentum", 0.0, 0.9999),
     Param("epsilon", float, 1e-5, "Added to the variance", 1e-12, 1.0)),
    out_shape=lambda p, s, w: s,
    param_shapes=lambda p, s: {"scale": (s[-1],), "bias": (s[-1],)},
    flops=lambda p, s, o: 2 * math.prod(s),
    module=lambda p, s, rngs, i: BatchNorm(p, s, rngs)))

register(LayerType(
    "dropout", "Dropout", "Zeroes a random fraction of values while training",
    (Param("rate", float, 0.25, "Fraction dropped", 0.0, 0.95),),
    out_shape=lambda p, s, w: s, param_shapes=_no_params, flops=lambda p, s, o: math.prod(s),
    module=lambda p, s, rngs, i: Stateless("dropout", p, i)))

register(LayerType(
    "flatten", "Flatten", "Turns the image-shaped tensor into a vector", (),
    out_shape=lambda p, s, w: (math.prod(s),), param_shapes=_no_params, flops=lambda p, s, o: 0,
    module=lambda p, s, rngs, i: Stateless("flatten", p, i), spatial_input=True))

register(LayerType(
    "dense", "Dense", "Fully connected layer",
    (Param("units", int, 128, "Number of outputs", 1, 65536), _ACT,
     Param("use_bias", bool, True, "Add a learned bias")),
    out_shape=lambda p, s, w: (p["units"],),
    param_shapes=lambda p, s: {"kernel": (s[0], p["units"]), **({"bias": (p["units"],)} if p["use_bias"] else {})},
    flops=lambda p, s, o: 2 * s[0] * p["units"] + (p["units"] if p["activation"] != "linear" else 0),
    module=lambda p, s, rngs, i: Dense(p, s, rngs), spatial_input=False))


def _residual_param_shapes(p: dict, s: Shape) -> dict[str, Shape]:
    f, c = p["filters"], s[-1]
    shapes = {"conv1": (3, 3, c, f), "bn1.scale": (f,), "bn1.bias": (f,), "conv2": (3, 3, f, f), "bn2.scale": (f,),
              "bn2.bias": (f,)}
    if residual_projects(p, s):
        shapes.update({"project": (1, 1, c, f), "bn_project.scale": (f,), "bn_project.bias": (f,)})
    return shapes


def _residual_flops(p: dict, s: Shape, o: Shape) -> int:
    pixels, f, c = o[0] * o[1], p["filters"], s[-1]
    convs = 2 * pixels * f * 9 * c + 2 * pixels * f * 9 * f
    extra = 2 * pixels * f * c + 2 * pixels * f if residual_projects(p, s) else 0
    return convs + extra + 7 * pixels * f  # two BatchNorms (2 each), two ReLUs and the addition


register(LayerType(
    "residual", "Residual", "ResNet block: two 3×3 convolutions with BatchNorm and a shortcut",
    (Param("filters", int, 64, "Number of output channels", 1, 4096),
     Param("stride", int, 1, "2 halves the image's size (the shortcut then has a 1×1 convolution)", 1, 2),
     Param("momentum", float, 0.9, "BatchNorm running-average momentum", 0.0, 0.9999),
     Param("epsilon", float, 1e-5, "Added to the variance in BatchNorm", 1e-12, 1.0)),
    out_shape=lambda p, s, w: (math.ceil(s[0] / p["stride"]), math.ceil(s[1] / p["stride"]), p["filters"]),
    param_shapes=_residual_param_shapes, flops=_residual_flops,
    module=lambda p, s, rngs, i: Residual(p, s, rngs), spatial_input=True,
    # two convolutions, two BatchNorms, the inner ReLU, the sum and the last ReLU (+ the shortcut's two)
    kept_outputs=lambda p, s: 9 if residual_projects(p, s) else 7))

register(LayerType(
    "activation", "Activation", "An element-wise non-linearity",
    (Param("function", str, "relu", "Which function", choices=tuple(a for a in ACTIVATIONS if a != "linear")),),
    out_shape=lambda p, s, w: s, param_shapes=_no_params, flops=lambda p, s, o: math.prod(s),
    module=lambda p, s, rngs, i: Stateless("activation", p, i)))


class SpecModel(nnx.Module):
    """The network a spec describes; call as model(images, Context(...)) -> logits."""

    def __init__(self, spec: Any, input_shape: Any = (28, 28, 1), num_classes: int = 10, *, seed: int = 0):
        rngs = nnx.Rngs(params=seed)
        steps = list(_walk(spec, input_shape, num_classes))
        self.spec = [dict(s.params) for s in steps]
        self.input_shape, self.num_classes = tuple(check_input_shape(input_shape)), num_classes
        self.layers = nnx.List([s.layer_type.module(s.params, s.in_shape, rngs, s.index) for s in steps])

    def __call__(self, images: jax.Array, ctx: Context | None = None) -> jax.Array:
        ctx = ctx or Context()
        x = images
        for layer in self.layers:
            x = layer(x, ctx)
        return x.astype(jnp.float32)


def build_model(spec: Any, input_shape: Any = (28, 28, 1), num_classes: int = 10, seed: int = 0) -> SpecModel:
    """Build the Flax NNX model for a spec (raises ValueError naming the bad layer)."""
    return SpecModel(spec, input_shape, num_classes, seed=seed)


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters of a built model."""
    return int(sum(x.size for x in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param))))
