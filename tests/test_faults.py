"""Faults: a training process killed with SIGKILL resumes; a damaged checkpoint falls back; a read-only or
full workspace gives a clear error and no half-written files; a crashing background job does not stop the next."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from fmnist_jax import store
from fmnist_jax.cli import main as cli
from fmnist_jax.data import catalogue, splitting
from fmnist_jax.studio.jobs import JobRegistry
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.loop import run_to_completion, train

SPEC = [{"type": "conv2d", "filters": 8, "kernel": 3, "padding": "same", "activation": "relu"},
        {"type": "maxpool", "pool": 2, "stride": 2}, {"type": "flatten"}, {"type": "dense", "units": 10}]
EPOCHS = 4


def noisy_dataset(num_train: int = 8192, num_test: int = 1024) -> catalogue.Dataset:
    """The synthetic blobs with 40% of their pixels flipped: learnable, but not to 100%."""
    dataset = catalogue.synthetic_dataset(num_train=num_train, num_test=num_test, seed=1)
    rng = np.random.default_rng(2)
    for images in (dataset.train_images, dataset.test_images):
        flip = rng.random(images.shape) < 0.40
        images[flip] = 240 - images[flip]
    return catalogue.Dataset("noisy", dataset.train_images, dataset.train_labels, dataset.test_images,
                        dataset.test_labels, dataset.class_names)


def _cli(workspace: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "FMNIST_HOME": str(workspace), "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "fmnist_jax", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _train_args(spec_path: Path, out: Path) -> list[str]:
    return ["train", "--dataset", "noisy", "--model", str(spec_path), "--epochs", str(EPOCHS), "--batch-size", "32",
            "--chunk-steps", "10", "--lr", "0.002", "--seed", "3", "--json", "--out", str(out)]


def _checkpoint_times(run_dir: Path) -> dict[int, float]:
    """Epoch -> time its end-of-epoch checkpoint was written."""
    times = {}
    for meta in (run_dir / "checkpoints").glob("epoch-*-step-000000.json"):
        try:
            times[int(meta.name[6:10])] = store.read_json(meta)["written"]
        except (store.StoreError, KeyError, ValueError):
            continue
    return times


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(workspace: Path, tmp_path: Path) -> None:
    catalogue.save_cached(noisy_dataset())
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"

    process = _cli(workspace, *_train_args(spec_path, killed_dir))
    deadline, seen = time.monotonic() + 300, {}
    # Only the last two checkpoints stay on disk (a mid-epoch one may replace an epoch's end quickly on a busy
    # machine), so the poll keeps every end-of-epoch write time it sees, and the epoch's length comes from history.
    while 2 not in seen:
        seen.update(_checkpoint_times(killed_dir))
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "epoch 2 never finished"
        time.sleep(0.05)
    epoch_seconds = store.read_jsonl(killed_dir / "history.jsonl")[1]["seconds"]
    time.sleep(0.4 * epoch_seconds)  # well inside epoch 3
    process.send_signal(signal.SIGKILL)
    killed_at = time.time()
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    seen.update(_checkpoint_times(killed_dir))
    last_epoch = len(store.read_jsonl(killed_dir / "history.jsonl"))
    assert last_epoch < EPOCHS, "the run finished before the kill; nothing was interrupted"
    assert last_epoch in seen, (last_epoch, seen)
    lost_fraction = (killed_at - seen[last_epoch]) / epoch_seconds
    assert store.read_json(killed_dir / "run.json")["status"] == "running"  # as a crash leaves it
    history_before = store.read_jsonl(killed_dir / "history.jsonl")
    assert [r["epoch"] for r in history_before] == list(range(1, last_epoch + 1))

    resumed = _cli(workspace, "train", "--resume", str(killed_dir), "--json")
    clean = _cli(workspace, *_train_args(spec_path, clean_dir))
    resumed_out, resumed_err = resumed.communicate(timeout=600)
    clean_out, clean_err = clean.communicate(timeout=600)
    assert resumed.returncode == 0, resumed_err[-2000:]
    assert clean.returncode == 0, clean_err[-2000:]
    after, uninterrupted = _last_json(resumed_out), _last_json(clean_out)
    history = store.read_jsonl(killed_dir / "history.jsonl")
    assert [r["epoch"] for r in history] == list(range(1, EPOCHS + 1))
    assert history[:last_epoch] == history_before  # finished epochs were kept, not redone
    assert after["epochs"] == EPOCHS and after["status"] == "completed"
    print(f"\nkill -9 {lost_fraction:.2f} epochs into epoch {last_epoch + 1} (epoch = {epoch_seconds:.2f} s); "
          f"resumed from epoch {last_epoch}: test accuracy {after['test_accuracy']:.4f} "
          f"vs uninterrupted {uninterrupted['test_accuracy']:.4f}")
    assert 0 < lost_fraction < 1  # at most the interrupted epoch is lost
    assert abs(after["test_accuracy"] - uninterrupted["test_accuracy"]) <= 0.02
    assert 0.3 < uninterrupted["test_accuracy"] < 0.99  # a band that means something: learnt, not trivial


def _trained_run(run_dir: Path, epochs: int = 2) -> splitting.Splits:
    splits = splitting.make_splits(noisy_dataset(512, 128), splitting.SplitSpec(val_fraction=0.25))
    catalogue.save_cached(noisy_dataset(512, 128))
    cfg = TrainConfig(epochs=epochs, batch_size=32, chunk_steps=4, seed=0)
    run_to_completion(train(SPEC, cfg, splits, run_dir=run_dir, run_meta={"dataset": "noisy", "limit": None}))
    return splits


def test_truncated_checkpoint_falls_back_to_the_previous_one(workspace: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    _trained_run(run_dir, epochs=2)
    newest = sorted((run_dir / "checkpoints").glob("epoch-*.msgpack"))[-1]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a torn write or a bad disk
    payload, meta, warnings = store.load_latest_checkpoint(run_dir)
    assert meta["epoch"] == 1 and "corrupt or truncated; using the previous one" in warnings[0]
    status = cli.main(["train", "--resume", str(run_dir), "--epochs", "3", "--json"])
    captured = capsys.readouterr()
    assert status == 0
    assert "warning: checkpoint epoch-0002-step-000000 is corrupt or truncated; using the previous one" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["epochs"] == 3
    assert [r["epoch"] for r in store.read_jsonl(run_dir / "history.jsonl")] == [1, 2, 3]


def test_every_checkpoint_damaged_is_a_clear_error(workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    _trained_run(run_dir, epochs=2)
    for path in (run_dir / "checkpoints").glob("epoch-*.msgpack"):
        path.write_bytes(b"")
    assert cli.main(["train", "--resume", str(run_dir), "--epochs", "3", "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot resume") and "no usable checkpoint" in err[0]


def test_resuming_a_finished_run_says_it_is_complete(workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run_dir = tmp_path / "run"
    _trained_run(run_dir, epochs=2)
    before = (run_dir / "history.jsonl").read_bytes()
    assert cli.main(["train", "--resume", str(run_dir), "--json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already complete (2 of 2 epochs" in err[0] and "--epochs" in err[0]
    assert (run_dir / "history.jsonl").read_bytes() == before  # nothing was rewritten


# ----------------------------------------------------------------------------- read-only and full disks

def _no_temp_files(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not leftovers, leftovers


def test_full_disk_keeps_the_previous_file_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "project.json"
    store.atomic_write_json(target, {"name": "before"})

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", disk_full)
    with pytest.raises(store.StoreError, match="No space left on device .*read-only or full"):
        store.atomic_write_json(target, {"name": "after"})
    assert store.read_json(target)["name"] == "before"
    _no_temp_files(tmp_path)


def test_read_only_workspace_gives_a_clear_error_and_no_project_folder(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = store.Workspace()
    ws.create_project("kept")

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(store.tempfile, "mkstemp", read_only)
    with pytest.raises(store.StoreError, match="Read-only file system .*read-only or full"):
        ws.create_project("new one")
    assert [p.name for p in ws.projects_dir.iterdir()] == ["kept"]
    assert [p["name"] for p in ws.list_projects()] == ["kept"]


def test_full_disk_during_training_is_one_clear_cli_line(workspace: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    catalogue.save_cached(noisy_dataset(512, 128))
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    real_fsync = os.fsync

    def fail_checkpoints(fd: int) -> None:
        if any(".msgpack." in p.name for p in (tmp_path / "run" / "checkpoints").glob("*")):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(store.os, "fsync", fail_checkpoints)
    status = cli.main(["train", "--dataset", "noisy", "--model", str(spec_path), "--epochs", "2", "--batch-size", "32",
                       "--json", "--out", str(tmp_path / "run")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert status == 2 and len(err) == 1 and "No space left on device" in err[0] and "read-only or full" in err[0]
    for path in (tmp_path / "run").rglob("*.json"):
        store.read_json(path)  # every file there is whole
    assert not list((tmp_path / "run" / "checkpoints").glob("*.msgpack"))
    _no_temp_files(tmp_path / "run")


# ----------------------------------------------------------------------------- background jobs

def test_a_crashing_job_is_recorded_and_the_next_job_runs(tmp_path: Path, tiny_splits: splitting.Splits) -> None:
    registry = JobRegistry(max_running=1)

    def explode() -> tuple:
        raise RuntimeError("the data loader fell over")

    def fine() -> tuple:
        return ([{"type": "flatten"}, {"type": "dense", "units": 10}],
                TrainConfig(epochs=1, batch_size=32, chunk_steps=2), tiny_splits)

    broken = registry.submit("first", tmp_path / "broken", explode)
    healthy = registry.submit("second", tmp_path / "healthy", fine)
    broken_done = registry.wait(broken["id"], timeout=120)
    healthy_done = registry.wait(healthy["id"], timeout=300)
    assert broken_done["status"] == "failed" and broken_done["error"] == "RuntimeError: the data loader fell over"
    assert healthy_done["status"] == "completed" and healthy_done["result"]["test_accuracy"] is not None
    assert healthy_done["started"] >= broken_done["finished"]
    assert registry.queue() == []
