"""The residual block (a ResNet basic block): its shapes and parameters, its arithmetic against a plain reference,
training, and every path a trained model leaves by (bundle, ONNX, TFLite, the exported script, saliency)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_script
from flax import nnx

from fmnist_jax.data import splitting
from fmnist_jax.data.augment import AugmentConfig
from fmnist_jax.model import layer_specs, layers
from fmnist_jax.training import loop
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.trained import TrainedModel

# an identity block (8 -> 8 channels), a projecting one (8 -> 16, stride 2 from 14 to 7 pixels) and one that
# strides an odd side (16 -> 16 channels, 7 -> 4 pixels)
SMALL = [{"type": "conv2d", "filters": 8, "kernel": 3, "stride": 2, "padding": "same", "activation": "relu"},
         {"type": "residual", "filters": 8}, {"type": "residual", "filters": 16, "stride": 2},
         {"type": "residual", "filters": 16, "stride": 2}, {"type": "flatten"}, {"type": "dense", "units": 10}]
CFG = TrainConfig(epochs=3, batch_size=16, chunk_steps=3, learning_rate=3e-3, ema_decay=0.9, tta_flip=True,
                  augment=AugmentConfig(flip=0.5, crop=1))


def _images(count: int = 48, seed: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)


def test_the_block_keeps_or_halves_the_size_and_counts_its_parameters() -> None:
    info = layer_specs.describe(SMALL)
    # odd sides round up, as 'same' padding does: 7 -> 4
    assert [row["output_shape"] for row in info["layers"][:4]] == [[14, 14, 8], [14, 14, 8], [7, 7, 16], [4, 4, 16]]
    # identity: two 3x3x8x8 kernels and two BatchNorms; projection: 3x3x8x16 + 3x3x16x16 + a 1x1x8x16 shortcut
    assert info["layers"][1]["params"] == 2 * 9 * 8 * 8 + 2 * 2 * 8
    assert info["layers"][2]["params"] == 9 * 8 * 16 + 9 * 16 * 16 + 8 * 16 + 3 * 2 * 16
    assert info["total_params"] == layers.count_params(layers.build_model(SMALL))
    for spec in (SMALL, [{"type": "residual", "filters": 4, "stride": 2}] * 6 + SMALL[4:]):  # down to 1 pixel
        model = layers.build_model(spec)
        out = model.layers[0](jnp.zeros((2, 28, 28, 1)), layers.Context())
        assert list(out.shape[1:]) == layer_specs.describe(spec)["layers"][0]["output_shape"]
        assert model(jnp.zeros((2, 28, 28, 1))).shape == (2, 10)
    assert layer_specs.normalize_layer({"type": "ResBlock", "filters": 4}, 0) == {
        "type": "residual", "filters": 4, "stride": 1, "momentum": 0.9, "epsilon": 1e-5}


def test_the_public_spaces_memory_figure_counts_every_tensor_a_block_keeps() -> None:
    from fmnist_jax.studio import public

    rows = layer_specs.describe(SMALL)["layers"]
    assert rows[1]["activations"] == 7 * 14 * 14 * 8 and rows[2]["activations"] == 9 * 7 * 7 * 16
    assert rows[0]["activations"] == 14 * 14 * 8  # a plain layer keeps its output
    # written out by hand: the input, conv, three blocks (7, 9 and 9 tensors), flatten and dense
    kept = 28 * 28 + 14 * 14 * 8 + 7 * 14 * 14 * 8 + 9 * 7 * 7 * 16 + 9 * 4 * 4 * 16 + 256 + 10
    figures = public.job_figures(SMALL, (28, 28, 1), 10, batch_size=64, epochs=1, train_size=1000)
    params = layer_specs.describe(SMALL)["total_params"]
    assert figures["memory_mb"] == pytest.approx(4 * (4 * params + 2 * 64 * kept) / 2**20)


def test_impossible_blocks_are_refused_with_what_to_change() -> None:
    with pytest.raises(ValueError, match=r"layer 1 \(Residual\): 'stride' must be at most 2, got 3"):
        layer_specs.describe([SMALL[0], {"type": "residual", "filters": 8, "stride": 3}, *SMALL[3:]])
    with pytest.raises(ValueError, match=r"layer 2 \(Residual\): gets the image-shaped|needs an image-shaped input"):
        layer_specs.describe([SMALL[0], {"type": "flatten"}, {"type": "residual"}, {"type": "dense", "units": 10}])


def _randomise_statistics(model: nnx.Module, seed: int = 1) -> None:
    """Running statistics and affine parameters away from their initial values, as training leaves them."""
    rng = np.random.default_rng(seed)
    for path, value in nnx.state(model, nnx.BatchStat).flat_state():
        name = path[-1]
        shape = np.shape(value[...])
        new = {"mean": rng.normal(0, 0.3, shape), "var": rng.uniform(0.5, 2.0, shape), "updates": np.full(shape, 50.0)}[name]
        value[...] = jnp.asarray(new, jnp.float32)
    for path, value in nnx.state(model, nnx.Param).flat_state():
        if path[-1] in ("scale", "bias"):
            value[...] = value[...] + jnp.asarray(rng.normal(0, 0.2, np.shape(value[...])), jnp.float32)


def _textbook(x: jax.Array, block: layers.Residual, train: bool) -> jax.Array:
    """He et al.'s block as torchvision writes it: 3x3 convolutions padded by one pixel on each side (so a stride-2
    window centres on the pixel the 1x1 shortcut samples), BatchNorm with the batch's statistics in training and
    the bias-corrected running ones otherwise."""
    def conv(inputs: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
        pad = kernel.shape[0] // 2
        return jax.lax.conv_general_dilated(inputs, kernel, (stride, stride), [(pad, pad), (pad, pad)],
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def norm(inputs: jax.Array, bn: layers.BatchNorm) -> jax.Array:
        if train:
            mean, var = inputs.mean(axis=(0, 1, 2)), inputs.var(axis=(0, 1, 2))
        else:
            corrected = 1.0 - bn.momentum ** bn.updates[...]
            mean, var = bn.mean[...] / corrected, bn.var[...] / corrected
        return (inputs - mean) / jnp.sqrt(var + bn.epsilon) * bn.scale[...] + bn.bias[...]

    y = jax.nn.relu(norm(conv(x, block.conv1[...], block.stride), block.bn1))
    y = norm(conv(y, block.conv2[...], 1), block.bn2)
    shortcut = x if block.project is None else norm(conv(x, block.project[...], block.stride), block.bn_project)
    return jax.nn.relu(y + shortcut)


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("conv_impl", ["xla", "xla_dots", "winograd", "im2col"])
def test_the_block_computes_the_textbook_resnet_block(conv_impl: str, train: bool) -> None:
    """Inference runs XLA's forward convolution whatever the setting; training runs the chosen implementation
    (Winograd's for the stride-1 3x3 convolutions), on the batch's statistics."""
    model = layers.build_model(SMALL, seed=3)
    _randomise_statistics(model)
    assert model.layers[1].project is None and model.layers[2].project is not None  # identity, then projection
    x = jnp.asarray(_images(6), jnp.float32) / 255.0
    ctx = layers.Context(train=train, conv_impl=conv_impl)
    hidden = model.layers[0](x, layers.Context())
    for block in model.layers[1:4]:
        expected = _textbook(hidden, block, train)
        got = block(hidden, ctx)
        np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-4, atol=2e-5)
        hidden = expected


def test_a_stride_2_window_centres_on_the_pixel_the_shortcut_samples() -> None:
    """On an even side the first output of a stride-2 block reads the input's first pixel in both paths (with
    'SAME' padding its 3x3 window would centre on pixel (1, 1) while the shortcut reads (0, 0))."""
    block = layers.build_model([{"type": "residual", "filters": 1, "stride": 2}, {"type": "flatten"},
                                {"type": "dense", "units": 10}], (4, 4, 1)).layers[0]
    centre = np.zeros((3, 3, 1, 1), np.float32)
    centre[1, 1] = 1.0
    block.conv1[...] = jnp.asarray(centre)
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, 0, 0] = 1.0
    conv1 = jax.lax.conv_general_dilated(layers.residual_padded(jnp.asarray(x), 2), block.conv1[...], (2, 2),
                                         "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert conv1.shape == (1, 2, 2, 1) and float(conv1[0, 0, 0, 0]) == 1.0 and float(jnp.abs(conv1).sum()) == 1.0


def test_in_training_the_block_normalises_with_the_batchs_statistics_and_updates_them() -> None:
    model = layers.build_model(SMALL, seed=3)
    block = model.layers[1]
    x = jax.random.normal(jax.random.key(0), (16, 14, 14, 8)) * 2.0 + 1.0
    block(x, layers.Context(train=True))
    assert float(block.bn1.updates[...]) == 1.0 and float(block.bn2.updates[...]) == 1.0
    conv1 = jax.lax.conv_general_dilated(x, block.conv1[...], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(np.asarray(block.bn1.mean[...]), 0.1 * np.asarray(conv1.mean(axis=(0, 1, 2))),
                               rtol=1e-4, atol=1e-6)


def _train(spec: list, splits: splitting.Splits, cfg: TrainConfig = CFG) -> dict:
    return loop.run_to_completion(loop.train(spec, cfg, splits))


def _splits() -> splitting.Splits:
    from fmnist_jax.data import catalogue

    dataset = catalogue.synthetic_dataset(num_train=256, num_test=64, seed=0)
    return splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.25, seed=0))


@pytest.fixture(scope="module")
def residual_model() -> TrainedModel:
    """A trained residual network with flip TTA and a calibration temperature, as a bundle would load it."""
    from fmnist_jax.data import catalogue

    splits = _splits()
    result = _train(SMALL, splits)
    return TrainedModel(SMALL, splits.input_shape, catalogue.CLASS_NAMES, result["weights"],
                        card={"config": CFG.to_dict()}, calibration={"temperature": 1.3})


def test_a_residual_network_trains_and_its_blocks_statistics_move(residual_model: TrainedModel) -> None:
    stats = residual_model.weights["batch_stats"]["layers"]
    for index, names in ((1, ("bn1", "bn2")), (2, ("bn1", "bn2", "bn_project")), (3, ("bn1", "bn2", "bn_project"))):
        for name in names:
            assert float(stats[index][name]["updates"][...]) > 0
            assert np.abs(np.asarray(stats[index][name]["mean"][...])).max() > 0
    splits = _splits()
    accuracy = float((residual_model.predict_proba(splits.test_images).argmax(axis=1) == splits.test_labels).mean())
    assert accuracy >= 0.3, accuracy  # ten classes: chance is 0.1


def test_a_bundle_of_a_residual_network_loads_and_predicts_the_same(residual_model: TrainedModel) -> None:
    from fmnist_jax.deploy import bundle

    loaded = bundle.load_bundle(bundle.bundle_bytes(residual_model, config=residual_model.card["config"]))
    np.testing.assert_allclose(loaded.predict_proba(_images()), residual_model.predict_proba(_images()), atol=1e-6)


def test_onnx_export_of_a_residual_network_matches_jax(residual_model: TrainedModel) -> None:
    import onnxruntime

    from fmnist_jax.deploy import onnx_export

    payload, difference = onnx_export.onnx_bytes(residual_model, _images())
    assert difference <= onnx_export.ONNX_TOLERANCE
    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    probs = session.run(None, {"images": _images(seed=9).astype(np.float32) / 255.0})[0]
    np.testing.assert_allclose(probs, residual_model.predict_proba(_images(seed=9)), atol=1e-4)


@pytest.mark.slow
def test_tflite_export_of_a_residual_network_matches_jax(residual_model: TrainedModel) -> None:
    from fmnist_jax.deploy import tflite_export

    payload, difference = tflite_export.tflite_bytes(residual_model, _images())
    assert payload[4:8] == b"TFL3" and difference <= tflite_export.TOLERANCE


def test_the_exported_script_writes_the_block_out(residual_model: TrainedModel, tmp_path) -> None:
    from fmnist_jax.deploy import script_export

    text = script_export.model_script(residual_model, "residual")
    assert "class Residual(nnx.Module)" in text and "fmnist_jax" not in text
    script = load_script(text, tmp_path, "exported_residual_script")
    net = script.Net(script.nnx.Rngs(params=0, dropout=1))
    counted = sum(int(np.size(v[...])) for _, v in script.nnx.state(net, script.nnx.Param).flat_state())
    assert counted == layer_specs.describe(SMALL)["total_params"]
    assert net.layer1.project is None and net.layer2.project.kernel[...].shape == (1, 1, 8, 16)
    # the script's block computes the studio's: the same weights and running statistics give the same logits
    studio = residual_model.member(0)
    trained = nnx.merge(studio.graphdef, studio.weights["params"], studio.weights["batch_stats"])
    for index in (1, 2, 3):
        ours, theirs = trained.layers[index], getattr(net, f"layer{index}")
        theirs.conv1.kernel[...], theirs.conv2.kernel[...] = ours.conv1[...], ours.conv2[...]
        pairs = [("bn1", ours.bn1), ("bn2", ours.bn2)]
        if ours.project is not None:
            theirs.project.kernel[...] = ours.project[...]
            pairs.append(("bn_project", ours.bn_project))
        for name, bn in pairs:
            mean, var = bn.running_stats()
            target = getattr(theirs, name)
            target.scale[...], target.bias[...], target.mean[...], target.var[...] = bn.scale[...], bn.bias[...], mean, var
    x = jnp.asarray(_images(5), jnp.float32) / 255.0
    hidden = trained.layers[0](x, layers.Context())
    net.eval()
    for index in (1, 2, 3):
        expected = trained.layers[index](hidden, layers.Context())
        np.testing.assert_allclose(np.asarray(getattr(net, f"layer{index}")(hidden)), np.asarray(expected),
                                   rtol=1e-4, atol=1e-5)
        hidden = expected
    # and it trains: one step of the script's own loop moves the blocks' weights and lowers the loss on its batch
    net.train()
    optimizer = script.nnx.Optimizer(net, script.optax.adam(1e-2), wrt=script.nnx.Param)
    images, labels = jnp.asarray(_images(16)), jnp.asarray(np.arange(16) % 10)
    first = float(script.train_step(net, optimizer, images, labels, jax.random.key(0), jnp.bool_(False)))
    for _ in range(5):
        last = float(script.train_step(net, optimizer, images, labels, jax.random.key(0), jnp.bool_(False)))
    assert last < first
    # a model without residual blocks carries no Residual class
    plain = script_export.training_script([SMALL[0], SMALL[4], SMALL[5]], CFG, (28, 28, 1), tuple("abcdefghij"))
    assert "class Residual" not in plain


def test_grad_cam_reads_the_last_residual_block(residual_model: TrainedModel) -> None:
    from fmnist_jax.deploy import explain

    assert explain.gradcam_layer(SMALL) == 3
    assert explain.default_method(residual_model) == "integrated"
    maps, chosen = explain.explain(residual_model, _images(4), "gradcam")
    assert maps.shape == (4, 28, 28) and maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
    assert set(chosen.tolist()) <= set(range(10))
    other, explained = explain.explain(residual_model, _images(4), "gradcam", classes=(chosen + 1) % 10)
    np.testing.assert_array_equal(explained, (chosen + 1) % 10)
    assert np.abs(other - maps).max() > 1e-3  # the block's gradients depend on the class explained


def test_the_network_diagram_names_the_block() -> None:
    from fmnist_jax.studio import charts

    assert charts.layer_summary(layer_specs.normalize_layer(SMALL[2], 2)) == \
        "16 filters, two 3×3 convolutions + shortcut, stride 2"
    assert "Residual" in charts.LAYER_COLORS
