"""Validation accuracy of configs with and without mirror test-time augmentation, on the same trained weights.

Trains each benchmark config (bench/configs/ format) on the official split, printing validation accuracy
per epoch, then evaluates the final model twice: plain, and with the mean logits of each image and its
mirror image; then with translated views on top of the mirror (1-pixel shifts, SHIFT_VIEWS; JSON key
val_accuracy_shift_views), measured here before any of them is built into the library (bench/NOTES.md,
attempt 47). The test split is not evaluated (configs are chosen on validation).

    python bench/tta_gain.py bench/configs/round2/fast30_ema.json bench/configs/round2/mid9_ema.json [--json]
    python bench/tta_gain.py bench/configs/best_94.json --quick --json     # tiny synthetic run, for CI
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import emit_json, fashion_splits, print_table

from fmnist_jax.model import presets
from fmnist_jax.training import loop, program
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.trained import TrainedModel


def run(path: str, splits, quick: bool) -> dict:
    values = json.loads(Path(path).read_text())
    cfg = TrainConfig.from_dict(values["config"])
    if quick:
        cfg = cfg.with_epochs(1, batch_size=64, chunk_steps=4)
    spec = values.get("layers") or presets.preset(values["preset"], splits.num_classes)
    start, curve = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="fmnist-tta-gain-") as folder:
        for record in loop.train(spec, cfg, splits, run_dir=folder):
            if record["kind"] == "epoch":
                curve.append({"epoch": record["epoch"], "seconds": round(time.perf_counter() - start, 1),
                              "val_accuracy": record["val_accuracy"]})
                print(f"{Path(path).name} epoch {record['epoch']:>3}  {curve[-1]['seconds']:7.1f} s  "
                      f"val {record['val_accuracy']:.4f}", flush=True)
            elif record["kind"] == "error":
                raise SystemExit(f"training failed: {record['message']}")
        trained = TrainedModel.from_run(folder)
    accuracy = {}
    for tta in (False, True):  # the mirror model (tta=True) and its logits are kept for the translated views
        model = TrainedModel(trained.spec, trained.input_shape, trained.class_names, trained.weights_bytes(), tta_flip=tta,
                             members=trained.members)
        logits = np.asarray(model.predict_logits(splits.val_images))
        accuracy[tta] = float((logits.argmax(axis=1) == splits.val_labels).mean())
    shifted = {name: float((shift_views_logits(model, splits.val_images, shifts, logits).argmax(axis=1) == splits.val_labels).mean())
               for name, shifts in SHIFT_VIEWS.items()}
    return {"config": path, "epochs": len(curve), "seconds": curve[-1]["seconds"] if curve else None,
            "val_accuracy": accuracy[False], "val_accuracy_tta": accuracy[True], "val_accuracy_shift_views": shifted,
            "curve": curve}


# Translated views on top of the mirror (each view is also mirrored): whole-pixel shifts with black fill, the
# views the 1-pixel random crop of training shows the model.
SHIFT_VIEWS = {"mirror + left/right 1 px": [(0, 1), (0, -1)],
               "mirror + up/down 1 px": [(1, 0), (-1, 0)],
               "mirror + 4 shifts of 1 px": [(0, 1), (0, -1), (1, 0), (-1, 0)]}


def shift_image(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """`images` (N, H, W[, C]) moved by whole pixels, the uncovered border black."""
    out = np.zeros_like(images)
    h, w = images.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = images[:, max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return out


def shift_views_logits(model: TrainedModel, images: np.ndarray, shifts: list, base: np.ndarray) -> np.ndarray:
    """Mean logits over the untranslated view (`base`, `model`'s logits of `images`, weighted as much as all
    shifted views together) and the shifts."""
    moved = sum(np.asarray(model.predict_logits(shift_image(images, dy, dx))) for dy, dx in shifts) / len(shifts)
    return base + moved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", help="benchmark config files")
    parser.add_argument("--quick", action="store_true", help="one epoch on a small synthetic set, for CI")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    program.enable_compile_cache()
    splits = fashion_splits(args.quick)
    results = [run(path, splits, args.quick) for path in args.configs]
    print_table(["config", "epochs", "seconds", "val acc", "val acc, mirror TTA", "gain (points)"],
                [[Path(r["config"]).name, r["epochs"], r["seconds"], f"{r['val_accuracy']:.4f}",
                  f"{r['val_accuracy_tta']:.4f}", f"{100 * (r['val_accuracy_tta'] - r['val_accuracy']):+.2f}"]
                 for r in results])
    print_table(["config", "views", "val acc", "gain over mirror (points)"],
                [[Path(r["config"]).name, name, f"{acc:.4f}", f"{100 * (acc - r['val_accuracy_tta']):+.2f}"]
                 for r in results for name, acc in r["val_accuracy_shift_views"].items()])
    if args.json:
        emit_json({"results": results, "quick": args.quick})


if __name__ == "__main__":
    main()
