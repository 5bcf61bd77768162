"""The CLI contract: JSON output, exit status 2 with one line for user errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, requires_real_data

from fmnist_jax import store
from fmnist_jax.cli import main as cli
from fmnist_jax.data import catalogue


def run_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fmnist_jax", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_presets_json_lists_names_params_and_descriptions() -> None:
    result = run_cli("presets", "--json")
    assert result.returncode == 0
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    by_name = {r["name"]: r for r in rows}
    assert by_name["dls"]["params"] == 1_421_194 and {"fast", "lenet"} <= set(by_name)
    assert all(set(r) >= {"name", "params", "description"} for r in rows)


def test_missing_data_directory_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli("train", "--epochs", "1", env={"FMNIST_DATA_DIR": str(tmp_path / "missing"),
                                                    "FMNIST_HOME": str(tmp_path / "home")})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "--epochs", "zero"], "invalid int value"),
    (["train", "--bogus"], "unrecognized arguments"),
    (["train", "--preset", "huge"], "unknown preset"),
    (["train", "--fractions", "0.5,0.5,0.5", "--split", "pooled"], "add up to 1"),
    (["train", "--lr", "nan"], "learning rate must be a finite number"),
    (["train", "--epochs", "2", "--clean-epochs", "3"], "without augmentation at the end must be at most 2"),
    (["train", "--ensemble", "0"], "ensemble members"),
    (["evaluate", "/nonexistent/run"], "does not exist"),
    (["train", "--resume", "/nonexistent/run"], "cannot resume"),
])
def test_user_errors_are_one_line_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_train_json_on_synthetic_data_via_the_library_path(tmp_path: Path, monkeypatch, capsys) -> None:
    dataset = catalogue.synthetic_dataset(num_train=300, num_test=60)
    catalogue.save_cached(dataset)  # cached as "synthetic" in this test's workspace
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "synthetic", "--epochs", "2", "--batch-size", "32", "--preset", "lenet",
                     "--out", str(out), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    required = {"run_dir", "preset", "epochs", "train_accuracy", "val_accuracy", "test_accuracy", "test_loss",
                "seconds", "images_per_s", "device", "split"}
    assert required <= set(result) and result["epochs"] == 2 and result["run_dir"] == str(out)
    assert 0 <= result["test_accuracy"] <= 1 and result["split"] == "official"
    code = cli.main(["evaluate", str(out), "--json"])
    evaluation = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and evaluation["accuracy"] == pytest.approx(result["test_accuracy"])
    assert len(evaluation["confusion_matrix"]) == 10 and sum(map(sum, evaluation["confusion_matrix"])) == 60
    # --ensemble 2: the run is a pair, its evaluation the pair's, with each member's accuracy beside it
    code = cli.main(["train", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "32", "--preset", "lenet",
                     "--ensemble", "2", "--out", str(tmp_path / "pair"), "--json"])
    pair = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and store.read_json(tmp_path / "pair" / "run.json")["config"]["ensemble"] == 2
    code = cli.main(["evaluate", str(tmp_path / "pair"), "--json"])
    evaluation = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and evaluation["accuracy"] == pytest.approx(pair["test_accuracy"]) and len(evaluation["members"]) == 2


def test_public_mode_refuses_an_oversized_model_before_building_it(tmp_path: Path, monkeypatch, capsys) -> None:
    catalogue.save_cached(catalogue.synthetic_dataset(num_train=300, num_test=60))
    monkeypatch.setenv("FMNIST_PUBLIC", "1")
    huge = tmp_path / "huge.json"  # about 210 billion parameters: 800 GB of float32 weights if it were built
    huge.write_text(json.dumps([{"type": "conv2d", "filters": 4096, "kernel": 3, "padding": "same"},
                                {"type": "flatten"}, {"type": "dense", "units": 65536}, {"type": "dense", "units": 10}]))
    code = cli.main(["train", "--dataset", "synthetic", "--model", str(huge), "--out", str(tmp_path / "r"), "--json"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith("error: this model has 210 billion parameters; this Space allows 5 million")
    assert "\n" not in error and not (tmp_path / "r").exists()
    code = cli.main(["train", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "32", "--preset", "lenet",
                     "--out", str(tmp_path / "small"), "--json"])
    assert code == 0  # a small job still trains
    capsys.readouterr()
    # an ensemble counts every member: four LeNets are over a cap that one fits under
    from fmnist_jax.model import layer_specs, presets
    lenet = layer_specs.describe(presets.preset("lenet", 10), (28, 28, 1), 10)["total_params"]
    monkeypatch.setenv("FMNIST_PUBLIC_MAX_PARAMS", str(2 * lenet))
    code = cli.main(["train", "--dataset", "synthetic", "--epochs", "1", "--batch-size", "32", "--preset", "lenet",
                     "--ensemble", "4", "--out", str(tmp_path / "four"), "--json"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error.startswith(f"error: this ensemble of 4 models has {4 * lenet:,} parameters")
    assert "fewer ensemble members" in error and not (tmp_path / "four").exists()


@requires_real_data
def test_fast_one_epoch_on_fashion_mnist_reaches_88_percent(real_home: Path, tmp_path: Path) -> None:
    result = run_cli("train", "--preset", "fast", "--epochs", "1", "--split", "official", "--out", str(tmp_path / "r"),
                     "--json", env={"FMNIST_HOME": str(real_home)}, timeout=1200)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"fast 1 epoch: test accuracy {summary['test_accuracy']:.4f} in {summary['seconds']:.1f} s")
    assert summary["test_accuracy"] >= 0.88 and summary["split"] == "official" and summary["epochs"] == 1
