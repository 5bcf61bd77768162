"""The studio's pages through Streamlit's AppTest: every page renders with and without a project, and the
Data, Model, Hyperparameters and Training pages do what their controls say (synthetic data, tiny models)."""
from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from fmnist_jax import store
from fmnist_jax.data.uploads import importer
from fmnist_jax.deploy import predict
from fmnist_jax.model import layer_specs, presets
from fmnist_jax.studio import projects as proj
from fmnist_jax.studio import tasks
from fmnist_jax.training import config
import studio_ui as ui

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = ["pages/1_Data.py", "pages/2_Model.py", "pages/3_Hyperparameters.py", "pages/4_Training.py",
         "pages/5_Evaluation.py", "pages/6_Deploy.py"]
TIMEOUT = 120  # JAX compiles on first use; the default 3 s is far too short
TINY_SPEC = [{"type": "flatten"}, {"type": "dense", "units": 10}]


@pytest.fixture
def seeded(workspace: Path) -> dict:
    """A project on the synthetic dataset with a one-layer model and a one-epoch config."""
    cfg = config.TrainConfig(epochs=1, batch_size=32, chunk_steps=5, learning_rate=0.01)
    return store.Workspace().create_project("Seeded", "for tests", dataset=proj.SYNTHETIC, split=None,
                                            model=layer_specs.normalize_spec(TINY_SPEC), model_preset="fast",
                                            config=cfg.to_dict())


def open_app(page: str | None = None, project_id: str | None = None) -> AppTest:
    """Run the app (optionally with a project in session state) and switch to a page."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if project_id:
        at.session_state["project_id"] = project_id
    at.run()
    if page:
        at.switch_page(page).run()
    return at


def texts(at: AppTest, kind: str) -> str:
    """All messages of one alert kind (error, info, warning, success) joined."""
    return " | ".join(str(e.value) for e in getattr(at, kind))


def metric_values(at: AppTest) -> dict[str, str]:
    """Metric label -> shown value."""
    return {m.label: m.value for m in at.metric}


@pytest.mark.parametrize("page", [None] + PAGES)
def test_every_page_renders_without_a_project(page: str | None) -> None:
    at = open_app(page)
    assert not at.exception
    if page is None:
        assert any("How it works" in s.value for s in at.subheader)
        assert any(b.label == "Create the sample project" for b in at.button)
    else:
        assert "No project is open" in texts(at, "info")


@pytest.mark.parametrize("page", [None] + PAGES)
def test_every_page_renders_with_a_seeded_project(page: str | None, seeded: dict) -> None:
    at = open_app(page, seeded["id"])
    assert not at.exception
    assert "No project is open" not in texts(at, "info")
    assert not at.error, texts(at, "error")


def test_sample_project_is_created_in_one_click() -> None:
    at = open_app()
    next(b for b in at.button if b.label == "Create the sample project").click().run()
    assert not at.exception
    projects = store.Workspace().list_projects()
    assert [p["name"] for p in projects] == [proj.SAMPLE_PROJECT_NAME]
    assert at.session_state["project_id"] == projects[0]["id"]
    assert proj.train_config(projects[0]).epochs == proj.SAMPLE_CONFIG["epochs"]


def test_projects_can_be_renamed_duplicated_and_deleted_with_confirmation(seeded: dict) -> None:
    pid = seeded["id"]
    at = open_app(None, pid)
    at.text_input(key=f"rename-{pid}").set_value("Renamed")
    at.button(key=f"do-rename-{pid}").click().run()
    assert store.Workspace().get_project(pid)["name"] == "Renamed"
    at.text_input(key=f"dup-{pid}").set_value("Copy of it")
    at.button(key=f"do-dup-{pid}").click().run()
    names = sorted(p["name"] for p in store.Workspace().list_projects())
    assert names == ["Copy of it", "Renamed"]
    at.button(key=f"delete-{pid}").click().run()
    assert "cannot be undone" in texts(at, "warning")
    assert len(store.Workspace().list_projects()) == 2  # nothing deleted before confirming
    at.button(key=f"yes-delete-{pid}").click().run()
    assert not at.exception
    assert [p["name"] for p in store.Workspace().list_projects()] == ["Copy of it"]


def test_the_sidebar_says_a_starting_job_is_preparing_rather_than_epoch_0(seeded: dict) -> None:
    """Before the first record the sidebar said "epoch 0/?" while the Training page said what was going on."""
    pid, ws, release = seeded["id"], store.Workspace(), threading.Event()

    def prepare():  # a job still preparing its data: no start record yet
        release.wait(60)
        raise ValueError("released by the test")

    run_dir = ws.new_run_dir(pid, "sidebar-check")
    job = proj.get_registry().submit(pid, run_dir, prepare, name=run_dir.name, owner=proj.owner_of(ws))
    try:
        deadline = time.monotonic() + 30
        while proj.get_registry().get(job["id"])["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        at = open_app(None, pid)
        assert not at.exception
        bars = [bar.proto.text for bar in at.sidebar.get("progress")]
        assert bars == ["preparing the data and the compiled program…"], bars
    finally:
        release.set()
        while proj.get_registry().get(job["id"])["status"] in ("queued", "running"):
            time.sleep(0.05)


def test_data_split_sliders_change_the_counts(seeded: dict) -> None:
    pid = seeded["id"]
    at = open_app("pages/1_Data.py", pid)
    assert metric_values(at) == {"Train": "900", "Validation": "100", "Test": "200"}
    at.slider(key=f"split-valfrac-{pid}").set_value(20).run()
    assert metric_values(at) == {"Train": "800", "Validation": "200", "Test": "200"}
    at.radio(key=f"split-mode-{pid}").set_value("pooled").run()
    assert metric_values(at) == {"Train": "960", "Validation": "120", "Test": "120"}  # 80/10/10 of 1,200
    at.slider(key=f"split-train-{pid}").set_value(60).run()
    at.slider(key=f"split-val-{pid}").set_value(20).run()
    assert metric_values(at) == {"Train": "720", "Validation": "240", "Test": "240"}
    assert not at.exception
    saved = proj.split_spec(store.Workspace().get_project(pid))
    assert saved.mode == "pooled" and saved.fractions == pytest.approx((0.6, 0.2, 0.2))


def test_pooled_shares_always_add_up(seeded: dict) -> None:
    pid = seeded["id"]
    at = open_app("pages/1_Data.py", pid)
    at.radio(key=f"split-mode-{pid}").set_value("pooled").run()
    at.slider(key=f"split-val-{pid}").set_value(10).run()
    at.slider(key=f"split-train-{pid}").set_value(95).run()  # 95 + 10 would leave -5% for test
    assert not at.exception and not at.error
    assert at.slider(key=f"split-val-{pid}").value == 4 and at.slider(key=f"split-val-{pid}").max == 4
    assert "Test: **1%**" in texts(at, "caption")
    assert metric_values(at)["Test"] == "12"  # the rest of the page is still there
    assert "you set 10%" in texts(at, "caption")  # the cut is said, not silent
    at.slider(key=f"split-train-{pid}").set_value(80).run()  # and lowering Train % gives the 10% back
    assert at.slider(key=f"split-val-{pid}").value == 10 and "you set" not in texts(at, "caption")
    assert proj.split_spec(store.Workspace().get_project(pid)).fractions == pytest.approx((0.8, 0.1, 0.1))


def test_data_augmentation_preview_uses_the_saved_settings(seeded: dict) -> None:
    pid = seeded["id"]
    at = open_app("pages/1_Data.py", pid)
    at.slider(key=f"aug-rotation-{pid}").set_value(20.0).run()
    assert not at.exception
    assert proj.train_config(store.Workspace().get_project(pid)).augment.rotation == 20.0
    assert "All augmentation is off" not in texts(at, "info")
    at.slider(key=f"aug-crop-{pid}").set_value(2).run()  # whole pixels, saved as an int
    assert not at.exception
    saved = proj.train_config(store.Workspace().get_project(pid)).augment
    assert saved.crop == 2 and isinstance(saved.crop, int) and saved.rotation == 20.0


def test_model_page_rejects_an_invalid_stack_and_keeps_the_last_valid_spec(seeded: dict) -> None:
    pid = seeded["id"]
    at = open_app("pages/2_Model.py", pid)
    remove_buttons = [b for b in at.button if (b.key or "").startswith("remove-")]
    assert len(remove_buttons) == 2
    remove_buttons[0].click().run()  # drop Flatten: Dense now gets an image-shaped input
    assert not at.exception
    message = texts(at, "error")
    assert "not valid" in message and "Flatten" in message and "layer 0" in message
    assert store.Workspace().get_project(pid)["model"] == layer_specs.normalize_spec(TINY_SPEC)
    assert "last valid model" in texts(at, "warning")


def _add_layer(pid: str, kind: str, position: int):
    """The Model page of the seeded two-layer project after adding a `kind` layer at `position`."""
    at = open_app("pages/2_Model.py", pid)
    at.selectbox(key=f"add-kind-{pid}").set_value(kind)
    at.number_input(key=f"add-pos-{pid}-2").set_value(position)
    next(b for b in at.button if b.label == "Add layer").click().run()
    assert not at.exception and not at.error
    return at


def test_model_page_adds_a_layer_and_saves_a_valid_stack(seeded: dict) -> None:
    pid = seeded["id"]
    _add_layer(pid, "dense", 1)
    saved = store.Workspace().get_project(pid)["model"]
    assert [layer["type"] for layer in saved] == ["flatten", "dense", "dense"]
    assert saved[1]["units"] == 128


def test_model_page_adds_a_residual_block_with_its_own_settings(seeded: dict) -> None:
    pid = seeded["id"]
    at = _add_layer(pid, "residual", 0)
    stride = next(w for w in at.number_input if w.key and w.key.endswith("-stride"))
    assert stride.value == 1 and stride.max == 2
    stride.set_value(2).run()
    assert not at.exception and not at.error
    saved = store.Workspace().get_project(pid)["model"]
    assert [layer["type"] for layer in saved] == ["residual", "flatten", "dense"]
    assert saved[0]["stride"] == 2 and saved[0]["filters"] == 64
    summary = next(d.value for d in at.dataframe if "layer" in d.value.columns)
    assert summary.iloc[0]["layer"] == "Residual" and summary.iloc[0]["output"] == "14×14×64"
    assert "two 3×3 convolutions + shortcut, stride 2" in " ".join(m.value for m in at.markdown)


def test_model_page_layer_buttons_have_names_and_move_and_remove_layers(seeded: dict) -> None:
    pid = seeded["id"]
    at = open_app("pages/2_Model.py", pid)

    def layer_titles() -> list[str]:
        return [m.value.split("**")[1] for m in at.markdown if m.value.startswith("**") and " · " in m.value.split("**")[1]]

    def button(prefix: str, index: int):
        return [b for b in at.button if b.key and b.key.startswith(prefix)][index]

    per_layer = [b for b in at.button if b.key and b.key.startswith(("up-", "down-", "remove-"))]
    assert sorted({b.label for b in per_layer}) == ["Down", "Remove", "Up"]  # what a screen reader reads
    assert layer_titles() == ["0 · Flatten", "1 · Dense"]
    button("down-", 0).click().run()
    assert layer_titles() == ["0 · Dense", "1 · Flatten"]
    button("remove-", 0).click().run()
    assert not at.exception and layer_titles() == ["0 · Flatten"]


def test_hyperparameters_page_shows_the_start_up_apart_until_a_run_measures_it(seeded: dict) -> None:
    at = open_app("pages/3_Hyperparameters.py", seeded["id"])
    before = metric_values(at)
    assert "Start-up before the first epoch" in " ".join(m.value for m in at.markdown)
    assert "measured by the first run" in " ".join(m.value for m in at.markdown)
    run_dir = store.Workspace().new_run_dir(seeded["id"], "measured")
    store.atomic_write_json(run_dir / "run.json", {"name": "measured", "setup_seconds": 4.0, "compile_seconds": 21.5})
    at.run()
    after = metric_values(at)
    assert "**26 s** as measured in run measured" in " ".join(m.value for m in at.markdown)
    assert after["Per epoch"] == before["Per epoch"] and after["Whole run"] != before["Whole run"]  # 26 s added


def _form_widget(widgets, label: str):
    return next(w for w in widgets if w.label == label)


def test_hyperparameters_form_validates_before_saving(seeded: dict) -> None:
    pid = seeded["id"]
    at = open_app("pages/3_Hyperparameters.py", pid)
    assert not at.exception
    _form_widget(at.number_input, "Training images (0 = all)").set_value(50)
    _form_widget(at.select_slider, "Batch size").set_value(128)
    next(b for b in at.button if b.label == "Save settings").click().run()
    assert "larger than the training split (50 examples)" in texts(at, "error")
    saved = store.Workspace().get_project(pid)
    assert proj.train_config(saved).batch_size == 32 and not saved.get("train_limit")

    _form_widget(at.select_slider, "Batch size").set_value(16)
    _form_widget(at.slider, "Epochs").set_value(3)
    _form_widget(at.number_input, "Clean last epochs").set_value(4)
    next(b for b in at.button if b.label == "Save settings").click().run()
    assert "without augmentation at the end must be at most 3 (the number of epochs), got 4" in texts(at, "error")
    assert proj.train_config(store.Workspace().get_project(pid)).clean_epochs == 0

    _form_widget(at.number_input, "Clean last epochs").set_value(1)
    next(b for b in at.button if b.label == "Save settings").click().run()
    assert not at.exception and not at.error
    saved = store.Workspace().get_project(pid)
    assert proj.train_config(saved).batch_size == 16 and proj.train_config(saved).epochs == 3
    assert proj.train_config(saved).clean_epochs == 1
    assert saved["train_limit"] == 50
    assert any(m.label == "Per epoch" for m in at.metric)

    # an ensemble: saved with the rest, and the estimate counts its members' work
    _form_widget(at.number_input, "Ensemble members").set_value(3)
    next(b for b in at.button if b.label == "Save settings").click().run()
    assert not at.exception and not at.error
    assert proj.train_config(store.Workspace().get_project(pid)).ensemble == 3
    assert any("MFLOPs to train on one image (3 members)" in c.value for c in at.caption)


def test_hyperparameters_page_applies_the_presets_measured_recipe(workspace: Path) -> None:
    project = store.Workspace().create_project("Recipe", "", dataset=proj.SYNTHETIC, split=None, model=None,
                                               model_preset="fast",
                                               config=config.TrainConfig(seed=7, chunk_steps=20).to_dict())
    at = open_app("pages/3_Hyperparameters.py", project["id"])
    assert not at.exception
    assert "Recommended for the fast model." in " ".join(m.value for m in at.markdown)
    at.button(key=f"hp-recipe-{project['id']}").click().run()
    assert not at.exception and not at.error
    cfg = proj.train_config(store.Workspace().get_project(project["id"]))
    assert (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.learning_rate, cfg.schedule, cfg.label_smoothing,
            cfg.augment.flip) == (10, 32, "adam", 3e-3, "one_cycle", 0.1, 0.5)
    assert (cfg.seed, cfg.chunk_steps) == (7, 20)  # the user's own choices survive
    # the form now shows the recipe (3e-3 is a stop of the log slider), and the recipe is marked as in use
    assert _form_widget(at.select_slider, "Batch size").value == 32
    assert _form_widget(at.select_slider, "Learning rate (log scale)").value == 3e-3
    assert _form_widget(at.slider, "Epochs").value == 10
    assert next(w for w in at.selectbox if w.label == "Learning-rate schedule").value == "one_cycle"
    assert next(w for w in at.selectbox if w.label == "Optimizer").value == "adam"
    assert not [b for b in at.button if b.key == f"hp-recipe-{project['id']}"]


def test_hyperparameters_page_offers_no_recipe_for_an_edited_model(seeded: dict) -> None:
    at = open_app("pages/3_Hyperparameters.py", seeded["id"])
    assert not at.exception
    assert "Recommended for" not in " ".join(m.value for m in at.markdown)
    assert not [b for b in at.button if b.key == f"hp-recipe-{seeded['id']}"]


def _hold_jobs_in_preparation(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Training jobs started from now on wait in their preparation until the returned event is set (a tiny job on
    a fast machine can otherwise end before the test has seen it run)."""
    gate, prepare_for = threading.Event(), tasks._prepare_for

    def held(*args, **kwargs):
        prepare = prepare_for(*args, **kwargs)
        return lambda: (gate.wait(60), prepare())[1]

    monkeypatch.setattr(tasks, "_prepare_for", held)
    return gate


def _job_status(pid: str) -> str:
    return proj.get_registry().for_project(pid, proj.owner_of(store.Workspace()))["status"]


def _until_running(pid: str) -> None:
    deadline = time.monotonic() + 60
    while _job_status(pid) != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _job_status(pid) == "running"


def test_training_page_runs_a_tiny_job_and_lists_it_in_history(seeded: dict,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    pid, gate = seeded["id"], _hold_jobs_in_preparation(monkeypatch)
    at = open_app("pages/4_Training.py", pid)
    assert "No training job in progress" in texts(at, "info")
    at.button(key="start-training").click().run()
    assert not at.exception
    _until_running(pid)
    at.run()  # a live redraw: Streamlit's blinking "Running… Stop" is hidden
    assert not at.exception and _job_status(pid) == "running"
    assert any("stStatusWidget" in str(h.proto) for h in at.get("html")), "run indicator not hidden"
    gate.set()
    deadline = time.monotonic() + 240
    while _job_status(pid) in ("queued", "running") and time.monotonic() < deadline:
        time.sleep(0.5)
        at.run()
        assert not at.exception
    at.run()
    snapshot = proj.get_registry().for_project(pid, proj.owner_of(store.Workspace()))
    assert snapshot["status"] == "completed", snapshot.get("error")
    assert not any("stStatusWidget" in str(h.proto) for h in at.get("html"))  # shown again once nothing runs
    assert not at.exception
    assert at.get("progress"), "the finished job still shows its progress bar"
    assert "Test accuracy" in texts(at, "success")
    history = at.dataframe[0].value
    assert list(history["run"]) == [snapshot["name"]]
    assert list(history["status"]) == ["completed"]
    columns = json.loads(at.dataframe[0].proto.columns)
    assert columns["status"]["width"] == "medium"  # wide enough for "completed" (was cut to "completec")
    # a second project start while the first is still queued is refused; a new one after it finished is fine
    run = tasks.read_run(store.Workspace(), pid, snapshot["name"])
    assert run["epochs_completed"] == 1 and run["dataset"] == proj.SYNTHETIC


def _fake_run(pid: str, name: str, epochs: int) -> None:
    run_dir = store.Workspace().new_run_dir(pid, name)
    store.atomic_write_json(run_dir / "run.json", {"name": name, "status": "completed", "config": {}})
    for epoch in range(1, epochs + 1):
        store.append_jsonl(run_dir / "history.jsonl", {"kind": "epoch", "epoch": epoch, "loss": 1.0 / epoch,
                                                       "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5})


def test_a_click_in_the_first_redraw_after_a_job_ends_is_not_dropped(seeded: dict,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The panel's "job just ended" st.rerun() ran in full runs too, and dropped a click made in that run (here:
    deleting an older run as the current job ended)."""
    pid, gate = seeded["id"], _hold_jobs_in_preparation(monkeypatch)
    _fake_run(pid, "older", 1)
    at = open_app("pages/4_Training.py", pid)
    at.button(key="start-training").click().run()
    registry, owner = proj.get_registry(), proj.owner_of(store.Workspace())
    _until_running(pid)
    at.run()  # drawn while the job runs: the panel's flag is set, the older run is offered for deletion
    at.selectbox(key=f"delete-run-{pid}").set_value("older")
    gate.set()
    job = registry.for_project(pid, owner)
    assert registry.wait(job["id"], timeout=240)["status"] == "completed"
    next(b for b in at.button if b.label == "Delete run").click().run()
    assert not at.exception
    assert "older" not in [r["id"] for r in store.Workspace().list_runs(pid)]
    assert "Test accuracy" in texts(at, "success") and at.dataframe[0].value["run"].tolist() == [job["name"]]


def test_compare_picker_adds_runs_made_since_the_page_was_drawn(seeded: dict) -> None:
    pid = seeded["id"]
    _fake_run(pid, "first", 2)
    at = open_app("pages/4_Training.py", pid)
    picker = at.multiselect(key=f"overlay-{pid}")
    assert picker.value == ["first"]
    picker.set_value([]).run()  # the user clears the chart, then trains again
    _fake_run(pid, "second", 3)
    at.run()
    assert at.multiselect(key=f"overlay-{pid}").value == ["second"]
    assert set(at.multiselect(key=f"overlay-{pid}").options) == {"first", "second"}


def test_training_refuses_a_second_start_while_a_job_is_active(seeded: dict) -> None:
    ws = store.Workspace()
    project = ws.get_project(pid := seeded["id"])
    registry = proj.get_registry()
    first = tasks.start_training(ws, project, "first", registry)
    try:
        with pytest.raises(ValueError, match="already has a training job"):
            tasks.start_training(ws, project, "second", registry)
        assert [r["id"] for r in ws.list_runs(pid)] in ([], ["first"])  # the refused run left no folder
        assert not (ws.runs_dir(pid) / "second").exists()
    finally:
        registry.stop(first["id"])
        registry.wait(first["id"], timeout=240)


@pytest.fixture
def trained(seeded: dict) -> dict:
    """The seeded project with one finished run named 'trained'."""
    registry = proj.get_registry()
    job = tasks.start_training(store.Workspace(), seeded, "trained", registry)
    final = registry.wait(job["id"], timeout=240)
    assert final["status"] == "completed", final["error"]
    return seeded


def png_bytes(image: np.ndarray) -> bytes:
    """PNG file bytes of a uint8 (H, W) image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def test_evaluation_page_shows_test_metrics_confusion_matrix_and_mistakes(trained: dict) -> None:
    pid = trained["id"]
    at = open_app("pages/5_Evaluation.py", pid)
    _until(at, lambda: "Test accuracy" in metric_values(at) or bool(at.error))  # the test pass runs in the background
    assert not at.exception and not at.error, texts(at, "error")
    values = metric_values(at)
    assert values["Test accuracy"].endswith("%") and "Validation accuracy" in values and "Train accuracy" in values
    assert len(at.get("vega_lite_chart")) == 2  # the confusion matrix and the reliability diagram
    assert values["ECE, softmax"].endswith("%")
    assert (Path(tasks.run_dir_of(store.Workspace(), pid, "trained")) / proj.EVALUATION_FILE).exists()
    at.toggle(key=f"eval-norm-{pid}").set_value(True).run()
    assert not at.exception
    metrics = tasks.evaluate_run(store.Workspace(), pid, "trained")
    if metrics["mistakes"]:
        at.multiselect(key=f"eval-true-{pid}").set_value([metrics["class_names"][0]]).run()
        assert not at.exception
        plain_tiles = [str(img.proto) for img in at.get("image")]
        at.toggle(key=f"eval-explain-{pid}").set_value(True).run()  # the mistakes with their saliency maps
        assert not at.exception and plain_tiles and [str(img.proto) for img in at.get("image")] != plain_tiles
        assert any("mistakes match" in c.value for c in at.caption)
    else:  # the synthetic classes are easy: a perfect score gets its own message instead of an empty gallery
        assert "got every test image right" in texts(at, "success")


def test_evaluation_page_of_an_ensemble_shows_what_each_member_gets_right(seeded: dict) -> None:
    registry = proj.get_registry()
    pair = store.Workspace().update_project(seeded["id"], config={**seeded["config"], "ensemble": 2})
    job = tasks.start_training(store.Workspace(), pair, "pair", registry)
    final = registry.wait(job["id"], timeout=240)
    assert final["status"] == "completed", final["error"]
    at = open_app("pages/5_Evaluation.py", pair["id"])
    _until(at, lambda: "Test accuracy" in metric_values(at) or bool(at.error))
    assert not at.exception and not at.error, texts(at, "error")
    metrics = tasks.evaluate_run(store.Workspace(), pair["id"], "pair")
    alone = ", ".join(f"{a:.2%}" for a in metrics["members"])
    assert any(c.value.startswith(f"An ensemble of 2 models: alone, its members get {alone} of these test images right; "
                                  f"the mean of their answers gets {metrics['accuracy']:.2%}") for c in at.caption)
    # the Training page counts both networks' parameters
    training = open_app("pages/4_Training.py", pair["id"])
    assert not training.exception
    assert any(", 2 members]" in m.value for m in training.markdown)


def test_deploy_page_predicts_each_upload_and_explains_a_bad_file(trained: dict) -> None:
    pid = trained["id"]
    at = open_app("pages/6_Deploy.py", pid)
    assert not at.exception
    # a trained run is offered, not switched to: the deployed model stays the demo until someone chooses
    assert at.selectbox(key=f"deploy-model-{pid}").value == "demo"
    assert any(" · photos " in o for o in at.selectbox(key=f"deploy-model-{pid}").options)  # its real-photo figure
    at.selectbox(key=f"deploy-model-{pid}").set_value("trained").run()
    assert store.Workspace().get_project(pid)["deployed_run"] == "trained"
    assert any("model=trained" in c.value and f"project={pid}" in c.value for c in at.code)
    assert any("Photos for this model:" in c.value for c in at.caption)
    garment = proj.synthetic_dataset().test_images[0][..., 0]
    at.file_uploader(key=f"deploy-upload-{pid}").set_value(
        [("garment.png", png_bytes(garment), "image/png"), ("broken.png", b"not an image at all", "image/png"),
         ("notes.txt", b"shopping list", "text/plain")]).run()
    assert not at.exception
    assert "broken.png" in texts(at, "error") and "notes.txt" in texts(at, "error")  # the reason, in words
    assert any("garment.png" in m.value and "→" in m.value for m in at.markdown)
    assert any("1 of 3 images predicted" in c.value for c in at.caption)
    assert any("where it looked (integrated gradients)" in str(img.proto) for img in at.get("image"))
    assert len(at.get("vega_lite_chart")) == 1  # the probability bars of the one good file


def test_data_page_imports_an_uploaded_dataset(seeded: dict) -> None:
    pid = seeded["id"]
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    np.savez(buffer, x_train=rng.integers(0, 255, (90, 28, 28), dtype=np.uint8), y_train=np.arange(90) % 3)
    at = open_app("pages/1_Data.py", pid)
    at.radio(key=f"data-source-{pid}").set_value("upload").run()
    at.file_uploader(key=f"upload-file-{pid}").set_value(("three.npz", buffer.getvalue(), "application/zip")).run()
    at.button(key=f"upload-go-{pid}").click().run()
    _until_imported(at, pid)
    assert not at.exception, at.exception
    dataset = store.Workspace().get_project(pid)["dataset"]
    assert dataset.startswith("upload/")
    assert sum(int(v.replace(",", "")) for v in metric_values(at).values()) == 90
    at.button(key=f"upload-delete-{pid}").click().run()  # and it can be deleted again
    assert not at.exception, at.exception
    assert importer.list_uploads() == [] and store.Workspace().get_project(pid)["dataset"] == "fashion_mnist"


def test_data_page_imports_a_dataset_from_a_local_path_and_explains_a_missing_one(seeded: dict, tmp_path: Path) -> None:
    pid = seeded["id"]
    rng = np.random.default_rng(1)
    path = tmp_path / "four.npz"
    np.savez(path, x_train=rng.integers(0, 255, (120, 28, 28), dtype=np.uint8), y_train=np.arange(120) % 4)
    at = open_app("pages/1_Data.py", pid)
    at.radio(key=f"data-source-{pid}").set_value("upload").run()
    at.text_input(key=f"upload-path-{pid}").set_value(str(tmp_path / "nowhere.zip")).run()
    at.button(key=f"upload-path-go-{pid}").click().run()
    _until(at, lambda: "Importing nowhere.zip failed" in texts(at, "error"))
    assert not at.exception
    at.button(key=next(b.key for b in at.button if b.key and b.key.startswith("task-dismiss-"))).click().run()
    assert "nowhere.zip" not in texts(at, "error")
    at.text_input(key=f"upload-path-{pid}").set_value(str(path)).run()
    at.button(key=f"upload-path-go-{pid}").click().run()
    _until_imported(at, pid)
    assert not at.exception, at.exception
    assert store.Workspace().get_project(pid)["dataset"].startswith("upload/")
    assert sum(int(v.replace(",", "")) for v in metric_values(at).values()) == 120


def _until(at: AppTest, predicate, timeout: float = 120) -> None:
    """Re-run the page until predicate() holds (background work finishes on its own thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
        at.run()


def _until_imported(at: AppTest, pid: str) -> None:
    _until(at, lambda: store.Workspace().get_project(pid)["dataset"].startswith("upload/"))
    at.run()


def test_an_import_runs_in_the_background_and_can_be_cancelled(seeded: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = seeded["id"]
    started, release = threading.Event(), threading.Event()

    def slow_import(stream, name, *args, progress=None, **kwargs):
        for step in range(600):
            progress(step / 600, f"reading {name}")
            started.set()
            time.sleep(0.05)
        raise AssertionError("not cancelled")

    monkeypatch.setattr(importer, "import_stream", slow_import)
    at = open_app("pages/1_Data.py", pid)
    at.radio(key=f"data-source-{pid}").set_value("upload").run()
    at.file_uploader(key=f"upload-file-{pid}").set_value(("big.npz", b"x" * 1000, "application/zip")).run()
    at.button(key=f"upload-go-{pid}").click().run()
    assert started.wait(30)
    again = open_app("pages/1_Data.py", pid)  # a reload: a fresh session finds the import still running
    again.radio(key=f"data-source-{pid}").set_value("upload").run()
    cancel = [b for b in again.button if b.key and b.key.startswith("task-cancel-")]
    assert cancel and any("Importing big.npz" in p.proto.text for p in again.get("progress"))
    cancel[0].click().run()
    _until(again, lambda: "Importing big.npz: cancelled" in texts(again, "info"))
    assert store.Workspace().get_project(pid)["dataset"] == proj.SYNTHETIC
    release.set()


def _wait_for(pid: str, predicate, at: AppTest | None = None, timeout: float = 240) -> dict:
    """Poll the project's job snapshot (re-running the page, if given) until predicate(snapshot) holds."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = proj.get_registry().for_project(pid, proj.owner_of(store.Workspace()))
        if predicate(snapshot) or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.25)
        if at is not None:
            at.run()
            assert not at.exception


def test_training_page_stops_and_resumes_a_run(seeded: dict) -> None:
    pid = seeded["id"]
    ws = store.Workspace()
    cfg = proj.train_config(seeded).replace(epochs=400, chunk_steps=2)
    ws.update_project(pid, config=cfg.to_dict())
    at = open_app("pages/4_Training.py", pid)
    at.text_input(key=f"run-name-{pid}").set_value("long run")
    at.button(key="start-training").click().run()
    snapshot = _wait_for(pid, lambda s: len(s["chunks"]) >= 2, at)
    assert snapshot["status"] == "running" and snapshot["name"] == "long-run"
    at.button(key="stop-training").click().run()
    snapshot = _wait_for(pid, lambda s: s["status"] not in ("queued", "running"))
    assert snapshot["status"] == "stopped"
    first_stop = len(snapshot["epochs"])
    at.run()
    assert any(b.label == "Resume" for b in at.button)
    assert at.selectbox(key=f"resume-{pid}").value == "long-run"
    next(b for b in at.button if b.label == "Resume").click().run()
    assert not at.exception
    snapshot = _wait_for(pid, lambda s: s["resume"] and (s["status"] != "running" or len(s["chunks"]) >= 2))
    assert snapshot["resume"] and snapshot["name"] == "long-run"
    proj.get_registry().stop(snapshot["id"])
    snapshot = _wait_for(pid, lambda s: s["status"] not in ("queued", "running"))
    assert snapshot["status"] in ("stopped", "completed")
    run = tasks.read_run(ws, pid, "long-run")
    assert run["epochs_completed"] >= first_stop


def test_a_crash_inside_the_job_is_shown_and_the_next_start_works(seeded: dict,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pid = seeded["id"]
    original = tasks.load_splits

    def broken(record: dict, progress=None):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(tasks, "load_splits", broken)
    at = open_app("pages/4_Training.py", pid)
    at.button(key="start-training").click().run()
    snapshot = _wait_for(pid, lambda s: s["status"] not in ("queued", "running"), at)
    at.run()
    assert snapshot["status"] == "failed"
    assert "disk on fire" in texts(at, "error")
    monkeypatch.setattr(tasks, "load_splits", original)
    at.button(key="start-training").click().run()
    snapshot = _wait_for(pid, lambda s: s["status"] not in ("queued", "running"), at)
    assert snapshot["status"] == "completed", snapshot["error"]


@pytest.fixture
def public_mode(monkeypatch: pytest.MonkeyPatch):
    """The app as a public Space: FMNIST_PUBLIC=1, a tiny per-job cap, and a registry built with public caps."""
    monkeypatch.setenv("FMNIST_PUBLIC", "1")
    monkeypatch.setenv("FMNIST_PUBLIC_MAX_EPOCH_IMAGES", "1000")
    monkeypatch.setattr(proj, "_REGISTRY", None)  # get_registry builds the public one; the local one comes back after
    yield
    registry = proj._REGISTRY
    for job in (registry.queue() if registry else []):
        registry.stop(job["id"])


def test_public_mode_gives_each_visitor_a_private_workspace(public_mode, workspace: Path) -> None:
    at = open_app()
    assert not at.exception
    assert any("This is a public demo" in m.value for m in at.markdown)
    visitor = at.query_params["w"]
    next(b for b in at.button if b.label == "Create the sample project").click().run()
    assert not at.exception
    assert (workspace / "visitors" / visitor / "projects").is_dir()
    assert store.Workspace().list_projects() == []  # nothing in the shared workspace

    stranger = open_app()
    assert stranger.query_params["w"] != visitor
    assert not any(b.label == "Open" for b in stranger.button) and "How it works" in [s.value for s in stranger.subheader]

    again = AppTest.from_file(APP, default_timeout=TIMEOUT)
    again.query_params["w"] = visitor
    again.run()
    assert any(proj.SAMPLE_PROJECT_NAME in m.value for m in again.markdown)

    again.switch_page("pages/1_Data.py").run()
    assert not again.exception
    assert not any(t.label == "Local data folder" for t in again.text_input)  # no server paths for strangers


def test_public_mode_caps_the_size_of_a_job(public_mode, workspace: Path) -> None:
    at = open_app()
    visitor = at.query_params["w"]
    ws = store.Workspace(workspace / "visitors" / visitor)
    cfg = config.TrainConfig(epochs=2, batch_size=32)
    project = ws.create_project("Capped", dataset=proj.SYNTHETIC, model=layer_specs.normalize_spec(TINY_SPEC),
                                config=cfg.to_dict())
    at.session_state["project_id"] = project["id"]
    at.switch_page("pages/4_Training.py").run()
    at.button(key="start-training").click().run()
    assert not at.exception
    message = texts(at, "error")
    assert "1,800 images" in message and "this Space allows 1,000" in message and "own machine" in message
    assert ws.list_runs(project["id"]) == []


def test_deploy_page_offers_the_bundle_and_a_checked_onnx_export(trained: dict) -> None:
    pid = trained["id"]
    at = open_app("pages/6_Deploy.py", pid)
    assert any(b.label == "Download bundle (.zip)" for b in at.get("download_button"))
    assert any(b.label == "Training script (.py)" for b in at.get("download_button"))
    at.button(key=f"onnx-make-{pid}").click().run()
    _until(at, lambda: any(b.label == "Download ONNX" for b in at.get("download_button")) or bool(at.error))
    assert not at.exception and not at.error, texts(at, "error")
    again = open_app("pages/6_Deploy.py", pid)  # a reload still offers the finished export
    assert any(b.label == "Download ONNX" for b in again.get("download_button"))
    again.button(key=f"tflite-make-{pid}").click().run()
    _until(again, lambda: any(b.label == "Download TensorFlow Lite" for b in again.get("download_button"))
           or bool(again.error))
    assert not again.error, texts(again, "error")


def test_evaluation_page_draws_the_dataset_map_in_the_background_and_caches_it(trained: dict) -> None:
    pid = trained["id"]
    at = open_app("pages/5_Evaluation.py", pid)
    _until(at, lambda: "Test accuracy" in metric_values(at) or bool(at.error))
    assert not at.error, texts(at, "error")
    at.button(key=f"map-make-{pid}-validation").click().run()
    _until(at, lambda: any("validation images (" in c.value for c in at.caption) or bool(at.error))
    assert not at.exception and not at.error, texts(at, "error")
    maps = [c for c in at.get("vega_lite_chart") if "pick" in str(c.proto.spec)]
    assert len(maps) == 1
    run_dir = tasks.run_dir_of(store.Workspace(), pid, "trained")
    assert (run_dir / "maps" / "validation-coords.npy").is_file()
    again = open_app("pages/5_Evaluation.py", pid)  # cached: drawn at once, no button
    _until(again, lambda: any("validation images (" in c.value for c in again.caption) or bool(again.error))
    assert not any(b.key == f"map-make-{pid}-validation" for b in again.button)


def test_deploy_page_prepares_an_int8_export_with_its_check_against_float(trained: dict) -> None:
    pid = trained["id"]
    at = open_app("pages/6_Deploy.py", pid)
    at.selectbox(key=f"deploy-model-{pid}").set_value("trained").run()
    at.button(key=f"onnx-int8-make-{pid}").click().run()
    _until(at, lambda: any(b.label == "Download ONNX int8" for b in at.get("download_button")) or bool(at.error))
    assert not at.exception and not at.error, texts(at, "error")
    table = at.dataframe[0].value
    assert list(table["file"]) == ["int8", "float32"] and table["accuracy"][0].endswith("%")
    assert any("the run's test split" in c.value and "the run's training split" in c.value for c in at.caption)


def test_training_page_starts_a_run_from_a_trained_model_with_frozen_layers(seeded: dict) -> None:
    pid = seeded["id"]
    at = open_app("pages/4_Training.py", pid)
    at.button(key="start-training").click().run()
    first = _wait_for(pid, lambda s: s["status"] not in ("queued", "running"), at)
    assert first["status"] == "completed", first.get("error")
    at.run()
    choices = at.selectbox(key=f"init-from-{pid}")
    assert any(first["name"] in option for option in choices.options)  # the finished run has these layers
    choices.set_value(first["name"]).run()
    at.number_input(key=f"freeze-{pid}").set_value(2).run()  # flatten + dense: the whole tiny model
    assert not at.exception
    project = store.Workspace().get_project(pid)
    assert project["init_from"] == first["name"] and project["config"]["freeze_layers"] == 2
    at.text_input(key=f"run-name-{pid}").input("transfer").run()
    at.button(key="start-training").click().run()
    second = _wait_for(pid, lambda s: s["name"] == "transfer" and s["status"] not in ("queued", "running"), at)
    assert second["status"] == "completed", second.get("error")
    ws = store.Workspace()
    run = tasks.read_run(ws, pid, "transfer")
    assert run["init_from"] == first["name"] and run["config"]["freeze_layers"] == 2
    start = predict.load_model(str(tasks.run_dir_of(ws, pid, first["name"])))
    after = predict.load_model(str(tasks.run_dir_of(ws, pid, "transfer")))
    dense = lambda model: np.asarray(model.weights["params"]["layers"][1]["kernel"])  # noqa: E731
    np.testing.assert_array_equal(dense(start), dense(after))  # frozen: exactly the starting weights


def test_the_first_page_answers_a_photo_without_a_project(workspace: Path) -> None:
    at = open_app()
    assert not at.exception
    assert store.Workspace().list_projects() == []
    garment = proj.synthetic_dataset().test_images[0][..., 0]
    at.file_uploader(key="try-upload").set_value([("mine.png", png_bytes(garment), "image/png")]).run()
    assert not at.exception
    assert any("mine.png" in m.value and "→" in m.value for m in at.markdown)
    assert len(at.get("vega_lite_chart")) == 1          # the top-3 bars
    assert store.Workspace().list_projects() == []       # still no project needed


def test_deploy_page_shows_the_demo_models_card_with_real_photo_figures(seeded: dict) -> None:
    at = open_app("pages/6_Deploy.py", seeded["id"])
    assert not at.exception
    [card] = [e for e in at.expander if "Model card" in e.label]
    assert "on real phone photos" in card.label
    folders = list(at.dataframe[0].value["folder"])
    assert {"shoes", "t-shirt", "hat"} <= set(folders)


def test_how_it_works_reads_in_order_when_columns_stack(workspace: Path) -> None:
    at = open_app()
    steps = [m.value for m in at.markdown if " · " in m.value and m.value.split("**")[1][:1].isdigit()]
    assert [int(s.split("**")[1].split(" ")[0]) for s in steps] == [1, 2, 3, 4, 5, 6]  # document order = reading order


def test_an_unexpected_error_shows_a_reference_not_a_traceback(seeded: dict, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args, **kwargs):
        return {}["a key the code forgot"]  # a bug, not a user's mistake

    monkeypatch.setattr(proj, "project_summary", broken)
    with caplog.at_level("ERROR", logger="fmnist_jax.studio"):
        at = open_app(project_id=seeded["id"])
    assert not at.exception, "Streamlit's traceback box was shown"
    shown = texts(at, "error")
    assert "Something went wrong that should not have (reference" in shown
    reference = shown.split("reference **")[1].split("**")[0]
    assert len(reference) == 8
    logged = [r for r in caplog.records if reference in r.getMessage()]
    assert logged and logged[0].exc_info and logged[0].exc_info[0] is KeyError


def test_public_space_shows_job_figures_against_its_limits_before_start(monkeypatch: pytest.MonkeyPatch) -> None:
    script = """
import studio_ui as ui
from fmnist_jax.training.config import TrainConfig
small = [{"type": "conv2d", "filters": 8, "kernel": 3}, {"type": "flatten"}, {"type": "dense", "units": 10}]
huge = [{"type": "conv2d", "filters": 4096, "kernel": 3, "padding": "same"}, {"type": "flatten"},
        {"type": "dense", "units": 65536}, {"type": "dense", "units": 10}]
ui.public_caps(small, (28, 28, 1), 10, TrainConfig(), 54000)
ui.public_caps(huge, (28, 28, 1), 10, TrainConfig(), 54000)
"""
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    assert not at.caption and not at.error  # a local studio has no such limits
    monkeypatch.setenv("FMNIST_PUBLIC", "1")
    at = AppTest.from_string(script, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert at.caption[0].value.startswith("This Space's limits · parameters ")
    assert "Too big for this Space:** this model has 210 billion parameters; this Space allows 5 million" in texts(at, "error")


def test_a_share_link_predicts_with_one_model_and_opens_nothing_else(trained: dict) -> None:
    pid = trained["id"]
    at = open_app("pages/6_Deploy.py", pid)
    at.selectbox(key=f"deploy-model-{pid}").set_value("trained").run()
    at.button(key=f"share-make-{pid}").click().run()
    assert not at.exception
    # a share link's code, not the REST example's "?share=TOKEN" placeholder
    link = next(c.value for c in at.code if re.search(r"\?share=[A-Za-z0-9_-]{22}$", c.value))
    token = link.split("?share=")[1]
    assert "w=" not in link and pid not in link and "Deploy" not in link  # no workspace key, no project

    visitor = AppTest.from_file(APP, default_timeout=TIMEOUT)
    visitor.query_params["share"] = token
    visitor.run()
    assert not visitor.exception
    assert "What garment is this?" in visitor.title[0].value and not visitor.sidebar.children  # no studio around it
    assert any("(*Seeded: trained*)" in c.value for c in visitor.caption)  # which model, in words
    garment = proj.synthetic_dataset().test_images[0][..., 0]
    visitor.file_uploader(key=f"share-{token}-upload").set_value([("garment.png", png_bytes(garment), "image/png")]).run()
    assert not visitor.exception and any("garment.png" in m.value and "→" in m.value for m in visitor.markdown)

    at.run()
    at.button(key=f"share-revoke-{token}").click().run()  # the owner revokes it: the link stops working
    assert not any(token in c.value for c in at.code)
    visitor = AppTest.from_file(APP, default_timeout=TIMEOUT)
    visitor.query_params["share"] = token
    visitor.run()
    assert "This share link does not work" in texts(visitor, "error") and not visitor.file_uploader


def test_a_shared_demo_model_page_has_one_heading_and_names_the_share(workspace: Path) -> None:
    from fmnist_jax.studio import shares

    ws = store.Workspace()
    project = ws.create_project("Shop", dataset=proj.SYNTHETIC)
    token = shares.create_share(ws, project["id"], "demo", "Our shop's garment finder")["token"]
    visitor = AppTest.from_file(APP, default_timeout=TIMEOUT)
    visitor.query_params["share"] = token
    visitor.run()
    assert not visitor.exception
    headings = [t.value for t in visitor.title] + [m.value for m in visitor.markdown]
    assert sum("What garment is this?" in h for h in headings) == 1
    captions = " ".join(c.value for c in visitor.caption)
    assert "Our shop's garment finder" in captions and "the demo model answers" not in captions


def test_the_deploy_page_points_at_this_servers_own_rest_api(seeded: dict) -> None:
    at = open_app("pages/6_Deploy.py", seeded["id"])
    assert not at.exception
    codes = [c.value for c in at.code]
    assert any(c.startswith("curl -F files=@photo.jpg '") and c.endswith("/api/predict'") for c in codes), codes
    assert any("/api/docs" in m.value for m in at.markdown)
    assert not any("serve demo --port 8000\ncurl" in c for c in codes)  # no second server to start first


def test_a_refused_project_name_stays_in_the_form_to_correct(seeded: dict) -> None:
    at = open_app()
    at.text_input(key="new-project-name").input("Seeded")
    next(b for b in at.button if b.label == "Create project").click().run()
    assert "already" in texts(at, "error")
    assert at.text_input(key="new-project-name").value == "Seeded"  # kept to correct, not cleared
    at.text_input(key="new-project-name").input("Seeded two")
    next(b for b in at.button if b.label == "Create project").click().run()
    assert not at.exception and not at.error
    assert {p["name"] for p in store.Workspace().list_projects()} == {"Seeded", "Seeded two"}
    assert at.text_input(key="new-project-name").value == ""  # cleared once the project exists


def test_uploaders_state_their_own_limits(seeded: dict) -> None:
    from fmnist_jax.photos import decode

    at = open_app("pages/2_Model.py", seeded["id"])
    uploader = at.get("file_uploader")[0]
    assert uploader.label == "Import model JSON" and uploader.proto.max_upload_size_mb == 1
    photo_mb = decode.MAX_UPLOAD_BYTES // 2**20
    at.switch_page("pages/6_Deploy.py").run()
    assert [u.proto.max_upload_size_mb for u in at.get("file_uploader") if u.label == "Upload photos"] == [photo_mb]
    at.switch_page("app.py").run()
    assert [u.proto.max_upload_size_mb for u in at.get("file_uploader") if u.label == "Photos of garments"] == [photo_mb]


def test_prediction_bars_are_drawn_highest_first() -> None:
    from fmnist_jax.studio import charts

    names = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat"]
    chart = charts.probabilities(names, [0.05, 0.12, 0.04, 0.10, 0.59], top=3).to_dict()
    assert chart["layer"][0]["encoding"]["y"]["sort"] == ["Coat", "Trouser", "Dress"]


def test_data_page_imports_a_folder_of_class_folders(seeded: dict) -> None:
    pid = seeded["id"]
    rng = np.random.default_rng(3)
    files = []
    for name, colour in (("dark", 40), ("light", 220)):
        for i in range(12):
            image = np.clip(rng.normal(colour, 10, (16, 16)), 0, 255).astype(np.uint8)
            files.append((f"swatches/{name}/{i}.png", png_bytes(image), "image/png"))
    at = open_app("pages/1_Data.py", pid)
    at.radio(key=f"data-source-{pid}").set_value("upload").run()
    at.file_uploader(key=f"upload-folder-{pid}").set_value(files).run()
    at.button(key=f"upload-folder-go-{pid}").click().run()
    _until_imported(at, pid)
    assert not at.exception, at.exception
    manifest = next(m for m in importer.list_uploads() if m["name"] == store.Workspace().get_project(pid)["dataset"])
    assert manifest["display_name"] == "swatches" and manifest["num_classes"] == 2
    assert sum(int(v.replace(",", "")) for v in metric_values(at).values()) == 24


def test_home_exports_a_project_and_imports_it_back(trained: dict) -> None:
    from fmnist_jax.studio import archive
    at = open_app(project_id=trained["id"])
    assert any(b.label == "Export the project (.zip)" for b in at.get("download_button"))
    payload = archive.export_project(store.Workspace(), trained["id"])
    at.file_uploader(key="import-project").set_value(("shared.zip", payload, "application/zip")).run()
    at.button(key="import-project-go").click().run()
    assert not at.exception and not at.error, texts(at, "error")
    assert "Imported **Seeded (imported)** with 1 run(s)." in texts(at, "success")
    at.file_uploader(key="import-project").set_value(("notes.zip", b"not a zip", "application/zip")).run()
    at.button(key="import-project-go").click().run()
    assert "Could not import notes.zip: this is not a project archive" in texts(at, "error")


def test_a_sweep_runs_through_the_queue_and_its_best_settings_are_one_click_away(seeded: dict) -> None:
    pid = seeded["id"]
    at = open_app("pages/3_Hyperparameters.py", pid)
    picker = {m.label: m for m in at.multiselect}  # the form's pickers, found by their labels
    picker["Presets"].set_value(["lenet"])
    picker["Learning rates"].set_value([1e-3, 3e-3])
    picker["Batch sizes"].set_value([32])
    picker["Epochs"].set_value([1])
    picker["Augmentation strength"].set_value([0.0])
    next(b for b in at.button if b.label == "Start the sweep").click().run()
    assert not at.exception and not at.error, texts(at, "error")
    _until(at, lambda: any("2 of 2 trials run" in c.value for c in at.caption), timeout=300)
    runs = store.Workspace().list_runs(pid)
    assert len([r for r in runs if r["id"].startswith("sweep-")]) == 2  # each trial an ordinary run of the project
    table = at.dataframe[-1].value
    assert list(table["learning rate"]) in ([1e-3, 3e-3], [3e-3, 1e-3]) and len(at.get("vega_lite_chart")) >= 1
    # the form comes back with what was tried, not its defaults (issue 46: it reset after a sweep)
    picker = {m.label: m for m in at.multiselect}
    assert picker["Presets"].value == ["lenet"] and picker["Learning rates"].value == [1e-3, 3e-3]
    assert picker["Batch sizes"].value == [32] and picker["Epochs"].value == [1]
    assert picker["Augmentation strength"].value == [0.0]
    at.button(key=f"sweep-best-{pid}").click().run()
    saved = store.Workspace().get_project(pid)
    best_rate = float(table["learning rate"].iloc[0])  # the table is sorted best first
    assert saved["model_preset"] == "lenet" and saved["config"]["learning_rate"] == best_rate
    assert saved["config"]["batch_size"] == 32 and saved["config"]["epochs"] == 1


def _held_sweep(pid: str) -> tuple:
    """A finished sweep's report (best: lenet at 3e-3) and a sweep task that runs until the event is set."""
    ws, release = store.Workspace(), threading.Event()
    trial = {"trial": 2, "preset": "lenet", "learning_rate": 3e-3, "batch_size": 32, "epochs": 1, "augment": 0.0,
             "val_accuracy": 0.5, "test_accuracy": 0.4, "seconds": 1.0, "run": "sweep-20260101-000000-02"}
    other = {**trial, "trial": 1, "learning_rate": 1e-3, "val_accuracy": 0.25, "run": "sweep-20260101-000000-01"}
    store.atomic_write_json(ws.project_dir(pid) / "sweeps" / "sweep-20260101-000000.json",
                            {"id": "sweep-20260101-000000", "trials": [other, trial], "best": trial, "skipped": 0,
                             "planned": 2, "seconds": 2.0})
    registry = proj.get_task_registry()
    task = registry.submit(proj.owner_of(ws), "sweep", pid, lambda progress: release.wait(60) and {}, label="Sweep")
    return registry, task, release


def test_the_best_settings_click_counts_when_the_sweep_ends_between_two_reruns(seeded: dict) -> None:
    """The report is saved after every trial, so the page offers the best settings while the sweep task still
    runs; a click in the rerun where the task had just ended was dropped by that rerun's st.rerun (CI saw it)."""
    pid = seeded["id"]
    registry, task, release = _held_sweep(pid)
    at = open_app("pages/3_Hyperparameters.py", pid)
    assert registry.get(task["id"])["status"] in ("queued", "running")
    assert any("2 of 2 trials run" in c.value for c in at.caption)  # offered while the task still runs
    release.set()
    assert registry.wait(task["id"], timeout=30)["status"] == "done"
    at.button(key=f"sweep-best-{pid}").click().run()
    assert not at.exception
    saved = store.Workspace().get_project(pid)
    assert saved["model_preset"] == "lenet" and saved["config"]["learning_rate"] == 3e-3
    assert registry.get(task["id"]) is None  # the ended task was forgotten, once


def test_the_best_settings_click_counts_when_the_sweep_ends_between_the_pages_two_reads(
        seeded: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """The page reads the task at its top and its progress panel reads it again: a task that ended between the
    two made the panel restart the whole page, in a full run, before the button below was read."""
    pid = seeded["id"]
    registry, task, release = _held_sweep(pid)
    try:
        at = open_app("pages/3_Hyperparameters.py", pid)
        get = registry.get
        monkeypatch.setattr(registry, "get", lambda task_id: {**get(task_id), "status": "done"})  # the panel's read
        at.button(key=f"sweep-best-{pid}").click().run()
        assert not at.exception
        assert store.Workspace().get_project(pid)["model_preset"] == "lenet"
    finally:
        release.set()


def test_evaluation_pages_through_every_mistake_with_one_percent_format(trained: dict,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from fmnist_jax.evaluate import metrics_from_probs, reliability
    pid = trained["id"]
    _, labels = tasks.gallery_images(tasks.read_run(store.Workspace(), pid, "trained"))
    probs = np.random.default_rng(0).dirichlet(np.ones(10), len(labels)).astype(np.float32)  # a bad model: many mistakes
    metrics = metrics_from_probs(probs, labels, tuple(proj.synthetic_dataset().class_names))
    metrics["calibration"] = {"temperature": 1.0, "before": reliability(probs, labels), "after": reliability(probs, labels)}
    monkeypatch.setattr(tasks, "evaluate_run", lambda *args, **kwargs: metrics)
    at = open_app("pages/5_Evaluation.py", pid)
    _until(at, lambda: "Test accuracy" in metric_values(at))
    total = len(metrics["mistakes"])
    assert total > 96
    assert any(f"showing 1-48 (page 1 of {-(-total // 48)})" in c.value for c in at.caption)
    page = next(n for n in at.number_input if n.label == "Page")
    page.set_value(3).run()
    assert any(f"showing 97-{min(144, total)}" in c.value for c in at.caption)
    columns = json.loads(at.dataframe[0].proto.columns)
    assert {columns[c]["type_config"]["format"] for c in ("precision", "recall", "f1")} == {"%.2f%%"}
    assert at.dataframe[0].value["precision"].max() > 1  # shares shown as percentages, not fractions


def _as_fashion_mnist(pid: str) -> None:
    """The project on "fashion_mnist", served from this test's cache by a small synthetic stand-in."""
    import dataclasses

    from fmnist_jax.data import catalogue

    catalogue.save_cached(dataclasses.replace(catalogue.synthetic_dataset(num_train=1000, num_test=60),
                                              name="fashion_mnist"))
    store.Workspace().update_project(pid, dataset="fashion_mnist")


def test_the_15_minute_recipe_is_offered_on_fashion_mnist_only(seeded: dict) -> None:
    at = open_app("pages/3_Hyperparameters.py", seeded["id"])  # the synthetic dataset
    assert not at.exception
    assert "Best accuracy in 15 minutes." not in " ".join(m.value for m in at.markdown)
    assert not any("bench/" in m.value for m in at.markdown)  # no developer file paths on the page


def test_a_batch_larger_than_the_training_split_is_one_click_from_fitting(seeded: dict) -> None:
    pid = seeded["id"]
    store.Workspace().update_project(pid, train_limit=72, config={**seeded["config"], "batch_size": 128})
    at = open_app("pages/3_Hyperparameters.py", pid)
    assert "cannot train yet: batch size 128 is larger than the training split (72 examples)" in texts(at, "error")
    at.button(key=f"hp-fit-batch-{pid}").click().run()
    assert not at.exception and not at.error
    assert proj.train_config(store.Workspace().get_project(pid)).batch_size == 64


def test_hyperparameters_page_applies_the_15_minute_recipe_in_one_click(seeded: dict) -> None:
    pid = seeded["id"]  # an edited model with other settings
    _as_fashion_mnist(pid)
    at = open_app("pages/3_Hyperparameters.py", pid)
    assert not at.exception
    assert "Best accuracy in 15 minutes." in " ".join(m.value for m in at.markdown)
    before = proj.train_config(store.Workspace().get_project(pid))
    at.button(key=f"hp-best-{pid}").click().run()
    assert not at.exception and not at.error
    saved = store.Workspace().get_project(pid)
    recipe = config.TrainConfig.from_dict(presets.BEST_RECIPE["config"])
    cfg = proj.train_config(saved)
    assert proj.preset_of(saved) == presets.BEST_RECIPE["preset"]
    assert cfg.replace(seed=recipe.seed, precision=recipe.precision, chunk_steps=recipe.chunk_steps) == recipe
    assert (cfg.seed, cfg.chunk_steps) == (before.seed, before.chunk_steps)  # the user's own choices survive
    split = proj.split_spec(saved, proj.load_dataset(saved))
    assert split.mode == "official" and split.val_fraction == presets.BEST_RECIPE["val_fraction"]
    assert _form_widget(at.slider, "Epochs").value == recipe.epochs
    assert _form_widget(at.select_slider, "Weight averaging (EMA decay)").value == recipe.ema_decay
    assert not [b for b in at.button if b.key == f"hp-best-{pid}"]  # marked "In use" instead


def test_the_sidebar_the_page_and_the_address_name_the_same_project_on_every_page(workspace: Path) -> None:
    # Issue 46 item 2: a ?project= link to the sample, with another project updated more recently, edited the sample
    # while the sidebar's picker said the other one. All three must agree after any page switch and any link.
    ws = store.Workspace()
    sample = ws.create_project("Fashion-MNIST sample", dataset=proj.SYNTHETIC, split=None,
                               model=layer_specs.normalize_spec(TINY_SPEC), config=config.TrainConfig(epochs=1).to_dict())
    time.sleep(0.01)
    blank = ws.create_project("Blank test", dataset=proj.SYNTHETIC, split=None,
                              model=layer_specs.normalize_spec(TINY_SPEC), config=config.TrainConfig(epochs=1).to_dict())
    assert ws.list_projects()[0]["id"] == blank["id"]  # the one a page would open with no link

    def picker(at: AppTest):
        return next(box for box in at.sidebar.selectbox if box.label == "Current project")

    def named(at: AppTest) -> str:
        picker_value = picker(at).value
        headings = [c.value for c in at.caption if "Project **" in c.value]
        return f"{picker_value}|{at.query_params.get('project')}|{headings}"

    def expect(project: dict) -> str:
        heading = f":material/folder_open: Project **{ui.plain(project['name'])}** · change it in the sidebar"
        return f"{project['id']}|{project['id']}|{[heading]}"

    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["project"] = sample["id"]
    at.run()
    assert picker(at).value == sample["id"]
    for page in PAGES + PAGES[::-1]:
        at.switch_page(page).run()
        assert not at.exception, page
        assert named(at) == expect(sample), page

    # The picker switches every page, and the address follows.
    picker(at).select(blank["id"]).run()
    assert named(at) == expect(blank)
    for page in PAGES:
        at.switch_page(page).run()
        assert named(at) == expect(blank), page

    # A link to the sample opened in the same session wins over the session's project.
    at.query_params["project"] = sample["id"]
    at.switch_page("pages/2_Model.py").run()
    assert named(at) == expect(sample)
    at.switch_page("pages/1_Data.py").run()
    assert named(at) == expect(sample)


def test_model_page_folds_layers_to_one_line_and_opens_the_one_being_edited(seeded: dict) -> None:
    # Issue 46 item 9: on a phone the page was 19 screens of settings; now only the layer being edited shows them.
    pid = seeded["id"]
    store.Workspace().update_project(pid, model=layer_specs.normalize_spec(
        [{"type": "flatten"}, {"type": "dense", "units": 32}, {"type": "dense", "units": 10}]))
    at = open_app("pages/2_Model.py", pid)
    assert not [w for w in at.number_input if (w.key or "").startswith("p-")]  # every layer folded
    edit = [b for b in at.button if (b.key or "").startswith("edit-")]
    assert [b.label for b in edit] == ["Edit", "Edit", "Edit"]
    edit[1].click().run()
    units = [w for w in at.number_input if (w.key or "").endswith("-units")]
    assert len(units) == 1 and units[0].value == 32  # the first Dense layer's settings, and only those
    units[0].set_value(12).run()
    assert "12 units" in " ".join(m.value for m in at.markdown if m.value.startswith("**1 · Dense"))
    next(b for b in at.button if (b.key or "").startswith("edit-") and b.label == "Done").click().run()
    assert not [w for w in at.number_input if (w.key or "").startswith("p-")]
    saved = store.Workspace().get_project(pid)["model"]
    assert saved[1]["units"] == 12  # folding keeps what was set
    assert "12 units" in " ".join(m.value for m in at.markdown if m.value.startswith("**1 · Dense"))


def test_start_from_a_trained_model_shows_the_run_at_once_while_its_weights_load(
        seeded: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 46 item 1: after choosing "Start from a trained model", Start left the page greyed out with "Running..."
    # for over 2 minutes, showing the previous run, while the new one trained unseen. Here the starting weights take
    # as long as the test decides: a page that waits for them runs past AppTest's 20 s timeout and fails.
    from fmnist_jax.studio import jobs

    pid = seeded["id"]
    demo = store.read_json(predict.DEMO_DIR / "model.json")
    store.Workspace().update_project(pid, model=layer_specs.normalize_spec(demo["spec"]), init_from=tasks.DEMO_CHOICE)
    release, loading = threading.Event(), threading.Event()
    real_load = predict.load_model

    def slow_load(source, *args, **kwargs):
        loading.set()
        release.wait(120)
        return real_load(source, *args, **kwargs)

    monkeypatch.setattr(jobs.predict, "load_model", slow_load)
    at = AppTest.from_file(APP, default_timeout=20)
    at.session_state["project_id"] = pid
    at.run()
    at.switch_page("pages/4_Training.py").run()
    try:
        clicked = time.monotonic()
        at.button(key="start-training").click().run()  # raises if the page is still running after 20 s
        shown = time.monotonic() - clicked
        assert not at.exception and not at.error, texts(at, "error")
        assert loading.wait(30)  # the job's own thread is the one waiting for the weights
        snapshot = proj.get_registry().for_project(pid, proj.owner_of(store.Workspace()))
        assert snapshot["status"] in ("queued", "running")
        at.run()
        assert at.button(key="start-training").disabled  # no duplicate while this one prepares
        assert snapshot["name"] in " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
        assert shown < 20
    finally:
        release.set()
    done = _wait_for(pid, lambda s: s["status"] not in ("queued", "running"))
    assert done["status"] == "completed", done.get("error")
