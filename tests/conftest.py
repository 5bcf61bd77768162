"""Shared fixtures: an isolated workspace per test, synthetic splits, and the real-data switch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fmnist_jax.data import catalogue, splitting

REPO = Path(__file__).resolve().parents[1]


def run_script(script: str, env: dict, timeout: float = 600) -> dict:
    """Run a Python script in a fresh process (its own JAX devices) and return the JSON object on its last line."""
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(autouse=True)
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own FMNIST_HOME (the real data folder setting is left as it is)."""
    home = tmp_path / "home"
    monkeypatch.setenv("FMNIST_HOME", str(home))
    return home


@pytest.fixture
def tiny_splits() -> splitting.Splits:
    """192 train / 64 validation / 64 test synthetic 28x28x1 images over 10 classes."""
    dataset = catalogue.synthetic_dataset(num_train=256, num_test=64, seed=0)
    return splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.25, seed=0))


def real_data_dir() -> Path | None:
    """The folder FMNIST_DATA_DIR names, if it holds Zalando's files."""
    value = os.environ.get("FMNIST_DATA_DIR")
    if not value:
        return None
    folder = Path(value)
    return folder if all((folder / f).is_file() for f in catalogue.FASHION_FILES) else None


requires_real_data = pytest.mark.skipif(
    real_data_dir() is None,
    reason="FMNIST_DATA_DIR is unset or lacks the four Fashion-MNIST *-ubyte.gz files (see README)")


def pytest_configure(config: pytest.Config) -> None:
    """Before any test or xdist worker starts: prepare Fashion-MNIST once in the FMNIST_HOME the tests inherit, so
    the subprocesses that use it (bench scripts, the studio the browser tests drive) find it ready, instead of two
    workers preparing it at once or a browser step spending its time limit on TFDS."""
    if hasattr(config, "workerinput") or real_data_dir() is None or "not slow" in (config.option.markexpr or ""):
        return
    catalogue.load_dataset("fashion_mnist", data_dir=real_data_dir())


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace for the real-data tests of a session, so TFDS prepares the data only once."""
    return tmp_path_factory.mktemp("shared-home")


@pytest.fixture
def real_home(shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point FMNIST_HOME at the session's shared workspace (real data prepared once)."""
    monkeypatch.setenv("FMNIST_HOME", str(shared_home))
    return shared_home


# Tests that start a server, a browser or many sessions and hold them to time limits: pytest-xdist runs them one
# after another in one worker ("servers"), so two of them never compete for the cores; every other module stays
# whole on one worker (its module-scoped fixtures, such as a trained model, are built once).
SERVER_MODULES = {"test_browser.py", "test_docs_offline.py", "test_space_browser.py", "test_restart.py", "test_load_ui.py", "test_hosted_api.py", "test_load.py", "test_serve.py"}
SERVER_BENCHES = ("test_load_test_", "test_startup_")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests on the real files are slow too: `pytest -m "not slow"` leaves them out of the quick inner loop.
    Every test gets its xdist group (see SERVER_MODULES)."""
    for item in items:
        if any(mark.name == "skipif" and "FMNIST_DATA_DIR" in str(mark.kwargs.get("reason", ""))
               for mark in item.iter_markers()):
            item.add_marker(pytest.mark.slow)
        module = item.path.name
        server = module in SERVER_MODULES or (module == "test_bench_quick.py" and item.name.startswith(SERVER_BENCHES))
        item.add_marker(pytest.mark.xdist_group("servers" if server else module))


def load_script(text: str, folder: Path, name: str):
    """Write an exported training script to `folder` and import it as module `name` (its functions and classes)."""
    import importlib.util

    path = folder / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
