"""Load test of a public Space: `streamlit run app.py` with FMNIST_PUBLIC=1, then, for a fixed time,
- HTTP visitors predicting with the demo model through /api/predict and a share token (each its own address,
  as a Space's proxy reports it; one request every 1 to 3 s, a person's pace),
- training visitors in real Chromium pages, each pressing Start on a tiny job of its own workspace,
- one hostile visitor: a 210-billion-parameter model and a 51-million-parameter, 50-epoch job from the CLI
  and from the Training page, which must be refused within seconds without their memory being allocated.
It reports errors for the well-behaved visitors (anything but 200 and the rate limit's 429), prediction
latency (p50, p95, max), the server's peak memory, the queue positions and the refusals.

    python bench/load_test.py                     # 30 HTTP visitors, 3 training pages, 120 s
    python bench/load_test.py --quick --json      # CI's short mode: 10 visitors, 1 page, 25 s
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)
import httpx
import numpy as np

from fmnist_jax import store
from fmnist_jax.data import catalogue
from fmnist_jax.studio import public, shares

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
TINY = [{"type": "conv2d", "filters": 4, "kernel": 3, "padding": "same", "activation": "relu"},
        {"type": "maxpool", "pool": 2, "stride": 2}, {"type": "flatten"}, {"type": "dense", "units": 10}]
HUGE = [{"type": "conv2d", "filters": 4096, "kernel": 3, "padding": "same"}, {"type": "flatten"},
        {"type": "dense", "units": 65536}, {"type": "dense", "units": 10}]
HEAVY = [{"type": "conv2d", "filters": 1024, "kernel": 7, "padding": "same"},
         {"type": "conv2d", "filters": 1024, "kernel": 7, "padding": "same"},
         {"type": "globalavgpool"}, {"type": "dense", "units": 10}]


def _rss(pid: int) -> int:
    """Resident memory of a process and its children, in bytes."""
    total = 0
    for candidate in [pid] + [int(p) for p in _children(pid)]:
        try:
            for line in Path(f"/proc/{candidate}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


def _visitor_project(home: Path, spec: list, name: str, epochs: int = 2) -> tuple[str, str]:
    """A visitor's workspace with one project on the synthetic data: (workspace id, project id)."""
    workspace_id = public.new_workspace_id()
    ws = store.Workspace(public.workspace_home(workspace_id, home))
    project = ws.create_project(name, dataset="synthetic", model=spec,
                                config={"epochs": epochs, "batch_size": 32, "learning_rate": 0.01, "chunk_steps": 5})
    return workspace_id, project["id"]


def _start_server(home: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "FMNIST_HOME": str(home), "FMNIST_PUBLIC": "1", "PYTHONUNBUFFERED": "1"}
    log = open(home / "server.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                "--server.port", str(port), "--server.address", "127.0.0.1"],
                               cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            time.sleep(0.5)
    raise SystemExit(f"the server did not start: {(home / 'server.log').read_text()[-2000:]}")


def _http_visitor(base: str, token: str, number: int, png: bytes, until: float, out: list) -> None:
    rng = random.Random(number)
    with httpx.Client(timeout=60) as client:
        while time.monotonic() < until:
            start = time.perf_counter()
            try:
                response = client.post(f"{base}/api/predict?share={token}",
                                       headers={"X-Forwarded-For": f"10.0.{number // 250}.{number % 250 + 1}"},
                                       files=[("files", (f"v{number}.png", png, "image/png"))])
                out.append((response.status_code, time.perf_counter() - start))
            except httpx.HTTPError as error:
                out.append((type(error).__name__, time.perf_counter() - start))
            time.sleep(rng.uniform(1.0, 3.0))


def _training_pages(browser, base: str, trainers: list[tuple[str, str]], until: float) -> list[dict]:
    """Open every training visitor's page and press Start on each, then watch them all (Playwright's sync API
    is driven from this one thread): queue positions seen, seconds to the test accuracy."""
    pages, outcomes, started = [], [{"done": False, "positions": set()} for _ in trainers], time.monotonic()
    for workspace_id, project_id in trainers:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(120_000)
        page.goto(f"{base}/Training?w={workspace_id}&project={project_id}")
        page.get_by_role("button", name="Start").click()
        pages.append(page)
    while time.monotonic() < until + 180 and not all(o["done"] or "error" in o for o in outcomes):
        for page, outcome in zip(pages, outcomes):
            if outcome["done"] or "error" in outcome:
                continue
            text = page.locator("[data-testid='stMain']").inner_text()
            if "Queued:" in text:
                outcome["positions"].add(int(text.split("Queued: ")[1].split(" ")[0]))
            if "Test accuracy" in text:
                outcome.update(done=True, seconds=round(time.monotonic() - started, 1))
            elif "Training failed" in text or "Something went wrong" in text:
                outcome["error"] = text[:300]
        time.sleep(1.0)
    for page in pages:
        page.close()
    return [{**o, "positions": sorted(o["positions"])} for o in outcomes]


def _hostile_page(browser, base: str, workspace_id: str, project_id: str) -> dict:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(120_000)
    page.goto(f"{base}/Training?w={workspace_id}&project={project_id}")
    start = time.monotonic()
    page.get_by_role("button", name="Start").click()
    message = page.get_by_text("this model has", exact=False).first
    message.wait_for()
    result = {"refused": True, "seconds": round(time.monotonic() - start, 1), "message": message.inner_text()[:160]}
    page.close()
    return result


def _hostile_cli(home: Path, spec: list, epochs: int) -> dict:
    path = home / f"hostile-{len(spec)}-{epochs}.json"
    path.write_text(json.dumps(spec))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "fmnist_jax", "train", "--dataset", "synthetic", "--model", str(path),
                           "--epochs", str(epochs), "--out", str(home / "hostile-run")], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "FMNIST_HOME": str(home), "FMNIST_PUBLIC": "1"}, timeout=300)
    last = (done.stderr.strip().splitlines() or [""])[-1]  # after the data loader's progress bar
    return {"exit": done.returncode, "seconds": round(time.monotonic() - start, 1), "message": last[:160]}


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run(visitors: int, pages: int, seconds: float) -> dict:  # long: one scenario, its threads and its report
    from playwright.sync_api import sync_playwright

    home = Path(tempfile.mkdtemp(prefix="fmnist-load-"))
    catalogue.save_cached(catalogue.synthetic_dataset(num_train=1000, num_test=200), home=home)
    token = shares.create_share(store.Workspace(public.workspace_home(public.new_workspace_id(), home)), "p",
                                shares.DEMO, "Demo", home=home)["token"]
    trainers = [_visitor_project(home, TINY, f"tiny {i}") for i in range(pages)]
    hostile = _visitor_project(home, HUGE, "hostile")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    server = _start_server(home, port)
    with np.load(REPO / "tests" / "data" / "fashion_mnist_test_samples.npz", allow_pickle=False) as stored:
        from io import BytesIO

        from PIL import Image
        buffer = BytesIO()
        Image.fromarray(stored["images"][0]).save(buffer, "PNG")
        png = buffer.getvalue()
    peak, stop_sampling = [0], threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            peak[0] = max(peak[0], _rss(server.pid))
            time.sleep(0.25)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        baseline = _rss(server.pid)
        httpx.post(f"{base}/api/predict?share={token}", files=[("files", ("warm.png", png, "image/png"))], timeout=120)
        until = time.monotonic() + seconds
        results: list = []
        threads = [threading.Thread(target=_http_visitor, args=(base, token, i, png, until, results))
                   for i in range(visitors)]
        for thread in threads:
            thread.start()
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            refused_page = _hostile_page(browser, base, *hostile)
            training = _training_pages(browser, base, trainers, until)
            browser.close()
        refused_cli = [_hostile_cli(home, HUGE, 10), _hostile_cli(home, HEAVY, 50)]
        for thread in threads:
            thread.join()
    finally:
        stop_sampling.set()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    ok = [t for status, t in results if status == 200]
    errors = [status for status, _ in results if status not in (200, 429)]
    return {"visitors": visitors, "training_pages": pages, "seconds": seconds, "requests": len(results),
            "ok": len(ok), "rate_limited": sum(status == 429 for status, _ in results), "errors": len(errors),
            "error_kinds": sorted({str(e) for e in errors}), "p50_ms": _ms(_percentile(ok, 50)),
            "p95_ms": _ms(_percentile(ok, 95)), "max_ms": _ms(max(ok) if ok else None),
            "server_rss_start_mb": round(baseline / 2**20), "server_rss_peak_mb": round(peak[0] / 2**20),
            "trainings": training, "hostile_page": refused_page, "hostile_cli": refused_cli,
            "load_average": _common.load_average()}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--visitors", type=int, default=30)
    parser.add_argument("--pages", type=int, default=3, help="training visitors, each a real Chromium page")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--quick", action="store_true", help="10 visitors, 1 page, 25 s (CI)")
    parser.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    args = parser.parse_args()
    if args.quick:
        args.visitors, args.pages, args.seconds = 10, 1, 25
    report = run(args.visitors, args.pages, args.seconds)
    print(f"{'visitors':>8} {'requests':>8} {'ok':>5} {'429':>5} {'errors':>6} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'max ms':>7} {'RSS start':>9} {'RSS peak':>8}")
    print(f"{report['visitors']:>8} {report['requests']:>8} {report['ok']:>5} {report['rate_limited']:>5} "
          f"{report['errors']:>6} {report['p50_ms'] or 0:>7.0f} {report['p95_ms'] or 0:>7.0f} {report['max_ms'] or 0:>7.0f} "
          f"{report['server_rss_start_mb']:>7} MB {report['server_rss_peak_mb']:>5} MB")
    for number, training in enumerate(report["trainings"]):
        print(f"training page {number + 1}: {training}")
    print(f"hostile page: {report['hostile_page']}")
    for refusal in report["hostile_cli"]:
        print(f"hostile CLI: {refusal}")
    print(f"load average {report['load_average']}, {report['seconds']:.0f} s, public mode, one server process")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
