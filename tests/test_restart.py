"""A server restart keeps the workspace: a project with a finished run, a share link, and a run that was training
when the server stopped (SIGTERM) or died (SIGKILL). After a new server process starts on the same workspace
folder, every project, run and share link is there, the cut-off run shows as interrupted, and one click resumes
it from its checkpoint to the end, with nothing half-written."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO
from fmnist_jax import store
from fmnist_jax.model import presets
from fmnist_jax.studio import projects as proj
from fmnist_jax.studio import shares
from fmnist_jax.training import config
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, free_port, stop_server, wait_for_health

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)"),
]
LONG_EPOCHS = 25  # synthetic data and LeNet: each epoch a fraction of a second, the run long enough to cut


def _start(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "FMNIST_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                "--server.address", "127.0.0.1", "--server.headless", "true"], cwd=REPO, env=env,
                               stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_health(f"http://127.0.0.1:{port}", process)
    return process


def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _prepared(home: Path) -> dict:
    """A project with a finished run and a share link of it, and a project set up for a long run."""
    ws = store.Workspace(home)
    done = ws.create_project("Finished", dataset=proj.SYNTHETIC, model=presets.preset("lenet", 10), model_preset="lenet",
                             config=config.TrainConfig(epochs=1, batch_size=32, chunk_steps=10).to_dict())
    run_dir = ws.runs_dir(done["id"]) / "run-done"
    subprocess.run([sys.executable, "-m", "fmnist_jax", "train", "--dataset", "synthetic", "--preset", "lenet",
                    "--epochs", "1", "--out", str(run_dir), "--json"], cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "FMNIST_HOME": str(home)}, timeout=300)
    token = shares.create_share(ws, done["id"], "run-done", "Finished run", home=home)["token"]
    long = ws.create_project("Long", dataset=proj.SYNTHETIC, model=presets.preset("lenet", 10), model_preset="lenet",
                             config=config.TrainConfig(epochs=LONG_EPOCHS, batch_size=16, chunk_steps=5).to_dict())
    return {"done": done["id"], "long": long["id"], "token": token}


def _training_page(page, port: int, project_id: str) -> None:
    page.goto(f"http://127.0.0.1:{port}/Training?project={project_id}")
    page.get_by_role("heading", name="4 · Training").wait_for()


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_restart_keeps_projects_runs_and_share_links_and_resumes_the_cut_off_run(signal_name: str,
                                                                                  tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")
    home, log, port = tmp_path / "home", tmp_path / "server.log", free_port()
    ids = _prepared(home)
    ws = store.Workspace(home)
    runs_dir = ws.runs_dir(ids["long"])
    server = _start(home, port, log)
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            _training_page(page, port, ids["long"])
            page.get_by_role("button", name="Start", exact=True).click()

            def checkpointed() -> bool:
                runs = list(runs_dir.glob("*/checkpoints/*.msgpack"))
                return bool(runs) and store.read_json(runs[0].parents[1] / "run.json").get("status") == "running"
            _until(checkpointed, 240, "the long run's first checkpoint")
            os.killpg(server.pid, getattr(signal, signal_name))
            server.wait(timeout=60)
            (cut,) = [d for d in runs_dir.iterdir() if (d / "run.json").exists()]
            assert store.read_json(cut / "run.json")["status"] == "running"  # what a dead server leaves behind

            server = _start(home, port, log)  # a new process on the same workspace folder
            assert {p["name"] for p in ws.list_projects()} == {"Finished", "Long"}
            assert [r["id"] for r in ws.list_runs(ids["done"])] == ["run-done"]
            shared = httpx.get(f"http://127.0.0.1:{port}/api/model?share={ids['token']}", timeout=60)
            assert shared.status_code == 200 and shared.json()["class_names"]

            _training_page(page, port, ids["long"])
            page.get_by_text("interrupted").first.wait_for(state="attached")  # a cell of the run table (drawn on a canvas)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"restart-interrupted-{signal_name}.png"))
            page.get_by_role("button", name="Resume", exact=True).click()
            def finished() -> bool:  # completed, then its test-set figures written beside the status
                run = store.read_json(cut / "run.json")
                return run.get("status") == "completed" and run.get("test_accuracy") is not None
            _until(finished, 300, "the resumed run's end and its test figures")
            browser.close()
        run = store.read_json(cut / "run.json")
        history = [json.loads(line) for line in (cut / "history.jsonl").read_text().splitlines() if line.strip()]
        assert [h["epoch"] for h in history] == list(range(1, LONG_EPOCHS + 1))  # every epoch once, none repeated
        assert run["status"] == "completed" and (cut / "model.msgpack").stat().st_size > 0, run
        store.load_latest_checkpoint(cut)  # the newest checkpoint's bytes match their hash
        # Nothing half-written: every JSON file parses whole. A SIGKILL between an atomic write's temporary file and
        # its rename leaves that dot-named .tmp file behind, which no reader ever opens.
        for path in home.rglob("*.json"):
            json.loads(path.read_text())
        for path in home.rglob("*.jsonl"):
            [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert all(path.name.startswith(".") for path in home.rglob("*.tmp"))
    finally:
        if server.poll() is None:
            stop_server(server)
