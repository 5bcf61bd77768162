"""Layer specs -> validated Flax NNX model, with shape, parameter and FLOP inference and presets.

A model is a list of layer specs: dicts such as ``{"type": "conv2d", "filters": 32, "kernel": 3}``.
Every layer type lives in one registry. ``describe`` and ``build_model`` walk the spec through the
same ``_walk`` function, so the table the Model page shows is exactly the network that trains.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

Shape = tuple[int, ...]
MAX_LAYERS = 200
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "linear": lambda x: x,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
    "leaky_relu": lambda x: jax.nn.leaky_relu(x, 0.01),
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
}
CONV_IMPLS = ("auto", "xla", "im2col", "xla_dots")


@dataclass(frozen=True)
class Param:
    """One parameter of a layer type: its Python type, default, and allowed range or choices."""

    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    def check(self, value: Any, where: str) -> Any:
        """Return `value` coerced to this parameter's type, or raise ValueError naming `where`."""
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{where}: '{self.name}' must be true or false, got {value!r}")
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
                raise ValueError(f"{where}: '{self.name}' must be a whole number, got {value!r}")
            value = int(value)
        elif self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{where}: '{self.name}' must be a finite number, got {value!r}")
            value = float(value)
        elif self.kind is str:
            if not isinstance(value, str):
                raise ValueError(f"{where}: '{self.name}' must be text, got {value!r}")
            value = value.strip().lower()
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{where}: '{self.name}' must be one of {', '.join(self.choices)}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ValueError(f"{where}: '{self.name}' must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise ValueError(f"{where}: '{self.name}' must be at most {self.maximum}, got {value}")
        return value


@dataclass(frozen=True)
class LayerType:
    """A registered layer: its parameters, shape rule, parameter shapes, FLOPs and module class."""

    name: str
    label: str
    description: str
    params: tuple[Param, ...]
    out_shape: Callable[[dict, Shape, str], Shape]
    param_shapes: Callable[[dict, Shape], dict[str, Shape]]
    flops: Callable[[dict, Shape, Shape], int]
    module: Callable[..., nnx.Module]
    spatial_input: bool | None = None  # True: needs (H, W, C); False: needs flat (F,); None: any


REGISTRY: dict[str, LayerType] = {}
ALIASES = {
    "conv": "conv2d", "convolution2d": "conv2d", "maxpooling2d": "maxpool", "maxpool2d": "maxpool",
    "averagepooling2d": "avgpool", "avgpool2d": "avgpool", "globalaveragepooling2d": "globalavgpool",
    "batchnormalization": "batchnorm", "linear": "dense", "fc": "dense",
}


def register(layer_type: LayerType) -> LayerType:
    """Add a layer type to the registry (keyed by its lower-case name)."""
    REGISTRY[layer_type.name] = layer_type
    return layer_type


# ----------------------------------------------------------------------------- shape helpers

def _window_out(size: int, window: int, stride: int, padding: str) -> int:
    if padding == "same":
        return math.ceil(size / stride)
    return (size - window) // stride + 1


def _same_pads(size: int, window: int, stride: int) -> tuple[int, int]:
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _spatial_out(params: dict, shape: Shape, channels: int, window_key: str, where: str) -> Shape:
    height, width, _ = shape
    window, stride, padding = params[window_key], params["stride"], params["padding"]
    out_h = _window_out(height, window, stride, padding)
    out_w = _window_out(width, window, stride, padding)
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"{where}: a {window}x{window} window with stride {stride} and '{padding}' padding "
            f"shrinks the {height}x{width} input below 1 pixel; use 'same' padding, a smaller "
            f"window, or remove a pooling layer before it")
    return (out_h, out_w, channels)


# ----------------------------------------------------------------------------- forward context

@dataclass
class Context:
    """What a forward pass needs besides the input: train mode, dropout key, compute dtype."""

    train: bool = False
    rng: jax.Array | None = None
    dtype: Any = jnp.float32
    conv_impl: str = "xla"


# ----------------------------------------------------------------------------- modules

def conv2d_apply(x: jax.Array, kernel: jax.Array, stride: int, padding: str, impl: str) -> jax.Array:
    """2-D convolution, NHWC x HWIO: XLA's convolution, patches @ matrix, or XLA's forward with matmul gradients.

    On CPU, XLA lowers the gradients of a convolution to slow generic loops (the kernel gradient is a
    convolution whose window is the whole image), while its forward convolution and its matmuls are
    fast. 'xla_dots' keeps XLA's forward (so inference never builds patches) and computes both
    gradients from patches with matmuls; 'im2col' does everything as one matmul over extracted
    patches. All give the same numbers up to float rounding.
    """
    if impl == "xla":
        return _xla_conv(x, kernel, stride, padding)
    if impl == "xla_dots" and stride == 1:
        return _conv_matmul_grads(x, kernel, padding)
    kh, kw, cin, cout = kernel.shape
    return _patches(x, kh, kw, stride, padding) @ kernel.reshape(kh * kw * cin, cout)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: str) -> jax.Array:
    pad = "SAME" if padding == "same" else "VALID"
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _padding(x: jax.Array, kh: int, kw: int, stride: int, padding: str) -> tuple[tuple[int, int], tuple[int, int]]:
    if padding != "same":
        return (0, 0), (0, 0)
    return _same_pads(x.shape[1], kh, stride), _same_pads(x.shape[2], kw, stride)


def _patches(x: jax.Array, kh: int, kw: int, stride: int, padding: str) -> jax.Array:
    """(B, out_h, out_w, kh*kw*C): every output position's input window, taps in (row, column) order."""
    pad_h, pad_w = _padding(x, kh, kw, stride, padding)
    out_h = _window_out(x.shape[1], kh, stride, padding)
    out_w = _window_out(x.shape[2], kw, stride, padding)
    if padding == "same":
        x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    taps = [x[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride, :]
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_matmul_grads(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    return _xla_conv(x, kernel, 1, padding)


def _conv_matmul_grads_fwd(x: jax.Array, kernel: jax.Array, padding: str) -> tuple[jax.Array, tuple]:
    return _xla_conv(x, kernel, 1, padding), (x, kernel)


def _conv_matmul_grads_bwd(padding: str, residuals: tuple, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    batch, out_h, out_w, _ = grad.shape
    grad_kernel = jnp.einsum("bhwk,bhwo->ko", _patches(x, kh, kw, 1, padding), grad).reshape(kernel.shape)
    # input gradient: each output position's patch gradient (one matmul), added back onto the padded image
    patch_grads = (grad @ kernel.reshape(kh * kw * cin, cout).T).reshape(batch, out_h, out_w, kh * kw, cin)
    pad_h, pad_w = _padding(x, kh, kw, 1, padding)
    full_h, full_w = x.shape[1] + sum(pad_h), x.shape[2] + sum(pad_w)
    grad_padded = sum(
        jnp.pad(patch_grads[:, :, :, i * kw + j, :], ((0, 0), (i, full_h - out_h - i), (j, full_w - out_w - j), (0, 0)))
        for i in range(kh) for j in range(kw))
    grad_x = grad_padded[:, pad_h[0]:pad_h[0] + x.shape[1], pad_w[0]:pad_w[0] + x.shape[2], :]
    return grad_x.astype(x.dtype), grad_kernel.astype(kernel.dtype)


_conv_matmul_grads.defvjp(_conv_matmul_grads_fwd, _conv_matmul_grads_bwd)


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
        y = conv2d_apply(x.astype(ctx.dtype), self.kernel[...].astype(ctx.dtype), self.stride, self.padding, ctx.conv_impl)
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


def _tiled_pool(x: jax.Array, window: int, kind: str) -> jax.Array:
    """Non-overlapping pooling as a reshape and a reduction (same values as reduce_window, VALID padding).

    XLA's CPU backend turns the gradient of a max reduce_window into a select-and-scatter that
    builds index tensors for every window (a quarter of dls's step time); the gradient of a plain
    max reduction is one fused compare-and-select.
    """
    batch, height, width, channels = x.shape
    out_h, out_w = height // window, width // window
    tiles = x[:, :out_h * window, :out_w * window, :].reshape(batch, out_h, window, out_w, window, channels)
    return tiles.max(axis=(2, 4)) if kind == "maxpool" else tiles.mean(axis=(2, 4))


def _keep_mask(key: jax.Array, keep_probability: float, shape: Shape) -> jax.Array:
    """Bernoulli(keep_probability) mask from 16-bit uniforms, two per 32-bit random word.

    The counter-based generator costs the same per 32-bit word whatever the output type, and dropout
    masks are a tenth of a CPU training step; 1/65536 steps are finer than any rate anyone sets.
    """
    size = math.prod(shape)
    words = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
    halves = jnp.concatenate([words & 0xFFFF, words >> 16])[:size]
    return (halves < round(keep_probability * 65536)).reshape(shape)


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
            keep = _keep_mask(jax.random.fold_in(ctx.rng, self.index), 1.0 - rate, x.shape)
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

register(LayerType(
    "activation", "Activation", "An element-wise non-linearity",
    (Param("function", str, "relu", "Which function", choices=tuple(a for a in ACTIVATIONS if a != "linear")),),
    out_shape=lambda p, s, w: s, param_shapes=_no_params, flops=lambda p, s, o: math.prod(s),
    module=lambda p, s, rngs, i: Stateless("activation", p, i)))


# ----------------------------------------------------------------------------- spec handling

def normalize_layer(layer: Any, index: int) -> dict:
    """Validate one layer spec and return it with every parameter filled in."""
    if not isinstance(layer, dict):
        raise ValueError(f"layer {index}: expected an object like {{\"type\": \"dense\", \"units\": 10}}, got {type(layer).__name__}")
    raw_type = layer.get("type")
    if not isinstance(raw_type, str) or not raw_type.strip():
        raise ValueError(f"layer {index}: missing 'type' (one of {', '.join(REGISTRY)})")
    key = raw_type.strip().lower().replace("-", "").replace(" ", "")
    key = ALIASES.get(key, key)
    if key in ACTIVATIONS and key != "linear":
        layer = {"type": "activation", "function": key, **{k: v for k, v in layer.items() if k != "type"}}
        key = "activation"
    if key not in REGISTRY:
        raise ValueError(f"layer {index} ({raw_type}): unknown layer type; choose one of {', '.join(REGISTRY)}")
    layer_type = REGISTRY[key]
    where = f"layer {index} ({layer_type.label})"
    known = {p.name for p in layer_type.params}
    unknown = sorted(set(layer) - known - {"type"})
    if unknown:
        allowed = ", ".join(sorted(known)) or "no parameters"
        raise ValueError(f"{where}: unknown parameter(s) {', '.join(unknown)}; allowed: {allowed}")
    out = {"type": key}
    for param in layer_type.params:
        out[param.name] = param.check(layer.get(param.name, param.default), where)
    return out


def normalize_spec(spec: Any) -> list[dict]:
    """Validate a whole spec's layers (types and parameters, not shapes) and fill in defaults."""
    if isinstance(spec, dict) and "layers" in spec:
        spec = spec["layers"]
    if not isinstance(spec, (list, tuple)):
        raise ValueError("a model spec must be a list of layers")
    if not spec:
        raise ValueError("the model has no layers; add at least one Dense layer for the classes")
    if len(spec) > MAX_LAYERS:
        raise ValueError(f"the model has {len(spec)} layers; the limit is {MAX_LAYERS}")
    return [normalize_layer(layer, i) for i, layer in enumerate(spec)]


def check_input_shape(input_shape: Any) -> Shape:
    """Validate an (H, W, C) input shape."""
    try:
        shape = tuple(int(v) for v in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input shape must be (height, width, channels), got {input_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1 or shape[2] > 4 or max(shape[:2]) > 512:
        raise ValueError(f"input shape must be (height, width, channels) with sides 1-512 and 1-4 channels, got {input_shape!r}")
    return shape


@dataclass
class LayerStep:
    """One layer of a walked spec."""

    index: int
    layer_type: LayerType
    params: dict
    in_shape: Shape
    out_shape: Shape


def _walk(spec: Any, input_shape: Any, num_classes: int) -> Iterator[LayerStep]:
    layers = normalize_spec(spec)
    shape = check_input_shape(input_shape)
    if not isinstance(num_classes, int) or not 2 <= num_classes <= 1000:
        raise ValueError(f"number of classes must be 2-1000, got {num_classes!r}")
    for index, params in enumerate(layers):
        layer_type = REGISTRY[params["type"]]
        where = f"layer {index} ({layer_type.label})"
        if layer_type.spatial_input is True and len(shape) != 3:
            raise ValueError(f"{where}: needs an image-shaped input (H, W, C) but gets the vector {shape}; "
                             f"move it before Flatten/GlobalAvgPool")
        if layer_type.spatial_input is False and len(shape) != 1:
            raise ValueError(f"{where}: gets the image-shaped input {shape}; add Flatten or GlobalAvgPool before it")
        out = tuple(int(v) for v in layer_type.out_shape(params, shape, where))
        yield LayerStep(index, layer_type, params, shape, out)
        shape = out
    if shape != (num_classes,):
        raise ValueError(f"the model ends with output shape {shape} but the dataset has {num_classes} classes; "
                         f"end with Flatten/GlobalAvgPool and Dense({num_classes}) without activation")
    last = layers[-1]
    if last["type"] == "dense" and last["activation"] != "linear":
        raise ValueError(f"layer {len(layers) - 1} (Dense): the last layer must output raw logits; set its activation to 'linear'")


def describe(spec: Any, input_shape: Any = (28, 28, 1), num_classes: int = 10) -> dict:
    """Per-layer output shape, parameter count and forward FLOPs, plus totals; raises ValueError on invalid stacks."""
    rows = []
    for step in _walk(spec, input_shape, num_classes):
        shapes = step.layer_type.param_shapes(step.params, step.in_shape)
        params = sum(math.prod(s) for s in shapes.values())
        rows.append({
            "index": step.index, "type": step.layer_type.label, "settings": _settings_text(step.params),
            "input_shape": list(step.in_shape), "output_shape": list(step.out_shape),
            "params": int(params), "flops": int(step.layer_type.flops(step.params, step.in_shape, step.out_shape)),
        })
    total_flops = sum(r["flops"] for r in rows)
    return {"layers": rows, "total_params": sum(r["params"] for r in rows), "forward_flops": total_flops,
            "train_flops_per_image": 3 * total_flops, "input_shape": list(check_input_shape(input_shape)),
            "num_classes": num_classes}


def _settings_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if k != "type")


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


def resolve_conv_impl(conv_impl: str = "auto") -> str:
    """'auto' -> 'xla_dots' on CPU (XLA's forward, matmul gradients; measured in bench/NOTES.md), XLA's convolution elsewhere."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {', '.join(CONV_IMPLS)}, got {conv_impl!r}")
    if conv_impl != "auto":
        return conv_impl
    return "xla_dots" if jax.default_backend() == "cpu" else "xla"


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


def _fast(num_classes: int) -> list[dict]:
    return [*_bn_block(32), {"type": "maxpool", "pool": 2, "stride": 2},
            *_bn_block(64), {"type": "maxpool", "pool": 2, "stride": 2},
            *_bn_block(128), {"type": "maxpool", "pool": 2, "stride": 2},
            {"type": "flatten"}, {"type": "dropout", "rate": 0.3},
            {"type": "dense", "units": 128, "activation": "relu"}, {"type": "dense", "units": num_classes}]


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
           "10 epochs of batch 32, Adam 3e-3 with a one-cycle schedule, label smoothing 0.1 and random "
           "horizontal flips: chosen on validation accuracy; it reached 93.1% test accuracy in 293 s on a "
           "2-core CPU (bench/time_to_accuracy.py, 2026-11-29)."),
    Preset("dls", "The seed article's Deep Learning Studio CNN, layer for layer (1,421,194 params)", _dls),
    Preset("lenet", "LeNet-5 style: two tanh conv layers with average pooling", _lenet),
    Preset("wide", "Wider VGG-style BatchNorm network for GPUs and long CPU runs", _wide),
)}


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
