"""Start-up latency: the app's first page, and a training run's first metric record (cold and warm compile cache).

1. `streamlit run app.py` in a fresh process until `/_stcore/health` answers ok and the home page HTML
   is fetched (median of several starts; the first start also pays for cold .pyc files).
2. A fresh Python process that loads the data and calls the training generator: seconds from the call
   to the first metric record ('chunk'), first with an empty persistent compilation cache, then with
   the cache the first run wrote (train.enable_compile_cache, as the CLI and the app call it), and then
   "retuned": other epochs, learning rate and training-set size (2,000 images), which the same compiled
   program serves (they are its arguments), so it too only loads the cached program.

3. --space: a cold Space's first visitor. The app starts exactly as the Dockerfile's ENV and CMD start it (read
   from the file; port, address and workspace folder changed to loopback and temporary ones, SPACE_ID set), in
   a fresh workspace with the Fashion-MNIST files present. From the moment the health check answers: seconds
   until headless Chromium shows the first page's photo uploader, and until a real phone photo
   (samples/t-shirt.jpg) uploaded there is answered with a class. The browser is started before the server,
   so its own start-up is not counted.

    python bench/startup.py [--repeats 3] [--json]
    python bench/startup.py --quick --json      # synthetic data, one app start, for CI
    python bench/startup.py --space [--repeats 3] [--arrive-after 0] [--json]

JSON keys (--space: space_first_page_s, space_photo_answer_s, space_upload_to_answer_s and samples): app_first_page_s,
train_first_record_cold_s, train_first_record_warm_s, compile_cold_s,
compile_warm_s, train_first_record_retuned_s, compile_retuned_s, plus the individual samples and the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import _common
from _common import emit_json, load_average, median, print_table

FIRST_RECORD_SCRIPT = """
import json, sys, time
sys.path.insert(0, {repo!r})
from fmnist_jax.data import catalogue, splitting
from fmnist_jax.model import presets
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.loop import train
from fmnist_jax.training.program import enable_compile_cache
enable_compile_cache()
quick = {quick!r}
dataset = catalogue.synthetic_dataset(num_train=512, num_test=64) if quick else catalogue.load_dataset("fashion_mnist")
splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.1, seed=0))
cfg = TrainConfig(epochs={epochs!r}, learning_rate={learning_rate!r}, chunk_steps=5 if quick else 50,
                  batch_size=32 if quick else 128)
splits = splits.limit_train({limit!r})
spec = presets.preset({preset!r})
start = time.perf_counter()
for record in train(spec, cfg, splits):
    if record["kind"] == "start":
        compile_seconds = record["compile_seconds"]
    if record["kind"] == "chunk":
        print(json.dumps({{"first_record_s": time.perf_counter() - start, "compile_s": compile_seconds}}))
        break
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


def app_first_page_seconds(home: Path, timeout: float = 120.0) -> float:
    """Seconds from launching `streamlit run app.py` to a healthy server that served the home page HTML."""
    port = _free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    env = {**os.environ, "FMNIST_HOME": str(home)}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=_common.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        while time.perf_counter() - start < timeout:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with status {process.returncode}")
            try:
                status, body = _get(base + "/_stcore/health", timeout=1.0)
                if status == 200 and body.strip() == b"ok":
                    status, page = _get(base + "/")
                    if status == 200 and b"<html" in page.lower():
                        return time.perf_counter() - start
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the app did not serve its first page within {timeout:.0f} s")
    finally:
        _stop(process)


def space_first_visit(home: Path, browser: Any, arrive_after: float = 0.0) -> dict:
    """{'first_page_s', 'photo_answer_s', 'upload_to_answer_s'} for a new Space container's first visitor, who
    opens the page `arrive_after` seconds after the health check's first answer (the first two are counted from
    the visitor's arrival)."""
    docker_env, cmd = _common.dockerfile_start()
    port = _free_port()
    cmd = _common.with_option(_common.with_option(cmd, "--server.port", str(port)), "--server.address", "127.0.0.1")
    env = {**os.environ, **docker_env, "PATH": os.environ["PATH"], "HOME": str(home), "SPACE_ID": "bench/studio",
           "FMNIST_HOME": str(home / "fmnist-home")}
    process = subprocess.Popen([sys.executable, "-m", *cmd], cwd=_common.REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.perf_counter() + 180
        while time.perf_counter() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the app exited with status {process.returncode}")
            try:
                if _get(base + "/_stcore/health", timeout=1.0)[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        time.sleep(arrive_after)
        healthy = time.perf_counter()
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.set_default_timeout(120_000)
        page.goto(base)
        page.get_by_test_id("stFileUploaderDropzone").first.wait_for()
        first_page = time.perf_counter() - healthy
        uploaded = time.perf_counter()
        page.locator("input[type='file']").first.set_input_files(str(_common.REPO / "samples" / "t-shirt.jpg"))
        page.get_by_text("t-shirt.jpg →").first.wait_for()
        answered = time.perf_counter()
        page.close()
        return {"first_page_s": first_page, "photo_answer_s": answered - healthy, "upload_to_answer_s": answered - uploaded}
    finally:
        _stop(process)


def space_main(repeats: int, as_json: bool, arrive_after: float) -> None:
    """The --space measurement: `repeats` new containers, each with its own fresh workspace."""
    from playwright.sync_api import sync_playwright

    load_before = load_average()
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="fmnist-space-") as tmp:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        samples = [space_first_visit(Path(tmp) / f"container-{i}", browser, arrive_after) for i in range(repeats)]
        browser.close()
    pages, answers = [s["first_page_s"] for s in samples], [s["photo_answer_s"] for s in samples]
    uploads = [s["upload_to_answer_s"] for s in samples]
    result = {"space_first_page_s": round(median(pages), 2), "space_photo_answer_s": round(median(answers), 2),
              "space_upload_to_answer_s": round(median(uploads), 2), "arrive_after_s": arrive_after,
              "space_first_page_samples_s": [round(v, 2) for v in pages],
              "space_photo_answer_samples_s": [round(v, 2) for v in answers],
              "load_average": [load_before, load_average()]}
    print(f"a new Space container's first visitor ({os.cpu_count()} cores), arriving {arrive_after:g} s after the "
          f"health check's first answer; seconds from that arrival")
    print_table(["what", "median s", "samples"], [
        ["first page: the photo uploader drawn", result["space_first_page_s"], ", ".join(f"{v:.2f}" for v in pages)],
        ["a phone photo answered with a class", result["space_photo_answer_s"], ", ".join(f"{v:.2f}" for v in answers)],
        ["  of which: upload -> answer", result["space_upload_to_answer_s"], ", ".join(f"{v:.2f}" for v in uploads)]])
    if as_json:
        emit_json(result)


def first_record(home: Path, preset: str, quick: bool, retuned: bool = False) -> dict:
    """{'first_record_s', 'compile_s'} of a fresh process training with `home` as its workspace (and compile cache);
    `retuned`: 3 epochs at learning rate 3e-3 on 2,000 images (or 300, quick) instead of 1 epoch at 1e-3 on all."""
    settings = dict(epochs=3, learning_rate=3e-3, limit=300 if quick else 2000) if retuned else \
        dict(epochs=1, learning_rate=1e-3, limit=None)
    script = FIRST_RECORD_SCRIPT.format(repo=str(_common.REPO), quick=quick, preset=preset, **settings)
    env = {**os.environ, "FMNIST_HOME": str(home)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise RuntimeError(f"training process failed: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="app starts and warm training starts to take the median of")
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--quick", action="store_true", help="synthetic data, one app start, for CI")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--space", action="store_true",
                        help="a new Space container's first visitor: first page and first photo answer, in Chromium")
    parser.add_argument("--arrive-after", type=float, default=0.0,
                        help="--space: seconds between the health check's first answer and the visitor's arrival")
    args = parser.parse_args()
    if args.space:
        space_main(args.repeats, args.json, args.arrive_after)
        return
    repeats = 1 if args.quick else args.repeats
    load_before = load_average()

    with tempfile.TemporaryDirectory(prefix="fmnist-startup-") as tmp:
        app_home = Path(tmp) / "app-home"
        page_seconds = [app_first_page_seconds(app_home) for _ in range(repeats)]
        train_home = Path(tmp) / "train-home"
        datasets = Path(os.environ.get("FMNIST_HOME", Path.home() / ".fmnist_jax")) / "datasets"
        if datasets.is_dir() and not args.quick:
            train_home.mkdir()
            (train_home / "datasets").symlink_to(datasets, target_is_directory=True)  # prepared arrays, not the cache
        cold = first_record(train_home, args.preset, args.quick)
        warm = [first_record(train_home, args.preset, args.quick) for _ in range(repeats)]
        retuned = first_record(train_home, args.preset, args.quick, retuned=True)

    result = {"app_first_page_s": round(median(page_seconds), 2), "app_first_page_samples_s": [round(s, 2) for s in page_seconds],
              "train_first_record_cold_s": round(cold["first_record_s"], 2),
              "train_first_record_warm_s": round(median([w["first_record_s"] for w in warm]), 2),
              "compile_cold_s": round(cold["compile_s"], 2), "compile_warm_s": round(median([w["compile_s"] for w in warm]), 2),
              "train_first_record_retuned_s": round(retuned["first_record_s"], 2),
              "compile_retuned_s": round(retuned["compile_s"], 2),
              "preset": args.preset, "quick": args.quick, "load_average": [load_before, load_average()]}
    print(f"start-up latency ({os.cpu_count()} cores, load average {load_before} -> {result['load_average'][1]})")
    print_table(["what", "seconds", "samples"], [
        ["streamlit run app.py -> first page", result["app_first_page_s"], ", ".join(f"{s:.2f}" for s in page_seconds)],
        [f"train {args.preset}: call -> first record, empty compile cache", result["train_first_record_cold_s"],
         f"compile {result['compile_cold_s']:.2f}"],
        [f"train {args.preset}: call -> first record, warm compile cache", result["train_first_record_warm_s"],
         f"compile {result['compile_warm_s']:.2f}"],
        [f"train {args.preset}: other epochs, learning rate and size, warm cache", result["train_first_record_retuned_s"],
         f"compile {result['compile_retuned_s']:.2f}"]])
    if args.json:
        emit_json(result)


if __name__ == "__main__":
    main()
