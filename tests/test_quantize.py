"""int8 exports: the plain ONNX graph equals JAX; full-integer TFLite and QDQ ONNX files hold int8 tensors, are
about a quarter of the float size, answer like the float model, read back their metadata, and a lossy
calibration gets a warning, not a silent file. On the real files: the issue's figures for the demo model."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, requires_real_data
from test_export import ALL_LAYERS_SPEC, _random_model

from flax import nnx

from fmnist_jax.deploy import exported, onnx_export, predict, quantize
from fmnist_jax.deploy.bundle import ExportError
from fmnist_jax.deploy.onnx_graph import plain_onnx
from fmnist_jax.model import layers
from fmnist_jax.training.trained import TrainedModel

SAMPLES = Path(__file__).parent / "data" / "fashion_mnist_test_samples.npz"
RESIDUAL_SPEC = [{"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"},
                 {"type": "residual", "filters": 8, "stride": 2}, {"type": "residual", "filters": 8, "stride": 1},
                 {"type": "globalavgpool"}, {"type": "dense", "units": 10}]


@pytest.fixture(scope="module")
def samples() -> tuple[np.ndarray, np.ndarray]:
    with np.load(SAMPLES, allow_pickle=False) as stored:
        return stored["images"][..., None], stored["labels"]


@pytest.fixture(scope="module")
def demo():
    return predict.load_model("demo")


def _residual_model() -> TrainedModel:
    built = layers.build_model(RESIDUAL_SPEC, (28, 28, 1), 10, seed=3)
    _, params, batch_stats = nnx.split(built, nnx.Param, nnx.BatchStat)
    return TrainedModel(RESIDUAL_SPEC, (28, 28, 1), tuple(f"c{i}" for i in range(10)),
                        {"params": params, "batch_stats": batch_stats})


@pytest.mark.parametrize("spec", [ALL_LAYERS_SPEC, RESIDUAL_SPEC], ids=["every-layer-type", "residual"])
def test_the_plain_onnx_graph_answers_like_jax(spec: list, samples) -> None:
    model = _random_model(spec) if spec is ALL_LAYERS_SPEC else _residual_model()
    images = np.concatenate([samples[0], onnx_export.check_images(model)])
    got = quantize.onnx_run(plain_onnx(model), images)
    assert np.abs(got - model.predict_proba(images)).max() <= 1e-4


def test_the_plain_onnx_graph_of_a_flip_tta_model_averages_the_mirror(demo, samples) -> None:
    flipped = predict.load_model("demo")
    flipped.tta_flip = True
    got = quantize.onnx_run(plain_onnx(flipped), samples[0])
    assert np.abs(got - flipped.predict_proba(samples[0])).max() <= 1e-4
    assert np.abs(got - demo.predict_proba(samples[0])).max() > 1e-3  # the mirror really counts


@pytest.mark.slow
@pytest.mark.parametrize("fmt", quantize.FORMATS)
def test_int8_export_of_the_demo_is_small_int8_inside_and_answers_like_float(fmt: str, demo, samples, tmp_path) -> None:
    images, labels = samples
    payload, report = quantize.export_int8(demo, fmt, images, images, labels, "the samples", "the samples")
    assert set(report) >= {"format", "quantize", "accuracy", "float_accuracy", "agreement", "bytes", "float_bytes"}
    assert report["format"] == fmt and report["quantize"] == "int8" and report["bytes"] == len(payload)
    assert report["bytes"] <= 0.35 * report["float_bytes"]
    assert report["tensor_types"].get("int8", 0) >= 6  # three convolutions and two dense layers' weights, at least
    assert report["agreement"] >= 0.94 and abs(report["accuracy"] - report["float_accuracy"]) <= 0.04
    assert report["float_accuracy"] == pytest.approx(float((demo.predict_proba(images).argmax(1) == labels).mean()))
    path = tmp_path / f"demo-int8.{fmt}"
    path.write_bytes(payload)
    loaded = exported.ExportedModel(path)  # the file carries the model's classes, calibration and pipeline
    assert loaded.class_names == demo.class_names and loaded.input_shape == (28, 28, 1)
    assert loaded.unsure_threshold == pytest.approx(demo.unsure_threshold) and loaded.preprocess == demo.preprocess
    assert (loaded.predict_proba(images).argmax(1) == demo.predict_proba(images).argmax(1)).mean() >= 0.94


@pytest.mark.slow
def test_a_calibration_that_loses_accuracy_gets_a_warning(demo, samples) -> None:
    images, labels = samples
    black = np.zeros((16, 28, 28, 1), np.uint8)  # every activation range collapses to what a black image gives
    _, report = quantize.export_int8(demo, "onnx", black, images, labels)
    assert report["float_accuracy"] - report["accuracy"] > quantize.MAX_DROP
    assert report["warning"].startswith("int8 loses") and "accuracy points" in report["warning"]


def test_wrong_inputs_are_refused_in_words(demo) -> None:
    with pytest.raises(ExportError, match="calibration images must be"):
        quantize.export_int8(demo, "onnx", np.zeros((4, 32, 32, 3), np.uint8), np.zeros((1, 28, 28, 1), np.uint8), None)
    with pytest.raises(ExportError, match="for tflite and onnx"):
        quantize.export_int8(demo, "bundle", np.zeros((4, 28, 28, 1), np.uint8), np.zeros((1, 28, 28, 1), np.uint8), None)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    environment = {k: v for k, v in os.environ.items() if k not in ("FMNIST_DATA_DIR", "FMNIST_PHOTOS_DIR")}
    return subprocess.run([sys.executable, "-m", "fmnist_jax", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**environment, "PYTHONPATH": str(REPO), **(env or {})})


@pytest.mark.slow
def test_cli_int8_export_with_calibration_data_and_its_errors(tmp_path) -> None:
    out = tmp_path / "demo-int8.onnx"
    done = _cli("export", "demo", "--format", "onnx", "--quantize", "int8", "--calibration-data", "synthetic",
                "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["calibration_source"] == "synthetic's training images" and report["bytes"] == out.stat().st_size
    assert report["accuracy"] is None and report["test_images"] == 256  # no Fashion-MNIST here: agreement only
    wrong = _cli("export", "demo", "--format", "bundle", "--quantize", "int8", "--out", str(tmp_path / "x.zip"))
    assert wrong.returncode == 2 and "--quantize int8 is for --format tflite or onnx" in wrong.stderr
    missing = _cli("export", "demo", "--format", "tflite", "--quantize", "int8", "--out", str(tmp_path / "x.tflite"),
                   env={"FMNIST_HOME": str(tmp_path / "empty-home"), "TFDS_DATA_DIR": str(tmp_path / "no-tfds")})
    assert missing.returncode == 2 and "no calibration images" in missing.stderr, missing.stderr[-1500:]


@requires_real_data
@pytest.mark.parametrize("fmt", quantize.FORMATS)
def test_the_demos_int8_exports_meet_the_issues_figures(fmt: str, demo) -> None:
    calibration = quantize.calibration_set(demo, "demo")
    test = quantize.test_set(demo, "demo")
    _, report = quantize.export_int8(demo, fmt, calibration.images, test.images[:1000], test.labels[:1000])
    assert report["accuracy"] >= 0.90 and report["float_accuracy"] - report["accuracy"] <= 0.01, report
    assert report["bytes"] <= 0.35 * report["float_bytes"] and "warning" not in report
