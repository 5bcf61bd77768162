"""Redraw docs/screenshot.png, the README's picture: the first page at 1400x1000 in headless Chromium, with the
shipped sample photo samples/t-shirt.jpg answered by the demo model.

    python docs/screenshot.py        # starts `streamlit run app.py` on a free port with a temporary workspace
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("the app did not answer its health check")


def main() -> None:
    from playwright.sync_api import sync_playwright

    port, home = _free_port(), tempfile.mkdtemp(prefix="fmnist-shot-")
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                               "--server.address", "127.0.0.1"], cwd=REPO, start_new_session=True,
                              env={**os.environ, "FMNIST_HOME": home}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(url)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(url)
            page.get_by_text("What garment is this?").wait_for()
            page.locator("input[type='file']").first.set_input_files(str(REPO / "samples" / "t-shirt.jpg"))
            page.get_by_text("t-shirt.jpg →").first.wait_for()
            time.sleep(1.0)  # the card's images finish drawing
            page.screenshot(path=str(REPO / "docs" / "screenshot.png"))
            browser.close()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    print(f"wrote {REPO / 'docs' / 'screenshot.png'}")


if __name__ == "__main__":
    main()
