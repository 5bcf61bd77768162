"""The training loop: it learns, stops on request, survives NaN, checkpoints and resumes exactly."""
from __future__ import annotations

import threading
import time

import jax
import numpy as np
import pytest

from fmnist_jax import store
from fmnist_jax.data import catalogue, splitting
from fmnist_jax.data.augment import AugmentConfig
from fmnist_jax.studio.jobs import JobRegistry
from fmnist_jax.train_and_test import train_and_test
from fmnist_jax.training import checkpoint, loop, program, trained
from fmnist_jax.training.config import TrainConfig

TINY = [{"type": "conv2d", "filters": 4, "kernel": 3, "stride": 2, "padding": "same", "activation": "relu"},
        {"type": "batchnorm"}, {"type": "dropout", "rate": 0.1}, {"type": "flatten"},
        {"type": "dense", "units": 32, "activation": "relu"}, {"type": "dense", "units": 10}]


def _records(gen) -> list[dict]:
    return list(gen)


def test_tiny_model_overfits_64_examples() -> None:
    dataset = catalogue.synthetic_dataset(num_train=64 + 40, num_test=20, seed=1)
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=40 / 104, seed=0))
    assert len(splits.train_labels) == 64
    cfg = TrainConfig(epochs=40, batch_size=16, learning_rate=3e-3, chunk_steps=4)
    records = _records(loop.train(TINY, cfg, splits))
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert len(epochs) == 40 and epochs[-1]["accuracy"] >= 0.99  # 160 steps
    assert epochs[-1]["loss"] < epochs[0]["loss"] / 5


def test_records_have_the_documented_fields(tiny_splits: splitting.Splits) -> None:
    records = _records(loop.train(TINY, TrainConfig(epochs=2, batch_size=32, chunk_steps=2), tiny_splits))
    kinds = [r["kind"] for r in records]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 2
    chunk = next(r for r in records if r["kind"] == "chunk")
    assert {"epoch", "step", "epoch_progress", "loss", "accuracy", "images_per_s", "elapsed"} <= set(chunk)
    epoch = next(r for r in records if r["kind"] == "epoch")
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds", "best_epoch", "images_per_s"} <= set(epoch)
    assert all(isinstance(v, (int, float, type(None))) for v in epoch.values() if not isinstance(v, str))
    assert records[0]["device"] == jax.devices()[0].device_kind


def test_stop_signal_stops_within_one_chunk(tiny_splits: splitting.Splits) -> None:
    stop = threading.Event()
    cfg = TrainConfig(epochs=50, batch_size=8, chunk_steps=3)
    chunks = 0
    for record in loop.train(TINY, cfg, tiny_splits, stop=stop):
        if record["kind"] == "chunk":
            chunks += 1
            if chunks == 2:
                stop.set()
        final = record
    assert chunks == 2  # no further chunk ran after the one during which stop was set
    assert final["kind"] == "done" and final["status"] == "stopped"


def test_nan_loss_gives_an_error_record_not_a_crash(tiny_splits: splitting.Splits) -> None:
    cfg = TrainConfig(epochs=3, batch_size=32, optimizer="sgd", momentum=0.0, learning_rate=10.0, chunk_steps=2)
    spec = [{"type": "flatten"}, {"type": "dense", "units": 256}, {"type": "dense", "units": 256},
            {"type": "dense", "units": 256}, {"type": "dense", "units": 10}]  # linear layers: updates grow geometrically
    records = _records(loop.train(spec, cfg, tiny_splits))
    errors = [r for r in records if r["kind"] == "error"]
    assert errors and ("NaN" in errors[0]["message"] or "infinite" in errors[0]["message"])
    assert "lower the learning rate" in errors[0]["message"]
    assert records[-1] == {"kind": "done", "status": "failed", "epochs_completed": records[-1]["epochs_completed"],
                           "error": errors[0]["message"]}


def test_checkpoint_round_trips_bit_exactly(tiny_splits: splitting.Splits, tmp_path) -> None:
    cfg = TrainConfig(epochs=1, batch_size=32)
    _records(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path))
    payload, meta, warnings = store.load_latest_checkpoint(tmp_path)
    assert meta["epoch"] == 1 and warnings == []
    graphdef, template = program.init_state(TINY, tiny_splits.input_shape, 10, cfg)
    restored = checkpoint.state_from_bytes(jax.device_get(template), payload)
    again = checkpoint.state_to_bytes(restored)
    assert again == payload
    leaves = jax.tree_util.tree_leaves(restored)
    assert all(isinstance(leaf, np.ndarray) for leaf in leaves)
    with pytest.raises(ValueError, match="different model|shape"):
        _, other = program.init_state([{"type": "flatten"}, {"type": "dense", "units": 10}], tiny_splits.input_shape, 10, cfg)
        checkpoint.state_from_bytes(jax.device_get(other), payload)


def _epoch_losses(records: list[dict]) -> list[tuple[float, float]]:
    return [(r["loss"], r["val_loss"]) for r in records if r["kind"] == "epoch"]


@pytest.mark.parametrize("stop_after_chunks", [3, 4])  # an epoch boundary, and mid-epoch
def test_resume_equals_an_uninterrupted_run(tiny_splits: splitting.Splits, tmp_path, stop_after_chunks: int) -> None:
    cfg = TrainConfig(epochs=3, batch_size=32, chunk_steps=2, augment=AugmentConfig(flip=0.5, shift=0.1))
    full = _records(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "full"))
    stop, chunks = threading.Event(), 0
    for record in loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "cut", stop=stop):
        if record["kind"] == "chunk":
            chunks += 1
            if chunks == stop_after_chunks:
                stop.set()
    resumed = _records(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "cut", resume=True))
    assert resumed[0]["resumed_from"]["epoch"] >= 1
    history = store.read_jsonl(tmp_path / "cut" / "history.jsonl")
    assert [(h["loss"], h["val_loss"]) for h in history] == _epoch_losses(full)
    full_weights = (tmp_path / "full" / "model.msgpack").read_bytes()
    assert (tmp_path / "cut" / "model.msgpack").read_bytes() == full_weights


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tiny_splits: splitting.Splits, tmp_path) -> None:
    _records(loop.train(TINY, TrainConfig(epochs=2, batch_size=32), tiny_splits, run_dir=tmp_path))
    newest = sorted((tmp_path / "checkpoints").glob("*.msgpack"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    payload, meta, warnings = store.load_latest_checkpoint(tmp_path)
    assert meta["epoch"] == 1 and "corrupt or truncated" in warnings[0]


def test_early_stopping_restores_the_best_epoch(tiny_splits: splitting.Splits) -> None:
    cfg = TrainConfig(epochs=30, batch_size=32, early_stopping=True, patience=2, monitor="val_loss",
                      min_delta=0.5, learning_rate=3e-3)
    records = _records(loop.train(TINY, cfg, tiny_splits))
    done = records[-1]
    assert done["status"] == "early_stopped" and done["epochs_completed"] < 30
    assert done["epochs_completed"] - done["best_epoch"] == 2


def test_train_and_test_reports_test_accuracy_and_trained_model_predicts(tiny_splits: splitting.Splits, tmp_path) -> None:
    records = _records(train_and_test(TINY, TrainConfig(epochs=3, batch_size=32, learning_rate=3e-3), tiny_splits, tmp_path))
    test = next(r for r in records if r["kind"] == "test")
    model = trained.TrainedModel.from_run(tmp_path)
    probs = model.predict_proba(tiny_splits.test_images)
    assert probs.shape == (64, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == tiny_splits.test_labels).mean() == pytest.approx(test["test_accuracy"])
    assert store.read_json(tmp_path / "run.json")["test_accuracy"] == pytest.approx(test["test_accuracy"])


def test_job_registry_queues_runs_and_survives_a_crash(tiny_splits: splitting.Splits, tmp_path) -> None:
    registry = JobRegistry(max_running=1)

    def broken():
        raise RuntimeError("disk on fire")

    first = registry.submit("p1", tmp_path / "a", broken)
    second = registry.submit("p2", tmp_path / "b", lambda: (TINY, TrainConfig(epochs=1, batch_size=32), tiny_splits))
    with pytest.raises(ValueError, match="already has a training job"):
        registry.submit("p2", tmp_path / "c", lambda: (TINY, TrainConfig(), tiny_splits))
    assert [j["project_id"] for j in registry.queue()][:2] in (["p1", "p2"], ["p2"])
    failed = registry.wait(first["id"], timeout=60)
    assert failed["status"] == "failed" and "disk on fire" in failed["error"]
    done = registry.wait(second["id"], timeout=120)
    assert done["status"] == "completed" and done["epochs"] and done["result"]["test_accuracy"] is not None


def test_a_stopped_job_shows_it_is_stopped_before_its_test_pass(tiny_splits: splitting.Splits, tmp_path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from fmnist_jax.training.trained import TrainedModel
    testing, release = threading.Event(), threading.Event()
    original = TrainedModel.predict_proba

    def slow_test_pass(self, *args, **kwargs):
        testing.set()
        assert release.wait(60)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TrainedModel, "predict_proba", slow_test_pass)
    registry = JobRegistry(max_running=1)
    job = registry.submit("p", tmp_path / "run", lambda: (TINY, TrainConfig(epochs=50, batch_size=16, chunk_steps=2),
                                                          tiny_splits))
    deadline = time.time() + 120
    while not registry.get(job["id"])["chunks"] and time.time() < deadline:
        time.sleep(0.05)
    assert registry.get(job["id"])["phase"] == "training"
    registry.stop(job["id"])
    assert testing.wait(60)
    during = registry.get(job["id"])  # the page reads this: stopped and saved, the test pass still to come
    assert during["status"] == "stopped" and during["phase"] == "testing" and during["finished"] is not None
    assert during["result"]["training_status"] == "stopped" and "test_accuracy" not in during["result"]
    assert during["result"]["test_progress"] == 0.0
    assert registry.queue() == []  # ended for the queue: the project may start again at once
    # the next job does not wait for the stopped job's test pass: the one worker has moved on
    second = registry.submit("p", tmp_path / "run2", lambda: (TINY, TrainConfig(epochs=1, batch_size=16), tiny_splits))
    deadline = time.time() + 60
    while registry.get(second["id"])["status"] == "queued" and time.time() < deadline:
        time.sleep(0.05)
    assert registry.get(second["id"])["status"] != "queued"
    assert registry.get(job["id"])["phase"] == "testing"
    release.set()
    final = registry.wait(job["id"], timeout=60)
    assert final["status"] == "stopped" and final["phase"] == "done" and final["result"]["test_accuracy"] is not None
    assert final["result"]["test_progress"] == 1.0
    assert store.read_json(tmp_path / "run" / "run.json")["test_accuracy"] == final["result"]["test_accuracy"]
    assert registry.wait(second["id"], timeout=120)["status"] == "completed"


def test_a_resumed_job_shows_the_epochs_from_before_the_stop(tiny_splits: splitting.Splits, tmp_path) -> None:
    cfg = TrainConfig(epochs=3, batch_size=32)
    stop = threading.Event()
    for record in loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path, stop=stop):
        if record["kind"] == "epoch":
            stop.set()  # stopped after epoch 1
    registry = JobRegistry(max_running=1)
    job = registry.submit("p", tmp_path, lambda: (TINY, cfg, tiny_splits), resume=True)
    final = registry.wait(job["id"], timeout=120)
    assert final["status"] == "completed" and [e["epoch"] for e in final["epochs"]] == [1, 2, 3]


def test_a_killed_run_resumes_from_its_mid_epoch_checkpoint_exactly(tiny_splits: splitting.Splits, tmp_path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=16, chunk_steps=2)  # 12 steps per epoch, 6 chunks
    full = _records(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "full"))
    chunks = 0
    generator = loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "killed", checkpoint_seconds=0)
    for record in generator:
        if record["kind"] == "chunk":
            chunks += 1
            if chunks == 9:  # epoch 2, step 6: abandon the process without any clean-up
                break
    del generator
    _, meta, _ = store.load_latest_checkpoint(tmp_path / "killed")
    assert (meta["epoch"], meta["step_in_epoch"]) == (1, 6)  # lost nothing but the chunk in flight
    _records(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "killed", resume=True))
    assert (tmp_path / "killed" / "model.msgpack").read_bytes() == (tmp_path / "full" / "model.msgpack").read_bytes()
    assert len(full) > 0


def test_finished_jobs_leave_the_registry_so_memory_stays_flat(tmp_path) -> None:
    import tracemalloc

    registry = JobRegistry(max_running=1)
    registry.keep_finished = 20

    def crash():
        raise ValueError("no data")  # finishes at once: a fast-forward of thousands of finished jobs

    def flood(count: int, offset: int) -> None:
        for start in range(0, count, 100):
            jobs = [registry.submit(f"p{offset + i}", tmp_path / f"r{offset + i}", crash)
                    for i in range(start, min(count, start + 100))]
            registry.wait(jobs[-1]["id"], timeout=60)

    flood(200, 0)  # warm-up: the registry at its steady size
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    flood(2000, 200)
    from fmnist_jax.studio import jobs  # what the registry's own code holds (other tests' threads allocate too)
    only_jobs = [tracemalloc.Filter(True, jobs.__file__)]
    grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().filter_traces(only_jobs).compare_to(
        before.filter_traces(only_jobs), "filename"))
    tracemalloc.stop()
    assert len(registry) == len(registry.finished()) == 20
    assert grown < 512 * 1024, f"{grown / 1024:.0f} KiB kept after 2,000 more finished jobs"
    registry.keep_finished_seconds = 0.0
    registry.submit("last", tmp_path / "last", crash)
    assert len(registry.finished()) <= 1  # old finished jobs expire by age as well


def test_a_queued_job_knows_its_position_and_expected_start(tiny_splits: splitting.Splits, tmp_path) -> None:
    from fmnist_jax.studio import tasks
    registry = JobRegistry(max_running=1, max_seconds=600)
    long = registry.submit("a", tmp_path / "a", lambda: (TINY, TrainConfig(epochs=1000, batch_size=16), tiny_splits))
    queued = registry.submit("b", tmp_path / "b", lambda: (TINY, TrainConfig(epochs=1, batch_size=16), tiny_splits))
    try:
        deadline = time.time() + 120
        while not registry.get(long["id"])["chunks"] and time.time() < deadline:
            time.sleep(0.05)
        wait = tasks.queue_wait(registry, queued["id"])
        assert wait["position"] == 1 and wait["latest"] == 600
        assert wait["eta"] is not None and wait["eta"] > 0  # the running job's own ETA
        assert tasks.queue_wait(registry, long["id"]) is None  # running, not queued
    finally:
        registry.stop(long["id"])
        registry.stop(queued["id"])
        registry.wait(long["id"], timeout=60)


def test_a_second_writer_of_a_run_folder_is_refused_clearly(tiny_splits: splitting.Splits, tmp_path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=32)
    first = loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path)
    assert next(first)["kind"] == "start"  # the first writer holds the folder while it trains
    with pytest.raises(loop.TrainingError, match="is in use by another training"):
        next(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path, resume=True))
    first.close()  # stopped (or finished): the folder is free again
    records = list(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path))
    assert records[-1]["kind"] == "done"


def test_concurrent_project_updates_keep_every_change(tmp_path) -> None:
    ws = store.Workspace(tmp_path)
    project = ws.create_project("Shared", "two tabs")

    def write(field: str) -> None:
        for i in range(40):
            ws.update_project(project["id"], **{field: i})

    threads = [threading.Thread(target=write, args=(f"field_{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    saved = ws.get_project(project["id"])
    assert [saved[f"field_{n}"] for n in range(4)] == [39] * 4  # no tab's change undone by another's write


def test_every_run_writes_tensorboard_event_files(tiny_splits: splitting.Splits, tmp_path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    records = _records(train_and_test(TINY, TrainConfig(epochs=2, batch_size=32), tiny_splits, tmp_path))
    epochs = [r for r in records if r["kind"] == "epoch"]
    test = next(r for r in records if r["kind"] == "test")
    scalars: dict[str, list] = {}
    for path in sorted((tmp_path / "tensorboard").glob("events.out.tfevents.*")):  # TensorBoard merges a run's files
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                number = tensor_util.make_ndarray(value.tensor).item() if value.HasField("tensor") else value.simple_value
                scalars.setdefault(value.tag, []).append((event.step, number))
    assert {"loss/train", "loss/validation", "accuracy/train", "accuracy/validation", "learning_rate",
            "images_per_s", "accuracy/test", "loss/test"} <= set(scalars)
    assert [(step, round(v, 5)) for step, v in scalars["accuracy/validation"]] == \
        [(r["epoch"], round(r["val_accuracy"], 5)) for r in epochs]
    assert scalars["accuracy/test"] == [(2, pytest.approx(test["test_accuracy"], abs=1e-6))]


def test_weight_average_ramps_up_then_follows_its_decay() -> None:
    average, current = {"w": np.zeros(3, np.float32)}, {"w": np.ones(3, np.float32)}
    first = program.ema_update(average, current, jax.numpy.int32(0), 0.999)
    assert np.allclose(first["w"], 0.9)  # step 0: rate 1/10, so the initial weights fade at once
    late = program.ema_update(average, current, jax.numpy.int32(10**6), 0.99)
    assert np.allclose(late["w"], 0.01)  # long after: the configured decay
    assert program.eval_weights({"params": 1, "batch_stats": 2, "ema": {"params": 3, "batch_stats": 4}}) == \
        {"params": 3, "batch_stats": 4}


def test_a_run_with_weight_averaging_evaluates_and_keeps_the_average(tiny_splits: splitting.Splits, tmp_path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=32, chunk_steps=2, learning_rate=3e-3, ema_decay=0.9)
    records = _records(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path))
    payload, _, _ = store.load_latest_checkpoint(tmp_path)
    _, template = program.init_state(TINY, tiny_splits.input_shape, 10, cfg)
    state = checkpoint.state_from_bytes(jax.device_get(template), payload)
    kept = (tmp_path / "model.msgpack").read_bytes()
    assert kept == checkpoint.state_to_bytes(state["ema"])  # the average is what the run keeps
    assert kept != checkpoint.state_to_bytes({"params": state["params"], "batch_stats": state["batch_stats"]})
    model = trained.TrainedModel(TINY, tiny_splits.input_shape, tuple(str(i) for i in range(10)), kept)
    predicted = model.predict_logits(tiny_splits.val_images).argmax(axis=1)
    last = [r for r in records if r["kind"] == "epoch"][-1]
    assert np.mean(predicted == tiny_splits.val_labels) == pytest.approx(last["val_accuracy"])


def test_a_resumed_run_with_weight_averaging_equals_an_uninterrupted_one(tiny_splits: splitting.Splits, tmp_path) -> None:
    cfg = TrainConfig(epochs=2, batch_size=32, chunk_steps=2, ema_decay=0.95)
    full = _records(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "full"))
    stop, chunks = threading.Event(), 0
    for record in loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "cut", stop=stop):
        chunks += record["kind"] == "chunk"
        if chunks == 3:
            stop.set()
    _records(loop.train(TINY, cfg, tiny_splits, run_dir=tmp_path / "cut", resume=True))
    history = store.read_jsonl(tmp_path / "cut" / "history.jsonl")
    assert [(h["loss"], h["val_loss"]) for h in history] == _epoch_losses(full)
    assert (tmp_path / "cut" / "model.msgpack").read_bytes() == (tmp_path / "full" / "model.msgpack").read_bytes()


def test_draining_the_registry_stops_running_jobs_with_a_resumable_checkpoint(tiny_splits: splitting.Splits,
                                                                              tmp_path) -> None:
    """At exit the registry is drained: a job in the middle of its epochs stops and saves, a queued one is cancelled."""
    registry = JobRegistry(max_running=1)
    long_run = lambda: (TINY, TrainConfig(epochs=200, batch_size=16, chunk_steps=2), tiny_splits)  # noqa: E731
    running = registry.submit("p1", tmp_path / "a", long_run)
    queued = registry.submit("p2", tmp_path / "b", long_run)
    deadline = time.time() + 120
    while not registry.get(running["id"])["chunks"] and time.time() < deadline:
        time.sleep(0.05)
    assert registry.drain(timeout=120)
    assert registry.get(running["id"])["status"] == "stopped"
    assert registry.get(queued["id"])["status"] == "cancelled"
    assert store.read_json(tmp_path / "a" / "run.json")["status"] == "stopped"
    _, meta, _ = store.load_latest_checkpoint(tmp_path / "a")  # what a resume after the restart starts from
    assert meta["epoch"] < 200


def test_clean_final_epochs_train_on_the_images_as_they_are(tiny_splits: splitting.Splits) -> None:
    augment = AugmentConfig(flip=0.5, crop=2, erasing=0.5)
    plain = _epoch_losses(_records(loop.train(TINY, TrainConfig(epochs=3, batch_size=32, chunk_steps=2), tiny_splits)))
    augmented = _epoch_losses(_records(loop.train(
        TINY, TrainConfig(epochs=3, batch_size=32, chunk_steps=2, augment=augment), tiny_splits)))
    last_clean = _epoch_losses(_records(loop.train(
        TINY, TrainConfig(epochs=3, batch_size=32, chunk_steps=2, augment=augment, clean_epochs=1), tiny_splits)))
    all_clean = _epoch_losses(_records(loop.train(
        TINY, TrainConfig(epochs=3, batch_size=32, chunk_steps=2, augment=augment, clean_epochs=3), tiny_splits)))
    assert augmented != plain
    assert all_clean == plain  # augmentation off from the first step: the run of no augmentation, to the bit
    assert last_clean[:2] == augmented[:2]  # augmented until the last epoch, then not
    assert last_clean[2] != augmented[2]


def test_more_clean_epochs_than_epochs_is_refused_with_both_numbers() -> None:
    with pytest.raises(ValueError, match=r"without augmentation at the end must be at most 3 .*got 4"):
        TrainConfig(epochs=3, clean_epochs=4).validate()
