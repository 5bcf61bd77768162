"""Photo serving under load: concurrent clients post real phone photos, each its own, as fast as answers come.

Every photo of FOLDER (searched recursively) is re-encoded as a 640-pixel JPEG, the size a phone's browser
upload or a REST client sends, and dealt out so that no two clients post the same photo: the server has no
answer cache to lean on. Each client waits for its answer, then posts its next photo (closed loop), for a
fixed time, against `python -m fmnist_jax serve demo` (POST /predict) and against the studio's own API
(`streamlit run app.py`, POST /api/predict), each started fresh and warmed up first.

With --training, a training job (the `fast` preset on synthetic 28x28 images, batch 128) runs beside the
server the whole time: its images/s are measured alone first, then under the load, and the drop is reported.

    python bench/photo_load.py ../shared/data/real-photos-train                   # 20 clients, 15 s, both
    python bench/photo_load.py ../shared/data/real-photos-train --training --clients 10
    python bench/photo_load.py FOLDER --quick --json                              # CI: serve, 4 clients, 3 s
"""
from __future__ import annotations

import argparse
import io
import json
import os
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
from _common import REPO, emit_json, load_average, print_table
from PIL import Image, ImageOps

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
TARGETS = {"serve": "/predict", "studio": "/api/predict"}


def phone_photos(folder: Path, limit: int, side: int = 640) -> list[tuple[str, bytes]]:
    """(name, JPEG bytes) of up to `limit` photos of `folder`, spread over its subfolders, at `side` px long side."""
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not paths:
        raise SystemExit(f"{folder} has no photos ({', '.join(SUFFIXES)})")
    step = max(1, len(paths) // limit)
    photos = []
    for path in paths[::step][:limit]:
        image = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        photos.append((f"{path.parent.name}-{path.name}", buffer.getvalue()))
    return photos


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(target: str, home: Path) -> tuple[subprocess.Popen, str]:
    """A fresh `serve demo` or studio process on a free port, once its health check answers: (process, base URL)."""
    port = _free_port()
    if target == "serve":
        command = [sys.executable, "-m", "fmnist_jax", "serve", "demo", "--port", str(port)]
        health = "/health"
    else:
        command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                   "--server.port", str(port), "--server.address", "127.0.0.1"]
        health = "/api/health"
    env = {**os.environ, "FMNIST_HOME": str(home), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("FMNIST_PUBLIC", None)  # the local studio: the demo answers without a share token or rate limit
    log = open(home / f"{target}.log", "wb")
    # The same session as the bench and its training job: Linux's autogroup scheduling shares the cores fairly
    # between sessions whatever their nice values, as it would between two terminals; one server's processes
    # (a Space's container) are one session.
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(base + health, timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.5)
    process.kill()
    raise SystemExit(f"the {target} server did not start: {(home / f'{target}.log').read_text()[-2000:]}")


def _client(url: str, photos: list[tuple[str, bytes]], until: float, out: list) -> None:
    """Post `photos` one after another (cycling) until `until`; append (status or error name, seconds)."""
    with httpx.Client(timeout=60) as client:
        position = 0
        while time.monotonic() < until:
            name, payload = photos[position % len(photos)]
            position += 1
            start = time.perf_counter()
            try:
                response = client.post(url, files=[("files", (name, payload, "image/jpeg"))])
                ok = response.status_code == 200 and "label" in response.json()[0]
                out.append((200 if ok else response.status_code, time.perf_counter() - start))
            except (httpx.HTTPError, ValueError, KeyError, IndexError) as error:
                out.append((type(error).__name__, time.perf_counter() - start))


def load(url: str, photos: list[tuple[str, bytes]], clients: int, seconds: float) -> dict:
    """Closed-loop load from `clients` threads, each with its own share of the photos: throughput, p50, p95, errors."""
    results: list[list] = [[] for _ in range(clients)]
    until = time.monotonic() + seconds
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=_client, args=(url, photos[i::clients] or photos, until, results[i]))
               for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - wall_start
    answers = [seconds for outcome in results for status, seconds in outcome if status == 200]
    errors = sum(status != 200 for outcome in results for status, _ in outcome)
    latencies = np.asarray(answers) * 1000 if answers else np.full(1, np.nan)
    return {"clients": clients, "seconds": round(wall, 1), "answers": len(answers), "errors": errors,
            "photos_per_s": round(len(answers) / wall, 1), "p50_ms": round(float(np.percentile(latencies, 50))),
            "p95_ms": round(float(np.percentile(latencies, 95))), "max_ms": round(float(np.max(latencies))),
            "client_cpu_share": round((time.process_time() - cpu_start) / wall / (os.cpu_count() or 1), 3)}


def warm_up(url: str, photos: list[tuple[str, bytes]]) -> None:
    """A few answers before measuring, so compilation and first-request set-up are not counted."""
    with httpx.Client(timeout=120) as client:
        for name, payload in photos[:3]:
            client.post(url, files=[("files", (name, payload, "image/jpeg"))]).raise_for_status()


def train_worker(chunk_steps: int) -> None:
    """The job beside the server (run as a child process): trains until killed, printing each chunk's
    {"t": wall time, "images_per_s"} as a JSON line."""
    from fmnist_jax.data import catalogue, splitting
    from fmnist_jax.model import presets
    from fmnist_jax.training import loop
    from fmnist_jax.training.config import TrainConfig

    splits = splitting.make_splits(catalogue.synthetic_dataset(num_train=12_800, num_test=256))
    cfg = TrainConfig(epochs=10_000, batch_size=128, chunk_steps=chunk_steps)
    for record in loop.train(presets.preset("fast"), cfg, splits):
        if record["kind"] == "chunk":
            print(json.dumps({"t": time.time(), "images_per_s": record["images_per_s"]}), flush=True)


class TrainingJob:
    """A `train_worker` child process and the chunk speeds it reports, read by a thread."""

    def __init__(self, chunk_steps: int = 16):
        self.process = subprocess.Popen([sys.executable, __file__, "--train-worker", str(chunk_steps)], cwd=REPO,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        env={**os.environ, "PYTHONPATH": str(REPO)})
        self.chunks: list[tuple[float, float]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            record = json.loads(line)
            self.chunks.append((record["t"], record["images_per_s"]))

    def wait_until_training(self, chunks: int = 3, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while len(self.chunks) < chunks:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the training job did not start")
            time.sleep(0.2)

    def images_per_s(self, start: float, end: float) -> float:
        """Median images/s of the chunks that ended between the wall times `start` and `end`."""
        inside = [speed for t, speed in self.chunks if start <= t <= end]
        return round(float(np.median(inside)), 1) if inside else float("nan")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=30)


def measure(target: str, photos: list[tuple[str, bytes]], clients: int, seconds: float, training: bool) -> dict:
    """One target: start it, warm it up, (start the job and time it alone,) load it; the figures as a dict."""
    with tempfile.TemporaryDirectory(prefix="photo-load-") as home:
        process, base = start_server(target, Path(home))
        job = None
        try:
            url = base + TARGETS[target]
            warm_up(url, photos)
            row: dict = {"target": target}
            if training:
                job = TrainingJob()
                job.wait_until_training()
                quiet_start = time.time()
                time.sleep(seconds)
                row["train_images_per_s_alone"] = job.images_per_s(quiet_start, time.time())
            load_start, cpu_start = time.time(), cpu_seconds(process.pid)
            row.update(load(url, photos, clients, seconds))
            row["server_cpu_ms_per_answer"] = round((cpu_seconds(process.pid) - cpu_start) * 1000 / max(row["answers"], 1), 1)
            if job is not None:
                row["train_images_per_s_loaded"] = job.images_per_s(load_start + 1, time.time())
                row["train_drop"] = round(1 - row["train_images_per_s_loaded"] / row["train_images_per_s_alone"], 3)
            return row
        finally:
            if job is not None:
                job.stop()
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder of real photos (subfolders searched)")
    parser.add_argument("--target", choices=("serve", "studio", "both"), default="both")
    parser.add_argument("--clients", type=int, default=20, help="concurrent clients, each waiting for its answer")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the load (and of the job's quiet window)")
    parser.add_argument("--photos", type=int, default=800, help="distinct photos dealt out to the clients")
    parser.add_argument("--training", action="store_true", help="a training job runs beside the server")
    parser.add_argument("--quick", action="store_true", help="CI's check of the bench itself: serve, 4 clients, 3 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.quick:
        args.target, args.clients, args.seconds, args.photos = "serve", 4, 3.0, 24

    photos = phone_photos(args.folder, args.photos)
    targets = ["serve", "studio"] if args.target == "both" else [args.target]
    rows = [measure(target, photos, args.clients, args.seconds, args.training) for target in targets]
    columns = ["target", "clients", "photos_per_s", "p50_ms", "p95_ms", "max_ms", "errors", "answers",
               "server_cpu_ms_per_answer"]
    if args.training:
        columns += ["train_images_per_s_alone", "train_images_per_s_loaded", "train_drop"]
    print_table(columns, [[row[c] for c in columns] for row in rows])
    sizes = sorted({Image.open(io.BytesIO(data)).size for _, data in photos[:50]})
    print(f"\n{len(photos)} distinct photos ({sizes[0][0]}x{sizes[0][1]} and others), {os.cpu_count()} cores, "
          f"load average {load_average()}; the clients used {max(r['client_cpu_share'] for r in rows):.0%} of the cores")
    if args.json:
        emit_json({"rows": rows, "photos": len(photos), "cores": os.cpu_count(), "load_average": load_average()})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--train-worker"]:
        train_worker(int(sys.argv[2]))
    else:
        main()
