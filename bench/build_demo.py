"""Turn a finished training run into the shipped demo model (models/demo) with its metrics card.

    python bench/build_demo.py RUN_DIR --command "python -m fmnist_jax train ..." [--out models/demo]

Measures the test accuracy and the photo-like accuracy (pipeline vs naive resize, 1000 test images,
seed 0) and writes model.json, model.msgpack and card.json; config.json (the training config the
command used) is left as it is.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmnist_jax import store
from fmnist_jax.data import catalogue
from fmnist_jax.deploy import (
    bundle,
    predict,  # noqa: E402
)
from fmnist_jax.evaluate import evaluate_model  # noqa: E402
from fmnist_jax.model import layer_specs
from fmnist_jax.photos import synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--command", required=True, help="the exact training command, recorded in the card")
    parser.add_argument("--out", default=str(predict.DEMO_DIR))
    parser.add_argument("--photo-count", type=int, default=1000)
    parser.add_argument("--note", help="how the run was chosen or where it trained, recorded in the card")
    args = parser.parse_args()

    run_dir = Path(args.run_dir)
    run = store.read_json(run_dir / "run.json")
    model = predict.load_model(str(run_dir))
    dataset = catalogue.load_dataset("fashion_mnist")
    metrics = evaluate_model(model, dataset.test_images, dataset.test_labels)
    photo = synthetic.evaluate_photo_like(model, dataset.test_images, dataset.test_labels, args.photo_count, seed=0)
    history = store.read_jsonl(run_dir / "history.jsonl")
    card = {
        "name": "Fashion-MNIST Studio demo model",
        "description": "The 'fast' preset trained with photo-robustness augmentation; used when no run is deployed.",
        "dataset": "fashion_mnist",
        "test_accuracy": round(metrics["accuracy"], 4),
        "test_loss": round(metrics["loss"], 4),
        "test_count": metrics["count"],
        "best_val_accuracy": round(run["best_val_accuracy"], 4),
        "best_epoch": run["best_epoch"],
        "epochs": run["epochs_completed"],
        "photo_like": photo,
        "parameters": layer_specs.describe(model.spec, model.input_shape, model.num_classes)["total_params"],
        "weights_bytes": len(model.weights_bytes()),
        "train_seconds": round(history[-1]["elapsed"], 1) if history else None,
        "date": time.strftime("%Y-%m-%d", time.gmtime(run.get("finished") or time.time())),
        "command": args.command,
        "config_file": "config.json",
    }
    if args.note:
        card["note"] = args.note
    model.card = card
    out = Path(args.out)
    for name, payload in bundle.model_files(model).items():
        if name != "config.json":
            store.atomic_write_bytes(out / name, payload)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
