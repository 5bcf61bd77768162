"""The other TFDS image sets (MNIST, KMNIST, EMNIST letters, CIFAR-10) load through catalogue.load_dataset.

No network: preparation is mocked with tfds.testing.mock_data (examples made here, with each set's real
shapes and label ranges), and an offline first load must fail at once with a clear DataUnavailable.
"""
from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from fmnist_jax.data import catalogue, splitting

tfds = pytest.importorskip("tensorflow_datasets")
tf = pytest.importorskip("tensorflow")

NUM_EXAMPLES = 40
EXPECTED = {  # name -> (image shape, number of classes, first class name)
    "mnist": ((28, 28, 1), 10, "0"),
    "kmnist": ((28, 28, 1), 10, "o"),
    "emnist/letters": ((28, 28, 1), 26, "A"),
    "cifar10": ((32, 32, 3), 10, "airplane"),
}


def _examples(builder, split, *args, **kwargs):
    """Deterministic fake examples: the image is filled with its label, labels cycle through the real range."""
    features = builder.info.features
    shape = features["image"].shape
    # TFDS numbers EMNIST letters 1-26 (of 37 slots); the others start at 0.
    low, count = (1, 26) if builder.name == "emnist" else (0, features["label"].num_classes)

    def generate():
        for i in range(NUM_EXAMPLES):
            label = low + i % count
            yield {"image": np.full(shape, label, np.uint8), "label": np.int64(label)}

    signature = {"image": tf.TensorSpec(shape, tf.uint8), "label": tf.TensorSpec((), tf.int64)}
    return tf.data.Dataset.from_generator(generate, output_signature=signature)


@pytest.fixture
def reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the download server answers (mock_data replaces the download itself)."""
    monkeypatch.setattr(catalogue, "_check_download_reachable", lambda name, builder, manual_dir: None)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_catalogue_dataset_loads_and_caches(name: str, reachable: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    shape, num_classes, first_name = EXPECTED[name]
    with tfds.testing.mock_data(as_dataset_fn=_examples):
        dataset = catalogue.load_dataset(name)
    assert dataset.train_images.shape == (NUM_EXAMPLES,) + shape
    assert dataset.test_images.shape == (NUM_EXAMPLES,) + shape
    assert dataset.num_classes == num_classes and dataset.class_names[0] == first_name
    assert dataset.train_labels.min() == 0 and dataset.train_labels.max() < num_classes
    # the image was filled with the TFDS label; EMNIST letters' labels are shifted to start at 0 ("A")
    shift = 1 if name == "emnist/letters" else 0
    assert np.array_equal(dataset.train_images[:, 0, 0, 0], dataset.train_labels + shift)
    # the second load comes from the workspace's .npy cache, without TFDS
    with monkeypatch.context() as patched:
        patched.setattr(catalogue, "_prepare_with_tfds", lambda *a, **k: pytest.fail("prepared twice"))
        again = catalogue.load_dataset(name)
    assert np.array_equal(again.train_images, dataset.train_images) and again.class_names == dataset.class_names


def test_catalogue_dataset_trains_through_make_splits(reachable: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    with tfds.testing.mock_data(as_dataset_fn=_examples):
        dataset = catalogue.load_dataset("cifar10")
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="pooled", fractions=(0.5, 0.25, 0.25), stratify=False))
    assert splits.input_shape == (32, 32, 3) and sum(splits.counts().values()) == 2 * NUM_EXAMPLES


def test_offline_first_load_fails_fast_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)

    def offline(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(catalogue.socket, "create_connection", offline)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        lambda *a, **k: pytest.fail("TFDS must not start a download it cannot finish"))
    start = time.monotonic()
    with pytest.raises(catalogue.DataUnavailable) as raised:
        catalogue.load_dataset("mnist")
    assert time.monotonic() - start < 10
    message = str(raised.value)
    assert "MNIST must be downloaded first" in message and "network is unreachable" in message
    assert "train-images-idx3-ubyte.gz" in message  # says which files to fetch by hand


def test_other_datasets_use_their_own_manual_folder(tmp_path) -> None:
    # MNIST's files have Fashion-MNIST's names: the Fashion folder must never be offered to MNIST.
    assert catalogue.manual_dir_for("mnist", tmp_path) is None
    (tmp_path / "emnist__letters").mkdir()
    assert catalogue.manual_dir_for("emnist/letters", tmp_path) == tmp_path / "emnist__letters"
    assert catalogue.manual_dir_for("fashion_mnist", tmp_path) == tmp_path
