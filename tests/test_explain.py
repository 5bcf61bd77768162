"""Saliency maps: Grad-CAM and occlusion find the pixels a prediction rests on (hand-made models whose answer
depends on one corner only), agree with predict on the class, and the explain CLI writes them as PNGs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from fmnist_jax.cli import main as cli
from fmnist_jax.deploy import explain, predict
from fmnist_jax.model import layers
from fmnist_jax.training.trained import TrainedModel

CLASSES = tuple(f"c{i}" for i in range(10))


def corner_model(spec: list[dict], dense_index: int) -> TrainedModel:
    """A model whose class-0 logit sums the top-left 4x4 pixels of an 8x8 image; every other logit is 0."""
    built = layers.build_model(spec, (8, 8, 1), 10)
    _, params, batch_stats = nnx.split(built, nnx.Param, nnx.BatchStat)
    kernel = np.zeros((64, 10), np.float32)
    corner = np.zeros((8, 8), bool)
    corner[:4, :4] = True
    kernel[corner.ravel(), 0] = 1.0
    params["layers"][dense_index]["kernel"][...] = kernel
    params["layers"][dense_index]["bias"][...] = np.zeros(10, np.float32)
    if "kernel" in params["layers"].get(0, {}):
        params["layers"][0]["kernel"][...] = np.ones((1, 1, 1, 1), np.float32)  # the conv passes pixels through
    return TrainedModel(spec, (8, 8, 1), CLASSES, {"params": params, "batch_stats": batch_stats})


CONV = [{"type": "conv2d", "filters": 1, "kernel": 1, "use_bias": False}, {"type": "flatten"},
        {"type": "dense", "units": 10}]
DENSE = [{"type": "flatten"}, {"type": "dense", "units": 10}]


@pytest.mark.parametrize("spec, dense_index, method", [(CONV, 2, "gradcam"), (CONV, 2, "occlusion"),
                                                       (DENSE, 1, "occlusion")])
def test_the_map_lights_up_where_the_answer_comes_from(spec: list, dense_index: int, method: str) -> None:
    model = corner_model(spec, dense_index)
    images = np.full((3, 8, 8, 1), 200, np.uint8)
    if method == "gradcam":
        # Grad-CAM weighs whole channels, so it shows where the useful channel is active: here, only the corner
        # is bright. Occlusion needs no such help: the whole image is bright and only the corner matters.
        images[:, 4:, :] = 0
        images[:, :, 4:] = 0
    maps, chosen = explain.explain(model, images, method)
    assert maps.shape == (3, 8, 8) and maps.dtype == np.float32 and maps.min() >= 0 and maps.max() <= 1
    assert list(chosen) == list(model.predict_proba(images).argmax(1)) == [0, 0, 0]
    inside, outside = maps[:, :4, :4].mean(), np.concatenate([maps[:, 4:, :].ravel(), maps[:, :4, 4:].ravel()]).mean()
    assert inside > 0.5 and outside < 0.25 * inside, (method, inside, outside)


def test_methods_and_defaults() -> None:
    assert explain.default_method(corner_model(CONV, 2)) == "gradcam"
    assert explain.default_method(corner_model(DENSE, 1)) == "occlusion"
    with pytest.raises(ValueError, match="Grad-CAM needs a convolution layer"):
        explain.explain(corner_model(DENSE, 1), np.zeros((1, 8, 8, 1), np.uint8), "gradcam")
    spec = [{"type": "conv2d"}, {"type": "batchnorm"}, {"type": "activation"}, {"type": "maxpool"}, {"type": "flatten"}]
    assert explain.gradcam_layer(spec) == 2  # the block after the last convolution's normalisation and activation


def test_explain_cli_writes_one_grayscale_map_per_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with np.load(Path(__file__).parent / "data" / "fashion_mnist_test_samples.npz", allow_pickle=False) as stored:
        image = stored["images"][0]
    Image.fromarray(image).save(tmp_path / "shirt.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    code = cli.main(["explain", "demo", str(tmp_path / "shirt.png"), str(tmp_path / "broken.png"),
                     "--out", str(tmp_path / "maps"), "--json"])
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 2 and "error" in results[1]
    first = results[0]
    assert set(first) == {"file", "label", "index", "method", "heatmap"} and first["method"] == "gradcam"
    assert first["label"] == predict.predict_files(predict.load_model("demo"), [("s", (tmp_path / "shirt.png").read_bytes())])[0]["label"]
    heatmap = Image.open(first["heatmap"])
    assert heatmap.mode == "L" and heatmap.size == (28, 28) and np.asarray(heatmap).max() == 255
    assert oct(Path(first["heatmap"]).stat().st_mode & 0o777) == "0o644"
    code = cli.main(["explain", "demo", str(tmp_path / "shirt.png"), "--out", str(tmp_path / "maps"), "--method",
                     "occlusion", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]["method"] == "occlusion"
