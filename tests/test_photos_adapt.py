"""Adapting a model to real photos: set-valued labels, outlier exposure, freezing, calibration, the photo
folder reader and `train --init-from ... --photos ...` end to end on small synthetic data."""
from __future__ import annotations

import io
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from fmnist_jax import store
from fmnist_jax.cli import main as cli
from fmnist_jax.data import catalogue, label_sets, splitting
from fmnist_jax.deploy import bundle, predict
from fmnist_jax.photos import adapt, folders
from fmnist_jax.training import calibrate, optim
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.loop import run_to_completion, train
from fmnist_jax.training.trained import TrainedModel

TINY = [{"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"}, {"type": "maxpool"},
        {"type": "flatten"}, {"type": "dense", "units": 10}]


def test_label_sets_round_trip() -> None:
    assert label_sets.encode_set([4], 10) == 4
    shoes = label_sets.encode_set([5, 7, 9], 10)
    assert shoes < 0
    mask = label_sets.acceptable_mask(np.array([shoes, 4, label_sets.OUTSIDE]), 10)
    assert mask[0].nonzero()[0].tolist() == [5, 7, 9]
    assert mask[1].nonzero()[0].tolist() == [4]
    assert not mask[2].any()
    with pytest.raises(ValueError, match="0..9"):
        label_sets.encode_set([3, 12], 10)


def test_set_loss_values() -> None:
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]]))
    labels = jnp.array([label_sets.encode_set([1, 2], 3), label_sets.encode_set([1, 2], 3), label_sets.OUTSIDE])
    log_probs = jax.nn.log_softmax(logits)
    summed = optim.set_nll(log_probs, labels, outlier_weight=2.0)
    best = optim.set_nll(log_probs, labels, outlier_weight=2.0, best=True)
    np.testing.assert_allclose(summed[:2], -np.log(0.5), rtol=1e-5)       # P(1) + P(2)
    np.testing.assert_allclose(best[:2], -np.log(0.3), rtol=1e-5)         # the likelier acceptable class
    np.testing.assert_allclose(summed[2], 2.0 * -np.log([0.5, 0.3, 0.2]).mean(), rtol=1e-5)  # to uniform, weighted
    assert int(optim.correct_count(logits, labels)) == 0                  # top class 0 is in neither set
    assert int(optim.correct_count(logits, jnp.array([label_sets.encode_set([0, 2], 3), 0, label_sets.OUTSIDE]))) == 2


def test_freezing_keeps_the_first_layers_and_init_weights_start_the_run(tiny_splits) -> None:
    base = run_to_completion(train(TINY, TrainConfig(epochs=1, batch_size=32, chunk_steps=2), tiny_splits))["weights"]
    labels = tiny_splits.train_labels.copy()
    labels[:40] = label_sets.encode_set([0, 1], 10)
    labels[40:60] = label_sets.OUTSIDE
    mixed = splitting.Splits(tiny_splits.train_images, labels, tiny_splits.val_images, tiny_splits.val_labels,
                             tiny_splits.test_images, tiny_splits.test_labels, tiny_splits.class_names)
    done = run_to_completion(train(TINY, TrainConfig(epochs=1, batch_size=32, chunk_steps=2, freeze_layers=1),
                                   mixed, init_weights=base))
    before, after = base["params"]["layers"][0]["kernel"], done["weights"]["params"]["layers"][0]["kernel"]
    np.testing.assert_array_equal(np.asarray(before), np.asarray(after))  # frozen
    assert not np.array_equal(np.asarray(base["params"]["layers"][3]["kernel"]),
                              np.asarray(done["weights"]["params"]["layers"][3]["kernel"]))  # trained on


def test_calibration_picks_a_threshold_that_separates_unknowns() -> None:
    rng = np.random.default_rng(0)
    known_logits = np.zeros((200, 3))
    known_logits[np.arange(200), rng.integers(0, 3, 200)] = 4.0      # confident
    unknown_logits = rng.normal(0, 0.2, (50, 3))                      # flat
    logits = np.concatenate([known_logits, unknown_logits])
    labels = np.concatenate([known_logits.argmax(1), np.full(50, label_sets.OUTSIDE)])
    result = calibrate.calibrate(logits, labels)
    assert 0.25 <= result["temperature"] <= 8
    held = result["held_out"]
    assert held["unsure_known"] <= 0.10 and held["unsure_unknown"] >= 0.9 and held["meets_targets"]
    assert held["known_accuracy"] >= 0.9


def _photo_folder(root: Path, per_folder: int = 12) -> Path:
    """Class folders of 28x28 PNGs (synthetic garments) and a classes.json with a set and an outside folder."""
    dataset = catalogue.synthetic_dataset(num_train=400, num_test=10, seed=3)
    mapping = {"tops": [0, 2], "trousers": [1], "other": []}
    for folder, classes in mapping.items():
        (root / folder).mkdir(parents=True)
        pool = np.flatnonzero(np.isin(dataset.train_labels, classes or [9]))[:per_folder]
        for i, index in enumerate(pool):
            buffer = io.BytesIO()
            Image.fromarray(dataset.train_images[index, ..., 0]).save(buffer, format="PNG")
            (root / folder / f"{i}.png").write_bytes(buffer.getvalue())
    (root / "classes.json").write_text(json.dumps({"fashion_mnist_classes": list(catalogue.CLASS_NAMES),
                                                   "acceptable": mapping}))
    return root


def test_photo_folder_reader_and_cache(tmp_path: Path) -> None:
    root = _photo_folder(tmp_path / "photos")
    folder = folders.read_photo_folder(root, catalogue.CLASS_NAMES)
    assert folder.label_of("trousers") == 1 and folder.label_of("other") == label_sets.OUTSIDE
    preprocess = {"mode": "grabcut"}
    first = folders.photo_inputs(folder, preprocess, home=tmp_path / "home")
    again = folders.photo_inputs(folder, preprocess, home=tmp_path / "home")
    assert first.images.shape == (36, 28, 28, 1) and np.array_equal(first.images, again.images)
    train_idx, held = folders.split_photos(first, 0.25)
    assert len(held) == 9 and not set(train_idx) & set(held)
    (root / "classes.json").write_text(json.dumps({"acceptable": {"tops": [0, 12]}}))
    with pytest.raises(ValueError, match="0..9"):
        folders.read_photo_folder(root, catalogue.CLASS_NAMES)


def test_adaptation_splits_mix_photos_with_fashion_mnist(tmp_path: Path) -> None:
    root = _photo_folder(tmp_path / "photos")
    inputs = folders.photo_inputs(folders.read_photo_folder(root, catalogue.CLASS_NAMES), {"mode": "grabcut"},
                                  home=tmp_path / "home")
    fashion = catalogue.synthetic_dataset(num_train=3000, num_test=50, seed=0)
    splits, held = adapt.adaptation_splits(fashion, inputs, adapt.PhotoMix(held_out=0.25, photo_repeat=2))
    photo_count = (len(inputs.labels) - len(held)) * 2  # two repeats on average (balanced folders)
    assert len(splits.train_labels) == 2 * photo_count  # as many Fashion-MNIST images as photo samples
    assert len(splits.val_labels) == len(held) == 9
    assert (splits.train_labels == label_sets.OUTSIDE).sum() == 9 * 2  # the outside folder is trained on
    assert (splits.train_labels == label_sets.encode_set([0, 2], 10)).sum() == 9 * 2
    assert len(splits.test_labels) == 50


def test_cli_adapts_a_model_to_photos_and_stores_its_calibration(tmp_path: Path, workspace: Path, capsys,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = _photo_folder(tmp_path / "photos")
    starting_splits = splitting.make_splits(catalogue.synthetic_dataset(num_train=256, num_test=64),
                                            splitting.SplitSpec(val_fraction=0.25))
    weights = run_to_completion(train(TINY, TrainConfig(epochs=1, batch_size=32, chunk_steps=2), starting_splits))["weights"]
    base = TrainedModel(TINY, (28, 28, 1), catalogue.CLASS_NAMES, weights)
    base_dir = bundle.save_model_dir(base, tmp_path / "base")
    monkeypatch.setattr(catalogue, "load_dataset",
                        lambda name, **kw: catalogue.synthetic_dataset(num_train=3000, num_test=64, seed=1))
    status = cli.main(["train", "--init-from", str(base_dir), "--photos", str(root), "--epochs", "1",
                       "--batch-size", "32", "--photo-held-out", "0.25", "--out", str(tmp_path / "run"), "--json"])
    assert status == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["init_from"] == str(base_dir) and result["photos"]["held_out"] == 9
    run = store.read_json(tmp_path / "run" / "run.json")
    assert run["preprocess"]["mode"] == "grabcut" and run["init_from"] == str(base_dir)
    assert {"temperature", "unsure_threshold", "held_out"} <= set(run["calibration"])
    model = predict.load_model(str(tmp_path / "run"))
    assert model.temperature == run["calibration"]["temperature"]
    assert model.unsure_threshold == run["calibration"]["unsure_threshold"]
    [record] = predict.predict_files(model, [("x.png", (root / "other" / "0.png").read_bytes())])
    assert record["unsure"] == bool(record["probability"] < model.unsure_threshold)
    # the calibration travels with exported bundles
    again = bundle.model_from_files(bundle.model_files(model), "bundle")
    assert again.calibration["temperature"] == model.temperature


def test_photos_need_a_starting_model(tmp_path: Path, capsys) -> None:
    root = _photo_folder(tmp_path / "photos")
    assert cli.main(["train", "--photos", str(root), "--json"]) == 2
    assert "--init-from" in capsys.readouterr().err
