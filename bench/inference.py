"""Inference benchmarks of a deployed model, measured side by side in one run:

- evaluation throughput: images/s of the model's batched prediction over the 10k Fashion-MNIST test
  set (median of repeats; synthetic images of the same shape when the data files are not set up);
- predict latency (decode + photo pipeline + model, one file per call) for a 12-megapixel JPEG and a 28x28 PNG;
- REST latency over N sequential requests to a real `serve` process (uvicorn on a free localhost port);
- ONNX parity: max |p_onnx - p_jax| over Fashion-MNIST test images (the 50 shipped samples without the data);
- where a photo's time goes (decode and resize, GrabCut, the rest of the pipeline, the model, and the REST
  request around them), median ms per photo over real phone photos re-encoded at 640 px (--photos FOLDER,
  by default ../shared/data/real-photos-train when it is there) and over the 12 MP JPEG.

    python bench/inference.py [demo|RUN_DIR|BUNDLE] [--repeats 30] [--requests 100] [--json]
    python bench/inference.py --quick --json     # few repeats, no data files needed, for CI

JSON keys: eval_img_s, predict_28_p50_ms, predict_28_p95_ms, predict_12mp_p50_ms, predict_12mp_p95_ms,
rest_28_p50_ms, rest_12mp_p50_ms, onnx_max_abs_diff, stages (ms per stage and input), plus the detailed tables
and the load average.
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import _common
import numpy as np
from _common import emit_json, load_average, predict_proba_rate, print_table
from PIL import Image

from fmnist_jax import settings
from fmnist_jax.data import catalogue
from fmnist_jax.deploy import onnx_export, predict
from fmnist_jax.photos import synthetic

REPO = _common.REPO
SAMPLES = REPO / "tests" / "data" / "fashion_mnist_test_samples.npz"


def _data_available() -> bool:
    return (settings.home_dir() / "datasets" / "fashion_mnist" / "meta.json").exists() or bool(os.environ.get("FMNIST_DATA_DIR"))


def _sample_images() -> tuple[np.ndarray, str]:
    if _data_available():
        try:
            return np.asarray(catalogue.load_dataset("fashion_mnist").test_images[:1000]), "1000 Fashion-MNIST test images"
        except (ValueError, catalogue.DataUnavailable):
            pass
    with np.load(SAMPLES, allow_pickle=False) as stored:
        return stored["images"][..., None], "50 shipped test samples"


def _eval_set(quick: bool) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The 10k test images and labels, or (no data files / quick) synthetic images of the same shape."""
    if not quick and _data_available():
        try:
            dataset = catalogue.load_dataset("fashion_mnist")
            return np.asarray(dataset.test_images), np.asarray(dataset.test_labels), "10k Fashion-MNIST test images"
        except (ValueError, catalogue.DataUnavailable):
            pass
    count = 1000 if quick else 10_000
    images = np.random.default_rng(0).integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)
    return images, None, f"{count:,} synthetic 28x28 images (no data files)"


def eval_throughput(model: object, images: np.ndarray, labels: np.ndarray | None, repeats: int) -> dict:
    """Images/s of predict_proba over the whole set (the evaluation path), median of repeats after a warm-up."""
    rate, seconds, probs = predict_proba_rate(model, images, repeats)
    accuracy = float((probs.argmax(1) == labels).mean()) if labels is not None else None
    return {"images": int(len(images)), "img_s": round(rate, 1), "seconds": [round(s, 3) for s in seconds],
            "accuracy": accuracy}


def _inputs(image: np.ndarray) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    photo = synthetic.render(image, synthetic.PhotoSpec(size=(4000, 3000), garment_fraction=0.6, angle=4.0), rng)
    png = io.BytesIO()
    Image.fromarray(image[..., 0]).save(png, "PNG")
    return {"12 MP JPEG (4000x3000)": synthetic.encode(photo, 90), "28x28 PNG": png.getvalue()}


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
    payload, difference = onnx_export.onnx_bytes(model, images)
    export_seconds = time.perf_counter() - start
    session = onnxruntime.InferenceSession(payload, providers=["CPUExecutionProvider"])
    onnx_probs = session.run(None, {"images": images.astype(np.float32) / 255.0})[0]
    jax_probs = model.predict_proba(images)
    return {"images": int(len(images)), "max_abs_diff": difference,
            "argmax_agreement": float((onnx_probs.argmax(1) == jax_probs.argmax(1)).mean()),
            "onnx_bytes": len(payload), "export_seconds": round(export_seconds, 1)}


def _median_ms(function, items: list) -> float:
    times = []
    for item in items:
        start = time.perf_counter()
        function(item)
        times.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(times)), 2)


def pipeline_stages(model: object, payloads: list[bytes]) -> dict[str, float]:
    """Median ms per photo of each stage of a prediction, one photo at a time on one thread."""
    from fmnist_jax.photos import decode, grabcut, pipeline

    params, shape = model.preprocess, model.input_shape
    decoded = [decode.decode_image(data, params["work_size"])[0] for data in payloads]
    inputs = [pipeline.preprocess_photo(data, params, shape).model_input[None] for data in payloads]
    stages = {"decode and resize": _median_ms(lambda data: decode.decode_image(data, params["work_size"]), payloads)}
    if params["mode"] == "grabcut":
        stages["GrabCut"] = _median_ms(lambda rgb: grabcut.grabcut_mask(rgb, params, []), decoded)
    whole = _median_ms(lambda data: pipeline.preprocess_photo(data, params, shape), payloads)
    stages["rest of the pipeline"] = round(max(0.0, whole - sum(stages.values())), 2)
    stages["model"] = _median_ms(model.predict_proba, inputs)
    return stages


def _real_photos(folder: str | None, count: int) -> tuple[list[bytes], str]:
    from photo_load import phone_photos

    root = Path(folder) if folder else REPO.parent / "shared" / "data" / "real-photos-train"
    if not root.is_dir():
        return [], f"no real photos at {root}"
    return [data for _, data in phone_photos(root, count)], f"{count} real photos of {root.name} at 640 px"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="demo", help="'demo', a run folder or a bundle")
    parser.add_argument("--repeats", type=int, default=30, help="predict calls per input (after one warm-up)")
    parser.add_argument("--eval-repeats", type=int, default=5, help="passes over the test set")
    parser.add_argument("--requests", type=int, default=100, help="sequential REST requests per input")
    parser.add_argument("--photos", help="folder of real photos for the stage breakdown")
    parser.add_argument("--quick", action="store_true", help="few repeats on synthetic data, for CI")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.eval_repeats, args.requests = 3, 1, 5

    load_before = load_average()
    model = predict.load_model(args.model)
    eval_images, eval_labels, eval_described = _eval_set(args.quick)
    evaluation = {**eval_throughput(model, eval_images, eval_labels, args.eval_repeats), "set": eval_described}
    images, described = _sample_images()
    if args.quick:
        images, described = images[:50], f"{min(50, len(images))} test images"
    inputs = _inputs(images[0])
    latency = predict_latency(model, inputs, args.repeats)
    rest = rest_latency(args.model, inputs, args.requests)
    onnx = {**onnx_parity(model, images), "set": described}
    big, small = "12 MP JPEG (4000x3000)", "28x28 PNG"
    photos, photos_described = _real_photos(args.photos, 10 if args.quick else 60)
    stages = {big: pipeline_stages(model, [inputs[big]] * max(3, args.repeats // 3))}
    if photos:
        stages[photos_described] = pipeline_stages(model, photos)
    for name, row in stages.items():  # REST p50 - predict p50: the 12 MP upload's, or the small PNG's for a 640 px photo
        sent = big if name == big else small
        row["REST request around it"] = round(max(0.0, rest[sent]["p50_ms"] - latency[sent]["p50_ms"]), 2)

    print(f"inference of {args.model!r}, load average {load_before} -> {load_average()}")
    print(f"evaluation: {evaluation['img_s']:,.0f} img/s over {eval_described}"
          + (f" (accuracy {evaluation['accuracy']:.4f})" if evaluation["accuracy"] is not None else ""))
    print_table(["input", "bytes", "predict p50 ms", "p95 ms", "REST p50 ms", "p95 ms", "REST errors"],
                [[name, latency[name]["bytes"], f"{latency[name]['p50_ms']:.1f}", f"{latency[name]['p95_ms']:.1f}",
                  f"{rest[name]['p50_ms']:.1f}", f"{rest[name]['p95_ms']:.1f}", rest[name]["errors"]] for name in inputs])
    print(f"ONNX parity on {described}: max |p_onnx - p_jax| = {onnx['max_abs_diff']:.2e}, "
          f"argmax agreement {onnx['argmax_agreement']:.4f}, {onnx['onnx_bytes']:,} bytes")
    names = list(next(iter(stages.values())))
    print(f"\nwhere a photo's time goes, median ms per photo, one at a time ({photos_described if not photos else 'both inputs'}; "
          "the REST request around a 640 px photo is taken from the small PNG's):")
    print_table(["input", *names], [[name, *(row.get(stage, "-") for stage in names)] for name, row in stages.items()])
    if args.json:
        emit_json({"eval_img_s": evaluation["img_s"], "stages": stages,
                   "predict_28_p50_ms": latency[small]["p50_ms"], "predict_28_p95_ms": latency[small]["p95_ms"],
                   "predict_12mp_p50_ms": latency[big]["p50_ms"], "predict_12mp_p95_ms": latency[big]["p95_ms"],
                   "rest_28_p50_ms": rest[small]["p50_ms"], "rest_12mp_p50_ms": rest[big]["p50_ms"],
                   "onnx_max_abs_diff": onnx["max_abs_diff"], "model": args.model, "evaluation": evaluation,
                   "predict": latency, "rest": rest, "onnx": onnx, "quick": args.quick,
                   "load_average": [load_before, load_average()]})


if __name__ == "__main__":
    main()
