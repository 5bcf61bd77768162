"""Load on the studio itself: 10 browser sessions on the Deploy page at once, each uploading a photo.

Bounded (one server on loopback, 10 Chromium contexts, stops by itself). Checks that every session gets
its own prediction from the shipped demo model and that the server stays healthy.
"""
from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from conftest import requires_real_data
from test_browser import CHROMIUM, fashion_png, studio  # noqa: F401  (fixtures)

from fmnist_jax import store

pytestmark = pytest.mark.slow  # starts servers, browsers or trains: out of the quick inner loop

SESSIONS = 10


@requires_real_data
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (.ci/run installs it)")
def test_ten_concurrent_sessions_on_the_deploy_page(studio: str, workspace: Path, tmp_path: Path) -> None:  # noqa: F811
    from playwright.sync_api import sync_playwright

    project = store.Workspace(workspace).create_project("Load test")
    image = tmp_path / "garment.png"
    image.write_bytes(fashion_png())
    url = f"{studio}/Deploy?project={project['id']}&model=demo"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            pages = [browser.new_context(viewport={"width": 1200, "height": 900}).new_page() for _ in range(SESSIONS)]
            start = time.perf_counter()
            for page in pages:  # all sessions connect before any waits: they render concurrently
                page.goto(url, wait_until="commit")
            for page in pages:
                page.locator("input[type='file']").wait_for(state="attached", timeout=180_000)
                page.locator("input[type='file']").set_input_files(str(image))
            for page in pages:
                page.get_by_text("What the model sees").first.wait_for(timeout=240_000)
                assert page.get_by_text("garment.png →").count() == 1
                assert page.get_by_test_id("stException").count() == 0
            seconds = time.perf_counter() - start
            print(f"{SESSIONS} concurrent Deploy sessions answered in {seconds:.1f} s")
        finally:
            browser.close()
    with urllib.request.urlopen(f"{studio}/_stcore/health", timeout=5) as response:
        assert response.status == 200
