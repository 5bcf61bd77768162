"""The model as code: the exported Flax NNX + Optax script is standalone, readable, and trains to the same
accuracy as the CLI for the same short run."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, load_script, requires_real_data

from fmnist_jax.cli import main as cli
from fmnist_jax.deploy import script_export
from fmnist_jax.model import presets
from fmnist_jax.training.config import TrainConfig


@pytest.mark.parametrize("preset", sorted(presets.PRESETS))
def test_every_preset_exports_a_standalone_script(preset: str) -> None:
    config = TrainConfig.from_dict(presets.PRESETS[preset].train_defaults or {})
    text = script_export.training_script(presets.preset(preset, 10), config, (28, 28, 1), tuple("abcdefghij"), preset)
    tree = ast.parse(text)  # valid Python
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module.split(".")[0] for node in ast.walk(tree)
                                            if isinstance(node, ast.ImportFrom) and node.module}
    assert "fmnist_jax" not in imported and {"jax", "optax", "flax", "tensorflow_datasets"} <= imported
    spec = presets.preset(preset, 10)
    modules = sum(layer["type"] in ("conv2d", "dense", "batchnorm", "dropout", "residual") for layer in spec)
    net = text[text.index("class Net("):]  # the network's own layers (a residual block's are in its class above)
    assert net.count("= nnx.Conv(") + net.count("= nnx.Linear(") + net.count("= nnx.BatchNorm(") + \
        net.count("= nnx.Dropout(") + net.count("= Residual(") == modules  # every layer with state is a module of its own
    assert ("class Residual(nnx.Module)" in text) == any(layer["type"] == "residual" for layer in spec)


def test_the_cli_writes_the_script_of_a_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "train_demo.py"
    assert cli.main(["export", "demo", "--format", "script", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["format"] == "script"
    text = out.read_text()
    assert "'optimizer': 'adam'" in text and "Not included: the studio's augmentation" in text
    assert oct(out.stat().st_mode & 0o777) == "0o644"


@pytest.mark.slow
@requires_real_data
def test_the_script_reaches_the_clis_accuracy_for_the_same_short_run(tmp_path: Path, real_home: Path) -> None:
    env = {**os.environ, "FMNIST_HOME": str(real_home), "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "fmnist_jax", "train", "--preset", "fast", "--epochs", "2", "--limit",
                          "6000", "--seed", "0", "--out", str(tmp_path / "run"), "--json"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    cli_accuracy = json.loads(run.stdout.strip().splitlines()[-1])["test_accuracy"]
    script = tmp_path / "train_fast.py"
    subprocess.run([sys.executable, "-m", "fmnist_jax", "export", str(tmp_path / "run"), "--format", "script", "--out",
                    str(script)], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    own = subprocess.run([sys.executable, str(script), "--epochs", "2", "--limit", "6000", "--seed", "0", "--json"],
                         cwd=tmp_path, env={**os.environ, "TFDS_DATA_DIR": str(tmp_path / "tfds")},
                         capture_output=True, text=True, timeout=900)
    assert own.returncode == 0, own.stderr[-2000:]
    script_accuracy = json.loads(own.stdout.strip().splitlines()[-1])["test_accuracy"]
    assert abs(script_accuracy - cli_accuracy) <= 0.015, (cli_accuracy, script_accuracy)


def test_the_script_averages_the_weights_when_the_run_did(tmp_path: Path) -> None:
    """Weight averaging (the 15-minute recipe uses it) is in the script: the first update moves the average
    nine tenths of the way to the model's weights, as the studio's ramp does."""
    import jax
    import numpy as np

    config = TrainConfig.from_dict(presets.BEST_RECIPE["config"])
    text = script_export.training_script(presets.preset("fast", 10), config, (28, 28, 1), tuple("abcdefghij"), "fast")
    assert "Not included" not in text and "'ema_decay': 0.999" in text
    script = load_script(text, tmp_path, "exported_script")
    model = script.Net(script.nnx.Rngs(params=0, dropout=1))
    averaged = script.nnx.clone(model)
    before = jax.tree.map(np.asarray, script.nnx.state(averaged, script.nnx.Param))
    script.nnx.update(model, jax.tree.map(lambda w: w + 1.0, script.nnx.state(model, script.nnx.Param)))
    script.average(model, averaged, 0.0)
    after = jax.tree.map(np.asarray, script.nnx.state(averaged, script.nnx.Param))
    for old, new in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
        np.testing.assert_allclose(new, old + 0.9, rtol=1e-5, atol=1e-5)
    # the recipe's 1-pixel random crop is in the script too: whole-pixel moves of at most one pixel per axis
    assert script.SETTINGS["crop"] == 1 and script.SETTINGS["shift"] == 0.0
    patch = np.zeros((64, 28, 28, 1), np.float32)
    patch[:, 10:14, 8:12] = 1.0
    moved = np.asarray(script.augment(jax.numpy.asarray(patch), jax.random.key(0)))
    corners = np.array([np.argwhere(image[..., 0] > 0).min(axis=0) for image in moved])
    assert set(corners[:, 0] - 10) == {-1, 0, 1} and moved.sum() == 64 * 16


def test_the_script_holds_out_the_runs_own_validation_share(tmp_path: Path) -> None:
    """A run on the 15-minute recipe's split (2% validation) exports a script that trains on the same 98%."""
    from fmnist_jax.data import catalogue, splitting
    from fmnist_jax.training.trained import TrainedModel
    from fmnist_jax.training.loop import train

    dataset = catalogue.synthetic_dataset(num_train=600, num_test=100, seed=2)
    splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.02))
    spec = [{"type": "flatten"}, {"type": "dense", "units": 10}]
    list(train(spec, TrainConfig(epochs=1, batch_size=50), splits, run_dir=tmp_path / "run"))
    text = script_export.model_script(TrainedModel.from_run(tmp_path / "run"), "tiny")
    assert "'val_fraction': 0.02" in text and "2% of the training images are held out" in text
    plain = script_export.training_script(spec, TrainConfig(), (28, 28, 1), tuple("abcdefghij"))
    assert "'val_fraction': 0.1" in plain and "10% of the training images are held out" in plain


def test_the_script_trains_its_clean_last_epochs_without_augmentation(tmp_path: Path) -> None:
    """With clean last epochs, the script's step ignores the augmentation key when told the epoch is clean (the
    step of two identical models then moves them identically) and uses it otherwise."""
    import jax
    import numpy as np

    config = TrainConfig.from_dict({**presets.BEST_RECIPE["config"], "clean_epochs": 2})
    text = script_export.training_script(presets.preset("lenet", 10), config, (28, 28, 1), tuple("abcdefghij"), "lenet")
    assert "'clean_epochs': 2" in text and "Not included" not in text
    script = load_script(text, tmp_path, "exported_clean_script")
    images = jax.numpy.asarray(np.random.default_rng(0).integers(0, 256, (32, 28, 28, 1), dtype=np.uint8))
    labels = jax.numpy.arange(32) % 10

    def weights_after_a_step(key: int, augmenting: bool) -> list:
        model = script.Net(script.nnx.Rngs(params=0, dropout=1))
        opt = script.nnx.Optimizer(model, script.optimizer(10), wrt=script.nnx.Param)
        script.train_step(model, opt, images, labels, jax.random.key(key), jax.numpy.bool_(augmenting))
        return [np.asarray(w) for w in jax.tree.leaves(script.nnx.state(model, script.nnx.Param))]

    clean = [weights_after_a_step(key, False) for key in (1, 2)]
    augmented = [weights_after_a_step(key, True) for key in (1, 2)]
    assert all(np.array_equal(a, b) for a, b in zip(*clean))
    assert not all(np.array_equal(a, b) for a, b in zip(*augmented))
