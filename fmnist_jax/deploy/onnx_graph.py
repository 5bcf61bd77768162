"""The model as a plain ONNX graph (Conv, MaxPool, Gemm...), written node by node: the graph the int8 export
quantizes.

jax2onnx's graph of the float export is right but low-level: strided slices become GatherND over computed
index grids and scalar constants, which onnxruntime's static quantizer cannot place scales on (it fails inside
its int32-bias adjustment). Quantizers expect the standard operators, in NCHW, with each BatchNorm folded into
its convolution; this writes exactly that from the same folded steps as the float export, and the int8 export
checks the result against JAX before quantizing it.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from fmnist_jax.deploy.bundle import ExportError
from fmnist_jax.model import layer_specs

OPSET = 20  # Gelu is an operator from opset 20


class _Graph:
    """Nodes and initializers under unique names."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.initializers, self._count = [], [], 0

    def name(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, value: np.ndarray, stem: str = "w") -> str:
        name = self.name(stem)
        self.initializers.append(self.numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, kind: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(kind.lower())
        self.nodes.append(self.helper.make_node(kind, inputs, [out], **attrs))
        return out


def _activation(graph: _Graph, x: str, name: str) -> str:
    if name == "linear":
        return x
    simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "elu": "Elu"}
    if name in simple:
        return graph.op(simple[name], [x])
    if name == "leaky_relu":
        return graph.op("LeakyRelu", [x], alpha=0.01)
    if name == "gelu":
        return graph.op("Gelu", [x], approximate="tanh")  # jax.nn.gelu's default is the tanh approximation
    raise ExportError(f"the int8 ONNX export does not know the activation {name!r}")


def _conv(graph: _Graph, x: str, kernel: np.ndarray, bias: np.ndarray | None, stride: int, pads: list[int]) -> str:
    oihw = np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)), np.float32)
    inputs = [x, graph.const(oihw)] + ([graph.const(np.asarray(bias, np.float32))] if bias is not None else [])
    return graph.op("Conv", inputs, kernel_shape=list(kernel.shape[:2]), strides=[stride, stride], pads=pads)


def _same(height: int, width: int, window: int, stride: int) -> list[int]:
    top, bottom = layer_specs._same_pads(height, window, stride)
    left, right = layer_specs._same_pads(width, window, stride)
    return [top, left, bottom, right]


def _member(graph: _Graph, x: str, steps: list, input_shape: tuple) -> str:  # long: one branch per step kind
    """One network's logits from the NCHW input `x`; a BatchNorm right after a linear convolution folds into it."""
    height, width, channels = input_shape
    flat = False
    index = 0
    while index < len(steps):
        kind, spec, weight, bias = steps[index]
        following = steps[index + 1] if index + 1 < len(steps) else None
        if kind == "conv2d":
            kernel, shift = np.asarray(weight, np.float32), None if bias is None else np.asarray(bias, np.float32)
            if following is not None and following[0] == "affine" and spec["activation"] == "linear":
                # conv + BatchNorm with nothing between them: one convolution
                scale, offset = following[2], following[3]
                shift = (np.zeros(kernel.shape[-1], np.float32) if shift is None else shift) * scale + offset
                kernel = kernel * scale
                index += 1
            window, stride = spec["kernel"], spec["stride"]
            pads = _same(height, width, window, stride) if spec["padding"] == "same" else [0, 0, 0, 0]
            x = _activation(graph, _conv(graph, x, kernel, shift, stride, pads), spec["activation"])
            height = (height + pads[0] + pads[2] - window) // stride + 1
            width = (width + pads[1] + pads[3] - window) // stride + 1
            channels = kernel.shape[-1]
        elif kind == "affine":
            shape = (1, -1) if flat else (1, -1, 1, 1)
            x = graph.op("Add", [graph.op("Mul", [x, graph.const(np.reshape(weight, shape).astype(np.float32))]),
                                 graph.const(np.reshape(bias, shape).astype(np.float32))])
        elif kind in ("maxpool", "avgpool"):
            window, stride = spec["pool"], spec["stride"]
            pads = _same(height, width, window, stride) if spec["padding"] == "same" else [0, 0, 0, 0]
            attrs = {"kernel_shape": [window, window], "strides": [stride, stride], "pads": pads}
            # the studio's average counts only the image's own pixels, as count_include_pad=0 does
            x = graph.op("MaxPool", [x], **attrs) if kind == "maxpool" else \
                graph.op("AveragePool", [x], count_include_pad=0, **attrs)
            height = (height + pads[0] + pads[2] - window) // stride + 1
            width = (width + pads[1] + pads[3] - window) // stride + 1
        elif kind == "globalavgpool":
            x = graph.op("Flatten", [graph.op("GlobalAveragePool", [x])], axis=1)
            flat = True
        elif kind == "flatten":
            if not flat:  # the studio flattens NHWC: channels last, so back to that order first
                x = graph.op("Flatten", [graph.op("Transpose", [x], perm=[0, 2, 3, 1])], axis=1)
            flat = True
        elif kind == "dense":
            inputs = [x, graph.const(np.asarray(weight, np.float32))]
            inputs.append(graph.const(np.asarray(bias, np.float32) if bias is not None
                                      else np.zeros(np.asarray(weight).shape[1], np.float32)))
            x = _activation(graph, graph.op("Gemm", inputs), spec["activation"])
        elif kind == "activation":
            x = _activation(graph, x, spec["function"])
        elif kind == "residual":
            x, height, width, channels = _residual(graph, x, spec, weight, height, width)
        elif kind != "dropout":
            raise ExportError(f"the int8 ONNX export does not know the layer type {kind!r}")
        index += 1
    return x


def _residual(graph: _Graph, x: str, spec: dict, block: dict, height: int, width: int) -> tuple[str, int, int, int]:
    stride = spec["stride"]
    first = _same(height, width, 3, 1) if stride == 1 else [1, 1, 1, 1]  # residual_padded + 'valid'
    y = graph.op("Relu", [_conv(graph, x, *block["conv1"], stride, first)])
    out_h, out_w = (height + first[0] + first[2] - 3) // stride + 1, (width + first[1] + first[3] - 3) // stride + 1
    y = _conv(graph, y, *block["conv2"], 1, _same(out_h, out_w, 3, 1))
    shortcut = x if block["project"] is None else _conv(graph, x, *block["project"], stride, [0, 0, 0, 0])
    return graph.op("Relu", [graph.op("Add", [y, shortcut])]), out_h, out_w, block["conv1"][0].shape[-1]


def plain_onnx(model: Any) -> bytes:
    """The model as standard ONNX operators: float32 images (N, H, W, C) in [0, 1] -> calibrated probabilities,
    with the float export's metadata."""
    from onnx import TensorProto, helper

    from fmnist_jax.deploy import onnx_export

    graph = _Graph()
    height, width, channels = model.input_shape
    nchw = graph.op("Transpose", ["images"], perm=[0, 3, 1, 2])
    views = [nchw]
    if model.tta_flip:  # the mirror image: the width axis read backwards
        views.append(graph.op("Slice", [nchw, graph.const(np.array([-1])), graph.const(np.array([-(2 ** 62)])),
                                        graph.const(np.array([3])), graph.const(np.array([-1]))]))
    logits = [_member(graph, view, onnx_export._member_steps(model.member(k)), model.input_shape)
              for k in range(model.members) for view in views]
    total = logits[0] if len(logits) == 1 else graph.op("Sum", logits)
    scale = np.asarray(1.0 / (len(logits) * float(model.temperature)), np.float32)
    graph.op("Softmax", [graph.op("Mul", [total, graph.const(scale.reshape(1))])], axis=-1)
    graph.nodes[-1].output[0] = "probabilities"
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", height, width, channels])]
    outputs = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", model.num_classes])]
    proto = helper.make_model(helper.make_graph(graph.nodes, "fmnist_studio", inputs, outputs, graph.initializers),
                              opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fmnist_studio")
    proto.ir_version = 10
    for key, value in onnx_export.metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()
