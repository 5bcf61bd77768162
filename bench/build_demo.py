"""Turn a finished training run into the shipped demo model (models/demo) with its metrics card.

    python bench/build_demo.py RUN_DIR --command "python -m fmnist_jax train ..." [--out models/demo] \
        [--real-photos ../shared/data/real-photos]

Measures the Fashion-MNIST test accuracy, the photo-like accuracy (pipeline vs naive resize, 1000 test
images, seed 0) and, with --real-photos, the accuracy on real phone photos per folder with 95% intervals
(bench/real_photos.py), and writes model.json, model.msgpack, card.json and config.json (the run's
training config).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import real_photos  # noqa: E402  (bench/real_photos.py: the same scoring the README and the card quote)

from fmnist_jax import store  # noqa: E402
from fmnist_jax.data import catalogue  # noqa: E402
from fmnist_jax.deploy import bundle, predict  # noqa: E402
from fmnist_jax.evaluate import evaluate_model  # noqa: E402
from fmnist_jax.model import layer_specs  # noqa: E402
from fmnist_jax.photos import folders, synthetic  # noqa: E402


def _adaptation_card(run: dict) -> dict:
    """What an adapted model was trained on, and how its "not sure" was calibrated."""
    return {"description": "The Fashion-MNIST base model (models/fashion-base) adapted to real phone photos; "
                           "used when no run is deployed.",
            "dataset": "fashion_mnist+photos",
            "trained_on": {"fashion_mnist": "training images mixed 1:1 with photo samples",
                           "photos": Path(run["photos"]).name, "photo_counts": run.get("photo_counts"),
                           "starting_model": run.get("init_from"), "pipeline": run["preprocess"]["mode"]},
            "calibration": run.get("calibration")}


def _real_photo_card(model, folder: str) -> dict:
    """Accuracy on real photos per folder with 95% intervals, as bench/real_photos.py measures it."""
    photo_folder = folders.read_photo_folder(folder, model.class_names)
    result = real_photos.summarise(model, photo_folder, real_photos.score(model, photo_folder)["rows"])
    per_folder = {name: {**counts, "interval": [round(v, 3) for v in real_photos.wilson(counts["right"], counts["total"])]}
                  for name, counts in result["per_folder"].items()}
    return {"folder": Path(folder).name, "photos": result["n"], "accuracy": round(result["accuracy"], 4),
            "interval": [round(v, 3) for v in result["accuracy_interval"]],
            "naive_accuracy": round(result["naive_accuracy"], 4), "unsure_known": round(result["unsure_known"], 4),
            "unsure_unknown": round(result["unsure_unknown"], 4), "per_folder": per_folder,
            "rule": "known folders: right = an acceptable class and sure; hat/shorts/skirt: right = 'not sure'",
            "command": f"python bench/real_photos.py {folder} --model demo --json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--command", required=True, help="the exact training command, recorded in the card")
    parser.add_argument("--out", default=str(predict.DEMO_DIR))
    parser.add_argument("--photo-count", type=int, default=1000)
    parser.add_argument("--note", help="how the run was chosen or where it trained, recorded in the card")
    parser.add_argument("--real-photos", help="development folder of real photos to measure on (never trained on)")
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
    if run.get("photos"):
        card.update(_adaptation_card(run))
    if args.real_photos:
        card["real_photos"] = _real_photo_card(model, args.real_photos)
    if args.note:
        card["note"] = args.note
    model.card = card
    out = Path(args.out)
    for name, payload in bundle.model_files(model, config=run["config"]).items():
        store.atomic_write_bytes(out / name, payload)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
