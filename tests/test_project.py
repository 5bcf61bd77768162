"""The studio's services (fmnist_jax.studio: projects, tasks, estimates, charts), without Streamlit."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from fmnist_jax import store
from fmnist_jax.data import augment, catalogue, splitting
from fmnist_jax.deploy import predict
from fmnist_jax.model import layer_specs, presets
from fmnist_jax.studio import charts, estimates, tasks
from fmnist_jax.studio import projects as proj
from fmnist_jax.training import config

TINY_SPEC = [{"type": "flatten"}, {"type": "dense", "units": 10}]


@pytest.fixture
def ws() -> store.Workspace:
    return store.Workspace()


@pytest.fixture
def tiny_project(ws: store.Workspace) -> dict:
    cfg = config.TrainConfig(epochs=1, batch_size=50, chunk_steps=4, learning_rate=0.02)
    return ws.create_project("Tiny", dataset=proj.SYNTHETIC, model=layer_specs.normalize_spec(TINY_SPEC),
                             config=cfg.to_dict())


def test_a_new_project_gets_default_split_config_and_preset_model(ws: store.Workspace) -> None:
    project = ws.create_project("Plain")
    assert proj.split_spec(project) == splitting.SplitSpec()
    assert proj.train_config(project) == config.TrainConfig()
    assert proj.model_spec(project) == presets.preset("fast")
    assert proj.preset_of(project) == "fast"
    assert proj.train_limit(project) is None


def test_an_edited_model_is_custom_and_a_stored_config_round_trips(tiny_project: dict) -> None:
    assert proj.preset_of(tiny_project) is None
    assert proj.model_spec(tiny_project) == layer_specs.normalize_spec(TINY_SPEC)
    assert proj.train_config(tiny_project).batch_size == 50


def test_split_counts_are_checked_against_the_class_count() -> None:
    dataset = proj.synthetic_dataset()
    assert proj.checked_split_counts(dataset, splitting.SplitSpec()) == {"train": 900, "validation": 100, "test": 200}
    pooled = splitting.SplitSpec(mode="pooled", fractions=(0.99, 0.005, 0.005))
    with pytest.raises(ValueError, match="validation split would have 6 examples"):
        proj.checked_split_counts(dataset, pooled)


def test_splits_are_cached_per_dataset_and_spec() -> None:
    dataset = proj.synthetic_dataset()
    first = proj.make_splits(dataset, splitting.SplitSpec(seed=3))
    assert proj.make_splits(dataset, splitting.SplitSpec(seed=3)) is first
    assert proj.make_splits(dataset, splitting.SplitSpec(seed=4)) is not first


def test_check_trainable_names_what_to_fix(ws: store.Workspace, tiny_project: dict) -> None:
    spec, cfg, train_size = tasks.check_trainable(tiny_project)
    assert train_size == 900 and cfg.batch_size == 50 and spec == layer_specs.normalize_spec(TINY_SPEC)
    limited = ws.update_project(tiny_project["id"], train_limit=20)
    with pytest.raises(ValueError, match="batch size 50 is larger than the training split \\(20 examples\\)"):
        tasks.check_trainable(limited)
    broken = ws.update_project(tiny_project["id"], train_limit=None, model=[{"type": "dense", "units": 10}])
    with pytest.raises(ValueError, match="layer 0 \\(Dense\\)"):
        tasks.check_trainable(broken)


def test_augment_preview_runs_the_training_augmentation() -> None:
    images = proj.synthetic_dataset().train_images[:4]
    unchanged = estimates.augment_preview(images, augment.AugmentConfig(), copies=2)
    assert unchanged.dtype == np.uint8 and unchanged.shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(unchanged, np.repeat(images, 2, axis=0))
    mirrored = estimates.augment_preview(images, {"flip": 1.0})
    np.testing.assert_array_equal(mirrored, images[:, :, ::-1])
    with pytest.raises(ValueError, match="rotation"):
        estimates.augment_preview(images, {"rotation": 500.0})


def test_random_crop_moves_each_image_by_whole_pixels_within_its_bound() -> None:
    import jax
    import jax.numpy as jnp

    square = jnp.zeros((64, 28, 28, 1)).at[:, 10:14, 8:12, :].set(1.0)  # a 4x4 patch, corner at (10, 8)
    moved = np.asarray(augment.augment_batch(square, jax.random.key(3), augment.AugmentConfig(crop=2)))
    corners = np.array([np.argwhere(image[..., 0] > 0).min(axis=0) for image in moved])
    offsets = corners - np.array([10, 8])
    assert np.abs(offsets).max() == 2 and len({tuple(o) for o in offsets}) > 10  # every shift in range, many drawn
    np.testing.assert_array_equal(moved.sum(axis=(1, 2, 3)), 16.0)  # moved, not blurred: the patch stays 4x4 of ones
    assert set(np.unique(moved)) == {0.0, 1.0}
    edge = jnp.zeros((64, 28, 28, 1)).at[:, :, :2, :].set(1.0)  # pixels moved out of the frame are gone, new ones are 0
    cropped = np.asarray(augment.augment_batch(edge, jax.random.key(4), augment.AugmentConfig(crop=2)))
    assert cropped[..., 0].sum(axis=(1, 2)).min() < 56 and cropped[:, :, 4:].max() == 0.0
    unchanged = augment.augment_batch(square, jax.random.key(3), augment.AugmentConfig(crop=0))
    np.testing.assert_array_equal(np.asarray(unchanged), np.asarray(square))


def test_montage_and_upscale_shapes() -> None:
    images = np.zeros((5, 28, 28, 1), np.uint8)
    assert estimates.upscale(images[0], 3).shape == (84, 84)
    assert estimates.montage(images, columns=3, factor=2, gap=2).shape == (2 * 56 + 2, 3 * 56 + 4)


def test_job_progress_reads_a_snapshot() -> None:
    snapshot = {"status": "running", "start": {"epochs": 2, "steps_per_epoch": 10, "train_size": 1000},
                "chunks": [{"epoch": 1, "step": 5, "epoch_progress": 0.5, "loss": 1.0, "accuracy": 0.5,
                            "images_per_s": 100.0, "elapsed": 5.0}],
                "epochs": []}
    figures = tasks.job_progress({**snapshot, "started": None})
    assert figures["fraction"] == pytest.approx(0.25)
    assert figures["epoch"] == 1 and figures["epochs"] == 2
    assert figures["eta"] == pytest.approx(15 * 100 / 100.0)  # 15 steps of 100 images at 100 images/s
    assert figures["best_epoch"] is None and figures["elapsed"] == 5.0
    assert tasks.job_progress({**snapshot, "started": 100.0, "finished": 130.0})["elapsed"] == 30.0


def test_estimate_uses_the_measured_rate_then_a_previous_run(ws: store.Workspace, tiny_project: dict) -> None:
    spec = proj.model_spec(tiny_project)
    first = estimates.estimate_epoch_seconds(ws, tiny_project["id"], spec, (28, 28, 1), 10, 1000, 100)
    assert first["source"] == "measured matmul rate" and first["seconds"] > 0
    run_dir = ws.new_run_dir(tiny_project["id"], "earlier")
    store.atomic_write_json(run_dir / "run.json", {"name": "earlier", "spec": spec, "input_shape": [28, 28, 1],
                                                   "class_names": list(catalogue.CLASS_NAMES), "config": {}})
    store.append_jsonl(run_dir / "history.jsonl", {"kind": "epoch", "epoch": 1, "images_per_s": 500.0})
    second = estimates.estimate_epoch_seconds(ws, tiny_project["id"], spec, (28, 28, 1), 10, 1000, 100)
    assert second["source"] == "speed of run earlier"
    assert second["seconds"] == pytest.approx(2.0)  # 1,000 images at the earlier run's 500 images/s
    assert first["startup"] is None and second["startup"] is None  # that run did not record its start-up
    # an ensemble of 3 does three networks' work per image
    three = estimates.estimate_epoch_seconds(ws, tiny_project["id"], spec, (28, 28, 1), 10, 1000, 100, members=3)
    assert three["seconds"] == pytest.approx(6.0) and three["flops_per_image"] == 3 * second["flops_per_image"]
    # and an earlier ensemble's 500 images/s were 2 networks' work: a single model would run twice as fast
    store.atomic_write_json(run_dir / "run.json", {"name": "earlier", "spec": spec, "input_shape": [28, 28, 1],
                                                   "class_names": list(catalogue.CLASS_NAMES), "config": {"ensemble": 2}})
    after_ensemble = estimates.estimate_epoch_seconds(ws, tiny_project["id"], spec, (28, 28, 1), 10, 1000, 100)
    assert after_ensemble["seconds"] == pytest.approx(1.0)


def test_estimate_takes_the_speed_and_start_up_of_the_closest_run_not_the_newest(ws: store.Workspace,
                                                                                  tiny_project: dict) -> None:
    # Issue 46 item 3: after a sweep the estimate said "1 min 39 s per epoch" for a 10-step run: the newest run (a
    # trial of another preset and batch) was scaled by FLOPs to this model. A run of these very settings wins now.
    spec = proj.model_spec(tiny_project)
    other = [{"type": "conv2d", "filters": 8, "kernel": 3}, {"type": "flatten"}, {"type": "dense", "units": 10}]

    def run(name: str, layers: list, batch: int, images_per_s: float, startup: float) -> None:
        run_dir = ws.new_run_dir(tiny_project["id"], name)
        store.atomic_write_json(run_dir / "run.json", {
            "name": name, "spec": layers, "input_shape": [28, 28, 1], "class_names": list(catalogue.CLASS_NAMES),
            "config": {"batch_size": batch}, "compile_seconds": startup, "setup_seconds": 1.0})
        store.append_jsonl(run_dir / "history.jsonl", {"kind": "epoch", "epoch": 1, "images_per_s": images_per_s})
        time.sleep(0.01)

    run("same-settings", spec, 32, 500.0, 4.0)
    run("same-layers-batch-128", spec, 128, 2000.0, 6.0)
    run("sweep-trial", other, 256, 50.0, 90.0)  # the newest
    exact = estimates.estimate_epoch_seconds(ws, tiny_project["id"], spec, (28, 28, 1), 10, 1000, 100, batch_size=32)
    assert exact["source"] == "speed of run same-settings" and exact["seconds"] == pytest.approx(2.0)
    assert exact["startup"] == {"seconds": 5.0, "run": "same-settings"}
    layers_only = estimates.estimate_epoch_seconds(ws, tiny_project["id"], spec, (28, 28, 1), 10, 1000, 100, batch_size=64)
    assert layers_only["source"] == "speed of run same-layers-batch-128"  # the newest run of these layers
    other_model = estimates.estimate_epoch_seconds(ws, tiny_project["id"], other, (28, 28, 1), 10, 1000, 100,
                                                   batch_size=256)
    assert other_model["source"] == "speed of run sweep-trial" and other_model["startup"]["seconds"] == 91.0


def test_estimate_includes_the_start_up_a_real_run_measured(ws: store.Workspace, tiny_project: dict) -> None:
    from fmnist_jax.training import loop
    spec = proj.model_spec(tiny_project)
    splits = splitting.make_splits(catalogue.synthetic_dataset(num_train=300, num_test=100))
    run_dir = ws.new_run_dir(tiny_project["id"], "measured")
    records = list(loop.train(spec, config.TrainConfig(epochs=1, batch_size=50), splits, run_dir=run_dir))
    start = records[0]
    assert start["kind"] == "start" and start["compile_seconds"] > 0 and start["setup_seconds"] > 0
    saved = store.read_json(run_dir / "run.json")
    assert (saved["compile_seconds"], saved["setup_seconds"]) == (start["compile_seconds"], start["setup_seconds"])
    estimate = estimates.estimate_epoch_seconds(ws, tiny_project["id"], spec, (28, 28, 1), 10, 1000, 100)
    assert estimate["startup"] == {"seconds": pytest.approx(start["compile_seconds"] + start["setup_seconds"]),
                                   "run": "measured"}


def test_sample_projects_get_unique_names(ws: store.Workspace) -> None:
    first = proj.create_sample_project(ws)
    second = proj.create_sample_project(ws)
    assert first["name"] == proj.SAMPLE_PROJECT_NAME and second["name"] == f"{proj.SAMPLE_PROJECT_NAME} 2"
    assert proj.preset_of(first) == "fast"
    assert proj.train_config(first).epochs == proj.SAMPLE_CONFIG["epochs"]


def test_a_trained_run_is_evaluated_once_and_cached(ws: store.Workspace, tiny_project: dict) -> None:
    registry = proj.get_registry()
    job = tasks.start_training(ws, tiny_project, "tiny run", registry)
    final = registry.wait(job["id"], timeout=240)
    assert final["status"] == "completed", final["error"]
    assert len(tasks.run_history(job["run_dir"])) == 1
    seen = []
    metrics = tasks.evaluate_run(ws, tiny_project["id"], job["name"], progress=lambda f, m: seen.append(f))
    assert metrics["count"] == 200 and len(metrics["confusion_matrix"]) == 10
    assert seen[-1] == pytest.approx(1.0)
    cached = Path(job["run_dir"]) / proj.EVALUATION_FILE
    assert cached.exists()
    calls = len(seen)
    again = tasks.evaluate_run(ws, tiny_project["id"], job["name"], progress=lambda f, m: seen.append(f))
    assert again["accuracy"] == metrics["accuracy"] and len(seen) == calls  # read from the cache, not recomputed
    with pytest.raises(ValueError, match="only a stopped or interrupted run can be resumed"):
        tasks.resume_training(ws, tiny_project, job["name"], registry)
    rows = tasks.runs_table(ws, tiny_project["id"])
    assert rows[0]["has_weights"] and rows[0]["status"] == "completed"


def test_an_ensemble_trains_evaluates_and_is_offered_only_where_its_weights_fit(ws: store.Workspace,
                                                                                 tiny_project: dict) -> None:
    """Through the studio's queue: a 2-member run trains and evaluates as one model; as a starting model it is
    offered to projects training 2 members, not to single-model ones (a single model starts any ensemble)."""
    registry = proj.get_registry()
    pair = ws.update_project(tiny_project["id"], config={**tiny_project["config"], "ensemble": 2})
    job = tasks.start_training(ws, pair, "pair", registry)
    final = registry.wait(job["id"], timeout=240)
    assert final["status"] == "completed", final["error"]
    model = predict.load_model(job["run_dir"])
    assert model.members == 2
    metrics = tasks.evaluate_run(ws, pair["id"], job["name"])
    assert metrics["count"] == 200
    # the evaluation's accuracy is the ensemble's, as the run's own test pass measured it, beside each member's
    assert metrics["accuracy"] == pytest.approx(store.read_json(Path(job["run_dir"]) / "run.json")["test_accuracy"])
    splits = proj.load_splits(store.read_json(Path(job["run_dir"]) / "run.json"))
    alone = [float((model.member(k).predict_logits(splits.test_images).argmax(1) == splits.test_labels).mean())
             for k in range(2)]
    assert metrics["members"] == pytest.approx(alone)
    spec = proj.model_spec(pair)
    assert job["name"] in tasks.starting_models(ws, pair, spec, 10)
    single = ws.update_project(pair["id"], config={**pair["config"], "ensemble": 1})
    assert job["name"] not in tasks.starting_models(ws, single, spec, 10)
    chosen = ws.update_project(single["id"], init_from=job["name"])
    with pytest.raises(ValueError, match="is an ensemble of 2 and this project trains 1 member; set Ensemble members to 2"):
        tasks.starting_model(ws, chosen, spec)


# ----------------------------------------------------------------------------- charts

def test_chart_builders_produce_vega_lite_specs() -> None:
    names = list(catalogue.CLASS_NAMES)
    built = [
        charts.class_balance([{"split": "train", "class": n, "count": 5} for n in names]),
        charts.pixel_histogram([{"intensity": float(i * 8), "count": i} for i in range(32)]),
        charts.learning_curve(charts.learning_curve_rows(
            [{"epoch": 1, "epoch_progress": 0.5, "loss": 1.0, "accuracy": 0.6}],
            [{"epoch": 1, "loss": 0.9, "accuracy": 0.7, "val_loss": 0.8, "val_accuracy": 0.72}]), "accuracy", 3),
        charts.runs_overlay([{"run": "a", "epoch": 1, "metric": "val_accuracy", "value": 0.8}]),
        charts.learning_rate([{"step": 0, "epoch": 0.0, "learning_rate": 1e-3}], 2),
        charts.confusion_matrix(np.eye(10, dtype=int).tolist(), names, normalize=True),
        charts.probabilities(names, np.full(10, 0.1), top=3),
    ]
    for chart in built:
        spec = chart.to_dict()
        assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")


def test_learning_curve_rows_place_chunks_between_epochs() -> None:
    rows = charts.learning_curve_rows([{"epoch": 2, "epoch_progress": 0.25, "loss": 1.0, "accuracy": 0.5}],
                                      [{"epoch": 1, "loss": 0.9, "accuracy": 0.7, "val_loss": None, "val_accuracy": None}])
    assert {(r["series"], r["epoch"]) for r in rows} == {("train (live)", 1.25), ("train", 1.0)}


def test_network_dot_lists_every_layer_and_its_shapes() -> None:
    spec = layer_specs.normalize_spec(presets.preset("lenet"))
    dot = charts.network_dot(layer_specs.describe(spec), spec)
    assert dot.startswith("digraph network {") and dot.rstrip().endswith("}")
    assert dot.count(" -> ") == len(spec) + 1
    assert "6 filters 5×5, same, tanh" in dot and "10 class scores" in dot
    json.dumps(dot)  # plain text, safe to hand to st.graphviz_chart


def test_the_sample_project_uses_the_recipe_the_hyperparameters_page_recommends(workspace) -> None:
    ws = store.Workspace()
    project = proj.create_sample_project(ws)
    recipe, _ = proj.recommended_config(project)
    assert proj.train_config(project).to_dict() == recipe.to_dict()


def test_project_cards_name_an_uploaded_dataset_by_its_file(workspace, tmp_path) -> None:
    import numpy as np

    from fmnist_jax.data.uploads import importer

    rng = np.random.default_rng(0)
    path = tmp_path / "my sneakers.npz"
    np.savez(path, x_train=rng.integers(0, 255, (60, 28, 28), dtype=np.uint8), y_train=np.arange(60) % 3)
    manifest = importer.import_upload(path)
    ws = store.Workspace()
    project = ws.create_project("Mine", dataset=manifest["name"])
    assert manifest["name"].startswith("upload/")
    assert proj.project_summary(ws, project)["dataset"] == "my sneakers.npz"
    gone = ws.create_project("Gone", dataset="upload/0000-missing")
    assert "no longer in the workspace" in proj.project_summary(ws, gone)["dataset"]


def test_side_by_side_puts_a_photo_and_the_model_input_in_one_row() -> None:
    import numpy as np

    photo = np.zeros((200, 150, 3), np.uint8)
    model_input = np.full((28, 28, 1), 255, np.uint8)
    strip = estimates.side_by_side([photo, model_input], height=140, gap=6)
    assert strip.shape == (140, 105 + 6 + 140, 3)
    assert (strip[:, :105] == 0).all() and (strip[:, 105:111] == 255).all() and (strip[:, 111:] == 255).all()


def test_a_preset_loaded_for_another_number_of_classes_is_still_that_preset(workspace) -> None:
    ws = store.Workspace()
    project = ws.create_project("Three classes", model=presets.preset("fast", 3), model_preset="fast")
    assert proj.preset_of(project) == "fast"
    edited = presets.preset("fast", 3)
    edited[0]["filters"] = 16
    assert proj.preset_of(ws.update_project(project["id"], model=edited)) is None


def test_the_learning_rate_preview_reaches_the_last_epoch() -> None:
    from fmnist_jax.training import optim

    curve = optim.learning_rate_curve(config.TrainConfig(epochs=5, schedule="cosine"), steps_per_epoch=100)
    assert curve[0]["epoch"] == 0 and curve[-1]["epoch"] == 5.0


def test_job_progress_names_the_epoch_in_progress_before_its_first_chunk() -> None:
    starting = {"status": "running", "start": {"epochs": 3, "steps_per_epoch": 10}, "chunks": [], "epochs": []}
    assert tasks.job_progress(starting)["epoch"] == 1  # the sidebar said "epoch 0/3" here
    first_chunk = {**starting, "chunks": [{"epoch": 1, "step": 5, "images_per_s": 100.0, "elapsed": 1.0}]}
    assert tasks.job_progress(first_chunk)["epoch"] == 1
    finished = {**starting, "status": "completed", "epochs": [{"epoch": 3, "val_accuracy": 0.9, "seconds": 1.0}]}
    assert tasks.job_progress(finished)["epoch"] == 3


def test_colour_images_are_previewed_in_colour_and_captions_come_from_the_data() -> None:
    red = np.zeros((2, 8, 8, 3), np.uint8)
    red[..., 0] = 200
    red[..., 2] = 40
    grid = estimates.montage(red, columns=2, factor=2, gap=2)
    assert grid.shape == (16, 2 * 16 + 2, 3)
    assert tuple(grid[0, 0]) == (200, 0, 40) and tuple(grid[0, 16]) == (90, 90, 90)  # the colour, then the gap

    dark = np.zeros((20, 28, 28, 1), np.uint8)
    dark[:, 8:20, 8:20] = 220
    assert "bright on a dark background" in estimates.describe_pixels(dark)
    assert "dark on a light background" in estimates.describe_pixels(255 - dark)
    rng = np.random.default_rng(0)
    natural = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    caption = estimates.describe_pixels(natural)
    assert "Backgrounds vary" in caption and "Mean brightness" in caption and "0% of pixels are pure black" in caption
    assert "bright on" not in caption


def test_pages_open_on_the_best_run() -> None:
    runs = [{"id": "new", "best_val_accuracy": 0.77}, {"id": "mid", "best_val_accuracy": 0.80},
            {"id": "old", "best_val_accuracy": None}]
    assert tasks.best_run(runs)["id"] == "mid"
    assert tasks.best_run([{"id": "a", "best_val_accuracy": None}, {"id": "b"}])["id"] == "a"  # newest first


def test_reliability_bins_and_expected_calibration_error() -> None:
    from fmnist_jax.evaluate import reliability
    # 10 images at 90% confidence, 9 right: calibrated; 10 at 90%, 5 right: 40 points over-confident
    probs = np.full((20, 2), 0.1)
    probs[:, 0] = 0.9
    labels = np.array([0] * 9 + [1] + [0] * 5 + [1] * 5)
    first = reliability(probs[:10], labels[:10])
    assert first["ece"] == pytest.approx(0.0) and first["bins"] == [
        {"low": 0.9, "high": 1.0, "confidence": pytest.approx(0.9), "accuracy": 0.9, "count": 10}]
    assert reliability(probs[10:], labels[10:])["ece"] == pytest.approx(0.4)
    assert reliability(probs, labels)["ece"] == pytest.approx(0.2)


def test_evaluation_compares_softmax_and_calibrated_probabilities(ws: store.Workspace, tiny_project: dict) -> None:
    from fmnist_jax.evaluate import evaluate_model
    from fmnist_jax.training.trained import TrainedModel
    from fmnist_jax.training import loop
    spec = proj.model_spec(tiny_project)
    splits = splitting.make_splits(catalogue.synthetic_dataset(num_train=300, num_test=100))
    done = list(loop.train(spec, config.TrainConfig(epochs=1, batch_size=50), splits))[-1]
    hot = TrainedModel(spec, splits.input_shape, splits.class_names, done["weights"], calibration={"temperature": 2.0})
    metrics = evaluate_model(hot, splits.test_images, splits.test_labels)
    calibration = metrics["calibration"]
    assert calibration["temperature"] == 2.0
    assert calibration["before"]["ece"] != calibration["after"]["ece"]
    assert sum(b["count"] for b in calibration["after"]["bins"]) == 100
    # a higher temperature lowers every confidence: the calibrated bins sit further left
    mean = lambda part: sum(b["confidence"] * b["count"] for b in calibration[part]["bins"]) / 100  # noqa: E731
    assert mean("after") < mean("before")


def test_warm_up_compiles_the_program_start_then_loads(ws: store.Workspace, tiny_project: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import jax

    from fmnist_jax.training import program
    monkeypatch.setattr(program, "enable_compile_cache", lambda home=None: None)
    previous = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        _check_warm_up(ws, tiny_project)
    finally:
        jax.config.update("jax_compilation_cache_dir", previous[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])


def _check_warm_up(ws: store.Workspace, tiny_project: dict) -> None:
    import jax

    from fmnist_jax.training import loop
    hits: list[str] = []
    jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event) if "cache_hits" in event else None)
    key, work = tasks.warm_up(ws, tiny_project)
    assert work(lambda f, m: None)["compile_seconds"] > 0
    assert tasks.warm_up(ws, tiny_project)[0] == key  # the same settings: the same warm-up, done once
    before = len(hits)
    dataset = proj.load_dataset(tiny_project)
    spec, cfg, _ = tasks.check_trainable(tiny_project, dataset)
    splits = proj.load_splits(tiny_project).limit_train(proj.train_limit(tiny_project))
    records = loop.train(spec, cfg, splits)
    assert next(records)["kind"] == "start"
    records.close()
    assert len(hits) > before, "Start compiled the training program again instead of loading the warmed-up one"
    # more epochs, a higher learning rate, another seed and 600 of the 900 training images: the same program
    retuned = {**tiny_project, "train_limit": 600, "config": {**tiny_project["config"], "epochs": 4, "learning_rate": 0.1,
                                                              "seed": 5, "warmup_epochs": 2.0}}
    assert tasks.warm_up(ws, retuned)[0] == key
    before = len(hits)
    records = loop.train(*tasks.check_trainable(retuned, dataset)[:2], proj.load_splits(retuned).limit_train(600))
    start = next(records)
    records.close()
    assert start["train_size"] == 600 and start["steps_per_epoch"] == 12
    assert len(hits) > before, "a change of epochs, learning rate or training-set size compiled the program again"
    changed = {**tiny_project, "config": {**tiny_project.get("config", {}), "batch_size": 16}}
    assert tasks.warm_up(ws, changed)[0] != key


def test_the_best_recipe_narrows_validation_only_where_every_split_keeps_a_class(ws: store.Workspace) -> None:
    project = ws.create_project("Recipe")
    large, small = proj.synthetic_dataset(), catalogue.synthetic_dataset(num_train=300, num_test=100, seed=1)
    changes = proj.best_recipe_changes(project, large)
    assert changes["split"]["val_fraction"] == presets.BEST_RECIPE["val_fraction"]
    assert config.TrainConfig.from_dict(changes["config"]).epochs == presets.BEST_RECIPE["config"]["epochs"]
    assert "split" not in proj.best_recipe_changes(project, small)  # 2% of 300 is 6 images for 10 classes
    applied = {**project, **changes}
    assert proj.uses_best_recipe(applied, large) and not proj.uses_best_recipe(project, large)


def test_start_with_a_starting_model_checks_its_description_and_leaves_the_weights_to_the_job(
        ws: store.Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from fmnist_jax.model import presets

    project = ws.create_project("From the demo", dataset=proj.SYNTHETIC, model=presets.preset("fast", 10),
                                model_preset="fast", init_from=tasks.DEMO_CHOICE,
                                config=config.TrainConfig(epochs=1, batch_size=50, chunk_steps=4).to_dict())
    caller = threading.current_thread()
    real_load = predict.load_model

    def load(source: str, *args, **kwargs):
        assert threading.current_thread() is not caller, "Start waited for the starting model's weights"
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(predict, "load_model", load)
    registry = proj.get_registry()
    job = tasks.start_training(ws, project, registry=registry)
    final = registry.wait(job["id"], timeout=240)
    assert final["status"] == "completed", final["error"]
    assert store.read_json(Path(job["run_dir"]) / "run.json")["init_from"] == tasks.DEMO_CHOICE
