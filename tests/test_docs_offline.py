"""The REST API's documentation works wherever the API does: `serve`'s /docs and /redoc and the studio's
/api/docs load Swagger UI and ReDoc from the server itself. Checked in headless Chromium with every request to
another host refused (as on a machine with no internet), with screenshots in test-artifacts/."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from fmnist_jax.deploy import predict, serve
from fmnist_jax.studio import api

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.parametrize("make", ["serve", "studio"])
def test_the_docs_pages_name_only_assets_the_server_itself_serves(make: str) -> None:
    app = serve.create_app(predict.load_model("demo")) if make == "serve" else api.create_api()
    client = TestClient(app)
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "cdn.jsdelivr.net" not in html and "unpkg.com" not in html and "fonts.googleapis" not in html
        assets = [part.split('"')[0] for part in html.split('src="')[1:]] + \
                 [part.split('"')[0] for part in html.split('href="')[1:]]
        assert assets, page
        for asset in assets:
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 1000, asset


def _local_only(route, seen: list[str]) -> None:
    """Serve loopback requests; refuse (and record) any other host, as a machine without internet would."""
    host = urlsplit(route.request.url).hostname
    if host in ("127.0.0.1", "localhost"):
        route.continue_()
    else:
        seen.append(route.request.url)
        route.abort()


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)")
def test_serve_docs_render_in_chromium_with_no_other_host_reachable(tmp_path: Path) -> None:
    from test_browser import free_port, launch

    playwright_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (pip install playwright)")
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "fmnist_jax", "serve", "demo", "--port", str(port)], cwd=REPO,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        with playwright_api.sync_playwright() as playwright:
            browser = launch(playwright)
            seen: list[str] = []
            for width, height in ((390, 844), (1400, 1000)):
                page = browser.new_page(viewport={"width": width, "height": height})
                page.set_default_timeout(90_000)
                page.route("**/*", lambda route: _local_only(route, seen))
                for _ in range(180):  # the server compiles the model before it listens
                    try:
                        page.goto(f"http://127.0.0.1:{port}/docs")
                        break
                    except playwright_api.Error:
                        page.wait_for_timeout(500)
                page.locator(".swagger-ui .info .title").filter(has_text="Fashion-MNIST Studio API").wait_for()
                page.locator(".opblock-summary-path", has_text="/predict").first.wait_for()
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / f"serve-docs-{width}.png"), full_page=False)
                assert seen == [], "Swagger UI asked another host"
                page.goto(f"http://127.0.0.1:{port}/redoc")
                page.locator("h2", has_text="Liveness check").first.wait_for()  # ReDoc drew the operations
                page.screenshot(path=str(ARTIFACTS / f"serve-redoc-{width}.png"), full_page=False)
                # ReDoc's "powered by" footer logo is its one remote image; refused, the page is complete without it.
                assert set(seen) <= {"https://cdn.redoc.ly/redoc/logo-mini.svg"}
                seen.clear()
                page.close()
            browser.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
        log.close()
