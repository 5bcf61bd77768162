"""int8 exports that keep their accuracy: full-integer TFLite and statically quantized ONNX, each calibrated on
images like the ones it will see and checked in its own runtime against the float export on test images.

- TFLite: TensorFlow's converter with a representative dataset and int8 builtins only, so every weight and
  activation tensor is int8; input and output stay float32 (a quantize op in front, a dequantize op behind), so
  an app that runs the float file runs this one unchanged.
- ONNX: onnxruntime's `quantize_static` (QDQ format, int8 weights per channel, int8 activations, MinMax ranges
  from the calibration images) over the model written in standard operators (onnx_graph.py), which is also the
  float file it is compared with.

`export_int8` returns the file and its report: `{format, quantize, accuracy, float_accuracy, agreement, bytes,
float_bytes}` plus the images it was checked and calibrated on, and a `warning` when int8 costs more than
MAX_DROP accuracy points, so that a lossy file is never handed out silently.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from fmnist_jax.deploy.bundle import ExportError

FORMATS = ("tflite", "onnx")
MAX_DROP = 0.01  # accuracy, as a fraction: more than 1 point lost gets a warning
CALIBRATION_IMAGES = 512  # enough for stable activation ranges (TFLite's docs suggest ~100-500)


def _onnx_float(model: Any) -> bytes:
    """The plain-operator float graph (onnx_graph.py), checked against JAX like the float export."""
    from fmnist_jax.deploy import onnx_export
    from fmnist_jax.deploy.bundle import ONNX_TOLERANCE
    from fmnist_jax.deploy.onnx_graph import plain_onnx

    payload = plain_onnx(model)
    images = onnx_export.check_images(model)
    difference = float(np.abs(onnx_run(payload, images) - model.predict_proba(images)).max())
    if not difference <= ONNX_TOLERANCE:
        raise ExportError(f"the plain ONNX graph differs from JAX by {difference:.2e}; not quantized")
    return payload


def tflite_int8(model: Any, calibration: np.ndarray) -> tuple[bytes, bytes]:
    """(int8 file, float file) for `model`, the int8 one calibrated on uint8 `calibration` (N, H, W, C)."""
    import tensorflow as tf

    from fmnist_jax.deploy import tflite_export

    def representative() -> Any:
        for image in np.asarray(calibration, np.float32) / 255.0:
            yield [image[None]]

    def full_integer(converter: Any) -> None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

    return tflite_export.convert(model, full_integer), tflite_export.convert(model)


# The weight-scale adjustment for int32 biases indexes every bias as a vector and fails on the 0-d constants
# of jax2onnx's graph (IndexError inside onnxruntime 1.32); the biases here are small, so int32 cannot overflow.
EXTRA = {"QDQDisableWeightAdjustForInt32Bias": True}


class _Reader:
    """onnxruntime's calibration reader: one image at a time, as the float model's input."""

    def __init__(self, images: np.ndarray):
        self._images = iter(np.asarray(images, np.float32) / 255.0)

    def get_next(self) -> dict | None:
        image = next(self._images, None)
        return None if image is None else {"images": image[None]}


def onnx_int8(model: Any, calibration: np.ndarray) -> tuple[bytes, bytes]:
    """(int8 file, float file): the float export quantized statically, calibrated on `calibration`."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    float_payload = _onnx_float(model)
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "float.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(float_payload)
        logging.disable(logging.WARNING)  # "consider pre-processing": a hint per call, not a problem here
        try:
            quantize_static(str(source), str(target), _Reader(calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax, extra_options=EXTRA)
        except Exception as error:  # onnxruntime's quantizer raises many exception types
            raise ExportError(f"onnxruntime could not quantize this model: {type(error).__name__}: {error}") from None
        finally:
            logging.disable(logging.NOTSET)
        quantized = onnx.load(str(target))
    original = onnx.load_from_string(float_payload)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(original.metadata_props)  # classes, calibration, pipeline: as the float file
    quantized.doc_string = original.doc_string + " Quantized to int8 (QDQ)."
    return quantized.SerializeToString(), float_payload


def onnx_run(payload: bytes, images: np.ndarray, batch: int = 500) -> np.ndarray:
    """Probabilities of uint8 images in onnxruntime, `batch` at a time."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    parts = [session.run(None, {"images": np.asarray(images[k:k + batch], np.float32) / 255.0})[0]
             for k in range(0, len(images), batch)]
    return np.concatenate(parts)


def runner(fmt: str) -> Callable[[bytes, np.ndarray], np.ndarray]:
    """The runtime that answers for a format: LiteRT for TFLite, onnxruntime for ONNX."""
    from fmnist_jax.deploy import tflite_export

    return {"tflite": tflite_export.run, "onnx": onnx_run}[fmt]


def int8_tensors(payload: bytes, fmt: str) -> dict[str, int]:
    """How many tensors of each element type the file holds (the int8 check reads it: weights and
    activations int8, float32 only at the edges)."""
    counts: dict[str, int] = {}
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        for detail in Interpreter(model_content=payload).get_tensor_details():
            name = np.dtype(detail["dtype"]).name
            counts[name] = counts.get(name, 0) + 1
        return counts
    import onnx

    graph = onnx.load_from_string(payload).graph
    for tensor in graph.initializer:
        name = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).name
        counts[name] = counts.get(name, 0) + 1
    return counts


def compare(fmt: str, payload: bytes, float_payload: bytes, images: np.ndarray,
            labels: np.ndarray | None) -> dict[str, Any]:
    """Accuracy of both files in their runtime (None without labels) and how often their top classes agree."""
    run = runner(fmt)
    quantized, floating = run(payload, images), run(float_payload, images)
    top, float_top = quantized.argmax(1), floating.argmax(1)
    result = {"agreement": float((top == float_top).mean()), "accuracy": None, "float_accuracy": None,
              "max_probability_difference": float(np.abs(quantized - floating).max())}
    if labels is not None:
        labels = np.asarray(labels)
        result["accuracy"], result["float_accuracy"] = float((top == labels).mean()), float((float_top == labels).mean())
    return result


@dataclass
class Images:
    """uint8 images (N, H, W, C), their labels when known, and where they came from, in words."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str


def _sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    if len(images) <= count:
        return np.asarray(images)
    return np.asarray(images)[np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))]


def _dataset(name: str, data_dir: str | os.PathLike | None) -> Any:
    from fmnist_jax.data import catalogue

    if Path(name).exists() and name not in catalogue.TFDS_DATASETS:
        from fmnist_jax.data.uploads import importer

        return importer.load_upload(name)
    return catalogue.load_dataset(name, data_dir=data_dir)


def _photo_inputs(model: Any, root: Path, share: float = 0.1) -> np.ndarray:
    """The pipeline outputs of a fixed tenth of a labelled photo folder (the model's own pipeline)."""
    from fmnist_jax.photos import folders

    folder = folders.read_photo_folder(root, model.class_names)
    part = folder if share >= 1.0 else folders.held_out_part(folder, share, seed=0)
    return np.asarray(folders.photo_inputs(part, model.preprocess, model.input_shape).images)


def calibration_set(model: Any, model_source: str, override: str | None = None,
                    data_dir: str | os.PathLike | None = None, count: int = CALIBRATION_IMAGES) -> Images:
    """The images an int8 export is calibrated on: `override` (a dataset name, an uploaded file, or a labelled
    photo folder with classes.json); else a run's own training split; else (the demo, bundles) Fashion-MNIST
    training images plus the pipeline outputs of real photos (settings.photos_dir()) for photo models."""
    from fmnist_jax import settings

    try:
        if override:
            if (Path(override) / "classes.json").is_file():
                return Images(_sample(_photo_inputs(model, Path(override), 1.0), count, 0), None,
                              f"photos of {Path(override).name}, through the model's pipeline")
            return Images(_sample(_dataset(override, data_dir).train_images, count, 0), None,
                          f"{override}'s training images")
        run = _run_record(model_source)
        if run is not None:
            splits = _run_splits(run, data_dir)
            return Images(_sample(splits.train_images, count, 0), None, "the run's training split")
        if tuple(model.input_shape) != (28, 28, 1):
            raise ExportError("this model is not a run and not 28x28 grey: give --calibration-data, images like the "
                              "ones it will see")
        fashion = np.asarray(_dataset("fashion_mnist", data_dir).train_images)
        photos = settings.photos_dir()
        if photos is not None and model.preprocess.get("mode") in ("grabcut", "garment"):
            real = _photo_inputs(model, photos)
            half = min(len(real), count // 2)
            return Images(np.concatenate([_sample(fashion, count - half, 0), _sample(real, half, 1)]), None,
                          f"Fashion-MNIST training images and {half} real photos of {photos.name}")
        return Images(_sample(fashion, count, 0), None, "Fashion-MNIST training images")
    except (ValueError, OSError) as error:  # DataUnavailable is a ValueError: no data folder, a bad path
        raise ExportError(f"no calibration images: {error}") from None


def test_set(model: Any, model_source: str, data_dir: str | os.PathLike | None = None) -> Images:
    """The labelled images the int8 file is checked on: a run's test split, else Fashion-MNIST's test set for
    28x28 grey models, else the synthetic check batch (no labels: agreement only)."""
    from fmnist_jax.deploy import onnx_export

    try:
        run = _run_record(model_source)
        if run is not None:
            splits = _run_splits(run, data_dir)
            return Images(splits.test_images, splits.test_labels, "the run's test split")
        if tuple(model.input_shape) == (28, 28, 1):
            dataset = _dataset("fashion_mnist", data_dir)
            return Images(np.asarray(dataset.test_images), np.asarray(dataset.test_labels), "Fashion-MNIST test")
    except (ValueError, OSError):
        pass
    return Images(onnx_export.check_images(model, 256), None, "256 synthetic check images (no test set found)")


def _run_record(model_source: str) -> dict | None:
    from fmnist_jax import store

    path = Path(model_source).expanduser()
    return store.read_json(path / "run.json") if path.is_dir() and (path / "run.json").is_file() else None


def _run_splits(run: dict, data_dir: str | os.PathLike | None) -> Any:
    from fmnist_jax.data import splitting

    return splitting.make_splits(_dataset(run.get("dataset", "fashion_mnist"), data_dir),
                                 splitting.SplitSpec.from_dict(run["split"]))


def export_int8(model: Any, fmt: str, calibration: np.ndarray, test_images: np.ndarray,
                test_labels: np.ndarray | None, calibration_source: str = "", test_source: str = "") -> tuple[bytes, dict]:
    """(the int8 file, its report) for fmt "tflite" or "onnx"; ExportError when it cannot be made."""
    if fmt not in FORMATS:
        raise ExportError(f"int8 quantization is for {' and '.join(FORMATS)} exports, not {fmt!r}")
    calibration = np.asarray(calibration, np.uint8)
    if calibration.ndim != 4 or calibration.shape[1:] != tuple(model.input_shape) or not len(calibration):
        raise ExportError(f"the calibration images must be (N, {', '.join(map(str, model.input_shape))}) for this "
                          f"model, got {tuple(calibration.shape)}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    payload, float_payload = (tflite_int8 if fmt == "tflite" else onnx_int8)(model, calibration)
    report = {"format": fmt, "quantize": "int8", **compare(fmt, payload, float_payload, test_images, test_labels),
              "bytes": len(payload), "float_bytes": len(float_payload), "test_images": int(len(test_images)),
              "test_source": test_source, "calibration_images": int(len(calibration)),
              "calibration_source": calibration_source, "tensor_types": int8_tensors(payload, fmt)}
    drop = (report["float_accuracy"] - report["accuracy"]) if report["accuracy"] is not None else None
    if drop is not None and drop > MAX_DROP:
        report["warning"] = (f"int8 loses {100 * drop:.1f} accuracy points against the float export "
                             f"({report['accuracy']:.2%} vs {report['float_accuracy']:.2%} on {report['test_images']:,} "
                             f"test images): use the float file, or calibrate on images closer to what it will see")
    elif drop is None and report["agreement"] < 1.0 - MAX_DROP:
        report["warning"] = (f"int8 answers differ from the float export on {1 - report['agreement']:.1%} of the "
                             f"{report['test_images']:,} check images (no labelled test set to measure accuracy)")
    return payload, report
