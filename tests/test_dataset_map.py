"""The map of the dataset: penultimate-layer features, a 2-D projection (PCA for small sets, UMAP from 200
points, both seeded), a cache of plain .npy arrays tied to the weights, flags matched by pixels, chart
selections back to images, and a chart payload under 2 MB for 10,000 points."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from fmnist_jax.data import catalogue, splitting
from fmnist_jax.deploy import predict
from fmnist_jax.studio import dataset_map


@pytest.fixture(scope="module")
def demo():
    return predict.load_model("demo")


@pytest.fixture(scope="module")
def splits() -> splitting.Splits:
    dataset = catalogue.synthetic_dataset(num_train=400, num_test=120, seed=0)
    return splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.25, seed=0))


def test_features_are_the_input_of_the_last_dense_layer(demo, splits) -> None:
    assert dataset_map.penultimate_index(demo.spec) == len(demo.spec) - 1
    feats = dataset_map.features(demo, splits.test_images[:7])
    assert feats.shape == (7, 128) and feats.dtype == np.float32 and (feats >= 0).all()  # after the ReLU
    again = dataset_map.features(demo, splits.test_images[:7])
    np.testing.assert_array_equal(feats, again)
    with pytest.raises(ValueError, match="no"):
        dataset_map.penultimate_index([{"type": "conv2d"}, {"type": "flatten"}])


def _clusters(count: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = np.arange(count) % 2
    return rng.normal(0, 0.3, (count, 16)).astype(np.float32) + 5.0 * labels[:, None], labels


def _separated(coords: np.ndarray, labels: np.ndarray) -> bool:
    a, b = coords[labels == 0], coords[labels == 1]
    gap = np.linalg.norm(a.mean(0) - b.mean(0))
    return gap > 3 * max(a.std(0).max(), b.std(0).max())


def test_small_sets_use_pca_which_keeps_clusters_apart_and_is_stable() -> None:
    points, labels = _clusters(60)
    coords, method = dataset_map.project_2d(points)
    assert method == "PCA" and coords.shape == (60, 2) and coords.dtype == np.float32
    assert _separated(coords, labels)
    np.testing.assert_array_equal(coords, dataset_map.project_2d(points)[0])
    flat, _ = dataset_map.project_2d(np.ones((5, 4), np.float32))  # no variance: all at the origin, no NaN
    assert not flat.any()


@pytest.mark.slow
def test_from_200_points_umap_separates_clusters_with_a_fixed_seed() -> None:
    points, labels = _clusters(300)
    coords, method = dataset_map.project_2d(points, seed=0)
    assert method == "UMAP" and coords.shape == (300, 2) and _separated(coords, labels)
    np.testing.assert_allclose(coords, dataset_map.project_2d(points, seed=0)[0], atol=1e-5)


def test_the_map_is_cached_as_plain_arrays_for_these_weights(demo, splits, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.msgpack").write_bytes(b"weights")
    made = dataset_map.compute(demo, splits, "validation", run, limit=60)
    assert made.method == "PCA" and len(made.rows) == 60 and (np.diff(made.rows) > 0).all()
    np.testing.assert_array_equal(made.labels, splits.val_labels[made.rows])
    np.testing.assert_array_equal(made.predicted, demo.predict_proba(splits.val_images[made.rows]).argmax(1))
    files = sorted(p.name for p in (run / "maps").iterdir())
    assert files == ["validation-coords.npy", "validation-labels.npy", "validation-predicted.npy",
                     "validation-rows.npy", "validation.json"]
    for name in files[:-1]:
        np.load(run / "maps" / name, allow_pickle=False)  # plain arrays: no pickle needed to read them
    loaded = dataset_map.load(run, "validation", limit=60)
    np.testing.assert_array_equal(loaded.coords, made.coords)
    assert dataset_map.load(run, "validation") is None  # another limit: another map
    os.utime(run / "model.msgpack", (1, 1))  # retrained: the weights' stamp changes
    assert dataset_map.load(run, "validation", limit=60) is None
    with pytest.raises(ValueError, match="split must be one of"):
        dataset_map.compute(demo, splits, "holdout", run)


def test_sampling_is_seeded_and_flags_match_by_pixels() -> None:
    rows = dataset_map.sample_rows(50_000, 10_000, seed=0)
    assert len(rows) == 10_000 and len(set(rows.tolist())) == 10_000
    np.testing.assert_array_equal(rows, dataset_map.sample_rows(50_000, 10_000, seed=0))
    assert dataset_map.sample_rows(30, 100).tolist() == list(range(30))
    images = np.random.default_rng(1).integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    assert dataset_map.flagged(images, images[[1, 4]]).tolist() == [False, True, False, False, True, False]
    assert not dataset_map.flagged(images, np.zeros((0,), np.uint8)).any()


def test_a_chart_selection_finds_its_points() -> None:
    result = dataset_map.DatasetMap("test", "PCA", np.array([[0, 0], [1, 1], [2, 2], [5, 5]], np.float32),
                                    np.arange(4), np.zeros(4, np.int64), np.zeros(4, np.int64), 0.0)
    assert dataset_map.in_selection(result, {"x": [2.5, 0.5], "y": [0.5, 2.5]}).tolist() == [1, 2]
    assert dataset_map.in_selection(result, [{"p": 3}, {"p": 0}, {"p": 3}]).tolist() == [0, 3]
    assert dataset_map.in_selection(result, None).tolist() == []


def _map_page() -> None:
    import numpy as np
    import streamlit as st

    from fmnist_jax.studio import charts

    rng = np.random.default_rng(0)
    count = 10_000
    st.altair_chart(charts.dataset_map(rng.normal(size=count), rng.normal(size=count), rng.integers(0, 10, count),
                                       rng.integers(0, 3, count), [f"class {i}" for i in range(10)]),
                    on_select="rerun", selection_mode="pick", key="map")


def test_ten_thousand_points_make_a_chart_under_2_mb() -> None:
    at = AppTest.from_function(_map_page, default_timeout=60).run()
    assert not at.exception
    charts_drawn = at.get("vega_lite_chart")
    assert len(charts_drawn) == 1
    size = charts_drawn[0].proto.ByteSize()
    assert 100_000 < size < 2_000_000, size
