"""REST API: FastAPI's TestClient for every route and error, and once as a real uvicorn process on localhost."""
from __future__ import annotations

import io
import os
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

from fmnist_jax.deploy import predict, serve

REPO = Path(__file__).resolve().parents[1]
SAMPLES = Path(__file__).parent / "data" / "fashion_mnist_test_samples.npz"


@pytest.fixture(scope="module")
def model():
    return predict.load_model("demo")


@pytest.fixture(scope="module")
def client(model):
    with TestClient(serve.create_app(model, max_request_bytes=1_000_000)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def sample_png() -> bytes:
    with np.load(SAMPLES, allow_pickle=False) as stored:
        image = stored["images"][0]
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def test_health_and_model(client, model):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/model").json()
    assert info["class_names"] == list(model.class_names)
    assert info["input_shape"] == [28, 28, 1]
    assert info["card"]["test_accuracy"] == model.card["test_accuracy"]
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_returns_the_cli_json(client, model, sample_png):
    response = client.post("/predict", files=[("files", ("a.png", sample_png, "image/png")),
                                              ("files", ("b.png", sample_png, "image/png"))])
    assert response.status_code == 200
    rows = response.json()
    assert [r["file"] for r in rows] == ["a.png", "b.png"]
    assert set(rows[0]) == {"file", "label", "index", "probability", "top3", "unsure"} and isinstance(rows[0]["unsure"], bool)
    expected = predict.predict_files(model, [("a.png", sample_png)])[0]
    assert rows[0]["label"] == expected["label"] and rows[0]["probability"] == pytest.approx(expected["probability"], abs=1e-6)


def test_mixed_batch_keeps_the_good_files(client, sample_png):
    response = client.post("/predict", files=[("files", ("good.png", sample_png, "image/png")),
                                              ("files", ("bad.png", b"not an image", "image/png"))])
    assert response.status_code == 200
    good, bad = response.json()
    assert "label" in good and set(bad) == {"file", "error"}


def test_bad_uploads_get_4xx_json(client):
    response = client.post("/predict", files=[("files", ("notes.png", b"hello", "image/png"))])
    assert response.status_code == 422 and "not an image" in response.json()["detail"]
    response = client.post("/predict", data={"other": "field"})
    assert response.status_code == 422 and response.json()["detail"]
    response = client.post("/predict", content=b"raw bytes", headers={"content-type": "application/octet-stream"})
    assert response.status_code == 422


def test_too_many_files(client, sample_png):
    files = [("files", (f"{i}.png", sample_png, "image/png")) for i in range(serve.MAX_FILES + 1)]
    response = client.post("/predict", files=files)
    assert response.status_code == 422 and "at most" in response.json()["detail"]


def test_oversized_request_gets_413(client):
    response = client.post("/predict", files=[("files", ("big.png", b"\0" * 1_200_000, "image/png"))])
    assert response.status_code == 413 and "larger than" in response.json()["detail"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_real_uvicorn_process(sample_png, tmp_path):
    port = _free_port()
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "fmnist_jax", "serve", "demo", "--port", str(port),
                                "--max-request-mb", "1"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "server did not start within 120 s"
            time.sleep(0.5)
        response = httpx.post(f"{base}/predict", files=[("files", ("a.png", sample_png, "image/png"))], timeout=30)
        assert response.status_code == 200 and response.json()[0]["label"]
        response = httpx.post(f"{base}/predict", files=[("files", ("a.png", b"GIF89a broken", "image/gif"))], timeout=30)
        assert 400 <= response.status_code < 500 and response.json()["detail"]
        response = httpx.post(f"{base}/predict", files=[("files", ("big.png", b"\0" * 2_000_000, "image/png"))], timeout=30)
        assert response.status_code == 413
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
