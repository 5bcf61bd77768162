"""One base for what a user can cause or fix: UserError. The store, data, upload, image, bundle, export and
training errors build on it, the background registry shows it as the message, anything else as a bug, and the
CLI exits with status 2 on it."""
from __future__ import annotations

from pathlib import Path

import pytest

from fmnist_jax import store
from fmnist_jax.cli.main import main
from fmnist_jax.data.catalogue import DataUnavailable
from fmnist_jax.data.uploads.limits import UploadError
from fmnist_jax.deploy.bundle import BundleError, ExportError
from fmnist_jax.errors import UserError
from fmnist_jax.photos.decode import ImageError
from fmnist_jax.studio.background import TaskRegistry
from fmnist_jax.training.loop import TrainingError


@pytest.mark.parametrize("error", [store.StoreError, store.Busy, DataUnavailable, UploadError, BundleError,
                                   ExportError, ImageError, TrainingError])
def test_every_user_facing_error_is_a_user_error_and_a_value_error(error: type) -> None:
    assert issubclass(error, UserError) and issubclass(error, ValueError)


def _failed_with(work) -> str:
    registry = TaskRegistry()
    task = registry.submit("owner", "export", "k", work, label="an export")
    return registry.wait(task["id"], timeout=30)["error"]


def test_the_background_registry_shows_a_user_error_as_its_message_and_a_bug_by_its_type() -> None:
    def unsupported(progress) -> None:
        raise ExportError("TensorFlow Lite has no 'scale' layer; remove it to export")

    def bug(progress) -> None:
        raise RuntimeError("index out of range in a helper")

    assert _failed_with(unsupported) == "TensorFlow Lite has no 'scale' layer; remove it to export"
    assert _failed_with(bug) == "unexpected RuntimeError; see the server log"


def test_the_cli_exits_with_status_2_and_one_line_on_a_store_error(capsys, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{not json")
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
