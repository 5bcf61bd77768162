"""The optimised training path computes what a plain implementation computes.

Speed lives in bench/; these tests only pin down correctness: every convolution implementation,
the reshape pooling, the micro-batched gradient and the compiled training chunk give the loss and
gradients of a plain reference model; data-parallel training over 4 devices follows the 1-device
loss curve; bfloat16 compute trains as well as float32; the dropout mask keeps the right fraction.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, run_script
from flax import nnx

from fmnist_jax.data import catalogue, splitting
from fmnist_jax.model import cpu_ops, layer_specs, layers, presets
from fmnist_jax.training import loop, program
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.program import init_state

pytestmark = pytest.mark.slow  # starts servers, browsers or trains: out of the quick inner loop

BATCH = 64  # two 32-image pieces for models without BatchNorm: the micro-batched gradient is exercised


def _without_dropout(spec: list[dict]) -> list[dict]:
    """The preset with every dropout rate at 0, so both implementations see the same deterministic network."""
    return [dict(layer, rate=0.0) if layer["type"] == "dropout" else layer for layer in layer_specs.normalize_spec(spec)]


# ----------------------------------------------------------------------------- plain reference model

def _textbook_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: str) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding.upper(), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _reference_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: str, values_of: str | None) -> jax.Array:
    """lax.conv's gradient, with the forward values of implementation `values_of` (None: lax.conv's own).

    Implementations round differently, and a ReLU whose pre-activation lies within that rounding of 0 takes either
    branch: one such element of dls's 663,552 moves its convolution gradients by 2e-3 relative (bench/NOTES.md, attempt
    43). So the reference takes the program's pre-activations and checks everything downstream of them: each backward
    pass against the textbook one. The forward values themselves are checked against XLA's below
    (test_convolution_implementations_match_xla) and by the loss."""
    if values_of is None:
        return _textbook_conv(x, kernel, stride, padding)

    @jax.custom_vjp
    def conv(x, kernel):
        return cpu_ops.conv2d_apply(x, kernel, stride, padding, values_of)

    def forward(x, kernel):
        return cpu_ops.conv2d_apply(x, kernel, stride, padding, values_of), (x, kernel)

    def backward(residuals, grad):  # the convolution is linear: its VJP does not depend on the forward values
        return jax.vjp(lambda x, kernel: _textbook_conv(x, kernel, stride, padding), *residuals)[1](grad)

    conv.defvjp(forward, backward)
    return conv(x, kernel)


def _reference_logits(spec: list[dict], params: dict, images: jax.Array, values_of: str | None = None,
                      pre_activations: list | None = None) -> jax.Array:
    """The spec's network in training mode written with textbook JAX ops (lax.conv, reduce_window, two-pass BN);
    each convolution's pre-activation is appended to `pre_activations` when given."""
    x = images
    for index, layer in enumerate(spec):
        kind, p = layer["type"], params.get(index, {})
        if kind == "conv2d":
            x = _reference_conv(x, p["kernel"], layer["stride"], layer["padding"], values_of)
            x = x + p["bias"] if "bias" in p else x
            if pre_activations is not None:
                pre_activations.append(x)
            x = layers.ACTIVATIONS[layer["activation"]](x)
        elif kind == "dense":
            x = layers.ACTIVATIONS[layer["activation"]](x @ p["kernel"] + p["bias"])
        elif kind == "maxpool":
            window = (1, layer["pool"], layer["pool"], 1)
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, (1, layer["stride"], layer["stride"], 1),
                                      layer["padding"].upper())
        elif kind == "batchnorm":
            mean = x.mean(axis=(0, 1, 2))
            var = ((x - mean) ** 2).mean(axis=(0, 1, 2))
            x = (x - mean) / jnp.sqrt(var + layer["epsilon"]) * p["scale"] + p["bias"]
        elif kind == "activation":
            x = layers.ACTIVATIONS[layer["function"]](x)
        elif kind == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif kind != "dropout":
            raise AssertionError(f"reference model lacks {kind}")
    return x


def _reference_loss(spec: list[dict], params: dict, images: jax.Array, labels: jax.Array,
                    values_of: str | None = None) -> jax.Array:
    log_probs = jax.nn.log_softmax(_reference_logits(spec, params, images, values_of))
    return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean()


def _program_step(spec: list[dict], conv_impl: str, images: np.ndarray, labels: np.ndarray, schedule: str = "constant",
                  planned_steps: int = 1) -> tuple[float, dict, dict]:
    """(loss, update / learning rate at step 0, initial params) of one step of the compiled training chunk (SGD,
    lr 1: with a constant schedule, update = -gradient); the plan says the epoch has `planned_steps` steps."""
    cfg = TrainConfig(batch_size=BATCH, optimizer="sgd", momentum=0.0, learning_rate=1.0, conv_impl=conv_impl, chunk_steps=1,
                      schedule=schedule)
    graphdef, state = program.init_state(spec, images.shape[1:], 10, cfg, steps_per_epoch=1)
    chunk_fn, _, _ = program.build_program(graphdef, cfg, 1, None)
    before = jax.tree.map(np.asarray, state["params"].to_pure_dict()["layers"])
    state, sums = chunk_fn(state, jnp.asarray(images), jnp.asarray(labels), jnp.arange(BATCH, dtype=jnp.int32),
                           program._base_key(0), jnp.int32(0), program.run_plan(cfg, planned_steps), length=1)
    after = jax.tree.map(np.asarray, state["params"].to_pure_dict()["layers"])
    grads = jax.tree.map(lambda b, a: b - a, before, after)
    return float(sums[0] / sums[2]), grads, before


@pytest.fixture(scope="module")
def fixed_batch() -> tuple[np.ndarray, np.ndarray]:
    dataset = catalogue.synthetic_dataset(num_train=BATCH, num_test=10, seed=3)
    return dataset.train_images, dataset.train_labels


@pytest.mark.parametrize("conv_impl", ["auto", "xla_dots", "im2col", "xla"])
@pytest.mark.parametrize("preset", ["dls", "fast"])
def test_training_step_matches_a_plain_reference(preset: str, conv_impl: str, fixed_batch) -> None:
    images, labels = fixed_batch
    spec = _without_dropout(presets.preset(preset))
    loss, grads, params = _program_step(spec, conv_impl, images, labels)
    x = jnp.asarray(images, jnp.float32) / 255.0
    values_of = cpu_ops.conv_impl_for(cpu_ops.resolve_conv_impl(conv_impl), train=True)
    plain_loss = _reference_loss(spec, params, x, jnp.asarray(labels))
    ref_loss, ref_grads = jax.value_and_grad(lambda p: _reference_loss(spec, p, x, jnp.asarray(labels), values_of))(params)
    assert loss == pytest.approx(float(plain_loss), rel=1e-5) and loss == pytest.approx(float(ref_loss), rel=1e-5)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
    for path, grad, ref in zip(jax.tree_util.tree_leaves_with_path(ref_grads), jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        scale = float(np.abs(ref).max())
        assert scale > 0, f"{path[0]}: reference gradient is zero"
        # lr 1 SGD subtracts the gradient from the weights, so float32 weight rounding bounds the error
        tolerance = 2e-4 * scale + 2e-6 * float(np.abs(params_leaf(params, path[0])).max())
        assert float(np.abs(grad - ref).max()) <= tolerance, jax.tree_util.keystr(path[0])


def test_the_plan_sets_the_compiled_steps_learning_rate(fixed_batch) -> None:
    """The schedule's numbers are arguments of the compiled chunk: one-cycle over 10 steps starts at lr / 25."""
    images, labels = fixed_batch
    spec = _without_dropout(presets.preset("dls"))
    _, plain, params = _program_step(spec, "auto", images, labels)
    _, cycled, _ = _program_step(spec, "auto", images, labels, schedule="one_cycle", planned_steps=10)
    for path, full, small in zip(jax.tree_util.tree_leaves_with_path(plain), jax.tree.leaves(plain), jax.tree.leaves(cycled)):
        tolerance = 2e-4 * float(np.abs(full).max()) + 50 * 2e-6 * float(np.abs(params_leaf(params, path[0])).max())
        assert float(np.abs(small * 25 - full).max()) <= tolerance, jax.tree_util.keystr(path[0])


def params_leaf(params: dict, path: tuple) -> np.ndarray:
    """The parameter at a tree path."""
    node = params
    for key in path:
        node = node[key.key]
    return node


@pytest.mark.parametrize("conv_impl", ["xla_dots", "im2col", "winograd"])
@pytest.mark.parametrize("padding,kernel,stride", [("valid", 3, 1), ("same", 3, 1), ("same", 5, 1), ("same", 2, 1), ("same", 3, 2)])
def test_convolution_implementations_match_xla(conv_impl: str, padding: str, kernel: int, stride: int) -> None:
    x = jax.random.normal(jax.random.key(0), (3, 9, 9, 8))  # 8 input channels: enough for winograd to apply
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 8, 7))

    def loss(impl: str):
        return lambda x, w: (cpu_ops.conv2d_apply(x, w, stride, padding, impl) ** 2).sum()

    expected = cpu_ops.conv2d_apply(x, w, stride, padding, "xla")
    np.testing.assert_allclose(cpu_ops.conv2d_apply(x, w, stride, padding, conv_impl), expected, rtol=1e-5, atol=1e-4)
    for got, want in zip(jax.grad(loss(conv_impl), (0, 1))(x, w), jax.grad(loss("xla"), (0, 1))(x, w)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
@pytest.mark.parametrize("size,padding", [(8, "valid"), (7, "valid"), (8, "same")])
def test_reshape_pooling_matches_reduce_window(kind: str, size: int, padding: str) -> None:
    x = jax.random.normal(jax.random.key(2), (2, size, size, 3))
    layer = layers.Stateless(kind, {"pool": 2, "stride": 2, "padding": padding}, 0)
    op, init = (jax.lax.max, -jnp.inf) if kind == "maxpool" else (jax.lax.add, 0.0)
    expected = jax.lax.reduce_window(x, init, op, (1, 2, 2, 1), (1, 2, 2, 1), padding.upper())
    if kind == "avgpool":
        expected = expected / 4
    np.testing.assert_allclose(layer(x, layers.Context()), expected, rtol=1e-6)


@pytest.mark.parametrize("window,shape", [(2, (2, 8, 8, 3)), (2, (2, 7, 9, 2)), (3, (1, 10, 9, 4))])
def test_tile_max_gradient_splits_ties_like_jax_and_zeroes_cropped_rows(window: int, shape: tuple) -> None:
    # small integers: most windows hold tied maxima, the case where the saved mask must count shares
    x = jax.random.randint(jax.random.key(5), shape, 0, 3).astype(jnp.float32)
    weights = jax.random.normal(jax.random.key(6), (shape[0], shape[1] // window, shape[2] // window, shape[3]))

    def reference(x):  # JAX's own max reduction over the same tiles
        return cpu_ops._tiles(x, window).max(axis=(2, 4))

    np.testing.assert_array_equal(cpu_ops._tile_max(x, window), reference(x))
    got = jax.grad(lambda x: (cpu_ops._tile_max(x, window) * weights).sum())(x)
    want = jax.grad(lambda x: (reference(x) * weights).sum())(x)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(jnp.abs(got[:, (shape[1] // window) * window:]).sum()) == 0.0  # cropped rows get no gradient
    assert 0.0 < float((got != 0).mean()) < 1.0


@pytest.mark.parametrize("shape", [(2, 7, 7, 3), (2, 5, 9, 2), (1, 3, 3, 1)])
def test_reshape_max_pooling_with_same_padding_matches_reduce_window_and_its_gradient(shape: tuple) -> None:
    x = jax.random.normal(jax.random.key(3), shape)
    layer = layers.Stateless("maxpool", {"pool": 2, "stride": 2, "padding": "same"}, 0)

    def reference(x):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")

    got = layer(x, layers.Context())
    assert got.shape == reference(x).shape == (shape[0], -(-shape[1] // 2), -(-shape[2] // 2), shape[3])
    np.testing.assert_array_equal(got, reference(x))
    np.testing.assert_array_equal(jax.grad(lambda x: (layer(x, layers.Context()) ** 3).sum())(x),
                                  jax.grad(lambda x: (reference(x) ** 3).sum())(x))


def test_dropout_mask_keeps_the_configured_fraction_and_rescales() -> None:
    layer = layers.Stateless("dropout", {"rate": 0.4}, 3)
    out = layer(jnp.ones((64, 16, 16, 8)), layers.Context(train=True, rng=program._base_key(0)))
    kept = np.asarray(out) > 0
    assert abs(kept.mean() - 0.6) < 0.01
    np.testing.assert_allclose(np.asarray(out)[kept], 1 / 0.6, rtol=1e-6)
    again = layer(jnp.ones((64, 16, 16, 8)), layers.Context(train=True, rng=program._base_key(0)))
    np.testing.assert_array_equal(out, again)


def test_hashed_dropout_masks_are_uncorrelated_across_neighbours_keys_and_rates() -> None:
    from fmnist_jax.model import cpu_ops
    key = program._base_key(7)
    shape = (32, 13, 13, 32)
    first = np.asarray(cpu_ops._keep_mask(jax.random.fold_in(key, 1), 0.5, shape)).ravel().astype(float)
    second = np.asarray(cpu_ops._keep_mask(jax.random.fold_in(key, 2), 0.5, shape)).ravel().astype(float)
    n = first.size  # 173,056 draws: a correlation's standard error is ~0.0024
    assert abs(first.mean() - 0.5) < 0.005 and abs(second.mean() - 0.5) < 0.005
    for lag in (1, 2, 32, 13 * 32):  # neighbours in the channel, the row and the image
        assert abs(np.corrcoef(first[:-lag], first[lag:])[0, 1]) < 0.015, lag
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.015  # another layer or step draws another mask
    assert not np.array_equal(first, second)
    # the threshold maps each rate, low or high, to its fraction of the 32-bit range
    for keep in (0.1, 0.25, 0.9, 0.999):
        assert abs(np.asarray(cpu_ops._keep_mask(key, keep, (n,))).mean() - keep) < 4 * np.sqrt(keep * (1 - keep) / n) + 1e-4
    assert n == int(np.prod(shape))


def test_a_micro_batched_gradient_with_dropout_equals_the_whole_batch_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = [{"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"}, {"type": "dropout", "rate": 0.5},
            {"type": "flatten"}, {"type": "dense", "units": 10}]
    cfg = TrainConfig(batch_size=64, optimizer="adam")
    graphdef, state = program.init_state(spec, (12, 12, 1), 10, cfg, steps_per_epoch=4)
    images = jax.random.uniform(jax.random.key(1), (64, 12, 12, 1))
    labels = jax.random.randint(jax.random.key(2), (64,), 0, 10)
    forward = program.make_forward(graphdef, cfg)

    def gradients(micro: int):
        monkeypatch.setattr(program, "CPU_MICRO_BATCH", micro)
        assert program._micro_batches(64, None, state["batch_stats"]) == 64 // micro
        (loss, _), grads = jax.jit(program.make_batch_gradients(forward, cfg, None))(state, images, labels, jax.random.key(3))
        return loss, grads

    whole_loss, whole = gradients(64)
    for micro in (16, 32):  # each piece draws its rows' slice of the whole batch's dropout mask
        loss, grads = gradients(micro)
        assert float(loss) == pytest.approx(float(whole_loss), rel=1e-5)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(whole)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    other = jax.jit(program.make_batch_gradients(forward, cfg, None))(state, images, labels, jax.random.key(4))
    assert float(other[0][0]) != pytest.approx(float(whole_loss), rel=1e-3)  # another key, other masks


# ----------------------------------------------------------------------------- data parallel

DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    from fmnist_jax.data import catalogue, splitting
    from fmnist_jax.training.config import TrainConfig
    from fmnist_jax.training.loop import train
    dataset = catalogue.synthetic_dataset(num_train=256, num_test=32, seed=0)
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.25, seed=0))
    spec = [{"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"}, {"type": "maxpool"},
            {"type": "dropout", "rate": 0.25}, {"type": "flatten"}, {"type": "dense", "units": 10}]
    out = {"devices": len(jax.devices())}
    for mode in ("off", "auto"):
        cfg = TrainConfig(epochs=2, batch_size=32, chunk_steps=2, data_parallel=mode)
        records = list(train(spec, cfg, splits))
        out[mode] = {"data_parallel": records[0]["data_parallel"],
                     "losses": [r["loss"] for r in records if r["kind"] == "chunk"],
                     "val_loss": [r["val_loss"] for r in records if r["kind"] == "epoch"]}
    print(json.dumps(out))
""")


def test_four_device_data_parallel_follows_the_single_device_loss_curve() -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    out = run_script(DATA_PARALLEL_SCRIPT, env)
    assert out["devices"] == 4
    assert out["off"]["data_parallel"] is False and out["auto"]["data_parallel"] is True
    assert len(out["off"]["losses"]) == len(out["auto"]["losses"]) == 6
    np.testing.assert_allclose(out["auto"]["losses"], out["off"]["losses"], rtol=1e-5)
    np.testing.assert_allclose(out["auto"]["val_loss"], out["off"]["val_loss"], rtol=1e-5)


MULTI_PROCESS_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from fmnist_jax.data import catalogue, splitting
    from fmnist_jax.training.config import TrainConfig
    from fmnist_jax.training.loop import train
    dataset = catalogue.synthetic_dataset(num_train=256, num_test=32, seed=0)
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.25, seed=0))
    spec = [{"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"}, {"type": "maxpool"},
            {"type": "dropout", "rate": 0.25}, {"type": "flatten"}, {"type": "dense", "units": 10}]
    records = list(train(spec, TrainConfig(epochs=2, batch_size=32, chunk_steps=2), splits))
    print(json.dumps({"devices": records[0]["devices"], "data_parallel": records[0]["data_parallel"],
                      "losses": [r["loss"] for r in records if r["kind"] == "chunk"]}))
""")


def test_two_processes_with_jax_distributed_follow_the_single_device_loss_curve() -> None:
    """Multi-host in miniature: 2 processes x 2 CPU devices joined by jax.distributed.initialize (gloo collectives)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{sock.getsockname()[1]}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(REPO)}
    processes = [subprocess.Popen([sys.executable, "-c", MULTI_PROCESS_SCRIPT, address, str(rank)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-2000:]
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    single = run_script(DATA_PARALLEL_SCRIPT, {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)})
    reference = single["off"]["losses"]
    for result in results:
        assert result["devices"] == 4 and result["data_parallel"] is True
        np.testing.assert_allclose(result["losses"], reference, rtol=1e-5)


# ----------------------------------------------------------------------------- bfloat16

def test_bfloat16_trains_into_the_float32_accuracy_band() -> None:
    dataset = catalogue.synthetic_dataset(num_train=640, num_test=64, seed=4)
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.25, seed=0))
    spec = [{"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same", "activation": "relu"},
            {"type": "maxpool"}, {"type": "batchnorm"}, {"type": "flatten"},
            {"type": "dense", "units": 32, "activation": "relu"}, {"type": "dense", "units": 10}]
    accuracy = {}
    for precision in ("float32", "bfloat16"):
        cfg = TrainConfig(epochs=4, batch_size=32, learning_rate=3e-3, chunk_steps=5, precision=precision)
        final = loop.run_to_completion(loop.train(spec, cfg, splits))
        assert final["status"] == "completed"
        accuracy[precision] = final["val_accuracy"]
    assert accuracy["float32"] >= 0.9
    assert accuracy["bfloat16"] >= accuracy["float32"] - 0.05


@pytest.mark.parametrize("count", [1, 255, 257, 521, 1000])
def test_inference_pieces_match_one_batch_for_awkward_counts(count: int) -> None:
    from fmnist_jax.training.program import (
        CPU_INFERENCE_PIECE,
        inference_logits,
        make_forward,
    )

    spec = [{"type": "conv2d", "filters": 4, "kernel": 3, "activation": "relu"}, {"type": "flatten"},
            {"type": "dense", "units": 10}]
    _, state = init_state(spec, (28, 28, 1), 10, TrainConfig())
    graphdef = nnx.split(layers.build_model(spec, (28, 28, 1), 10), nnx.Param, nnx.BatchStat)[0]
    forward = make_forward(graphdef, TrainConfig())
    images = np.random.default_rng(count).integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)
    pieces = np.asarray(inference_logits(forward, state["params"], state["batch_stats"], jnp.asarray(images)))
    whole = np.concatenate([np.asarray(forward(state["params"], state["batch_stats"],
                                               jnp.asarray(images[i:i + 64], jnp.float32) / 255.0, False, None)[0])
                            for i in range(0, count, 64)])
    assert pieces.shape == (count, 10)
    np.testing.assert_allclose(pieces, whole, rtol=1e-5, atol=1e-5)
    assert CPU_INFERENCE_PIECE >= 64
