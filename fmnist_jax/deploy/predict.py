"""Loading a model (demo, run, bundle, folder) and predicting uploaded files with top-k.
"""
from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_jax.photos import pool
from fmnist_jax.photos.decode import ImageError, PhotoResult
from fmnist_jax.photos.pipeline import preprocess_photo
from fmnist_jax.photos.pipeline_params import resolve_preprocess

DEMO_DIR = Path(__file__).resolve().parents[2] / "models" / "demo"
_LOG = logging.getLogger(__name__)
_DEMO: Any = None
_DEMO_LOCK = threading.Lock()
_WARMING: threading.Thread | None = None


# ----------------------------------------------------------------------------- models and prediction

def load_model(source: str, home: str | Path | None = None) -> Any:
    """A TrainedModel from "demo", a run folder, an exported bundle (.zip) or a model folder; ValueError otherwise."""
    from fmnist_jax import settings, store
    from fmnist_jax.deploy import bundle
    from fmnist_jax.training.trained import TrainedModel

    if not isinstance(source, str) or not source.strip():
        raise ValueError("choose a model: a run folder, an exported bundle (.zip) or 'demo'")
    source = source.strip()
    if source == "demo":
        return bundle.load_model_dir(DEMO_DIR)
    if "\x00" in source or len(source) > 4096:
        raise ValueError("the model path contains a NUL character or is too long")
    path = Path(source).expanduser()
    if not path.exists() and not path.is_absolute():
        workspace = settings.home_dir(home).resolve()
        inside = (workspace / source).resolve()  # a run named relative to the workspace, never outside it
        if inside.is_relative_to(workspace):
            path = inside
    if path.is_file():
        return bundle.load_bundle(path)
    if path.is_dir() and (path / "run.json").is_file():
        model = TrainedModel.from_run(path)  # a StoreError, a ValueError, says what is wrong with the folder
        run = store.read_json(path / "run.json")
        model.preprocess = resolve_preprocess(model.preprocess, model.input_shape)
        model.card.update({"source": "run", "run": path.name, "config": run.get("config"),
                           "dataset": run.get("dataset", "fashion_mnist"), "test_accuracy": run.get("test_accuracy")})
        return model
    if path.is_dir() and (path / "model.json").is_file():
        return bundle.load_model_dir(path)
    raise ValueError(f"{source!r} is not a model: give a run folder (with run.json), an exported bundle (.zip) or 'demo'")


def demo_model() -> Any:
    """The shipped demo model, loaded once per process and shared read-only (its weights never change)."""
    global _DEMO
    with _DEMO_LOCK:
        if _DEMO is None:
            _DEMO = load_model("demo")
        return _DEMO


def _warm_photo() -> bytes:
    """A 640x480 JPEG of a dark garment-like shape on a light floor: the photo pipeline's whole path (decode,
    segmentation, crop) runs on it, as on a visitor's phone photo."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (640, 480), (205, 200, 190))
    ImageDraw.Draw(image).polygon([(250, 90), (390, 90), (470, 170), (420, 200), (410, 400), (230, 400), (220, 200),
                                   (170, 170)], fill=(40, 60, 120))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def warm_demo() -> float:
    """Everything the first page does with a visitor's photo, done once ahead: load the demo model, run a photo
    through the pipeline and the model, and draw its saliency map, so their compilation is not the first
    visitor's wait. Returns the seconds it took."""
    from fmnist_jax.deploy import explain

    start = time.perf_counter()
    model = demo_model()
    photo = preprocess_photo(_warm_photo(), model.preprocess, model.input_shape)
    predict_files(model, [("warm-up.jpg", _warm_photo())])
    explain.explain(model, photo.model_input[None])
    return time.perf_counter() - start


def warm_demo_in_background() -> None:
    """Start warm_demo in a daemon thread, once per process (the server's start); a failure is logged, and the
    first visitor then simply loads the model themselves."""
    global _WARMING

    def work() -> None:
        try:
            _LOG.info("demo model warm in %.1f s", warm_demo())
        except Exception:  # never the server's problem: the page loads the model itself if this failed
            _LOG.exception("warming the demo model failed")

    with _DEMO_LOCK:
        if _WARMING is None:
            _WARMING = threading.Thread(target=work, name="warm-demo", daemon=True)
            _WARMING.start()


def _record(name: str, probs: np.ndarray, class_names: tuple[str, ...], steps: list, unsure: bool) -> dict:
    order = np.argsort(-probs, kind="stable")
    index = int(order[0])
    return {"file": name, "label": class_names[index], "index": index, "probability": float(probs[index]),
            "unsure": bool(unsure),
            "top3": [[class_names[int(i)], float(probs[int(i)])] for i in order[:3]],
            "probs": [float(p) for p in probs], "steps": steps}


def predict_files(model: Any, files: list[tuple[str, bytes]]) -> list[dict]:
    """Predict each (name, bytes) upload; a file that fails gets {"file", "error"} and the others still predict."""
    results: list[dict | None] = [None] * len(files)
    ready: list[tuple[int, PhotoResult]] = []
    queued = [pool.submit(preprocess_photo, payload, model.preprocess, model.input_shape) for _, payload in files]
    for position, ((name, _), photo) in enumerate(zip(files, queued)):
        try:
            ready.append((position, photo.result()))
        except ImageError as error:
            results[position] = {"file": name, "error": str(error)}
    if ready:
        probs = model.predict_proba(np.stack([photo.model_input for _, photo in ready]))
        for (position, photo), row, unsure in zip(ready, probs, model.is_unsure(probs)):
            results[position] = _record(files[position][0], row, model.class_names, photo.steps, unsure)
    return [r for r in results if r is not None]


def public_record(result: dict) -> dict:
    """The JSON contract of the CLI and the REST API: file, label, index, probability, top3, unsure (or file, error).

    `label`/`index` stay the top class; `unsure` says the calibrated top probability is below the model's
    threshold (the garment may be none of the classes)."""
    if "error" in result:
        return {"file": result["file"], "error": result["error"]}
    return {k: result[k] for k in ("file", "label", "index", "probability", "top3", "unsure")}
