"""The studio as a Space visitor meets it: started exactly as the Dockerfile's ENV and CMD start it (parsed from
the file; only the port, the address, the workspace folder and HOME changed to loopback and temporary ones, and
SPACE_ID set as a Space sets it), shown inside a page of another site (a parent on 127.0.0.1 embedding the app on
localhost, as huggingface.co embeds OWNER-NAME.hf.space). Uploads, the camera, a dataset import and the Space
page's own address are checked in that frame, with screenshots at 390x844 and 1400x1000 in test-artifacts/."""
from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, real_data_dir

sys.path.insert(0, str(REPO / "bench"))
from _common import dockerfile_start, with_option  # noqa: E402  (the Dockerfile's ENV and CMD, as the bench reads them)
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_FLAGS, free_port, stop_server, wait_for_health
from upload_samples import folder_zip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)"),
    pytest.mark.skipif(real_data_dir() is None,
                       reason="needs the real Fashion-MNIST files: FMNIST_DATA_DIR is unset or lacks the *-ubyte.gz files"),
]

# What a Space's page does with its app: an iframe with the camera allowed, the page's own query handed to the frame
# on the first load, and the frame's {queryString} messages written into the page's address.
PARENT_PAGE = """<!doctype html><html><head><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Space page</title><style>body{margin:0;font-family:sans-serif} #bar{height:28px;padding:4px 8px;
background:#222;color:#eee;font-size:13px;overflow:hidden;white-space:nowrap}
iframe{border:0;width:100%;height:calc(100vh - 36px)}</style></head><body>
<div id="bar">huggingface.co/spaces/owner/studio <span id="query"></span></div>
<iframe id="app" allow="camera; microphone; clipboard-read; clipboard-write; fullscreen"></iframe>
<script>
window.received = [];
document.getElementById("app").src = "APP_URL/" + window.location.search;
window.addEventListener("message", (event) => {
  if (event.origin !== "APP_URL" || typeof event.data !== "object" || !("queryString" in event.data)) return;
  window.received.push(event.data.queryString);
  history.replaceState(null, "", window.location.pathname + event.data.queryString);
  document.getElementById("query").textContent = event.data.queryString;
});
</script></body></html>"""


@pytest.fixture
def space_app(tmp_path: Path):
    """(app URL, parent URL): the Dockerfile's app on localhost and a parent page on 127.0.0.1 that embeds it."""
    docker_env, cmd = dockerfile_start()
    assert cmd[0] == "streamlit"
    app_port, parent_port = free_port(), free_port()
    app_url, parent_url = f"http://localhost:{app_port}", f"http://127.0.0.1:{parent_port}"
    home = tmp_path / "home"
    env = {**os.environ, **docker_env, "PATH": os.environ["PATH"], "HOME": str(home), "SPACE_ID": "owner/studio",
           "FMNIST_HOME": str(tmp_path / "fmnist-home"), "FMNIST_SPACE_PARENT_ORIGIN": parent_url}
    env.pop("FMNIST_PUBLIC", None)
    cmd = with_option(with_option(cmd, "--server.port", str(app_port)), "--server.address", "127.0.0.1")
    log = open(tmp_path / "space.log", "w")
    server = subprocess.Popen([sys.executable, "-m", *cmd], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    page = PARENT_PAGE.replace("APP_URL", app_url).encode()

    class Parent(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the same page for any path and query, as the Space page is
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args) -> None:
            pass

    parent = http.server.ThreadingHTTPServer(("127.0.0.1", parent_port), Parent)
    threading.Thread(target=parent.serve_forever, daemon=True).start()
    try:
        wait_for_health(f"http://127.0.0.1:{app_port}", server)
        yield app_url, parent_url
    finally:
        parent.shutdown()
        stop_server(server)
        log.close()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "space.log").write_text((tmp_path / "space.log").read_text())


def _browser(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=[
        *CHROMIUM_FLAGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"])


def test_inside_a_cross_site_frame_uploads_the_camera_an_import_and_the_address_all_work(
        space_app: tuple[str, str], tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")
    app_url, parent_url = space_app
    dataset_zip = folder_zip(tmp_path / "garments.zip", {"boots": 12, "shirts": 12, "bags": 12})
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        for width, height in ((390, 844), (1400, 1000)):
            context = browser.new_context(viewport={"width": width, "height": height})
            context.grant_permissions(["camera"], origin=app_url)
            page = context.new_page()
            page.set_default_timeout(120_000)
            page.goto(parent_url + "/spaces/owner/studio")
            frame = page.frame_locator("#app")
            frame.get_by_text("What garment is this?").wait_for()

            # A photo upload on the first page, inside the frame, is answered with a class.
            frame.locator("input[type='file']").first.set_input_files(str(REPO / "samples" / "t-shirt.jpg"))
            answer = frame.get_by_text("t-shirt.jpg →").first
            answer.wait_for()
            assert "T-shirt/top" in answer.inner_text()
            frame.locator("[data-testid='stImage'] img").first.wait_for()
            page.wait_for_timeout(1000)  # the card's pictures and bars finish drawing
            page.screenshot(path=str(ARTIFACTS / f"space-frame-photo-{width}.png"))

            # The parent page hears the workspace's address, and shows it as its own.
            page.wait_for_function("() => window.received.some(q => q.includes('w='))")
            workspace = re.search(r"w=([\w-]+)", page.evaluate("window.received.at(-1)")).group(1)
            assert f"w={workspace}" in page.url

            # The fake camera, inside the frame.
            frame.get_by_text("Use the camera").click()
            take = frame.get_by_role("button", name="Take Photo", exact=True)
            take.wait_for()
            frame.locator("[data-testid='stCameraInput'] video").wait_for()
            page.wait_for_timeout(1500)  # the fake device's first frames
            take.click()
            frame.get_by_text("camera photo →").first.wait_for()

            # A project, then a dataset zip imported on the Data page, inside the frame.
            frame.get_by_role("button", name="Create the sample project", exact=True).click()
            frame.get_by_text("Created", exact=False).first.wait_for()
            page.wait_for_function("() => window.received.some(q => q.includes('project='))")
            frame.get_by_role("link", name="Continue").first.click()  # the open project's card: on to Data
            _shown_or_explained(page, frame, "1 · Data", f"data-{width}")
            frame.get_by_text("Upload your own images").click()
            frame.locator("[data-testid='stFileUploader'] input[type='file']").first.set_input_files(str(dataset_zip))
            frame.get_by_role("button", name="Import the file", exact=True).click()
            frame.get_by_text("3 classes").first.wait_for()  # the imported dataset's picker entry
            page.wait_for_timeout(1000)
            page.screenshot(path=str(ARTIFACTS / f"space-frame-import-{width}.png"))
            errors = frame.locator("[data-testid='stException'], [data-testid='stAlertContentError']")
            assert errors.count() == 0, errors.all_inner_texts()

            # A reload of the Space page with the address it was told opens the same workspace and its project.
            remembered = page.url
            assert "project=" in remembered and f"w={workspace}" in remembered and "page=data" in remembered
            page.goto(remembered)
            frame = page.frame_locator("#app")
            frame.get_by_role("heading", name="1 · Data").wait_for()
            page.goto(remembered.replace("page=data", ""))  # and its home page lists the project made before
            frame = page.frame_locator("#app")
            frame.get_by_role("heading", name="Fashion-MNIST sample").first.wait_for()
            # the banner's link is the Space page's address, with this workspace
            frame.get_by_text(f"huggingface.co/spaces/owner/studio?w={workspace}", exact=False).first.wait_for()
            page.wait_for_timeout(1000)
            page.screenshot(path=str(ARTIFACTS / f"space-frame-reloaded-{width}.png"))

            # A share link, made on Deploy inside the frame, opens from the Space page and answers a photo there.
            page.goto(remembered.replace("page=data", "page=deploy"))
            frame = page.frame_locator("#app")
            frame.get_by_role("heading", name="6 · Deploy").wait_for()
            frame.get_by_role("button", name="Create a predict-only link", exact=True).click()
            link = frame.get_by_text("huggingface.co/spaces/owner/studio?share=", exact=False).first
            link.wait_for()
            token = re.search(r"share=([\w-]+)", link.inner_text()).group(1)
            page.goto(f"{parent_url}/spaces/owner/studio?share={token}")
            frame = page.frame_locator("#app")
            frame.get_by_text("A model shared from Fashion-MNIST Studio", exact=False).wait_for()
            frame.locator("input[type='file']").first.set_input_files(str(REPO / "samples" / "shoe.jpg"))
            frame.get_by_text("shoe.jpg →").first.wait_for()
            context.close()
        browser.close()


def _shown_or_explained(page, frame, heading: str, name: str, timeout_ms: int = 120_000) -> None:
    """Wait for a page's heading in the frame; when it never shows, fail with what the frame shows instead (its
    text and a screenshot in test-artifacts/), so a failure on a loaded CI machine says where the flow stopped."""
    try:
        frame.get_by_role("heading", name=heading).wait_for(timeout=timeout_ms)
    except Exception as error:  # Playwright's TimeoutError
        page.screenshot(path=str(ARTIFACTS / f"space-frame-stuck-{name}.png"))
        shown = frame.locator("body").inner_text(timeout=10_000)
        raise AssertionError(f"{heading!r} did not show in {timeout_ms / 1000:.0f} s; the frame shows: "
                             f"{' '.join(shown.split())[:1500]}") from error


def test_the_rest_api_and_share_links_answer_beside_the_frame(space_app: tuple[str, str]) -> None:
    import httpx

    app_url, _ = space_app
    health = httpx.get(f"{app_url}/api/health", timeout=30).json()
    assert health == {"status": "ok", "public": True}
    with open(REPO / "samples" / "shoe.jpg", "rb") as photo:
        response = httpx.post(f"{app_url}/api/predict", files={"files": ("shoe.jpg", photo, "image/jpeg")}, timeout=60)
    assert response.status_code == 401  # a public Space answers only with a share token
