"""Bundles and ONNX: JAX vs bundle vs ONNX predictions agree within 1e-4; hostile bundles are refused."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import onnxruntime
import pytest

from conftest import REPO

from fmnist_jax.cli import main as cli
from fmnist_jax.data import catalogue
from fmnist_jax.deploy import bundle, onnx_export, predict
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.program import init_state
from fmnist_jax.training.trained import TrainedModel

SAMPLES = Path(__file__).parent / "data" / "fashion_mnist_test_samples.npz"
TOLERANCE = 1e-4
# Every layer type and padding mode, so the ONNX forward is checked against each of them.
ALL_LAYERS_SPEC = [
    {"type": "conv2d", "filters": 6, "kernel": 3, "padding": "same", "activation": "relu"},
    {"type": "batchnorm"}, {"type": "activation", "function": "gelu"},
    {"type": "maxpool", "pool": 3, "stride": 2, "padding": "same"},
    {"type": "conv2d", "filters": 8, "kernel": 3, "padding": "valid", "activation": "tanh", "use_bias": False},
    {"type": "avgpool", "pool": 2, "stride": 2, "padding": "same"}, {"type": "dropout", "rate": 0.3},
    {"type": "conv2d", "filters": 8, "kernel": 1, "stride": 1, "activation": "elu"},
    {"type": "avgpool", "pool": 2, "stride": 1, "padding": "valid"},
    {"type": "flatten"}, {"type": "dense", "units": 12, "activation": "leaky_relu"},
    {"type": "dense", "units": 10},
]


@pytest.fixture(scope="module")
def demo():
    return predict.load_model("demo")


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    with np.load(SAMPLES, allow_pickle=False) as stored:
        return stored["images"][..., None]


def _random_model(spec: list, seed: int = 3) -> TrainedModel:
    _, state = init_state(spec, (28, 28, 1), 10, TrainConfig(seed=seed))
    weights = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    # Non-trivial batch statistics, so the exported BatchNorm is really exercised.
    weights = jax.tree_util.tree_map(lambda v: v + 0.1 * np.random.default_rng(seed).random(np.shape(v)), weights)
    return TrainedModel(spec, (28, 28, 1), catalogue.CLASS_NAMES, weights)


def _onnx_probs(payload: bytes, images: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images.astype(np.float32) / 255.0})[0]


def test_bundle_round_trip(demo, test_images, tmp_path):
    path = bundle.write_bundle(demo, tmp_path / "demo.zip")
    loaded = predict.load_model(str(path))
    assert np.abs(loaded.predict_proba(test_images) - demo.predict_proba(test_images)).max() <= TOLERANCE
    assert loaded.class_names == demo.class_names and loaded.preprocess == demo.preprocess
    assert loaded.card["test_accuracy"] == demo.card["test_accuracy"]
    assert zipfile.ZipFile(path).namelist() == ["model.json", "model.msgpack", "card.json", "config.json"]
    assert bundle.bundle_bytes(demo) == path.read_bytes()  # reproducible


def test_onnx_round_trip_of_the_demo_model(demo, test_images, tmp_path):
    path = tmp_path / "demo.onnx"
    difference = onnx_export.export_onnx(demo, path, test_images)
    onnx_probs = _onnx_probs(path.read_bytes(), test_images)
    bundle_probs = bundle.load_bundle(bundle.bundle_bytes(demo)).predict_proba(test_images)
    assert difference <= TOLERANCE
    assert np.abs(onnx_probs - demo.predict_proba(test_images)).max() <= TOLERANCE
    assert np.abs(onnx_probs - bundle_probs).max() <= TOLERANCE
    assert (onnx_probs.argmax(1) == demo.predict_proba(test_images).argmax(1)).all()


def test_onnx_export_covers_every_layer_type(test_images):
    model = _random_model(ALL_LAYERS_SPEC)
    payload, difference = onnx_export.onnx_bytes(model, test_images)
    assert difference <= TOLERANCE
    assert np.abs(_onnx_probs(payload, test_images) - model.predict_proba(test_images)).max() <= TOLERANCE


def test_onnx_export_fails_loudly_when_the_check_fails(demo, test_images, monkeypatch):
    monkeypatch.setattr(onnx_export, "export_forward", lambda model: lambda images: jax.nn.softmax(images[:, 0, :10, 0]))
    with pytest.raises(bundle.ExportError, match="differ from JAX"):
        onnx_export.onnx_bytes(demo, test_images)


def test_cli_export_both_formats(tmp_path, capsys):
    zip_path, onnx_path = tmp_path / "m.zip", tmp_path / "m.onnx"
    assert cli.main(["export", "demo", "--format", "bundle", "--out", str(zip_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes"] == zip_path.stat().st_size
    assert cli.main(["export", "demo", "--format", "onnx", "--out", str(onnx_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_abs_diff"] <= TOLERANCE and onnx_path.stat().st_size == result["bytes"]
    assert cli.main(["export", "demo", "--format", "onnx", "--out", str(tmp_path)]) == 2
    assert "folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- hostile bundles

def _zip(members: list[tuple[str | zipfile.ZipInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, payload in members:
            archive.writestr(name, payload)
    return buffer.getvalue()


def _declare_size(payload: bytes, member: str, size: int) -> bytes:
    patched = bytearray(payload)
    start = 0
    while (start := patched.find(b"PK\x01\x02", start)) >= 0:
        name_length = struct.unpack("<H", patched[start + 28:start + 30])[0]
        if patched[start + 46:start + 46 + name_length].decode() == member:
            patched[start + 24:start + 28] = struct.pack("<I", size)
        start += 4
    return bytes(patched)


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    return info


def _hostile(good: dict[str, bytes]) -> dict[str, tuple[bytes, str]]:
    files = list(good.items())
    return {
        "not a zip": (b"just text", "not a zip bundle"),
        "pickle inside": (_zip(files + [("weights.pkl", b"\x80\x04cos\nsystem\n.")]), "pickle"),
        "unexpected member": (_zip(files + [("run.sh", b"rm -rf ~")]), "unexpected files"),
        "path traversal": (_zip(files + [("../../model.json", b"{}")]), "unexpected files"),
        "absolute path": (_zip(files + [("/etc/passwd", b"")]), "unexpected files"),
        "symlink": (_zip([f for f in files if f[0] != "card.json"] + [(_symlink("card.json"), b"/etc/passwd")]), "link"),
        "huge declared size": (_declare_size(_zip(files), "model.msgpack", 2_000_000_000), "declares 2,000,000,000 bytes"),
        "lying declared size": (_declare_size(_zip(files), "model.msgpack", 10), "corrupt"),
        "zip bomb": (_zip([f for f in files if f[0] != "model.msgpack"] + [("model.msgpack", b"\0" * 50_000_000)]), "expands"),
        "missing weights": (_zip([f for f in files if f[0] != "model.msgpack"]), "lacks model.msgpack"),
        "garbage weights": (_zip([f for f in files if f[0] != "model.msgpack"] + [("model.msgpack", b"\xc1" * 100)]), "corrupt"),
        "wrong shapes": (_zip([f for f in files if f[0] != "model.json"] + [("model.json", _wider(good["model.json"]))]), "shape"),
        "newer format": (_zip([f for f in files if f[0] != "model.json"] + [("model.json", _edit(good["model.json"], version=99))]),
                         "newer version"),
        "bad json": (_zip([f for f in files if f[0] != "model.json"] + [("model.json", b"{not json")]), "not valid JSON"),
    }


def _edit(payload: bytes, **changes) -> bytes:
    return json.dumps({**json.loads(payload), **changes}).encode()


def _wider(payload: bytes) -> bytes:
    description = json.loads(payload)
    description["spec"][0]["filters"] *= 2
    return json.dumps(description).encode()


@pytest.fixture(scope="module")
def good_files(demo) -> dict[str, bytes]:
    return bundle.model_files(demo)


HOSTILE_CASES = ["not a zip", "pickle inside", "unexpected member", "path traversal", "absolute path", "symlink",
                 "huge declared size", "lying declared size", "zip bomb", "missing weights", "garbage weights",
                 "wrong shapes", "newer format", "bad json"]


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_hostile_bundle_is_refused(case, good_files, tmp_path):
    cases = _hostile(good_files)
    assert sorted(cases) == sorted(HOSTILE_CASES)
    payload, message = cases[case]
    with pytest.raises(bundle.BundleError, match=message):
        bundle.load_bundle(payload)
    path = tmp_path / "model.zip"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=message):
        predict.load_model(str(path))


def _random_model(spec: list, shape: tuple = (28, 28, 1), temperature: float = 1.3):
    from flax import nnx

    from fmnist_jax.model import layers as model_layers
    from fmnist_jax.training.trained import TrainedModel
    built = model_layers.build_model(spec, shape, 10, seed=3)
    _, params, batch_stats = nnx.split(built, nnx.Param, nnx.BatchStat)
    rng = np.random.default_rng(0)
    for index, stats in batch_stats.get("layers", {}).items():  # trained-looking running statistics
        stats["mean"][...] = rng.normal(0, 0.1, np.shape(stats["mean"][...])).astype(np.float32)
        stats["var"][...] = rng.uniform(0.5, 2.0, np.shape(stats["var"][...])).astype(np.float32)
        stats["updates"][...] = np.float32(7)
    return TrainedModel(spec, shape, tuple(f"c{i}" for i in range(10)), {"params": params, "batch_stats": batch_stats},
                        calibration={"temperature": temperature})


@pytest.mark.slow
def test_tflite_export_matches_jax_for_every_layer_type() -> None:
    from fmnist_jax.deploy import onnx_export, tflite_export
    spec = [{"type": "conv2d", "filters": 6, "kernel": 3, "stride": 2, "padding": "same", "activation": "gelu"},
            {"type": "batchnorm"}, {"type": "activation", "function": "leaky_relu"},
            {"type": "conv2d", "filters": 8, "kernel": 3, "padding": "valid", "activation": "elu"},
            {"type": "avgpool", "pool": 2, "stride": 2, "padding": "same"},
            {"type": "maxpool", "pool": 3, "stride": 1, "padding": "same"},
            {"type": "dropout", "rate": 0.5}, {"type": "activation", "function": "tanh"},
            {"type": "globalavgpool"}, {"type": "dense", "units": 16, "activation": "sigmoid"},
            {"type": "dense", "units": 10}]
    model = _random_model(spec)
    payload, difference = tflite_export.tflite_bytes(model, onnx_export.check_images(model))
    assert payload[4:8] == b"TFL3" and difference <= tflite_export.TOLERANCE


@pytest.mark.slow
def test_export_cli_writes_a_checked_tflite_file(tmp_path) -> None:
    out = tmp_path / "demo.tflite"
    result = subprocess.run([sys.executable, "-m", "fmnist_jax", "export", "demo", "--format", "tflite", "--out", str(out),
                             "--json"], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["format"] == "tflite" and report["max_abs_diff"] <= 1e-4 and out.stat().st_size == report["bytes"]


@pytest.mark.slow
def test_a_bundle_can_carry_its_tflite_model_and_still_loads(tmp_path) -> None:
    out = tmp_path / "demo.zip"
    assert cli.main(["export", "demo", "--format", "bundle", "--with-tflite", "--out", str(out), "--json"]) == 0
    with zipfile.ZipFile(out) as archive:
        assert "model.tflite" in archive.namelist() and archive.read("model.tflite")[4:8] == b"TFL3"
    loaded = predict.load_model(str(out))
    images = onnx_export.check_images(loaded)
    assert np.allclose(loaded.predict_proba(images), predict.load_model("demo").predict_proba(images), atol=1e-6)


def _with_tta(model: TrainedModel) -> TrainedModel:
    return TrainedModel(model.spec, model.input_shape, model.class_names, model.weights_bytes(),
                        calibration={"temperature": model.temperature}, card={"config": {"tta_flip": True}})


def test_flip_tta_predicts_the_mean_logits_of_each_image_and_its_mirror(test_images, tmp_path):
    plain = _random_model(ALL_LAYERS_SPEC)
    tta = _with_tta(plain)
    assert tta.tta_flip and not plain.tta_flip
    expected = (plain.predict_logits(test_images) + plain.predict_logits(test_images[:, :, ::-1])) / 2
    np.testing.assert_allclose(tta.predict_logits(test_images), expected, atol=1e-5)
    assert np.abs(tta.predict_logits(test_images) - plain.predict_logits(test_images)).max() > 1e-3  # it does something
    # a bundle carries the setting in its training config, so it predicts the same way after loading
    loaded = bundle.load_bundle(bundle.bundle_bytes(tta, config=TrainConfig(tta_flip=True).to_dict()))
    assert loaded.tta_flip
    assert np.abs(loaded.predict_proba(test_images) - tta.predict_proba(test_images)).max() <= TOLERANCE


def test_onnx_export_of_a_flip_tta_model_averages_the_mirror_too(test_images):
    tta = _with_tta(_random_model(ALL_LAYERS_SPEC))
    payload, difference = onnx_export.onnx_bytes(tta, test_images)
    assert difference <= TOLERANCE
    assert np.abs(_onnx_probs(payload, test_images) - tta.predict_proba(test_images)).max() <= TOLERANCE


@pytest.mark.slow
def test_tflite_export_of_a_flip_tta_model_matches_jax(test_images) -> None:
    from fmnist_jax.deploy import tflite_export
    tta = _with_tta(_random_model(ALL_LAYERS_SPEC))
    payload, difference = tflite_export.tflite_bytes(tta, test_images)
    assert payload[4:8] == b"TFL3" and difference <= tflite_export.TOLERANCE
