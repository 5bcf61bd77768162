"""The accelerator path in a few minutes: throughput in float32 and bfloat16 over batch sizes, and time to 95%.

For a machine with a GPU (or TPU) and its own JAX, but no internet and no TensorFlow: the four official
Fashion-MNIST files travel with the repository and are read directly (no TFDS). Run it through
bench/accelerator.sh, which checks the Python packages first.

    python bench/accelerator.py --data DIR_WITH_THE_FOUR_FILES [--budget 300] [--json]
    python bench/accelerator.py --data DIR --quick --json     # a tiny CPU run of every step, for CI

JSON keys: device, devices, throughput (rows of preset, precision, batch, img_s, compile_s),
seconds_to_94, seconds_to_95 (null where not reached within the budget), best_test_accuracy, recipe, curve.
"""
from __future__ import annotations

import argparse
import gzip
import threading
import time
from pathlib import Path

import _common
import numpy as np
from _common import emit_json, median, print_table
from throughput import jax_runner

from fmnist_jax.data import catalogue, splitting
from fmnist_jax.model import presets
from fmnist_jax.train_and_test import train_and_test
from fmnist_jax.training import program
from fmnist_jax.training.config import TrainConfig

FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
         "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
# The accelerator recipe: the wider VGG-style preset, long enough for 95% when a GPU makes epochs cheap.
RECIPE = {"preset": "wide", "config": {"epochs": 40, "batch_size": 256, "optimizer": "adam", "learning_rate": 3e-3,
                                       "schedule": "one_cycle", "label_smoothing": 0.1, "ema_decay": 0.999,
                                       "augment": {"flip": 0.5, "erasing": 0.5}, "chunk_steps": 100}}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a NumPy array: magic 0x0803 images (N, 28, 28), 0x0801 labels (N,)."""
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_from_files(folder: Path) -> splitting.Splits:
    missing = [name for name in FILES.values() if not (folder / name).exists()]
    if missing:
        raise SystemExit(f"{folder} lacks {', '.join(missing)}: copy the four official Fashion-MNIST files there")
    arrays = {key: read_idx(folder / name) for key, name in FILES.items()}
    dataset = catalogue.Dataset("fashion_mnist", arrays["train_images"][..., None], arrays["train_labels"].astype(np.int32),
                                arrays["test_images"][..., None], arrays["test_labels"].astype(np.int32), catalogue.CLASS_NAMES)
    return splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.1, seed=0))


def throughput(splits: splitting.Splits, batches: list[int], windows: int, quick: bool) -> list[dict]:
    rows = []
    for preset in ("fast",) if quick else ("dls", "wide"):
        spec = presets.preset(preset)
        for precision in ("float32", "bfloat16"):
            for batch in batches:
                cfg = TrainConfig(batch_size=batch, precision=precision)
                steps = max(1, (512 if quick else 16384) // batch)
                run, compile_seconds = jax_runner(spec, cfg, splits.train_images, splits.train_labels, steps)
                rate = median([steps * batch / run(i + 1) for i in range(windows)])
                rows.append({"preset": preset, "precision": precision, "batch": batch, "img_s": round(rate, 1),
                             "compile_s": round(compile_seconds, 2)})
                print(f"{preset} {precision} batch {batch}: {rate:,.0f} img/s", flush=True)
    return rows


def time_to_accuracy(splits: splitting.Splits, budget: float, quick: bool) -> dict:
    """Train the recipe, evaluating the test set after every epoch; stop at 95% or when the budget is spent."""
    cfg = TrainConfig.from_dict(RECIPE["config"])
    spec = presets.preset("fast" if quick else RECIPE["preset"], splits.num_classes)
    if quick:
        cfg = cfg.with_epochs(1, batch_size=64, chunk_steps=8)
    stop, reached, curve = threading.Event(), {0.94: None, 0.95: None}, []
    start = time.perf_counter()
    for record in train_and_test(spec, cfg, splits, None, stop=stop, eval_test_each_epoch=True):
        seconds = time.perf_counter() - start
        if record["kind"] == "epoch":
            curve.append({"epoch": record["epoch"], "seconds": round(seconds, 1), "val_accuracy": record["val_accuracy"],
                          "test_accuracy": record["test_accuracy"], "images_per_s": round(record["images_per_s"])})
            print(f"epoch {record['epoch']:>3} {seconds:7.1f} s  val {record['val_accuracy']:.4f}  "
                  f"test {record['test_accuracy']:.4f}", flush=True)
            for target in reached:
                if reached[target] is None and record["test_accuracy"] >= target:
                    reached[target] = round(seconds, 1)
        if reached[0.95] is not None or seconds > budget:
            stop.set()
        if record["kind"] == "error":
            raise SystemExit(f"training failed: {record['message']}")
    return {"seconds_to_94": reached[0.94], "seconds_to_95": reached[0.95],
            "best_test_accuracy": max((c["test_accuracy"] for c in curve), default=None), "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(_common.REPO / "bench" / "data" / "fashion-mnist"),
                        help="folder with the four official *-ubyte.gz files")
    parser.add_argument("--batch-sizes", default="128,512,2048")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--budget", type=float, default=300, help="seconds the time-to-95% run may take")
    parser.add_argument("--quick", action="store_true", help="a tiny CPU run of every step, for CI")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.batch_sizes, args.windows = "64", 1

    program.enable_compile_cache()
    splits = fashion_from_files(Path(args.data))
    if args.quick:
        splits = splits.limit_train(1024)
    device = program.device_summary()
    print(f"accelerator benchmark on {device['count']} x {device['kind']} ({device['platform']})", flush=True)
    rows = throughput(splits, [int(b) for b in args.batch_sizes.split(",")], args.windows, args.quick)
    print_table(["preset", "precision", "batch", "img/s", "compile s"],
                [[r["preset"], r["precision"], r["batch"], r["img_s"], r["compile_s"]] for r in rows])
    accuracy = time_to_accuracy(splits, args.budget, args.quick)
    print(f"94%: {accuracy['seconds_to_94']} s, 95%: {accuracy['seconds_to_95']} s, "
          f"best test {accuracy['best_test_accuracy']}")
    if args.json:
        emit_json({"device": device["kind"], "platform": device["platform"], "devices": device["count"],
                   "throughput": rows, "recipe": RECIPE, **accuracy})


if __name__ == "__main__":
    main()
