"""What the command line says in a newcomer's first minutes: each message names what the user typed and gives
advice that works, and TFDS's own output stays out of the way of the CLI's progress bar."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, real_data_dir, requires_real_data
from fmnist_jax.cli.main import main
from fmnist_jax.data import catalogue


def _cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_data_dir_flag_that_does_not_exist_is_named_as_the_flag(capsys, tmp_path: Path) -> None:
    status, _, err = _cli(capsys, "train", "--data-dir", str(tmp_path / "nowhere"), "--epochs", "1")
    assert status == 2
    assert "--data-dir" in err and "FMNIST_DATA_DIR" not in err
    assert err.count("\n") == 1


def test_a_missing_folder_from_the_environment_is_named_as_the_variable(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"\(FMNIST_DATA_DIR\) does not exist; point FMNIST_DATA_DIR"):
        catalogue.check_data_dir(None)


def test_the_synthetic_dataset_the_offline_advice_names_trains_from_the_cli(capsys, tmp_path: Path) -> None:
    status, out, _ = _cli(capsys, "train", "--dataset", "synthetic", "--preset", "lenet", "--epochs", "1",
                          "--out", str(tmp_path / "run"), "--json")
    assert status == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["test_accuracy"] > 0.5  # ten made-up patterns are easy
    status, out, _ = _cli(capsys, "evaluate", str(tmp_path / "run"), "--json")
    assert status == 0 and json.loads(out.strip().splitlines()[-1])["accuracy"] == pytest.approx(result["test_accuracy"])


def test_the_offline_advice_names_options_that_exist() -> None:
    source = Path(catalogue.__file__).read_text()
    assert "--dataset synthetic" in source  # the message's own text, checked against the parser below
    assert catalogue.load_dataset("synthetic").num_classes == 10
    with pytest.raises(ValueError, match="synthetic"):
        catalogue.load_dataset("no-such-dataset")


def test_predict_with_the_model_forgotten_says_the_model_is_missing(capsys) -> None:
    status, _, err = _cli(capsys, "predict", "photo.jpg")
    assert status == 2
    assert "needs a model before the images" in err and "predict demo photo.jpg" in err
    assert "required: images" not in err
    status, _, err = _cli(capsys, "explain", "shirt.png", "--out", "maps")
    assert status == 2 and "explain demo shirt.png" in err
    status, _, err = _cli(capsys, "predict", "demo")
    assert status == 2 and "give one or more image files after the model 'demo'" in err


def test_help_lists_every_export_format(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    line = " ".join(out.split())
    assert "ONNX or TensorFlow Lite" in line and "bundle" in line and "training script" in line


@requires_real_data
def test_the_first_train_prints_one_progress_bar_and_no_tfds_output(tmp_path: Path) -> None:
    env = {**os.environ, "FMNIST_HOME": str(tmp_path / "home"), "FMNIST_DATA_DIR": str(real_data_dir())}
    result = subprocess.run([sys.executable, "-m", "fmnist_jax", "train", "--preset", "lenet", "--epochs", "1",
                             "--limit", "500", "--out", str(tmp_path / "run")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    both = result.stdout + result.stderr
    assert "Downloading and preparing" not in both and "Unknown size" not in both
    assert "Dl Completed" not in both and "Generating" not in both and "oneDNN" not in both
    assert "TFDS is preparing fashion_mnist" in result.stderr  # the project's own bar says what happens
    assert len(result.stderr) < 8_000  # it was 22 KB of TFDS bars
