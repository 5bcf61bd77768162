"""Split specs and splits: counts, class balance, determinism, validation."""
from __future__ import annotations

import numpy as np
import pytest

from fmnist_jax.data import catalogue, splitting


@pytest.fixture
def dataset() -> catalogue.Dataset:
    return catalogue.synthetic_dataset(num_train=6000, num_test=1000, seed=3)


def test_pooled_split_counts_and_stratified_balance(dataset: catalogue.Dataset) -> None:
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="pooled", fractions=(0.8, 0.1, 0.1), seed=1, stratify=True))
    assert splits.counts() == {"train": 5600, "validation": 700, "test": 700}
    for labels, size in ((splits.train_labels, 5600), (splits.val_labels, 700), (splits.test_labels, 700)):
        counts = np.bincount(labels, minlength=10)
        assert counts.min() >= size // 10 - 2 and counts.max() <= size // 10 + 2, counts
    together = np.concatenate([splits.train_images, splits.val_images, splits.test_images]).reshape(7000, -1)
    assert len(np.unique(together, axis=0)) == len(np.unique(np.concatenate([dataset.train_images, dataset.test_images]).reshape(7000, -1), axis=0))


def test_official_split_keeps_the_test_set(dataset: catalogue.Dataset) -> None:
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.1, seed=0))
    assert splits.counts() == {"train": 5400, "validation": 600, "test": 1000}
    assert np.array_equal(splits.test_images, dataset.test_images)
    assert np.array_equal(splits.test_labels, dataset.test_labels)
    assert np.bincount(splits.val_labels, minlength=10).tolist() == [60] * 10


def test_same_seed_same_split_bit_for_bit(dataset: catalogue.Dataset) -> None:
    spec = splitting.SplitSpec(mode="pooled", seed=7, stratify=False)
    a, b = splitting.make_splits(dataset, spec), splitting.make_splits(dataset, splitting.SplitSpec(mode="pooled", seed=7, stratify=False))
    assert a.train_images.tobytes() == b.train_images.tobytes()
    assert a.val_labels.tobytes() == b.val_labels.tobytes()
    c = splitting.make_splits(dataset, splitting.SplitSpec(mode="pooled", seed=8, stratify=False))
    assert a.val_labels.tobytes() != c.val_labels.tobytes()


@pytest.mark.parametrize("values, message", [
    (dict(mode="pooled", fractions=(0.9, 0.2, -0.1)), "cannot be negative"),
    (dict(mode="pooled", fractions=(0.5, 0.2, 0.2)), "add up to 1"),
    (dict(mode="pooled", fractions=(0.9, 0.1, 0.0)), "test split would be empty"),
    (dict(mode="official", val_fraction=0.0), "validation fraction must be above 0, got 0.0"),
    (dict(mode="official", val_fraction=1.0), "validation fraction must be below 1, got 1.0"),
    (dict(mode="official", val_fraction=float("nan")), "validation fraction must be a finite number"),
    (dict(mode="sideways"), "split mode must be one of official, pooled, got 'sideways'"),
    (dict(mode="pooled", fractions=(0.8, 0.1, 0.1), seed=-1), "split seed must be at least 0"),
    (dict(mode="pooled", fractions=(0.8, 0.1)), "fractions"),
])
def test_invalid_split_specs_raise(values: dict, message: str, dataset: catalogue.Dataset) -> None:
    # Field checks fail at construction, checks across fields when the spec is used; both are one line.
    with pytest.raises(ValueError, match=message):
        splitting.make_splits(dataset, splitting.SplitSpec(**values))


def test_split_spec_fields_assigned_later_are_checked_when_used(dataset: catalogue.Dataset) -> None:
    spec = splitting.SplitSpec()
    spec.seed = -3  # the Data page sets seed and stratify on a spec after building it
    with pytest.raises(ValueError, match="split seed must be at least 0, got -3"):
        splitting.make_splits(dataset, spec)


def test_fewer_examples_than_classes_is_refused() -> None:
    small = catalogue.synthetic_dataset(num_train=50, num_test=20)
    with pytest.raises(ValueError, match="fewer than the 10 classes"):
        splitting.make_splits(small, splitting.SplitSpec(mode="pooled", fractions=(0.9, 0.05, 0.05)))


def test_split_spec_json_round_trip_and_unknown_keys() -> None:
    spec = splitting.SplitSpec(mode="pooled", fractions=(0.7, 0.2, 0.1), seed=4, stratify=False)
    assert splitting.SplitSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown split setting"):
        splitting.SplitSpec.from_dict({"mode": "pooled", "shuffle": True})


def test_missing_data_folder_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        catalogue.load_fashion_mnist(data_dir=tmp_path / "nowhere")
    (tmp_path / "partial").mkdir()
    with pytest.raises(ValueError, match="lacks"):
        catalogue.load_fashion_mnist(data_dir=tmp_path / "partial")


def test_cache_round_trip(workspace) -> None:
    dataset = catalogue.synthetic_dataset(num_train=40, num_test=20)
    catalogue.save_cached(dataset, workspace)
    loaded = catalogue._load_cached("synthetic", workspace)
    assert loaded is not None
    assert np.array_equal(loaded.train_images, dataset.train_images)
    assert loaded.class_names == dataset.class_names


def test_validate_with_counts_checks_official_splits_without_a_test_total() -> None:
    spec = splitting.SplitSpec(mode="official", val_fraction=0.1)
    assert spec.validate(num_classes=10, total=60_000) is spec
    with pytest.raises(ValueError, match="validation split would have 5 examples"):
        spec.validate(num_classes=10, total=50)


def test_the_default_split_fits_small_datasets() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 7).astype(np.int32)  # 21 images of 3 classes and no test set: an upload
    small = catalogue.Dataset("upload/tiny", rng.integers(0, 255, (21, 8, 8, 1), dtype=np.uint8), labels,
                              np.zeros((0, 8, 8, 1), np.uint8), np.zeros((0,), np.int32), ("a", "b", "c"))
    with pytest.raises(ValueError, match="fewer than the 3 classes"):
        splitting.make_splits(small, splitting.SplitSpec())  # 10% of 21 is 2 images for 3 classes
    spec = splitting.default_spec(small)
    splits = splitting.make_splits(small, spec)
    assert spec.val_fraction == 0.12 and min(splits.counts().values()) >= 3
    assert splitting.default_spec(catalogue.synthetic_dataset(num_train=2000, num_test=500)) == splitting.SplitSpec()


def test_a_dataset_is_prepared_once_while_other_callers_wait(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    import threading
    import time
    calls = []

    def slow_load(name, data_dir=None, home=None, progress=None):
        calls.append(name)
        time.sleep(0.5)  # TFDS's first preparation of the files
        return catalogue.synthetic_dataset(num_train=20, num_test=10)

    monkeypatch.setattr(catalogue, "load_dataset", slow_load)
    results = []
    threads = [threading.Thread(target=lambda: results.append(catalogue.shared_dataset("fashion_mnist", home=tmp_path)))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["fashion_mnist"] and len(results) == 4 and all(r is results[0] for r in results)
