"""Inference benchmarks of a deployed model, measured side by side in one run:

- predict latency (decode + photo pipeline + model, one file per call) for a 12-megapixel JPEG and a 28x28 PNG;
- REST latency over N sequential requests to a real `serve` process (uvicorn on a free localhost port);
- ONNX parity: max |p_onnx - p_jax| over Fashion-MNIST test images (the 50 shipped samples without the data).

    python bench/inference.py demo [--repeats 30] [--requests 100] [--json]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fmnist_jax import bundle, data, photos, predict, settings  # noqa: E402

SAMPLES = REPO / "tests" / "data" / "fashion_mnist_test_samples.npz"


def _sample_images() -> tuple[np.ndarray, str]:
    if (settings.home_dir() / "datasets" / "fashion_mnist" / "meta.json").exists() or os.environ.get("FMNIST_DATA_DIR"):
        try:
            return np.asarray(data.load_dataset("fashion_mnist").test_images[:1000]), "1000 Fashion-MNIST test images"
        except (ValueError, data.DataUnavailable):
            pass
    with np.load(SAMPLES, allow_pickle=False) as stored:
        return stored["images"][..., None], "50 shipped test samples"


def _inputs(image: np.ndarray) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    photo = photos.render(image, photos.PhotoSpec(size=(4000, 3000), garment_fraction=0.6, angle=4.0), rng)
    png = io.BytesIO()
    Image.fromarray(image[..., 0]).save(png, "PNG")
    return {"12 MP JPEG (4000x3000)": photos.encode(photo, 90), "28x28 PNG": png.getvalue()}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(values, 50)), 2), "p95_ms": round(float(np.percentile(values, 95)), 2),
            "n": len(values)}


def predict_latency(model: object, inputs: dict[str, bytes], repeats: int) -> dict[str, dict]:
    """p50/p95 of predict_files on one file, after a warm-up call."""
    out = {}
    for name, payload in inputs.items():
        predict.predict_files(model, [(name, payload)])
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            predict.predict_files(model, [(name, payload)])
            seconds.append(time.perf_counter() - start)
        out[name] = {"bytes": len(payload), **_percentiles(seconds)}
    return out


def rest_latency(source: str, inputs: dict[str, bytes], requests: int) -> dict[str, dict]:
    """p50/p95 of POST /predict against a real `serve` process, sequential requests."""
    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "fmnist_jax", "serve", source, "--port", str(port)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO)})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.5)
        out = {}
        with httpx.Client(timeout=60) as client:
            for name, payload in inputs.items():
                files = [("files", ("photo", payload, "application/octet-stream"))]
                client.post(f"{base}/predict", files=files).raise_for_status()
                seconds, errors = [], 0
                for _ in range(requests):
                    start = time.perf_counter()
                    response = client.post(f"{base}/predict", files=files)
                    seconds.append(time.perf_counter() - start)
                    errors += response.status_code != 200
                out[name] = {**_percentiles(seconds), "errors": errors}
        return out
    finally:
        process.terminate()
        process.wait(timeout=30)


def onnx_parity(model: object, images: np.ndarray) -> dict:
    """Export to ONNX (checked at export) and report the max probability difference and argmax agreement."""
    import onnxruntime

    start = time.perf_counter()
    payload, difference = bundle.onnx_bytes(model, images)
    export_seconds = time.perf_counter() - start
    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {"images": images.astype(np.float32) / 255.0})[0]
    jax_probs = model.predict_proba(images)
    return {"images": int(len(images)), "max_abs_diff": difference,
            "argmax_agreement": float((onnx_probs.argmax(1) == jax_probs.argmax(1)).mean()),
            "onnx_bytes": len(payload), "export_seconds": round(export_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="demo")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = predict.load_model(args.model)
    images, described = _sample_images()
    inputs = _inputs(images[0])
    result = {"model": args.model, "predict": predict_latency(model, inputs, args.repeats),
              "rest": rest_latency(args.model, inputs, args.requests), "onnx": {**onnx_parity(model, images), "set": described}}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{'':<24} {'predict p50':>11} {'p95':>8}   {'REST p50':>8} {'p95':>8} {'errors':>6}")
    for name in inputs:
        p, r = result["predict"][name], result["rest"][name]
        print(f"{name:<24} {p['p50_ms']:>9.1f}ms {p['p95_ms']:>6.1f}ms   {r['p50_ms']:>6.1f}ms {r['p95_ms']:>6.1f}ms {r['errors']:>6}")
    onnx = result["onnx"]
    print(f"ONNX parity on {described}: max |p_onnx - p_jax| = {onnx['max_abs_diff']:.2e}, "
          f"argmax agreement {onnx['argmax_agreement']:.4f}, {onnx['onnx_bytes']:,} bytes")


if __name__ == "__main__":
    main()
