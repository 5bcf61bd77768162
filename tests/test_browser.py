"""End to end in headless Chromium: `streamlit run app.py` on a free port, then a user's walk through every page
on the real Fashion-MNIST data: create a project, official split, the 'fast' preset, 1 epoch on 2,000 images,
Start and watch the chart appear, evaluation's confusion matrix, and a prediction for an uploaded test PNG.

Screenshots of each page and the measured seconds from Start to the first chart point go to test-artifacts/.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import real_data_dir

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# The workspace the developer or CI already prepared (read before the per-test fixture replaces FMNIST_HOME).
PREPARED_HOME = os.environ.get("FMNIST_HOME")

pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)"),
    pytest.mark.skipif(real_data_dir() is None,
                       reason="needs the real Fashion-MNIST files: FMNIST_DATA_DIR is unset or lacks the *-ubyte.gz files"),
]


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    """Block until Streamlit answers its health check (fail early if the server died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("streamlit did not become healthy in time")


@pytest.fixture
def studio(workspace: Path):
    """A running studio on a free localhost port with its own workspace (the prepared data cache linked in)."""
    workspace.mkdir(parents=True, exist_ok=True)
    if PREPARED_HOME:
        cached = Path(PREPARED_HOME) / "datasets" / "fashion_mnist"
        if (cached / "meta.json").exists():
            (workspace / "datasets").mkdir(exist_ok=True)
            (workspace / "datasets" / "fashion_mnist").symlink_to(cached, target_is_directory=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "FMNIST_HOME": str(workspace), "PYTHONUNBUFFERED": "1"}
    log = open(workspace / "streamlit.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_health(url, process)
        yield url
    finally:
        stop_server(process)
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(workspace / "streamlit.log", ARTIFACTS / "streamlit.log")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to a server's whole process group (started with start_new_session), SIGKILL if it lingers."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# the JavaScript that lists the texts of the given elements whose content is wider than their box (cut off)
CUT = """els => els.filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)"""


def launch(playwright):
    """Debian's headless Chromium (browsers cannot be downloaded here)."""
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)


def phone_and_desktop_pages(browser, url: str):
    """(width, page) at 390x844 and 1400x1000, each page opened at `url`, closed after its turn."""
    for width, height in ((390, 844), (1400, 1000)):
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(90_000)
        page.goto(url)
        yield width, page
        page.close()


def fashion_png() -> bytes:
    """A Fashion-MNIST test image (a sneaker or whatever comes first) as PNG bytes."""
    from PIL import Image

    from fmnist_jax.data import catalogue

    dataset = catalogue.load_dataset("fashion_mnist")
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(dataset.test_images[0])[..., 0]).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_user_walks_from_a_new_project_to_a_prediction(studio: str, workspace: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")
    ARTIFACTS.mkdir(exist_ok=True)
    timings: dict[str, float] = {}

    with playwright_api.sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)

        def idle(timeout: float = 120) -> None:
            """Wait until the script run finished (Streamlit's running indicator is gone) and charts settled."""
            time.sleep(0.5)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and page.locator("[data-testid='stStatusWidget']").count():
                time.sleep(0.25)
            time.sleep(0.5)

        def shot(name: str) -> None:
            """Full-length screenshot of the app's scrolling main area."""
            height = page.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
            page.set_viewport_size({"width": 1400, "height": int(min(max(1000, height + 40), 8000))})
            time.sleep(1.0)
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
            page.set_viewport_size({"width": 1400, "height": 1000})

        def go(title: str) -> None:
            page.get_by_test_id("stSidebar").get_by_role("link", name=title, exact=True).click()
            idle()

        def expect_no_exception() -> None:
            assert page.locator("[data-testid='stException']").count() == 0, page.locator(
                "[data-testid='stException']").first.inner_text()

        # Projects: a first visit explains the workflow; create a project
        page.goto(studio)
        page.get_by_text("How it works").first.wait_for()
        page.get_by_label("Project name", exact=True).fill("Browser walk")
        page.get_by_role("button", name="Create project", exact=True).click()
        page.get_by_text("Created Browser walk").wait_for()
        idle()
        expect_no_exception()
        shot("01-projects")

        # Data: the official split, counts and charts
        go("Data")
        page.get_by_text("Class balance per split").wait_for()
        page.get_by_text("Official test set + validation").click()
        idle()
        assert page.get_by_text("54,000").count() and page.get_by_text("10,000").count()
        expect_no_exception()
        shot("02-data")

        # Model: the 'fast' preset
        go("Model")
        page.get_by_text("Summary").wait_for()
        preset = page.get_by_test_id("stSelectbox").filter(has_text="Preset")
        preset.click()
        page.get_by_role("option", name="fast", exact=True).click()
        page.get_by_role("button", name="Load", exact=True).click()
        idle()
        page.get_by_text("241,770").first.wait_for()
        expect_no_exception()
        shot("03-model")

        # Hyperparameters: 1 epoch on the first 1,000 training images
        go("Hyperparameters")
        epochs = page.get_by_test_id("stSlider").filter(has_text="Epochs").get_by_role("slider")
        epochs.focus()
        epochs.press("Home")
        page.get_by_label("Training images (0 = all)", exact=True).fill("2000")
        page.get_by_label("Training images (0 = all)", exact=True).press("Tab")
        page.get_by_role("button", name="Save settings", exact=True).click()
        page.get_by_text("Saved. These settings apply").wait_for()
        idle()
        saved = json.loads(next((workspace / "projects").glob("*/project.json")).read_text())
        assert saved["config"]["epochs"] == 1 and saved["train_limit"] == 2000
        expect_no_exception()
        shot("04-hyperparameters")

        # Training: Start, the live chart appears and grows, the run finishes
        go("Training")
        start = time.monotonic()
        page.get_by_role("button", name="Start", exact=True).click()
        page.locator(".st-key-live-curves canvas, .st-key-live-curves svg").first.wait_for(timeout=300_000)
        timings["start_to_first_chart_point_s"] = round(time.monotonic() - start, 1)
        shot("05-training-live")
        page.reload()  # a refresh reattaches to the running (or just finished) job
        page.locator(".st-key-live-curves canvas, .st-key-live-curves svg").first.wait_for(timeout=120_000)
        page.get_by_text("Test accuracy").first.wait_for(timeout=600_000)
        timings["start_to_finished_s"] = round(time.monotonic() - start, 1)
        idle()
        page.get_by_text("Run history").wait_for()
        expect_no_exception()
        shot("06-training-done")

        # Evaluation: the confusion matrix
        go("Evaluation")
        page.locator(".st-key-confusion-matrix canvas, .st-key-confusion-matrix svg").first.wait_for(timeout=300_000)
        idle()
        page.get_by_text("Misclassified test images").wait_for()
        expect_no_exception()
        shot("07-evaluation")

        # Deploy: upload a test-set PNG and see a prediction
        go("Deploy")
        page.get_by_text("Upload photos").first.wait_for()
        page.locator("input[type='file']").set_input_files(
            files=[{"name": "test-image.png", "mimeType": "image/png", "buffer": fashion_png()}])
        page.get_by_text("What the model sees").first.wait_for(timeout=120_000)
        idle()
        assert page.get_by_text("test-image.png →").count()
        expect_no_exception()
        shot("08-deploy")
        browser.close()

    (ARTIFACTS / "timings.json").write_text(json.dumps(timings, indent=2))
    print(f"timings: {timings}")


def test_a_phone_visitor_gets_an_answer_from_the_camera_with_zero_clicks(studio: str, tmp_path: Path) -> None:
    """The first screen of a phone (390x844) offers the photo try-out; the camera path answers with the demo model."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])
        context = browser.new_context(viewport={"width": 390, "height": 844})
        context.grant_permissions(["camera"])
        page = context.new_page()
        page.set_default_timeout(90_000)
        page.goto(studio)
        heading = page.get_by_text("What garment is this?")
        heading.wait_for()
        upload = page.get_by_test_id("stFileUploaderDropzone").first
        upload.wait_for()
        assert upload.bounding_box()["y"] + upload.bounding_box()["height"] < 844, "the upload is below the fold"
        assert page.get_by_text("Use the camera").bounding_box()["y"] < 844
        page.get_by_text("Use the camera").click()
        page.get_by_test_id("stCameraInput").wait_for()
        take = page.get_by_role("button", name="Take Photo", exact=True)
        take.wait_for()
        # The fake device streams: a click before its first frame takes no picture, and its very first frames can be
        # one flat colour, which the photo pipeline rightly refuses. Wait until the frame has a picture in it.
        page.wait_for_function(
            "() => { const v = document.querySelector(\"[data-testid='stCameraInput'] video\");"
            " if (!v || v.readyState < 2 || !v.videoWidth) return false;"
            " const c = document.createElement('canvas'); c.width = 64; c.height = 48;"
            " const g = c.getContext('2d'); g.drawImage(v, 0, 0, 64, 48);"
            " const d = g.getImageData(0, 0, 64, 48).data; let lo = 255, hi = 0;"
            " for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i + 1]); hi = Math.max(hi, d[i + 1]); }"
            " return hi - lo > 40; }")
        take.click()
        answer = page.get_by_text("camera photo →")
        answer.wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "phone-camera-answer.png"), full_page=False)
        assert page.locator("[data-testid='stException']").count() == 0
        text = answer.first.inner_text()
        assert "not sure" in text or any(name in text for name in ("T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                                                                    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"))
        browser.close()


def test_page_urls_and_query_parameters_still_work_as_the_first_request(studio: str, workspace: Path) -> None:
    """A shared link straight to a page opens it, with its project and the whole frame, even as the first
    request after the server started."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")
    from fmnist_jax import store

    project = store.Workspace(workspace).create_project("Linked project", dataset="synthetic")
    with playwright_api.sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(90_000)
        for path, heading in (("Training", "4 · Training"), ("Data", "1 · Data"), ("Model", "2 · Model"),
                              ("Deploy", "6 · Deploy")):
            page.goto(f"{studio}/{path}?project={project['id']}" + ("&model=demo" if path == "Deploy" else ""))
            page.get_by_text(heading, exact=True).first.wait_for()
            assert page.url.split("?")[0].endswith(f"/{path}")
            # the shared frame came with it: the sidebar's navigation, on the first request as on later ones
            page.get_by_test_id("stSidebar").get_by_role("link", name="Evaluation").wait_for(timeout=30_000)
            assert page.get_by_text("No project is open").count() == 0
            assert page.locator("[data-testid='stException']").count() == 0
        page.goto(studio)
        page.get_by_text("What garment is this?").wait_for()
        browser.close()


def test_hyperparameters_labels_and_figures_are_not_cut_on_a_phone_or_a_desktop(studio: str, workspace: Path) -> None:
    """The recommended-recipe button and the time estimate's figures show in full (they were cut to
    'Use these set...' and 'first ...')."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")
    from fmnist_jax import store
    from fmnist_jax.studio import projects as proj

    ws = store.Workspace(workspace)
    project = proj.create_sample_project(ws)
    ws.update_project(project["id"], config={**project["config"], "epochs": 3})  # not the recipe: the button shows
    with playwright_api.sync_playwright() as playwright:
        browser = launch(playwright)
        for width, page in phone_and_desktop_pages(browser, f"{studio}/Hyperparameters?project={project['id']}"):
            button = page.get_by_role("button", name="Use these settings", exact=True)
            button.wait_for()
            page.get_by_test_id("stMetricValue").first.wait_for()
            time.sleep(2.0)
            inside = button.evaluate("b => [b, ...b.querySelectorAll('*')].filter(e => e.scrollWidth > e.clientWidth + 1 "
                                     "|| e.getBoundingClientRect().right > b.getBoundingClientRect().right + 1).length")
            assert inside == 0, f"button label cut at {width}px"
            assert page.get_by_test_id("stMetricValue").evaluate_all(CUT) == [], f"figures cut at {width}px"
            best = page.get_by_role("button", name="Use the 15-minute recipe", exact=True)
            assert best.evaluate("b => [b, ...b.querySelectorAll('*')].filter(e => e.scrollWidth > e.clientWidth + 1).length") == 0
            # the toggle's label sat in a quarter-width column and was cut to "Mirror test-time augme..."
            toggle = page.get_by_text("Mirror test-time augmentation", exact=True)
            assert toggle.evaluate("""e => { const cut = []; for (let n = e, i = 0; n && i < 4; n = n.parentElement, i++)
                                               if (n.scrollWidth > n.clientWidth + 1) cut.push(n.tagName); return cut; }""") == [], \
                f"toggle label cut at {width}px"
            clean = page.get_by_text("Clean last epochs", exact=True)  # a narrow fourth column beside the epochs
            assert clean.evaluate("""e => { const cut = []; for (let n = e, i = 0; n && i < 4; n = n.parentElement, i++)
                                              if (n.scrollWidth > n.clientWidth + 1) cut.push(n.tagName); return cut; }""") == [], \
                f"'Clean last epochs' label cut at {width}px"
            members = page.get_by_text("Ensemble members", exact=True)
            assert members.evaluate("""e => { const cut = []; for (let n = e, i = 0; n && i < 4; n = n.parentElement, i++)
                                                if (n.scrollWidth > n.clientWidth + 1) cut.push(n.tagName); return cut; }""") == [], \
                f"'Ensemble members' label cut at {width}px"
            page.screenshot(path=str(ARTIFACTS / f"hyperparameters-{width}.png"), full_page=False)
            clean.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f"hyperparameters-form-{width}.png"), full_page=False)
            members.scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f"hyperparameters-ensemble-{width}.png"), full_page=False)
        browser.close()


def test_the_phone_drawer_closes_after_a_page_is_chosen_and_the_desktop_sidebar_stays(studio: str) -> None:
    """On a phone the sidebar is a drawer over the page; Streamlit left it open after a page was chosen in it."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")
    with playwright_api.sync_playwright() as playwright:
        browser = launch(playwright)
        for width, height, closes in ((390, 844, True), (1400, 1000, False)):
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            page.goto(studio)
            page.get_by_text("How it works").first.wait_for()
            sidebar = page.get_by_test_id("stSidebar")
            # On a loaded machine Streamlit may collapse the phone drawer after the first read of its state, so
            # open it until it reports open (bounded), then check that it stays open on the same page.
            deadline = time.monotonic() + 60
            expand = page.get_by_test_id("stExpandSidebarButton")
            while (state := sidebar.get_attribute("data-collapsed")) != "false" and time.monotonic() < deadline:
                if state == "true" and expand.is_visible():
                    expand.click()
                time.sleep(0.5)
            time.sleep(1.5)  # the home page's own run is over: an open drawer stays open on the same page
            assert sidebar.get_attribute("data-collapsed") == "false"
            sidebar.get_by_role("link", name="Model", exact=True).click()
            page.get_by_role("heading", name="2 · Model").wait_for()
            time.sleep(2.0)
            assert sidebar.get_attribute("data-collapsed") == ("true" if closes else "false"), f"at {width}px"
            if closes:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "phone-after-navigation.png"))
            page.close()
        browser.close()


def test_a_residual_block_on_the_model_page_shows_its_settings_and_diagram(studio: str, workspace: Path) -> None:
    """A stack with residual blocks: each block's settings fit beside each other on a phone and a desktop, and the
    summary table and the network diagram list the blocks with their output shapes."""
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")
    from fmnist_jax import store
    from fmnist_jax.model import presets
    from fmnist_jax.studio import projects as proj

    ws = store.Workspace(workspace)
    project = proj.create_sample_project(ws)
    layers = presets.preset("fast256")
    layers[4:7] = [{"type": "residual", "filters": 64}, {"type": "residual", "filters": 64, "stride": 2}]
    ws.update_project(project["id"], model=layers, model_preset=None)
    with playwright_api.sync_playwright() as playwright:
        browser = launch(playwright)
        for width, page in phone_and_desktop_pages(browser, f"{studio}/Model?project={project['id']}"):
            title = page.get_by_text("5 · Residual", exact=True)
            title.wait_for()
            page.get_by_test_id("stGraphVizChart").wait_for()
            page.get_by_test_id("stMetricValue").first.wait_for()
            time.sleep(2.0)  # the page settles: no skeletons in the screenshot
            assert page.get_by_text("64 filters, two 3×3 convolutions + shortcut, stride 2").count() >= 1
            # layers are one line each; Edit opens the residual block's settings, whose labels must fit too
            page.get_by_role("button", name="Edit", exact=True).nth(5).click()
            page.get_by_role("button", name="Done", exact=True).wait_for()
            page.locator("[data-testid=stMain] [data-testid=stWidgetLabel]", has_text="stride").first.wait_for()
            time.sleep(1.0)
            labels = page.locator("[data-testid=stMain] [data-testid=stWidgetLabel]").evaluate_all(CUT)
            assert labels == [], f"labels cut at {width}px: {labels}"
            title.scroll_into_view_if_needed()
            time.sleep(1.0)
            page.screenshot(path=str(ARTIFACTS / f"model-residual-{width}.png"), full_page=False)
            diagram = page.get_by_test_id("stGraphVizChart")
            diagram.scroll_into_view_if_needed()
            diagram.wait_for()
            assert "Residual" in diagram.inner_text() and "7×7×64" in diagram.inner_text()
            page.screenshot(path=str(ARTIFACTS / f"model-residual-diagram-{width}.png"), full_page=False)
        browser.close()


def test_start_shows_the_run_at_once_and_stop_says_stopped_within_5_seconds(studio: str, workspace: Path) -> None:
    """Issue 46: Start -> a visible run state (queued, preparing or running) <= 1 s; Stop -> "stopped" <= 5 s, the
    test-set pass after it shown with its own progress, and Start usable again. Timings go to
    test-artifacts/flow-timings.json and are printed."""
    import re

    from playwright.sync_api import sync_playwright

    from fmnist_jax import store
    from fmnist_jax.studio import tasks

    ws = store.Workspace(workspace)
    project = ws.create_project("Flow timings", dataset="synthetic")
    ws.update_project(project["id"], config={"epochs": 60})
    timings: dict[str, float] = {}
    header = re.compile(r"run-\d{8}-\d{6}\s*(\S+\s*)?(queued|running|stopped)")
    with sync_playwright() as playwright:
        browser = launch(playwright)
        for width, page in phone_and_desktop_pages(browser, f"{studio}/Training?project={project['id']}"):
            start = page.get_by_role("button", name="Start", exact=True)
            expect_enabled(start)
            clicked = time.perf_counter()
            start.click()
            while (found := header.search(page.inner_text("body"))) is None or found.group(2) == "stopped":
                assert time.perf_counter() - clicked < 30, "Start showed no run state in 30 s"
                time.sleep(0.02)
            timings[f"start_to_visible_state_{width}"] = time.perf_counter() - clicked
            page.get_by_text("Images/s").first.wait_for()
            timings[f"start_to_first_figures_{width}"] = time.perf_counter() - clicked
            page.screenshot(path=str(ARTIFACTS / f"flow-training-{width}.png"), full_page=True)
            clicked = time.perf_counter()
            page.get_by_role("button", name="Stop", exact=True).click()
            while (found := header.search(page.inner_text("body"))) is None or found.group(2) != "stopped":
                assert time.perf_counter() - clicked < 30, "Stop did not reach 'stopped' in 30 s"
                time.sleep(0.02)
            timings[f"stop_to_stopped_{width}"] = time.perf_counter() - clicked
            expect_enabled(page.get_by_role("button", name="Start", exact=True))  # the project may train again at once
        browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "flow-timings.json").write_text(json.dumps({k: round(v, 2) for k, v in timings.items()}, indent=2))
    print("flow timings (s):", json.dumps({k: round(v, 2) for k, v in timings.items()}))
    runs = tasks.runs_table(ws, project["id"])
    assert len(runs) == 2 and {r["status"] for r in runs} == {"stopped"}
    # The targets (visible state <= 1 s, stopped <= 5 s) are measured and reported from the file above, on an idle
    # machine (README, bench/NOTES.md); the test fails on what a user would call broken even while the other test
    # worker compiles beside it: the freeze (>2 min) and the wait for the test set (32-74 s) it replaced.
    assert all(timings[f"stop_to_stopped_{w}"] <= 10.0 for w in (390, 1400)), timings
    assert all(timings[f"start_to_visible_state_{w}"] <= 5.0 for w in (390, 1400)), timings


def expect_enabled(button, timeout: float = 60.0) -> None:
    """Wait until a button is enabled (Streamlit re-enables Start when the project has no active run)."""
    deadline = time.monotonic() + timeout
    while not button.is_enabled():
        assert time.monotonic() < deadline, "the button stayed disabled"
        time.sleep(0.05)


def test_label_check_gallery_excludes_and_relabels_and_saves_a_version_on_a_phone_and_a_desktop(studio, workspace, monkeypatch) -> None:
    """The Data page's Label check in Chromium: each flag's choice on its card, "Save as a new label version",
    and the project trains on that version (its run record's data), at 390x844 and then 1400x1000."""
    from playwright.sync_api import sync_playwright

    from fmnist_jax import label_issues, store
    from fmnist_jax.studio import label_check, tasks
    from fmnist_jax.studio import projects as proj

    ws = store.Workspace(workspace)
    project = ws.create_project("Label gallery", dataset="synthetic")
    source = proj.load_dataset(project, labels=False)
    rows = [3, 8, 15, 21]
    monkeypatch.setattr(label_issues, "find_issues", lambda dataset, check, files=None, progress=None, stop=None: {
        "n": len(dataset.train_labels), "folds": 2, "seconds": 1.0, "out_of_fold_accuracy": 0.9,
        "issues": [{"index": r, "given": int(dataset.train_labels[r]), "suggested": (int(dataset.train_labels[r]) + 1) % 10,
                    "quality": 0.01} for r in rows]})
    label_check.run_check(ws, project, source, label_issues.LabelCheck(folds=2), lambda fraction, message: None)
    with sync_playwright() as playwright:
        browser = launch(playwright)
        for width, page in phone_and_desktop_pages(browser, f"{studio}/Data?project={project['id']}"):
            page.get_by_text("Label check · find likely").first.click()
            page.get_by_text("4 likely label issues").first.wait_for()
            def card(row: int):
                return page.locator(f".st-key-label-choice-{project['id']}-{row}")

            card(rows[0]).get_by_text("exclude", exact=True).click()
            page.get_by_text("0 relabelled and 1 excluded so far").wait_for()
            card(rows[1]).get_by_text("relabel", exact=True).click()
            page.get_by_text("1 relabelled and 1 excluded so far").wait_for()
            page.get_by_text("1 relabelled and 1 excluded so far").scroll_into_view_if_needed()
            page.screenshot(path=str(ARTIFACTS / f"label-gallery-{width}.png"))
            page.get_by_role("button", name="Save as a new label version", exact=True).click()
            page.get_by_text("training uses the labels v", exact=False).first.wait_for()
            saved = ws.get_project(project["id"])
            number = saved["label_version"]
            edits, _ = label_check.overlay(saved)
            assert number == len(saved["label_versions"]) and edits.exclude == {rows[0]}
            assert edits.relabel == {rows[1]: (int(source.train_labels[rows[1]]) + 1) % 10}
            record = tasks._data_record(saved, proj.load_dataset(saved))  # what Start hands the training job
            assert record["label_version"] == number
            splits = proj.load_splits(record)
            assert len(splits.train_labels) + len(splits.val_labels) == len(source.train_labels) - 1
            label_check.select_version(ws, saved, 0)  # the desktop pass starts from the original labels again
        browser.close()
