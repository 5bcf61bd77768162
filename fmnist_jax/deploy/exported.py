"""An exported .onnx or .tflite file, float or int8, answering like a studio model: its own runtime
(onnxruntime, LiteRT) behind predict_proba, and the classes, calibration and photo pipeline read from the
metadata the export wrote into the file. The real-photo benchmark scores exports through it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fmnist_jax.deploy import quantize, tflite_export
from fmnist_jax.deploy.bundle import ExportError
from fmnist_jax.photos.pipeline_params import resolve_preprocess

SUFFIXES = {".onnx": "onnx", ".tflite": "tflite"}


class ExportedModel:
    def __init__(self, path: str | Path):
        path = Path(path)
        self.format = SUFFIXES.get(path.suffix.lower())
        if self.format is None:
            raise ExportError(f"{path.name} is not an .onnx or .tflite export")
        self.payload = path.read_bytes()
        meta = self._metadata()
        if not meta:
            raise ExportError(f"{path.name} has no Fashion-MNIST Studio metadata (classes, calibration, pipeline): "
                              f"export it with `python -m fmnist_jax export`")
        self.class_names = tuple(json.loads(meta["class_names"]))
        self.temperature = float(meta["temperature"])
        self.calibration = {"temperature": self.temperature, "unsure_threshold": float(meta["unsure_threshold"])}
        self.input_shape = self._input_shape()
        self.preprocess = resolve_preprocess(json.loads(meta["preprocess"]), self.input_shape)
        self.num_classes = len(self.class_names)

    def _metadata(self) -> dict[str, str]:
        if self.format == "tflite":
            return tflite_export.read_metadata(self.payload)
        import onnx

        return {p.key: p.value for p in onnx.load_from_string(self.payload).metadata_props}

    def _input_shape(self) -> tuple[int, int, int]:
        if self.format == "tflite":
            from ai_edge_litert.interpreter import Interpreter

            shape = Interpreter(model_content=self.payload).get_input_details()[0]["shape"]
            return tuple(int(v) for v in shape[1:])
        import onnx

        dims = onnx.load_from_string(self.payload).graph.input[0].type.tensor_type.shape.dim[1:]
        return tuple(int(d.dim_value) for d in dims)

    @property
    def unsure_threshold(self) -> float:
        return self.calibration["unsure_threshold"]

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of uint8 images (N, H, W, C), in the file's own runtime."""
        return quantize.runner(self.format)(self.payload, np.asarray(images, np.uint8))

    def is_unsure(self, probs: np.ndarray) -> np.ndarray:
        return np.asarray(probs).max(axis=-1) < self.unsure_threshold
