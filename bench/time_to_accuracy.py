"""Wall time to 93%, 94% and 95% Fashion-MNIST test accuracy, through the same training path as the app.

The clock starts once the data is loaded and split, before compilation, and includes everything the
user waits for (compile, training, the per-epoch validation and test evaluation, the checkpoints a
run folder gets). Configs are chosen
on validation accuracy only (bench/NOTES.md); test accuracy is reported, never tuned on.

    python bench/time_to_accuracy.py [--config bench/configs/fast_best.json] [--preset fast] [--json]
    python bench/time_to_accuracy.py --quick --json     # tiny synthetic run, for CI

JSON keys: preset, seconds_to_93, seconds_to_94, seconds_to_95 (null where not reached), best_test_accuracy, epochs,
plus the curve, the config file, compile seconds and the load average.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _common
from _common import emit_json, fashion_splits, load_average, print_table

from fmnist_jax.model import presets
from fmnist_jax.train_and_test import train_and_test
from fmnist_jax.training import program
from fmnist_jax.training.config import TrainConfig

DEFAULT_CONFIG = _common.REPO / "bench" / "configs" / "fast_best.json"
TARGETS = (0.93, 0.94, 0.95)


def load_config(path: Path, epochs: int | None) -> tuple[str, TrainConfig, list | None, float]:
    """(preset, TrainConfig, layers or None, validation fraction) from a benchmark config file: {"preset": ...,
    "config": {TrainConfig fields}, optionally "layers": a layer spec list that replaces the preset's, and
    "val_fraction": the share of the 60,000 training images held out for validation (default 0.1)}."""
    values = json.loads(Path(path).read_text())
    cfg = TrainConfig.from_dict(values["config"])
    if epochs is not None:
        cfg = cfg.with_epochs(epochs)
    return values["preset"], cfg, values.get("layers"), float(values.get("val_fraction", 0.1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="benchmark config JSON (preset + TrainConfig)")
    parser.add_argument("--preset", help="override the config's preset")
    parser.add_argument("--epochs", type=int, help="override the config's epochs")
    parser.add_argument("--quick", action="store_true", help="one epoch on a small synthetic set, for CI")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    program.enable_compile_cache()
    preset, cfg, layers, val_fraction = load_config(Path(args.config), 1 if args.quick else args.epochs)
    preset = args.preset or preset
    if args.quick:
        cfg = cfg.replace(batch_size=64, chunk_steps=4)
    splits = fashion_splits(args.quick, seed=cfg.seed, val_fraction=val_fraction)
    spec = layers if layers and not args.preset else presets.preset(preset, splits.num_classes)
    load_before = load_average()

    start = time.perf_counter()  # data is loaded; compile, training, evaluation and checkpoints all count
    curve, reached = [], {target: None for target in TARGETS}
    compile_seconds, test_accuracy = None, None
    run_dir = tempfile.TemporaryDirectory(prefix="fmnist-tta-")  # checkpoints are written as the app writes them
    for record in train_and_test(spec, cfg, splits, Path(run_dir.name) / "run", eval_test_each_epoch=True):
        if record["kind"] == "start":
            compile_seconds = record["compile_seconds"]
        elif record["kind"] == "epoch":
            seconds = time.perf_counter() - start
            curve.append({"epoch": record["epoch"], "seconds": round(seconds, 1), "val_accuracy": record["val_accuracy"],
                          "test_accuracy": record["test_accuracy"], "images_per_s": round(record["images_per_s"])})
            for target in TARGETS:
                if reached[target] is None and record["test_accuracy"] >= target:
                    reached[target] = round(seconds, 1)
            if not args.json:
                print(f"epoch {record['epoch']:>3}  {seconds:7.1f} s  val {record['val_accuracy']:.4f}  "
                      f"test {record['test_accuracy']:.4f}  {record['images_per_s']:,.0f} img/s", flush=True)
        elif record["kind"] == "test":
            test_accuracy = record["test_accuracy"]
        elif record["kind"] == "error":
            raise SystemExit(f"training failed: {record['message']}")

    run_dir.cleanup()
    best_test = max((c["test_accuracy"] for c in curve), default=None)
    best_val = max(curve, key=lambda c: c["val_accuracy"]) if curve else None
    print(f"time to accuracy, preset {preset}, config {Path(args.config).name} ({cfg.epochs} epochs, batch {cfg.batch_size}, "
          f"{cfg.optimizer} {cfg.schedule} lr {cfg.learning_rate:g}), {program.device_summary()['kind']}, "
          f"load average {load_before} -> {load_average()}, compile {compile_seconds} s")
    print_table(["epoch", "seconds", "val acc", "test acc", "img/s"],
                [[c["epoch"], c["seconds"], f"{c['val_accuracy']:.4f}", f"{c['test_accuracy']:.4f}", c["images_per_s"]] for c in curve])
    print("  ".join(f"{target:.0%}: " + (f"{reached[target]} s" if reached[target] is not None else "not reached") for target in TARGETS))
    if args.json:
        emit_json({"preset": preset, "seconds_to_93": reached[0.93], "seconds_to_94": reached[0.94],
                   "seconds_to_95": reached[0.95],
                   "best_test_accuracy": best_test, "epochs": len(curve), "final_test_accuracy": test_accuracy,
                   "val_selected_epoch": best_val["epoch"] if best_val else None,
                   "val_selected_test_accuracy": best_val["test_accuracy"] if best_val else None,
                   "config_file": str(Path(args.config).resolve().relative_to(_common.REPO)) if Path(args.config).resolve().is_relative_to(_common.REPO) else args.config,
                   "config": cfg.to_dict(), "val_fraction": val_fraction, "train_size": len(splits.train_labels), "compile_seconds": compile_seconds, "curve": curve, "quick": args.quick,
                   "load_average": [load_before, load_average()]})


if __name__ == "__main__":
    main()
