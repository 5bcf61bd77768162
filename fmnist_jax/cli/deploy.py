"""CLI commands for deployment: predict, serve, export (same library calls as the Deploy page).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fmnist_jax.cli.common import EXIT_USAGE, CliError, print_json

# explain.METHODS, written out so that --help does not import JAX (a test keeps the two equal)
METHODS_SHOWN = ("integrated", "hirescam", "gradinput", "gradcam", "occlusion")
MODEL_HELP = "a run folder, an exported bundle (.zip), or 'demo' (the shipped model)"


def _load(source: str) -> Any:
    from fmnist_jax import store
    from fmnist_jax.deploy import bundle, predict

    try:
        return predict.load_model(source)
    except (ValueError, bundle.BundleError, store.StoreError) as error:
        raise CliError(str(error)) from None


def _read_images(paths: list[str]) -> tuple[list[tuple[str, bytes]], list[dict]]:
    """(name, bytes) of the readable files, and error records for the rest (missing, folder, too large)."""
    from fmnist_jax.photos.decode import MAX_UPLOAD_BYTES

    files, errors = [], []
    for name in paths:
        path = Path(name)
        try:
            if path.is_dir():
                raise IsADirectoryError("is a folder")
            if path.stat().st_size > MAX_UPLOAD_BYTES:
                errors.append({"file": name, "error": f"the file is {path.stat().st_size / 2**20:.1f} MB; the limit is "
                                                      f"{MAX_UPLOAD_BYTES // 2**20} MB"})
                continue
            files.append((name, path.read_bytes()))
        except OSError as error:
            errors.append({"file": name, "error": f"cannot read the file: {error.strerror or error}"})
    return files, errors


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def images_given(args: argparse.Namespace) -> list[str]:
    """The image paths of predict/explain; a lone image path means the model was left out, and the message says so."""
    if args.images:
        return args.images
    if Path(args.model).suffix.lower() in IMAGE_SUFFIXES:
        raise CliError(f"{args.command} needs a model before the images, e.g. python -m fmnist_jax {args.command} demo "
                       f"{args.model} ({MODEL_HELP})")
    raise CliError(f"{args.command}: give one or more image files after the model {args.model!r}")


def cmd_predict(args: argparse.Namespace) -> int:
    from fmnist_jax.deploy.predict import predict_files, public_record

    images_given(args)
    model = _load(args.model)
    files, errors = _read_images(args.images)
    predicted = {r["file"]: public_record(r) for r in predict_files(model, files)} if files else {}
    failed = {e["file"]: e for e in errors}
    results = [predicted.get(name) or failed[name] for name in args.images]
    if args.json:
        print_json(results)
    else:
        for result in results:
            if "error" in result:
                print(f"{result['file']}: error: {result['error']}")
            else:
                others = ", ".join(f"{label} {p:.1%}" for label, p in result["top3"][1:])
                print(f"{result['file']}: {result['label']} ({result['probability']:.1%}; then {others})")
    return EXIT_USAGE if any("error" in r for r in results) else 0


def model_inputs(model: Any, records: list[dict]) -> Any:
    """The uint8 images the model saw for predicted records, stacked (N, H, W, C)."""
    import numpy as np

    return np.stack([np.asarray(dict(r["steps"])["model input"]).reshape(model.input_shape) for r in records])


def cmd_explain(args: argparse.Namespace) -> int:
    from PIL import Image

    from fmnist_jax.deploy import explain
    from fmnist_jax.deploy.predict import predict_files

    images_given(args)
    model = _load(args.model)
    method = args.method or explain.default_method(model)
    if method in explain.NEEDS_CONV and explain.gradcam_layer(model.spec) is None:
        raise CliError(f"{explain.TITLES[method]} needs a convolution layer and this model has none; "
                       f"use --method integrated or occlusion")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} is a file; give a folder for the heatmaps")
    out.mkdir(parents=True, exist_ok=True)
    files, errors = _read_images(args.images)
    predicted = {r["file"]: r for r in predict_files(model, files)} if files else {}
    good = [predicted[name] for name in dict.fromkeys(args.images) if "error" not in predicted.get(name, {"error": 1})]
    maps = dict(zip([r["file"] for r in good], explain.explain(model, model_inputs(model, good), method)[0])) if good else {}
    failed = {e["file"]: e for e in errors} | {n: {"file": n, "error": r["error"]} for n, r in predicted.items() if "error" in r}
    results, taken = [], set()
    for position, name in enumerate(args.images):
        if name not in maps:
            results.append(failed[name])
            continue
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(name).stem)[:60] or "image"
        path = out / f"{stem}-{method}.png"
        if path in taken:
            path = out / f"{stem}-{position + 1}-{method}.png"
        taken.add(path)
        Image.fromarray(explain.heatmap_png(maps[name]), mode="L").save(path)
        record = predicted[name]
        results.append({"file": name, "label": record["label"], "index": record["index"], "method": method,
                        "heatmap": str(path)})
    if args.json:
        print_json(results)
    else:
        for result in results:
            print(f"{result['file']}: error: {result['error']}" if "error" in result else
                  f"{result['file']}: {result['label']} ({result['method']}) -> {result['heatmap']}")
    return EXIT_USAGE if any("error" in r for r in results) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from fmnist_jax.deploy import serve

    if not 0 < args.port < 65536:
        raise CliError(f"--port must be 1-65535, got {args.port}")
    if not 0 < args.max_request_mb <= 1024:
        raise CliError(f"--max-request-mb must be above 0 and at most 1024, got {args.max_request_mb:g}")
    model = _load(args.model)
    print(f"serving {args.model} on http://{args.host}:{args.port} (API docs at /docs)", file=sys.stderr, flush=True)
    serve.run(model, args.host, args.port, int(args.max_request_mb * 2**20))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from fmnist_jax import store
    from fmnist_jax.deploy import bundle, onnx_export, script_export

    model = _load(args.model)
    out = Path(args.out)
    if out.is_dir():
        suffix = {"bundle": "zip", "onnx": "onnx", "script": "py", "tflite": "tflite"}[args.format]
        raise CliError(f"--out {out} is a folder; give a file name such as model.{suffix}")
    if args.quantize == "int8" and args.format not in ("tflite", "onnx"):
        raise CliError(f"--quantize int8 is for --format tflite or onnx, not {args.format}")
    if args.calibration_data and args.quantize != "int8":
        raise CliError("--calibration-data is for --quantize int8")
    try:
        if args.quantize == "int8":
            return _export_int8(args, model, out)
        if args.format == "tflite":
            from fmnist_jax.deploy import tflite_export

            payload, difference = tflite_export.tflite_bytes(model, _check_images(model))
            out.write_bytes(payload)
            result = {"format": "tflite", "out": str(out), "bytes": out.stat().st_size, "max_abs_diff": difference,
                      "tolerance": tflite_export.TOLERANCE}
        elif args.format == "script":
            out.write_text(script_export.model_script(model, Path(args.model).name))
            result = {"format": "script", "out": str(out), "bytes": out.stat().st_size}
        elif args.format == "bundle":
            tflite = None
            if args.with_tflite:
                from fmnist_jax.deploy import tflite_export

                tflite, _ = tflite_export.tflite_bytes(model, _check_images(model))
            bundle.write_bundle(model, out, tflite=tflite)
            result = {"format": "bundle", "out": str(out), "bytes": out.stat().st_size, "tflite": tflite is not None}
        else:
            difference = onnx_export.export_onnx(model, out, _check_images(model))
            result = {"format": "onnx", "out": str(out), "bytes": out.stat().st_size, "max_abs_diff": difference,
                      "tolerance": bundle.ONNX_TOLERANCE}
    except (bundle.ExportError, store.StoreError) as error:
        raise CliError(str(error)) from None
    if args.json:
        print_json(result)
    elif args.format in ("onnx", "tflite"):
        checker = "onnxruntime" if args.format == "onnx" else "the TFLite interpreter"
        print(f"wrote {out} ({result['bytes']:,} bytes); {checker} matches JAX within {result['max_abs_diff']:.1e}")
    else:
        print(f"wrote {out} ({result['bytes']:,} bytes)")
    return 0


def _export_int8(args: argparse.Namespace, model: Any, out: Path) -> int:
    from fmnist_jax import store
    from fmnist_jax.deploy import quantize

    calibration = quantize.calibration_set(model, args.model, args.calibration_data, args.data_dir)
    test = quantize.test_set(model, args.model, args.data_dir)
    payload, report = quantize.export_int8(model, args.format, calibration.images, test.images, test.labels,
                                           calibration.source, test.source)
    store.atomic_write_bytes(out, payload)
    result = {**report, "out": str(out)}
    if "warning" in result:
        print(f"warning: {result['warning']}", file=sys.stderr)
    if args.json:
        print_json(result)
        return 0
    runtime = "onnxruntime" if args.format == "onnx" else "the TFLite interpreter"
    accuracy = (f"accuracy {result['accuracy']:.2%} (float {result['float_accuracy']:.2%}) on "
                if result["accuracy"] is not None else "checked on ")
    print(f"wrote {out} ({result['bytes']:,} bytes, {result['bytes'] / result['float_bytes']:.0%} of float); "
          f"in {runtime}: {accuracy}{result['test_images']:,} images of {result['test_source']}, same answer as the "
          f"float model on {result['agreement']:.2%}; calibrated on {result['calibration_images']} images "
          f"({result['calibration_source']})")
    return 0


def _check_images(model: Any) -> Any:
    """Fashion-MNIST test images when they are cached locally and fit the model, plus the synthetic check batch."""
    import numpy as np

    from fmnist_jax import settings
    from fmnist_jax.data import catalogue
    from fmnist_jax.deploy import onnx_export

    images = onnx_export.check_images(model)
    if model.input_shape == (28, 28, 1) and (settings.home_dir() / "datasets" / "fashion_mnist" / "meta.json").exists():
        try:
            test_images = catalogue.load_dataset("fashion_mnist").test_images[:192]
            images = np.concatenate([np.asarray(test_images), images])
        except (ValueError, catalogue.DataUnavailable, OSError):
            pass
    return images


def add_commands(sub: Any) -> None:
    """Register the deployment subcommands on the CLI's subparsers."""
    p = sub.add_parser("predict", help="classify image files (photos are preprocessed like the training data)")
    p.add_argument("model", help=MODEL_HELP)
    # nargs="*" and images_given(): argparse's own "required: images" reads wrong when the one path given was an image
    p.add_argument("images", nargs="*", help="image files (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    p.add_argument("--json", action="store_true", help="print a JSON list: file, label, index, probability, top3 (or file, error)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("explain", help="saliency maps: which pixels of each image the prediction rests on")
    p.add_argument("model", help=MODEL_HELP)
    # nargs="*" and images_given(): argparse's own "required: images" reads wrong when the one path given was an image
    p.add_argument("images", nargs="*", help="image files (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    p.add_argument("--out", required=True, help="folder for the heatmap PNGs (grayscale, the model input's size, "
                                                "white = most important)")
    p.add_argument("--method", choices=METHODS_SHOWN,
                   help="integrated (integrated gradients from a black and a blurred baseline; the default, the "
                        "most faithful by the deletion test), hirescam or gradcam (the last convolution block), "
                        "gradinput (gradient x input) or occlusion (a sliding blank patch)")
    p.add_argument("--json", action="store_true", help="print a JSON list: file, label, index, method, heatmap")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("serve", help="serve a model as a REST API (FastAPI + uvicorn)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-request-mb", type=float, default=40.0, help="largest accepted request body (413 above it)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("export", help="export a model as a bundle zip, an ONNX or TensorFlow Lite file, or a training "
                                      "script")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--format", choices=("bundle", "onnx", "tflite", "script"), required=True,
                   help="bundle (zip for predict/serve), onnx, tflite (float32 (N,H,W,C) in [0,1] -> probabilities), or "
                        "script (a standalone Flax NNX + Optax training script)")
    p.add_argument("--out", required=True, help="output file (.zip, .onnx, .tflite or .py)")
    p.add_argument("--quantize", choices=("none", "int8"), default="none",
                   help="tflite/onnx: int8 writes a full-integer TFLite or a statically quantized ONNX model, "
                        "calibrated and then checked against the float model in its own runtime (--json: accuracy, "
                        "float_accuracy, agreement, bytes, float_bytes)")
    p.add_argument("--calibration-data", metavar="NAME|PATH",
                   help="int8: the images to calibrate on (a dataset name, an uploaded dataset file, or a photo "
                        "folder with classes.json); default: a run's training split, or Fashion-MNIST training "
                        "images plus real photos (FMNIST_PHOTOS_DIR) for the demo and bundles")
    p.add_argument("--data-dir", help="the folder with the Fashion-MNIST files (default: FMNIST_DATA_DIR)")
    p.add_argument("--with-tflite", action="store_true",
                   help="bundle: also put the checked TensorFlow Lite model (model.tflite) in the zip")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_export)
