"""Ensembles: N members trained side by side in one compiled step, each exactly the run its own seed would make,
predicting with the mean of their logits through every path (TrainedModel, evaluation, checkpoints, exports)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import load_script

from fmnist_jax.data import splitting
from fmnist_jax.data.augment import AugmentConfig
from fmnist_jax.train_and_test import train_and_test
from fmnist_jax.training import loop, members, program
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.trained import TrainedModel

TINY = [{"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "padding": "same", "activation": "relu"},
        {"type": "batchnorm"}, {"type": "dropout", "rate": 0.1}, {"type": "flatten"},
        {"type": "dense", "units": 32, "activation": "relu"}, {"type": "dense", "units": 10}]

# gradient clipping at a norm the gradients reach, and weight decay: each member must be clipped by its own norm
CFG = TrainConfig(epochs=2, batch_size=16, chunk_steps=3, learning_rate=3e-3, ema_decay=0.9, tta_flip=True,
                  grad_clip=0.5, weight_decay=1e-3, augment=AugmentConfig(flip=0.5, crop=1))


def _final(cfg: TrainConfig, splits: splitting.Splits) -> dict:
    return loop.run_to_completion(loop.train(TINY, cfg, splits))


@pytest.mark.parametrize("member_loop", ["map", "vmap"])  # the CPU's way and the accelerators' way
def test_each_member_is_the_run_its_own_seed_would_make(tiny_splits: splitting.Splits, member_loop: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Member k of an ensemble seeded s starts, shuffles, augments and drops out as a single run seeded s + k."""
    monkeypatch.setenv("FMNIST_MEMBER_LOOP", member_loop)
    assert members.member_loop() == member_loop
    ensemble = _final(CFG.replace(ensemble=2, seed=5), tiny_splits)["weights"]
    for k in range(2):
        alone = _final(CFG.replace(seed=5 + k), tiny_splits)["weights"]
        member = members.member_weights(ensemble, k)
        for got, want in zip(jax.tree.leaves(member), jax.tree.leaves(alone)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-4, atol=2e-5)
    first, second = (jax.tree.leaves(members.member_weights(ensemble, k)) for k in range(2))
    assert not np.allclose(np.asarray(first[0]), np.asarray(second[0]))  # two different networks


@pytest.mark.parametrize("member_loop", ["map", "vmap"])
def test_the_ensemble_predicts_the_mean_of_its_members_logits(tiny_splits: splitting.Splits, tmp_path, member_loop: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMNIST_MEMBER_LOOP", member_loop)
    cfg = CFG.replace(ensemble=3)
    records = list(train_and_test(TINY, cfg, tiny_splits, tmp_path / "run"))
    model = TrainedModel.from_run(tmp_path / "run")
    assert model.members == 3 and model.tta_flip
    images = tiny_splits.test_images
    members = [model.member(k).predict_logits(images) for k in range(3)]
    np.testing.assert_allclose(model.predict_logits(images), np.mean(members, axis=0), rtol=1e-4, atol=1e-5)
    # the test accuracy the run reports is the ensemble's
    test = next(r for r in records if r["kind"] == "test")
    assert test["test_accuracy"] == pytest.approx(float((model.predict_logits(images).argmax(1) == tiny_splits.test_labels).mean()))
    # the per-epoch validation accuracy is the ensemble's too (the kept weights are the last epoch's)
    last = [r for r in records if r["kind"] == "epoch"][-1]
    val = float((model.predict_logits(tiny_splits.val_images).argmax(1) == tiny_splits.val_labels).mean())
    assert last["val_accuracy"] == pytest.approx(val)
    with pytest.raises(ValueError, match="member 3 does not exist"):
        model.member(3)


def test_an_ensemble_run_resumes_exactly(tiny_splits: splitting.Splits, tmp_path) -> None:
    import threading

    cfg = CFG.replace(ensemble=2, epochs=3)
    whole = _final(cfg, tiny_splits)["weights"]
    stop, chunks = threading.Event(), 0
    for record in loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "run", stop=stop, checkpoint_seconds=0):
        if record["kind"] == "chunk":
            chunks += 1
            if chunks == 4:
                stop.set()
    resumed = loop.run_to_completion(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "run", resume=True))
    for got, want in zip(jax.tree.leaves(resumed["weights"]), jax.tree.leaves(whole)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


def test_a_cpu_runs_the_members_one_after_another_inside_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMNIST_MEMBER_LOOP", raising=False)
    assert members.member_loop() == ("map" if jax.default_backend() == "cpu" else "vmap")
    monkeypatch.setenv("FMNIST_MEMBER_LOOP", "something else")
    assert members.member_loop() in ("map", "vmap")


def test_an_ensemble_with_data_parallel_on_is_refused_with_what_to_change() -> None:
    with pytest.raises(ValueError, match="side by side on one device"):
        TrainConfig(ensemble=2, data_parallel="on").validate()
    with pytest.raises(ValueError):
        TrainConfig(ensemble=0)
    with pytest.raises(ValueError):
        TrainConfig(ensemble=9)


def test_a_single_models_weights_do_not_load_as_an_ensemble(tiny_splits: splitting.Splits) -> None:
    single = _final(CFG, tiny_splits)["weights"]
    with pytest.raises(ValueError, match="shape"):
        TrainedModel(TINY, tiny_splits.input_shape, tiny_splits.class_names, single, members=2)


@pytest.fixture(scope="module")
def ensemble_model(tmp_path_factory) -> TrainedModel:
    """A trained 2-member ensemble with flip TTA and a calibration temperature, as a bundle would load it."""
    from fmnist_jax.data import catalogue

    dataset = catalogue.synthetic_dataset(num_train=256, num_test=64, seed=0)
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.25, seed=0))
    cfg = CFG.replace(ensemble=2)
    weights = _final(cfg, splits)["weights"]
    return TrainedModel(TINY, splits.input_shape, catalogue.CLASS_NAMES, weights, card={"config": cfg.to_dict()},
                        calibration={"temperature": 1.7})


def _images(count: int = 48) -> np.ndarray:
    return np.random.default_rng(4).integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)


def test_a_bundle_of_an_ensemble_loads_and_predicts_the_same(ensemble_model: TrainedModel) -> None:
    from fmnist_jax.deploy import bundle

    loaded = bundle.load_bundle(bundle.bundle_bytes(ensemble_model, config=ensemble_model.card["config"]))
    assert loaded.members == 2 and loaded.tta_flip
    np.testing.assert_allclose(loaded.predict_proba(_images()), ensemble_model.predict_proba(_images()), atol=1e-6)


def test_onnx_export_of_an_ensemble_averages_its_members(ensemble_model: TrainedModel) -> None:
    import onnxruntime

    from fmnist_jax.deploy import onnx_export

    payload, difference = onnx_export.onnx_bytes(ensemble_model, _images())
    assert difference <= onnx_export.ONNX_TOLERANCE
    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    probs = session.run(None, {"images": _images().astype(np.float32) / 255.0})[0]
    np.testing.assert_allclose(probs, ensemble_model.predict_proba(_images()), atol=1e-4)
    one = ensemble_model.member(0).predict_proba(_images())
    assert np.abs(probs - one).max() > 1e-3  # the second member counts


@pytest.mark.slow
def test_tflite_export_of_an_ensemble_matches_jax(ensemble_model: TrainedModel) -> None:
    from fmnist_jax.deploy import tflite_export

    payload, difference = tflite_export.tflite_bytes(ensemble_model, _images())
    assert payload[4:8] == b"TFL3" and difference <= tflite_export.TOLERANCE


def test_an_ensembles_saliency_is_its_members_maps_of_its_class_averaged(ensemble_model: TrainedModel) -> None:
    from fmnist_jax.deploy import explain

    images = _images(6)
    maps, chosen = explain.explain(ensemble_model, images, "occlusion")
    assert maps.shape == (6, 28, 28) and maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_array_equal(chosen, ensemble_model.predict_logits(images).argmax(1))
    # each member's map is of the ensemble's class, also where that member's own top class differs
    parts = [explain.explain(ensemble_model.member(k), images, "occlusion", classes=chosen)[0] for k in range(2)]
    mean = (parts[0] + parts[1]) / 2
    low, high = mean.min(axis=(1, 2), keepdims=True), mean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, (mean - low) / np.maximum(high - low, 1e-12), atol=1e-5)
    # a map of a class chosen by the caller differs from the predicted class's
    other = (chosen + 1) % 10
    other_maps, explained = explain.explain(ensemble_model, images, "occlusion", classes=other)
    np.testing.assert_array_equal(explained, other)
    assert np.abs(other_maps - maps).max() > 1e-3
    with pytest.raises(ValueError, match="one class index from 0 to 9 per image"):
        explain.explain(ensemble_model, images, "occlusion", classes=[10] * 6)


def test_the_exported_script_trains_every_member_and_averages_them(ensemble_model: TrainedModel, tmp_path) -> None:
    from fmnist_jax.deploy import script_export

    text = script_export.model_script(ensemble_model, "tiny")
    assert "'ensemble': 2" in text and "--members" in text
    script = load_script(text, tmp_path, "exported_ensemble_script")
    images = _images(20)
    labels = np.arange(20) % 10
    nets = [script.Net(script.nnx.Rngs(params=seed, dropout=seed + 1)) for seed in (0, 1)]
    for net in nets:
        net.eval()  # no dropout, as evaluate predicts
    logits = [np.asarray(script.predict(net, images)) for net in nets]
    mean = (logits[0] + logits[1]) / 2
    accuracy, loss = script.evaluate(nets, images, labels)
    assert accuracy == pytest.approx(float((mean.argmax(1) == labels).mean()))
    log_probs = mean - np.log(np.exp(mean - mean.max(1, keepdims=True)).sum(1, keepdims=True)) - mean.max(1, keepdims=True)
    assert loss == pytest.approx(float(-log_probs[np.arange(20), labels].mean()), rel=1e-4)


def test_transfer_learning_starts_every_member_from_a_single_model(tiny_splits: splitting.Splits) -> None:
    single = _final(CFG, tiny_splits)["weights"]
    _, state = program.init_state(TINY, tiny_splits.input_shape, 10, CFG.replace(ensemble=2))
    started = loop._start_from(state, single, 2)
    for k in range(2):
        for got, want in zip(jax.tree.leaves(members.member_weights(started["params"], k)),
                             jax.tree.leaves(single["params"])):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # an ensemble's weights do not start a single model: the message says what to change
    _, alone = program.init_state(TINY, tiny_splits.input_shape, 10, CFG)
    with pytest.raises(loop.TrainingError, match="the starting model is an ensemble"):
        loop._start_from(alone, {"params": started["params"], "batch_stats": started["batch_stats"]}, 1)
