"""Saliency maps: every method finds the pixels a prediction rests on (hand-made models whose answer depends on
one corner only), agrees with predict on the class, and the explain CLI writes them as PNGs. The faithfulness
checks (deletion curves, on the garment, not the input) are tested on hand-made cases, then on the shipped demo
model with the 50 Fashion-MNIST test images the repo carries."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from fmnist_jax.cli import main as cli
from fmnist_jax.cli import deploy as cli_deploy
from fmnist_jax.deploy import explain, faithfulness, predict
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


@pytest.mark.parametrize("spec, dense_index, method", [
    (CONV, 2, "gradcam"), (CONV, 2, "hirescam"), (CONV, 2, "integrated"), (CONV, 2, "gradinput"),
    (CONV, 2, "occlusion"), (DENSE, 1, "integrated"), (DENSE, 1, "gradinput"), (DENSE, 1, "occlusion")])
def test_the_map_lights_up_where_the_answer_comes_from(spec: list, dense_index: int, method: str) -> None:
    model = corner_model(spec, dense_index)
    images = np.full((3, 8, 8, 1), 200, np.uint8)
    if method == "gradcam":
        # Grad-CAM weighs whole channels, so it shows where the useful channel is active: here, only the corner
        # is bright. The other methods need no such help: the whole image is bright and only the corner matters.
        images[:, 4:, :] = 0
        images[:, :, 4:] = 0
    maps, chosen = explain.explain(model, images, method)
    assert maps.shape == (3, 8, 8) and maps.dtype == np.float32 and maps.min() >= 0 and maps.max() <= 1
    assert list(chosen) == list(model.predict_proba(images).argmax(1)) == [0, 0, 0]
    inside, outside = maps[:, :4, :4].mean(), np.concatenate([maps[:, 4:, :].ravel(), maps[:, :4, 4:].ravel()]).mean()
    assert inside > 0.5 and outside < 0.25 * inside, (method, inside, outside)


def test_hirescam_keeps_the_place_that_grad_cams_channel_average_loses() -> None:
    # One channel, bright everywhere, and a dense head that reads only the corner: Grad-CAM's averaged weight
    # spreads the map over the whole bright channel; HiResCAM's element-wise product keeps only the corner.
    model = corner_model(CONV, 2)
    images = np.full((1, 8, 8, 1), 200, np.uint8)
    grad_cam = explain.explain(model, images, "gradcam")[0][0]
    hires = explain.explain(model, images, "hirescam")[0][0]
    assert grad_cam.min() == grad_cam.max() == 0.0 or np.ptp(grad_cam) < 1e-6  # flat: no place at all
    assert hires[:4, :4].min() == 1.0 and hires[4:, :].max() == 0.0 and hires[:4, 4:].max() == 0.0


def test_methods_and_defaults() -> None:
    assert cli_deploy.METHODS_SHOWN == explain.METHODS and set(explain.TITLES) == set(explain.METHODS)
    assert explain.default_method(corner_model(CONV, 2)) == "integrated"
    assert explain.default_method(corner_model(DENSE, 1)) == "integrated"  # input gradients need no convolution
    for method, title in (("gradcam", "Grad-CAM"), ("hirescam", "HiResCAM")):
        with pytest.raises(ValueError, match=f"{title} needs a convolution layer"):
            explain.explain(corner_model(DENSE, 1), np.zeros((1, 8, 8, 1), np.uint8), method)
    with pytest.raises(ValueError, match="method must be one of"):
        explain.explain(corner_model(DENSE, 1), np.zeros((1, 8, 8, 1), np.uint8), "lime")
    spec = [{"type": "conv2d"}, {"type": "batchnorm"}, {"type": "activation"}, {"type": "maxpool"}, {"type": "flatten"}]
    assert explain.gradcam_layer(spec) == 2  # the block after the last convolution's normalisation and activation


def test_blur_keeps_flat_images_and_spreads_a_point() -> None:
    flat = np.full((1, 12, 12, 1), 0.5, np.float32)
    np.testing.assert_allclose(np.asarray(explain.blurred(flat, 2.0)), flat, atol=1e-6)
    point = np.zeros((1, 21, 21, 1), np.float32)
    point[0, 10, 10, 0] = 1.0
    spread = np.asarray(explain.blurred(point, 2.0))[0, :, :, 0]
    assert abs(spread.sum() - 1.0) < 1e-4 and spread[10, 10] == spread.max() < 0.05
    assert spread[10, 12] == pytest.approx(spread[10, 10] * np.exp(-0.5), rel=1e-3)  # Gaussian, sigma 2
    assert explain.blur_sigma((28, 28, 1)) == pytest.approx(2.8)


class CornerShare:
    """A stand-in model: class 0's probability is the mean brightness of the top-left 4x4 corner (0-1)."""

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        share = images[:, :4, :4, 0].astype(np.float32).mean(axis=(1, 2)) / 255.0
        return np.stack([share, 1.0 - share], axis=1)


def test_deletion_curves_fall_faster_for_the_pixels_the_answer_rests_on() -> None:
    images = np.full((4, 12, 12, 1), 100, np.uint8)  # the whole image is garment (> 40)...
    images[:, :4, :4] = 255  # ...and the answer rests on its bright corner, which the blur darkens
    faithful = np.zeros((4, 12, 12), np.float32)
    faithful[:, :4, :4] = 1.0
    backwards = 1.0 - faithful
    classes = np.zeros(4, np.int64)
    good = faithfulness.deletion_curves(CornerShare(), images, faithful, classes, seed=0)
    bad = faithfulness.deletion_curves(CornerShare(), images, backwards, classes, seed=0)
    assert len(good["salient"]) == len(faithfulness.FRACTIONS) == 10
    assert good["random"] == bad["random"]  # the same random draw for both maps
    assert all(s < r for s, r in zip(good["salient"], good["random"]))
    assert bad["salient"] == [1.0] * 10  # deleting pixels the answer ignores changes nothing
    assert all(a >= b for a, b in zip(good["salient"], good["salient"][1:]))
    # k counts garment pixels: 5% of 144 is 7, which fits inside the corner's 16, so all of them are corner ones
    soft = faithfulness.blurred_copy(images)[0, :, :, 0]
    expected = images[0, :, :, 0].astype(np.float32)
    for index in np.argsort(-faithful[0].ravel(), kind="stable")[:7]:
        expected.flat[index] = soft.flat[index]
    assert good["salient"][0] == pytest.approx(expected[:4, :4].mean() / 255.0, abs=1e-6) and good["salient"][0] < 1.0


def test_on_garment_and_correlation_checks() -> None:
    image = np.zeros((1, 10, 10, 1), np.uint8)
    image[0, 2:8, 2:8] = 200
    on = np.zeros((1, 10, 10), np.float32)
    on[0, 3:7, 3:7] = 1.0
    corner = np.zeros((1, 10, 10), np.float32)
    corner[0, 0, :] = 1.0
    assert faithfulness.on_garment(np.concatenate([image, image]), np.concatenate([on, corner])).tolist() == [True, False]
    copy = image[..., 0].astype(np.float32) / 200.0
    assert faithfulness.correlation_with_input(image, copy)[0] == pytest.approx(1.0)
    assert faithfulness.correlation_with_input(image, np.zeros((1, 10, 10), np.float32))[0] == 0.0


def test_the_demo_models_default_map_is_faithful_on_real_test_images() -> None:
    """The shipped model, the 50 Fashion-MNIST test images in tests/data: the default method's maps sit on the
    garment for at least 80% of them, are not the image itself, and delete faster than random and Grad-CAM."""
    with np.load(Path(__file__).parent / "data" / "fashion_mnist_test_samples.npz", allow_pickle=False) as stored:
        images = stored["images"][..., None]
    model = predict.load_model("demo")
    maps, chosen = explain.explain(model, images)
    report = faithfulness.report(model, images, maps, chosen)
    assert report["on_garment"] >= 0.8 and report["correlation_max"] < 0.95, report
    assert report["beats_random"] and report["salient_area"] < report["random_area"] - 0.1, report
    grad_cam = faithfulness.report(model, images, explain.explain(model, images, "gradcam")[0], chosen)
    assert report["salient_area"] < grad_cam["salient_area"] - 0.1, (report, grad_cam)


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
    assert set(first) == {"file", "label", "index", "method", "heatmap"} and first["method"] == "integrated"
    assert first["label"] == predict.predict_files(predict.load_model("demo"), [("s", (tmp_path / "shirt.png").read_bytes())])[0]["label"]
    heatmap = Image.open(first["heatmap"])
    assert heatmap.mode == "L" and heatmap.size == (28, 28) and np.asarray(heatmap).max() == 255
    assert oct(Path(first["heatmap"]).stat().st_mode & 0o777) == "0o644"
    code = cli.main(["explain", "demo", str(tmp_path / "shirt.png"), "--out", str(tmp_path / "maps"), "--method",
                     "occlusion", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])[0]["method"] == "occlusion"
