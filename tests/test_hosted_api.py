"""The studio's own REST API under /api: FastAPI's TestClient for the rules (demo without a token locally, a
share token on a public Space, rate limits), and once over HTTP from `streamlit run app.py`, beside the pages."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fmnist_jax import store
from fmnist_jax.studio import api, public, shares

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def png() -> bytes:
    with np.load(REPO / "tests" / "data" / "fashion_mnist_test_samples.npz", allow_pickle=False) as stored:
        image = stored["images"][0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def _share(workspace: Path) -> str:
    return shares.create_share(store.Workspace(workspace), "p", shares.DEMO, "Demo")["token"]


def test_locally_the_demo_answers_without_a_token(workspace: Path, png: bytes) -> None:
    with TestClient(api.create_api()) as client:
        assert client.get("/health").json() == {"status": "ok", "public": False}
        answer = client.post("/predict", files=[("files", ("a.png", png, "image/png"))])
        assert answer.status_code == 200 and answer.json()[0]["label"] and "unsure" in answer.json()[0]
        assert client.get("/model").json()["class_names"][0] == "T-shirt/top"
        wrong = client.post("/predict?share=" + "A" * 22, files=[("files", ("a.png", png, "image/png"))])
        assert wrong.status_code == 404 and "revoked" in wrong.json()["detail"]


def test_a_public_space_needs_a_share_token_and_limits_each_client(workspace: Path, png: bytes,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMNIST_PUBLIC", "1")
    token = _share(workspace / "visitors" / public.new_workspace_id())
    with TestClient(api.create_api(limiter=public.RateLimiter(3))) as client:
        refused = client.post("/predict", files=[("files", ("a.png", png, "image/png"))])
        assert refused.status_code == 401 and "token of a share link" in refused.json()["detail"]
        by_query = client.post(f"/predict?share={token}", files=[("files", ("a.png", png, "image/png"))])
        by_header = client.post("/predict", headers={"X-Share-Token": token},
                                files=[("files", ("a.png", png, "image/png"))] * 2)
        assert by_query.status_code == 200 and by_header.status_code == 200 and len(by_header.json()) == 2
        limited = client.post(f"/predict?share={token}", files=[("files", ("a.png", png, "image/png"))])
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        # behind the Space's proxy: each visitor is the address the proxy appended, whatever the client claims
        other = client.post(f"/predict?share={token}", headers={"X-Forwarded-For": "1.2.3.4, 10.0.0.7"},
                            files=[("files", ("a.png", png, "image/png"))])
        spoofed = client.post(f"/predict?share={token}", headers={"X-Forwarded-For": "9.9.9.9, 10.0.0.7"},
                              files=[("files", ("a.png", png, "image/png"))] * 3)
        assert other.status_code == 200 and spoofed.status_code == 429


@pytest.mark.slow
def test_streamlit_run_serves_the_studio_and_the_api_on_one_port(workspace: Path, png: bytes) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workspace.mkdir(parents=True, exist_ok=True)
    log = open(workspace / "streamlit.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "FMNIST_HOME": str(workspace)}, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (workspace / "streamlit.log").read_text()
            assert time.monotonic() < deadline, "the studio did not start within 120 s"
            time.sleep(0.5)
        assert httpx.get(f"{base}/_stcore/health", timeout=10).status_code == 200  # the studio itself
        assert "<div id=\"root\">" in httpx.get(f"{base}/", timeout=10).text
        docs = httpx.get(f"{base}/api/docs", timeout=10)
        assert docs.status_code == 200 and "/api/openapi.json" in docs.text
        answer = httpx.post(f"{base}/api/predict", files=[("files", ("a.png", png, "image/png"))], timeout=60)
        assert answer.status_code == 200 and answer.json()[0]["label"]
        bad = httpx.post(f"{base}/api/predict", files=[("files", ("b.png", b"not an image", "image/png"))], timeout=60)
        assert bad.status_code == 422 and bad.json()["detail"].startswith("no usable image")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
