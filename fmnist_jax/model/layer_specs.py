"""Layer specs: parameters of each layer type, the registry keyed by name, spec normalisation and
`describe` (shapes, parameters, FLOPs), which walks a spec exactly as the model builder does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from flax import nnx

from fmnist_jax.model.activations import ACTIVATIONS

Shape = tuple[int, ...]
MAX_LAYERS = 200


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
    # how many output-sized tensors one image's forward pass keeps for the backward pass (a block of several
    # operations keeps each one's result)
    kept_outputs: Callable[[dict, Shape], int] = lambda params, in_shape: 1


REGISTRY: dict[str, LayerType] = {}
ALIASES = {
    "conv": "conv2d", "convolution2d": "conv2d", "maxpooling2d": "maxpool", "maxpool2d": "maxpool",
    "averagepooling2d": "avgpool", "avgpool2d": "avgpool", "globalaveragepooling2d": "globalavgpool",
    "batchnormalization": "batchnorm", "linear": "dense", "fc": "dense", "resblock": "residual",
    "residualblock": "residual", "resnetblock": "residual",
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
            "activations": int(math.prod(step.out_shape) * step.layer_type.kept_outputs(step.params, step.in_shape)),
        })
    total_flops = sum(r["flops"] for r in rows)
    return {"layers": rows, "total_params": sum(r["params"] for r in rows), "forward_flops": total_flops,
            "train_flops_per_image": 3 * total_flops, "input_shape": list(check_input_shape(input_shape)),
            "num_classes": num_classes}


def _settings_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if k != "type")
