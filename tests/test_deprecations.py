"""No deprecation notice from the project's own calls: every page of the app, and a TFLite export checked in its
interpreter. Streamlit reports deprecated calls through its logger (not the warnings module), TensorFlow through
both, so the tests listen to both and fail on any notice that names a deprecation or a removal date."""
from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from fmnist_jax import store
from fmnist_jax.model import layer_specs
from fmnist_jax.studio import projects as proj
from fmnist_jax.training import config

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = [None, "pages/1_Data.py", "pages/2_Model.py", "pages/3_Hyperparameters.py", "pages/4_Training.py",
         "pages/5_Evaluation.py", "pages/6_Deploy.py"]
NOTICE = re.compile(r"deprecat|will be removed|scheduled for deletion", re.IGNORECASE)


class _Notices(logging.Handler):
    """Collects log records that announce a deprecation, from any logger (Streamlit's do not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if NOTICE.search(message):
            self.found.append(f"{record.name}: {message[:300]}")


@pytest.fixture
def notices():
    """Every deprecation notice raised while the test runs, from the logging and the warnings modules."""
    handler = _Notices()
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
                                        if name.split(".")[0] in ("streamlit", "tensorflow", "absl", "jax")]
    for logger in loggers:
        logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield handler.found, caught
    for logger in loggers:
        logger.removeHandler(handler)


def _ours(caught: list[warnings.WarningMessage]) -> list[str]:
    """Warnings whose call site is the project's code (the library, the UI module or a page)."""
    repo = str(Path(APP).parent)
    return [f"{w.filename}:{w.lineno}: {w.message}" for w in caught
            if NOTICE.search(str(w.message)) and w.filename.startswith(repo) and "/.venv" not in w.filename]


@pytest.mark.parametrize("page", PAGES)
def test_no_page_of_the_app_triggers_a_deprecation_notice(page: str | None, workspace: Path, notices) -> None:
    cfg = config.TrainConfig(epochs=1, batch_size=32, chunk_steps=5)
    project = store.Workspace().create_project("Quiet", dataset=proj.SYNTHETIC, split=None,
                                               model=layer_specs.normalize_spec([{"type": "flatten"},
                                                                                 {"type": "dense", "units": 10}]),
                                               model_preset="fast", config=cfg.to_dict())
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["project_id"] = project["id"]
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception
    logged, caught = notices
    assert logged == [] and _ours(caught) == []


@pytest.mark.slow
def test_a_checked_tflite_export_triggers_no_deprecation_notice(notices) -> None:
    from fmnist_jax.deploy import predict, tflite_export

    model = predict.load_model("demo")
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    _, difference = tflite_export.tflite_bytes(model, images)
    assert difference < 1e-4
    logged, caught = notices
    assert logged == [] and _ours(caught) == [] and [str(w.message) for w in caught if "Interpreter" in str(w.message)] == []
