"""`train --distributed` in miniature: two processes on this machine, joined by jax.distributed through the CLI."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from fmnist_jax.data import catalogue

MODEL = [{"type": "conv2d", "filters": 8, "kernel": 3, "activation": "relu"}, {"type": "maxpool"},
         {"type": "batchnorm"}, {"type": "dropout", "rate": 0.25}, {"type": "flatten"}, {"type": "dense", "units": 10}]
COMMON = ["--epochs", "3", "--batch-size", "32", "--chunk-steps", "2", "--lr", "0.003", "--augment", "flip=0.5",
          "--val-fraction", "0.25", "--json"]


# Gloo's C++ connection log writes each message in pieces ("[Gloo] Rank ", the rank, " is connected to ", ...),
# and a process's two device threads write at once, so the pieces interleave across lines (seen in CI:
# a line "3 is connected to 3 peer ranks. ..." whose "[Gloo] Rank " prefix landed on the line before).
_GLOO_PIECES = re.compile(r"\[Gloo\] Rank |is connected to |peer ranks\. Expected number of connected peer ranks is : |\d+|\s+")


def _without_gloo_log(stdout: str) -> str:
    """What a process printed of its own: stdout less every piece of Gloo's connection messages."""
    return _GLOO_PIECES.sub("", stdout)


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("distributed")
    data = catalogue.synthetic_dataset(num_train=320, num_test=64, seed=3)
    np.savez(folder / "shapes.npz", x_train=data.train_images, y_train=data.train_labels,
             x_test=data.test_images, y_test=data.test_labels)
    (folder / "model.json").write_text(json.dumps(MODEL))
    return folder / "shapes.npz", folder / "model.json"


def _command(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fmnist_jax", "train", "--dataset", str(data), "--model", str(model),
            "--out", str(out), *COMMON, *extra]


def _env(home: Path, devices: int) -> dict:
    return {**os.environ, "FMNIST_HOME": str(home), "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


@pytest.mark.slow
def test_two_processes_through_the_cli_follow_the_single_process_run(dataset_file: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = dataset_file
    single = subprocess.run(_command(data, model, tmp_path / "single"), env=_env(tmp_path / "home-single", 1),
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert single.returncode == 0, single.stderr[-2000:]
    address = _free_address()
    processes = [subprocess.Popen(_command(data, model, tmp_path / f"multi-{rank}", "--distributed", "--coordinator", address,
                                           "--num-processes", "2", "--process-id", str(rank)),
                                  env=_env(tmp_path / f"home-{rank}", 2), cwd=REPO, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [process.communicate(timeout=600) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr[-2000:]

    lead = json.loads([line for line in outputs[0][0].splitlines() if line.startswith("{")][-1])
    assert lead["devices"] == 4 and lead["status"] == "completed" and lead["epochs"] == 3
    # process 1 trains in step and prints nothing of its own (Gloo's C++ log pieces aside)
    assert _without_gloo_log(outputs[1][0]) == ""
    assert not (tmp_path / "multi-1").exists()  # and writes nothing: process 0 owns the run folder
    reference = [json.loads(line) for line in (tmp_path / "single" / "history.jsonl").read_text().splitlines()]
    distributed = [json.loads(line) for line in (tmp_path / "multi-0" / "history.jsonl").read_text().splitlines()]
    # the same batches in the same order on 4 devices: the curve equals the single-process one up to the order
    # of floating-point sums (all-reduced gradients)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([r[key] for r in distributed], [r[key] for r in reference], rtol=2e-3, atol=1e-6)
    assert lead["test_accuracy"] == pytest.approx(json.loads(single.stdout.strip().splitlines()[-1])["test_accuracy"], abs=0.02)


def test_distributed_flags_are_checked_before_anything_starts(dataset_file: tuple[Path, Path], tmp_path: Path) -> None:
    data, model = dataset_file
    cases = [(["--coordinator", "127.0.0.1:1234"], "only apply with --distributed"),
             (["--distributed", "--num-processes", "2", "--process-id", "2", "--coordinator", "127.0.0.1:1"],
              "--process-id must be from 0 to 1"),
             (["--distributed", "--num-processes", "0"], "--num-processes must be at least 1")]
    for extra, message in cases:
        result = subprocess.run(_command(data, model, tmp_path / "x", *extra), env=_env(tmp_path / "home", 1),
                                capture_output=True, text=True, timeout=120, cwd=REPO)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-800:]
        assert len(result.stderr.strip().splitlines()) == 1


def test_the_gloo_filter_removes_interleaved_log_pieces_and_keeps_anything_else() -> None:
    interleaved = ("[Gloo] Rank [Gloo] Rank 2 is connected to 3 peer ranks. Expected number of connected peer ranks is : 3\n"
                   "3 is connected to 3 peer ranks. Expected number of connected peer ranks is : 3\n")
    assert _without_gloo_log(interleaved) == ""
    assert _without_gloo_log(interleaved + '{"status": "completed"}\n') == '{"status":"completed"}'
    assert _without_gloo_log("epoch 1/3\n") != ""
