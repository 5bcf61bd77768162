"""Load: concurrent REST clients on loopback, two training requests queued on one worker, shared data.

The REST load test is bounded (it stops by itself) and runs a short mode by default:
    FMNIST_LOAD_SECONDS=30 FMNIST_LOAD_CLIENTS=20 pytest tests/test_load.py -s   # the full 30-second run
"""
from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fmnist_jax.data import catalogue, splitting
from fmnist_jax.deploy import bundle, predict, serve
from fmnist_jax.studio import jobs
from fmnist_jax.studio.jobs import JobRegistry
from fmnist_jax.training.config import TrainConfig

pytestmark = pytest.mark.slow  # starts servers, browsers or trains: out of the quick inner loop

LOAD_SECONDS = float(os.environ.get("FMNIST_LOAD_SECONDS", "4"))
LOAD_CLIENTS = int(os.environ.get("FMNIST_LOAD_CLIENTS", "20"))
REQUEST_TIMEOUT = 60.0
TINY_SPEC = [{"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "activation": "relu"},
             {"type": "maxpool", "pool": 2, "stride": 2}, {"type": "flatten"}, {"type": "dense", "units": 10}]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The REST app of a tiny model, served by uvicorn on a loopback port in a background thread."""
    uvicorn = pytest.importorskip("uvicorn")
    from fmnist_jax.training.program import init_state
    from fmnist_jax.training.trained import TrainedModel

    _, state = init_state(TINY_SPEC, (28, 28, 1), 10, TrainConfig())
    model = TrainedModel(TINY_SPEC, (28, 28, 1), catalogue.CLASS_NAMES, {"params": state["params"], "batch_stats": state["batch_stats"]})
    folder = bundle.save_model_dir(model, tmp_path_factory.mktemp("served") / "tiny")
    port = _free_port()
    config = uvicorn.Config(serve.create_app(predict.load_model(str(folder))), host="127.0.0.1", port=port,
                            log_level="warning", limit_concurrency=4 * LOAD_CLIENTS)
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    instance.should_exit = True
    thread.join(timeout=30)


def _photos() -> list[tuple[str, bytes]]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bad_inputs.generate import garment, jpeg_bytes, png_bytes

    return [("shirt.png", png_bytes(garment())), ("shirt.jpg", jpeg_bytes(garment((300, 400)))), ("small.png", png_bytes(garment((40, 50))))]


def test_twenty_concurrent_clients_get_answers_without_errors(server: str) -> None:
    httpx = pytest.importorskip("httpx")
    photos = _photos()
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + LOAD_SECONDS

    def client(number: int) -> None:
        with httpx.Client(base_url=server, timeout=REQUEST_TIMEOUT) as http:
            sent = 0
            while time.monotonic() < deadline or sent == 0:
                name, payload = photos[(number + sent) % len(photos)]
                start = time.perf_counter()
                try:
                    response = http.post("/predict", files=[("files", (name, payload, "image/png"))])
                    ok = response.status_code == 200 and response.json()[0]["label"] in catalogue.CLASS_NAMES
                    problem = None if ok else f"{response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as error:
                    problem = f"{type(error).__name__}: {error}"
                elapsed = time.perf_counter() - start
                sent += 1
                with lock:
                    latencies.append(elapsed)
                    if problem:
                        errors.append(problem)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(LOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=LOAD_SECONDS + 2 * REQUEST_TIMEOUT)
    wall = time.perf_counter() - started
    assert not any(thread.is_alive() for thread in threads), "a client hung"
    p50, p95 = (float(np.percentile(latencies, q)) * 1000 for q in (50, 95))
    print(f"\nREST load: {LOAD_CLIENTS} clients, {wall:.1f} s, {len(latencies)} requests "
          f"({len(latencies) / wall:.1f}/s), p50 {p50:.0f} ms, p95 {p95:.0f} ms, errors {len(errors)}")
    assert errors == [], errors[:5]
    assert len(latencies) >= LOAD_CLIENTS


def test_health_stays_responsive_under_load(server: str) -> None:
    httpx = pytest.importorskip("httpx")
    with httpx.Client(base_url=server, timeout=REQUEST_TIMEOUT) as http:
        assert http.get("/health").json()["status"] == "ok"


# ----------------------------------------------------------------------------- training queue

def test_two_training_jobs_at_once_are_queued_not_run_together(tmp_path: Path, tiny_splits: splitting.Splits) -> None:
    registry = JobRegistry(max_running=1)

    def prepare() -> tuple:
        return TINY_SPEC, TrainConfig(epochs=2, batch_size=16, chunk_steps=2), tiny_splits

    first = registry.submit("alpha", tmp_path / "alpha", prepare, name="alpha")
    second = registry.submit("beta", tmp_path / "beta", prepare, name="beta")
    seen: list[list[tuple[str, str, int]]] = []
    while registry.get(second["id"])["status"] in jobs.ACTIVE:
        queue = registry.queue()
        seen.append([(job["name"], job["status"], job["position"]) for job in queue])
        assert sum(job["status"] == "running" for job in queue) <= 1, queue
        time.sleep(0.02)
    alpha, beta = registry.get(first["id"]), registry.get(second["id"])
    assert alpha["status"] == beta["status"] == "completed"
    assert beta["started"] >= alpha["finished"], "the two trainings overlapped"
    assert [("alpha", "running", 0), ("beta", "queued", 1)] in seen  # the queue was visible while alpha trained
    print(f"\nqueue: beta waited {beta['started'] - beta['created']:.1f} s behind alpha "
          f"({alpha['finished'] - alpha['started']:.1f} s of training); states seen: "
          f"{sorted({tuple(s) for s in seen}, key=len, reverse=True)[:3]}")
    for job in (first, second):  # finished jobs drop their data and model
        assert registry._jobs[job["id"]].prepare is jobs._released


def test_dataset_arrays_are_loaded_once_and_shared_read_only(workspace: Path) -> None:
    catalogue.save_cached(catalogue.synthetic_dataset(num_train=64, num_test=16))
    first = catalogue.shared_dataset("synthetic")
    second = catalogue.shared_dataset("synthetic")
    assert first is second
    assert not first.train_images.flags.writeable and not first.test_images.flags.writeable
    catalogue.forget_shared("synthetic")
