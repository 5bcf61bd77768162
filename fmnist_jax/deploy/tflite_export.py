"""Mobile export: a TensorFlow Lite model with the same answers as JAX.

The layer list is rebuilt as a Keras model (every layer type maps onto one Keras layer with the same
arithmetic: HWIO convolution kernels, NHWC flattening, XLA's and TensorFlow's 'same' padding agree), the
trained weights are copied in, the model's temperature and a softmax are appended, and TensorFlow's
converter writes the .tflite file. Input: float32 (N, H, W, C) in [0, 1]; output: calibrated
probabilities. The file is checked with the TFLite interpreter against JAX before it is handed out.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fmnist_jax.deploy.bundle import ONNX_TOLERANCE, ExportError

TOLERANCE = ONNX_TOLERANCE


def _keras_layers(spec: list[dict], weights: dict, keras: Any, prefix: str = "") -> list[tuple[Any, list | None]]:  # long: one branch per layer type
    """(Keras layer, its weights or None) for each studio layer, plus separate activations; names start with
    `prefix` (an ensemble's members each have their own layers)."""
    activations = {"relu": "relu", "elu": "elu", "tanh": "tanh", "sigmoid": "sigmoid"}

    def activation_layer(name: str, index: int) -> Any:
        label = f"{prefix}layer{index}_{name}"
        if name == "gelu":
            return keras.layers.Activation(lambda x: keras.activations.gelu(x, approximate=True), name=label)
        if name == "leaky_relu":
            return keras.layers.LeakyReLU(negative_slope=0.01, name=label)
        return keras.layers.Activation(activations[name], name=label)

    params, stats = weights["params"]["layers"], weights["batch_stats"].get("layers", {})
    out: list[tuple[Any, list | None]] = []
    for index, layer in enumerate(spec):
        # Explicit names: Keras numbers unnamed layers per process, and two exports at once (the Deploy page's
        # background tasks) could both take "activation".
        kind, own, name = layer["type"], params.get(index, {}), f"{prefix}layer{index}_{layer['type']}"
        if kind == "conv2d":
            values = [own["kernel"]] + ([own["bias"]] if layer["use_bias"] else [])
            out.append((keras.layers.Conv2D(layer["filters"], layer["kernel"], strides=layer["stride"],
                                            padding=layer["padding"], use_bias=layer["use_bias"], name=name), values))
        elif kind == "dense":
            values = [own["kernel"]] + ([own["bias"]] if layer["use_bias"] else [])
            out.append((keras.layers.Dense(layer["units"], use_bias=layer["use_bias"], name=name), values))
        elif kind == "batchnorm":
            out.append((keras.layers.BatchNormalization(epsilon=layer["epsilon"], momentum=layer["momentum"], name=name),
                        [own["scale"], own["bias"], *_running_stats(stats.get(index, {}), layer["momentum"])]))
        elif kind in ("maxpool", "avgpool"):
            pool = keras.layers.MaxPooling2D if kind == "maxpool" else keras.layers.AveragePooling2D
            out.append((pool(layer["pool"], strides=layer["stride"], padding=layer["padding"], name=name), None))
        elif kind == "globalavgpool":
            out.append((keras.layers.GlobalAveragePooling2D(name=name), None))
        elif kind == "flatten":
            out.append((keras.layers.Flatten(name=name), None))
        elif kind == "residual":
            out.append((_KerasResidual(layer, own, stats.get(index, {}), keras, name), None))
        elif kind == "dropout":
            continue  # inference: no dropout
        elif kind != "activation":
            raise ExportError(f"the TFLite export does not know the layer type {kind!r}")
        function = layer.get("activation") or layer.get("function")
        if function and function != "linear":
            out.append((activation_layer(function, index), None))
    return out


class _KerasResidual:
    """A residual block as Keras layers (convolutions, BatchNorms, the addition and the ReLUs), called like one
    layer; its weights are set when it is built, and calling it again (the mirror view) shares them."""

    def __init__(self, layer: dict, own: dict, stats: dict, keras: Any, name: str):
        norm = {"epsilon": layer["epsilon"], "momentum": layer["momentum"]}
        stride = layer["stride"]

        def conv(key: str, size: int, strides: int, padding: str = "same") -> Any:
            return keras.layers.Conv2D(layer["filters"], size, strides=strides, padding=padding, use_bias=False,
                                       name=f"{name}_{key}")

        # stride 2: one pixel of zeros on every side and 'valid', as the studio's block computes it
        self.pad = keras.layers.ZeroPadding2D(1, name=f"{name}_pad") if stride != 1 else None
        self.parts = {"conv1": conv("conv1", 3, stride, "same" if stride == 1 else "valid"),
                      "bn1": keras.layers.BatchNormalization(**norm, name=f"{name}_bn1"),
                      "conv2": conv("conv2", 3, 1),
                      "bn2": keras.layers.BatchNormalization(**norm, name=f"{name}_bn2")}
        if "project" in own:
            self.parts["project"] = conv("project", 1, stride)
            self.parts["bn_project"] = keras.layers.BatchNormalization(**norm, name=f"{name}_bn_project")
        self.relu1 = keras.layers.Activation("relu", name=f"{name}_relu1")
        self.add = keras.layers.Add(name=f"{name}_add")
        self.relu2 = keras.layers.Activation("relu", name=f"{name}_relu2")
        self.values = {key: ([own[key]] if key in ("conv1", "conv2", "project") else
                             [own[key]["scale"], own[key]["bias"], *_running_stats(stats[key], layer["momentum"])])
                       for key in self.parts}
        self.built = False

    def __call__(self, x: Any) -> Any:
        parts = self.parts
        y = self.relu1(parts["bn1"](parts["conv1"](x if self.pad is None else self.pad(x))))
        y = parts["bn2"](parts["conv2"](y))
        shortcut = parts["bn_project"](parts["project"](x)) if "project" in parts else x
        out = self.relu2(self.add([y, shortcut]))
        if not self.built:
            for key, layer in parts.items():
                layer.set_weights(self.values[key])
            self.built = True
        return out


def _running_stats(stats: dict, momentum: float) -> list[np.ndarray]:
    """The studio's BatchNorm keeps bias-corrected running averages (divided by 1 - momentum**updates, as Adam
    does); Keras keeps plain ones: the corrected values are what inference uses."""
    updates = float(stats["updates"])
    if updates <= 0:
        return [np.zeros_like(stats["mean"]), np.ones_like(stats["var"])]
    correction = 1.0 - momentum ** updates
    return [stats["mean"] / correction, stats["var"] / correction]


def _plain(tree: Any) -> Any:
    """nnx state -> nested dicts of numpy arrays, keyed like the spec (layer index -> name -> array)."""
    if hasattr(tree, "items"):
        return {key: _plain(value) for key, value in tree.items()}
    from flax import nnx

    return np.asarray(tree[...] if isinstance(tree, nnx.Variable) else tree, np.float32)


def keras_network(model: Any) -> Any:
    """The model as a Keras model with its trained weights: float32 images in [0, 1] -> calibrated probabilities."""
    import tensorflow as tf

    keras = tf.keras
    inputs = keras.Input(shape=model.input_shape, batch_size=None, dtype="float32", name="images")
    views = [inputs]
    if model.tta_flip:  # the mean logits of the image and its mirror image, as TrainedModel predicts
        views.append(keras.layers.Lambda(lambda t: tf.reverse(t, axis=[2]), name="mirror")(inputs))
    outputs = []
    for index in range(model.members):  # an ensemble: the mean logits of its members, as TrainedModel predicts
        member = model.member(index)
        weights = {"params": _plain(member.weights["params"]), "batch_stats": _plain(member.weights["batch_stats"])}
        branches = list(views)
        for layer, values in _keras_layers(model.spec, weights, keras, prefix=f"m{index}_" if model.members > 1 else ""):
            branches = [layer(x) for x in branches]  # the same layer object: shared weights
            if values is not None:
                layer.set_weights(values)
        outputs += branches
    x = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="flip_average")(outputs)
    scaled = keras.layers.Rescaling(1.0 / model.temperature, name="temperature")(x)
    return keras.Model(inputs, keras.layers.Softmax(name="probabilities")(scaled), name="fmnist_model")


def convert(model: Any, setup: Any = None) -> bytes:
    """The TFLite file of keras_network(model); `setup(converter)` may ask for quantization first."""
    import tensorflow as tf

    # From the Keras model: the converter freezes its weights into constants (from a tf.function's concrete
    # function they stayed resource variables, and the interpreter answered NaN).
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_network(model))
    if setup is not None:
        setup(converter)
    try:
        payload = converter.convert()
    except Exception as error:  # the converter reports unsupported graphs with many exception types
        raise ExportError(f"TensorFlow Lite could not convert this model: {type(error).__name__}: {error}") from None
    return with_metadata(payload, model)


METADATA_NAME = "fmnist_studio"


def with_metadata(payload: bytes, model: Any) -> bytes:
    """The file with the studio's metadata (classes, calibration, photo pipeline; the ONNX export's fields) as a
    TFLite metadata entry, which interpreters ignore and `read_metadata` reads back."""
    import json

    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from fmnist_jax.deploy.onnx_export import metadata

    tree = flatbuffer_utils.convert_bytearray_to_object(bytearray(payload))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata(model)).encode(), np.uint8)
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(tree.buffers) - 1
    tree.metadata = [*(tree.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))


def read_metadata(payload: bytes) -> dict[str, str]:
    """The studio's metadata of a TFLite file written here ({} for a file from elsewhere)."""
    import json

    from tensorflow.lite.tools import flatbuffer_utils

    tree = flatbuffer_utils.convert_bytearray_to_object(bytearray(payload))
    for entry in tree.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == METADATA_NAME:
            return json.loads(bytes(tree.buffers[entry.buffer].data).decode())
    return {}


def tflite_bytes(model: Any, check_images: np.ndarray) -> tuple[bytes, float]:
    """(the .tflite file, largest probability difference from JAX on `check_images` uint8 (N, H, W, C));
    ExportError when a layer cannot be converted or the difference exceeds TOLERANCE."""
    payload = convert(model)
    difference = _check(payload, model, check_images)
    if not difference <= TOLERANCE:
        raise ExportError(f"the TFLite model's probabilities differ from JAX's by {difference:.2e} "
                          f"(more than {TOLERANCE:g}); not exported")
    return payload, difference


def run(payload: bytes, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """Probabilities of uint8 images (N, H, W, C) in LiteRT's interpreter (tf.lite.Interpreter is deprecated in
    its favour), `batch` at a time."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=payload)
    detail = interpreter.get_input_details()[0]
    out, shape = [], None
    for start in range(0, len(images), batch):
        part = np.asarray(images[start:start + batch], np.float32) / 255.0
        if part.shape != shape:
            interpreter.resize_tensor_input(detail["index"], part.shape)
            interpreter.allocate_tensors()
            shape = part.shape
        interpreter.set_tensor(detail["index"], part)
        interpreter.invoke()
        out.append(np.array(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _check(payload: bytes, model: Any, images: np.ndarray) -> float:
    got = run(payload, images)
    return float(np.max(np.abs(got - model.predict_proba(np.asarray(images, np.uint8)))))
