"""The bad-input corpus (tests/bad_inputs/generate.py) through every entry point that applies.

Each (case, entry point) pair must give a specific one-line message (a ValueError-family error in the
library, `error: ...` and exit status 2 in the CLI, a 4xx JSON error in REST), never a traceback, and
leave no partial project, run or dataset behind: the good project and upload made before stay as they were.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from bad_inputs import generate  # noqa: E402

from fmnist_jax import store
from fmnist_jax.cli import main as cli
from fmnist_jax.data import catalogue
from fmnist_jax.data.uploads import importer
from fmnist_jax.data.uploads import limits as upload_limits
from fmnist_jax.deploy import bundle, predict, serve
from fmnist_jax.model import layer_specs
from fmnist_jax.photos import decode, pipeline
from fmnist_jax.training.config import TrainConfig  # noqa: E402

ENTRY_POINTS = {
    "image": ("photo", "upload-image", "cli-predict", "rest"),
    "dataset": ("upload", "upload-public", "cli-train"),
    "project": ("project", "project-rename"),
    "spec": ("spec", "cli-train-model"),
    "config": ("config", "cli-train-config"),
    "bundle": ("bundle", "predict-load"),
}
TINY_SPEC = [{"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "activation": "relu"},
             {"type": "maxpool", "pool": 2, "stride": 2}, {"type": "flatten"}, {"type": "dense", "units": 10}]
SYNTHETIC_TRAIN = 256
IMAGE_SUFFIX = {"svg-drawing": ".svg", "animated-gif": ".gif", "truncated-jpeg": ".jpg", "cmyk-jpeg": ".jpg",
                "exif-rotated-jpeg": ".jpg"}


def _pairs() -> list[Any]:
    pairs = []
    for case in generate.all_cases():
        for entry in ENTRY_POINTS[case.kind]:
            expected = case.expect.get(entry, case.expect.get("*"))
            if expected is not None:
                pairs.append(pytest.param(case, entry, expected, id=f"{case.id}@{entry}"))
    return pairs


PAIRS = _pairs()


def test_corpus_is_large_and_covers_every_entry_point() -> None:
    cases = generate.all_cases()
    assert len(cases) >= 40 and len({c.id for c in cases}) == len(cases)
    covered = {entry for _, entry, _ in (p.values for p in PAIRS)}
    assert covered == {e for entries in ENTRY_POINTS.values() for e in entries}


# ----------------------------------------------------------------------------- shared state

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder (model.json + weights) of an untrained tiny network: enough to run predictions."""
    from fmnist_jax.training.program import init_state
    from fmnist_jax.training.trained import TrainedModel

    _, state = init_state(TINY_SPEC, (28, 28, 1), 10, TrainConfig())
    model = TrainedModel(TINY_SPEC, (28, 28, 1), catalogue.CLASS_NAMES, {"params": state["params"], "batch_stats": state["batch_stats"]})
    return bundle.save_model_dir(model, tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    """Every case built once per session (the large ones too)."""
    good_bundle = {p.name: p.read_bytes() for p in tiny_model_dir.iterdir() if p.is_file()}
    return generate.write_corpus(tmp_path_factory.mktemp("corpus"), good_bundle)


@pytest.fixture
def good_state(workspace: Path, tmp_path: Path) -> dict[str, Any]:
    """A project and an uploaded dataset made before the bad input arrives; they must survive it."""
    ws = store.Workspace()
    good = ws.create_project("good project")
    other = ws.create_project("other project")
    upload = importer.import_upload(generate._zip(tmp_path / "good.zip", generate.good_entries()))
    catalogue.save_cached(catalogue.synthetic_dataset(num_train=SYNTHETIC_TRAIN + 32, num_test=64))
    return {"ws": ws, "project": good, "other": other, "upload": upload, "snapshot": _snapshot(workspace)}


def _snapshot(workspace: Path) -> dict[str, Any]:
    """Everything a bad input must leave untouched: projects, uploads and the workspace's top-level folders."""
    projects = {p.name: (p / "project.json").read_bytes() for p in (workspace / "projects").iterdir()}
    datasets = sorted(p.name for p in (workspace / "datasets").iterdir() if p.name != ".incoming")
    runs = sorted(p.name for p in (workspace / "runs").iterdir()) if (workspace / "runs").exists() else []
    incoming = workspace / "datasets" / ".incoming"
    return {"projects": projects, "datasets": datasets, "runs": runs,
            "incoming": sorted(incoming.iterdir()) if incoming.exists() else []}


# ----------------------------------------------------------------------------- entry points

def _image_file(case_id: str, path: Path, folder: Path) -> Path:
    named = folder / f"{case_id}{IMAGE_SUFFIX.get(case_id, '.png')}"
    named.write_bytes(path.read_bytes())
    return named


def run_photo(case: Any, value: Path, tmp_path: Path, **_: Any) -> str | None:
    try:
        result = pipeline.preprocess_photo(value.read_bytes(), None, (28, 28, 1))
    except decode.ImageError as error:
        return str(error)
    assert result.model_input.shape == (28, 28, 1) and result.model_input.dtype == np.uint8
    return None


def run_upload_image(case: Any, value: Path, tmp_path: Path, expected: str, **_: Any) -> str | None:
    image = _image_file(case.id, value, tmp_path)
    archive = generate._zip(tmp_path / "with-bad-image.zip",
                            generate.good_entries() + [(f"train/{generate.CLASS_A}/{image.name}", image.read_bytes())])
    try:
        manifest = importer.import_upload(archive)
    except upload_limits.UploadError as error:
        return str(error)
    skipped = {entry["file"].rsplit("/", 1)[-1]: entry["reason"] for entry in manifest["skipped"]}
    if expected.startswith("skip:"):
        assert image.name in skipped, f"{image.name} was not skipped: {manifest['skipped']}"
        assert re.search(expected[5:], skipped[image.name]), skipped[image.name]
        assert manifest["counts"]["train"] == 8
        importer.delete_upload(manifest["name"])
        return "skip:" + skipped[image.name]
    assert not skipped and manifest["counts"]["train"] == 9
    importer.delete_upload(manifest["name"])
    return None


def run_cli_predict(case: Any, value: Path, tmp_path: Path, tiny_model_dir: Path, capsys: Any, **_: Any) -> str | None:
    image = _image_file(case.id, value, tmp_path)
    status = cli.main(["predict", str(tiny_model_dir), str(image), "--json"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    (record,) = json.loads(captured.out.strip().splitlines()[-1])
    if status == 0:
        assert "label" in record
        return None
    assert status == 2 and "error" in record
    return record["error"]


def run_rest(case: Any, value: Path, tmp_path: Path, rest_client: Any, **_: Any) -> str | None:
    image = _image_file(case.id, value, tmp_path)
    response = rest_client.post("/predict", files=[("files", (image.name, image.read_bytes(), "application/octet-stream"))])
    body = response.json()
    if response.status_code == 200:
        assert body[0]["label"] in catalogue.CLASS_NAMES
        return None
    assert 400 <= response.status_code < 500, (response.status_code, body)
    assert isinstance(body.get("detail"), str)
    return body["detail"]


def run_upload(case: Any, value: Path, limits: upload_limits.UploadLimits | None = None, **_: Any) -> str | None:
    try:
        importer.import_upload(value, limits=limits)
    except (upload_limits.UploadError, store.StoreError) as error:
        return str(error)
    return None


def run_upload_public(case: Any, value: Path, **kwargs: Any) -> str | None:
    return run_upload(case, value, limits=upload_limits.PUBLIC_LIMITS)


def _cli_train(args: list[str], tmp_path: Path, capsys: Any, expected: str) -> str | None:
    out = tmp_path / "run-out"
    status = cli.main(["train", *args, "--json", "--out", str(out)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    if status == 0:
        return None
    assert status == 2
    lines = [line for line in captured.err.strip().splitlines() if line.strip()]
    if expected.startswith("the loss became"):  # training ran and stopped itself: a failed run is kept, with its reason
        assert store.read_json(out / "run.json")["status"] == "failed"
    else:
        assert len(lines) == 1, lines  # one line, nothing else
        assert not out.exists(), "a refused training left a run folder behind"
    assert lines[-1].startswith("error: ")
    return lines[-1][len("error: "):]


def run_cli_train(case: Any, value: Path, tmp_path: Path, capsys: Any, expected: str, **_: Any) -> str | None:
    return _cli_train(["--dataset", str(value), "--epochs", "1"], tmp_path, capsys, expected)


def run_project(case: Any, value: Any, state: dict, **_: Any) -> str | None:
    try:
        project = state["ws"].create_project(value)
    except (ValueError, store.StoreError) as error:
        return str(error)
    folder = state["ws"].project_dir(project["id"])
    assert folder.parent == state["ws"].projects_dir.resolve() and "/" not in project["id"] and ".." not in project["id"]
    state["ws"].delete_project(project["id"])  # accepted names are fine; leave the workspace as it was
    return None


def run_project_rename(case: Any, value: Any, state: dict, **_: Any) -> str | None:
    try:
        state["ws"].update_project(state["other"]["id"], name=value)
    except (ValueError, store.StoreError) as error:
        return str(error)
    state["ws"].update_project(state["other"]["id"], name="other project")
    state["snapshot"]["projects"][state["other"]["id"]] = None  # rewritten (same name again): compare by name below
    return None


def run_spec(case: Any, value: Any, **_: Any) -> str | None:
    try:
        layer_specs.describe(value, (28, 28, 1), 10)
    except ValueError as error:
        return str(error)
    return None


def run_cli_train_model(case: Any, value: Any, tmp_path: Path, capsys: Any, expected: str, **_: Any) -> str | None:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(value))
    return _cli_train(["--dataset", "synthetic", "--model", str(spec), "--epochs", "1", "--batch-size", "32"],
                      tmp_path, capsys, expected)


def _config_values(value: Any) -> Any:
    return {"batch_size": 32, "epochs": 1, **value} if isinstance(value, dict) else value


def run_config(case: Any, value: Any, **_: Any) -> str | None:
    try:
        TrainConfig.from_dict(_config_values(value)).validate(train_size=SYNTHETIC_TRAIN)
    except ValueError as error:
        return str(error)
    return None


def run_cli_train_config(case: Any, value: Any, tmp_path: Path, capsys: Any, expected: str, **_: Any) -> str | None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(_config_values(value)))
    model = tmp_path / "spec.json"
    model.write_text(json.dumps(case.spec or TINY_SPEC))
    return _cli_train(["--dataset", "synthetic", "--config", str(config), "--model", str(model)], tmp_path, capsys, expected)


def run_bundle(case: Any, value: Path, **_: Any) -> str | None:
    try:
        bundle.load_bundle(value)
    except bundle.BundleError as error:
        return str(error)
    return None


def run_predict_load(case: Any, value: Path, **_: Any) -> str | None:
    try:
        predict.load_model(str(value))
    except ValueError as error:
        return str(error)
    return None


RUNNERS = {"photo": run_photo, "upload-image": run_upload_image, "cli-predict": run_cli_predict, "rest": run_rest,
           "upload": run_upload, "upload-public": run_upload_public, "cli-train": run_cli_train,
           "project": run_project, "project-rename": run_project_rename, "spec": run_spec,
           "cli-train-model": run_cli_train_model, "config": run_config, "cli-train-config": run_cli_train_config,
           "bundle": run_bundle, "predict-load": run_predict_load}


@pytest.fixture(scope="session")
def rest_app(tiny_model_dir: Path) -> Any:
    return serve.create_app(predict.load_model(str(tiny_model_dir)))


@pytest.fixture
def rest_client(rest_app: Any) -> Any:
    testclient = pytest.importorskip("starlette.testclient")
    with testclient.TestClient(rest_app) as client:
        yield client


# ----------------------------------------------------------------------------- the corpus test

@pytest.mark.parametrize("case, entry, expected", PAIRS)
def test_bad_input(case: Any, entry: str, expected: str, corpus: dict, good_state: dict, workspace: Path,
                   tmp_path: Path, capsys: pytest.CaptureFixture, tiny_model_dir: Path, request: pytest.FixtureRequest) -> None:
    assert case.id in corpus, f"the corpus lacks {case.id}"
    extra = {"rest_client": request.getfixturevalue("rest_client")} if entry == "rest" else {}
    message = RUNNERS[entry](case, corpus[case.id], tmp_path=tmp_path, capsys=capsys, expected=expected,
                             state=good_state, tiny_model_dir=tiny_model_dir, **extra)
    if expected == "ok":
        assert message is None, f"{case.id} should be accepted by {entry}, got: {message}"
    elif expected.startswith("skip:"):
        assert message is not None and message.startswith("skip:"), message
    else:
        assert message is not None, f"{case.id} was accepted by {entry}; expected an error matching {expected!r}"
        assert re.search(expected, message), f"{entry}: {message!r} does not match {expected!r}"
        assert "\n" not in message and "Traceback" not in message and len(message) < 600
    after = _snapshot(workspace)
    before = good_state["snapshot"]
    assert after["datasets"] == before["datasets"], "a bad input left a dataset (or a staging folder) behind"
    assert after["runs"] == before["runs"] and after["incoming"] == []
    assert set(after["projects"]) == set(before["projects"]), "a bad input added or removed a project"
    for project_id, payload in before["projects"].items():
        if payload is not None:
            assert after["projects"][project_id] == payload, f"project {project_id} was modified"
    assert good_state["ws"].get_project(good_state["other"]["id"])["name"] == "other project"
    assert catalogue.load_dataset(good_state["upload"]["name"]).num_classes == 2  # the good upload still loads
