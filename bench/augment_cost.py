"""What each training-batch augmentation costs: the augmentation alone, and the compiled training chunk with it.

The training chunks of all settings are built first and then run in alternated windows (`fast` preset by default,
the 15-minute recipe's batch 32, EMA and label smoothing, random uint8 images), so machine noise hits them alike;
the table reports each setting's median images per second and its ratio to the first setting (no augmentation).

    python bench/augment_cost.py [--preset fast] [--windows 5] [--json]
    python bench/augment_cost.py --quick --json     # tiny sizes, for CI

JSON keys: settings (name, augment, augment_us_per_batch, images_per_s, ratio_to_none), batch_size, preset,
load_average.
"""
from __future__ import annotations

import argparse
import time

import _common  # noqa: F401  (puts the repository on the import path)
import jax
import numpy as np
from _common import emit_json, load_average, median, print_table
from throughput import jax_runner

from fmnist_jax.data.augment import AugmentConfig, augment_batch
from fmnist_jax.model import presets
from fmnist_jax.training import program
from fmnist_jax.training.config import TrainConfig

SETTINGS = {
    "none": {},
    "flip": {"flip": 0.5},
    "flip + crop 1": {"flip": 0.5, "crop": 1},
    "flip + crop 2": {"flip": 0.5, "crop": 2},
    "flip + shift 0.07": {"flip": 0.5, "shift": 0.07},
}


def augment_seconds(augment: dict, batch: int, repeats: int) -> float:
    """Median seconds of one jitted augmentation of a float batch (the chunk runs the same function in its loop)."""
    cfg = AugmentConfig(**augment)
    images = jax.random.uniform(jax.random.key(0), (batch, 28, 28, 1))
    run = jax.jit(lambda x, key: augment_batch(x, key, cfg) if cfg.active() else x)
    run(images, jax.random.key(1)).block_until_ready()
    times = []
    for index in range(repeats):
        start = time.perf_counter()
        run(images, jax.random.key(index)).block_until_ready()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--windows", type=int, default=5, help="timed windows per setting")
    parser.add_argument("--window-images", type=int, default=8192, help="images per timed window")
    parser.add_argument("--quick", action="store_true", help="tiny sizes so CI can run it")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.quick:
        args.windows, args.window_images = 2, 4 * args.batch_size

    program.enable_compile_cache()
    rng = np.random.default_rng(0)
    count = max(4096, args.window_images) if not args.quick else 8 * args.batch_size
    images = rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.int32)
    spec = presets.preset(args.preset)
    base = TrainConfig.from_dict({**presets.BEST_RECIPE["config"], "batch_size": args.batch_size})
    load_before = load_average()

    window_steps = max(1, args.window_images // args.batch_size)
    runners = {}
    for name, augment in SETTINGS.items():
        runners[name], _ = jax_runner(spec, base.replace(augment=AugmentConfig(**augment)), images, labels, window_steps)
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for window in range(1, args.windows + 1):  # alternated: every setting once per round
        for name, run_window in runners.items():
            seconds[name].append(run_window(window))
    repeats = 20 if args.quick else 300
    rows = []
    for name, augment in SETTINGS.items():
        rate = window_steps * args.batch_size / median(seconds[name])
        rows.append({"name": name, "augment": augment,
                     "augment_us_per_batch": round(augment_seconds(augment, args.batch_size, repeats) * 1e6, 1),
                     "images_per_s": round(rate, 1)})
    for row in rows:
        row["ratio_to_none"] = round(row["images_per_s"] / rows[0]["images_per_s"], 3)

    print(f"augmentation cost, preset {args.preset}, batch {args.batch_size}, the recipe's optimizer, EMA and label "
          f"smoothing; {args.windows} alternated windows of {window_steps * args.batch_size} images; "
          f"load average {load_before} -> {load_average()}")
    print_table(["augmentation", "augment us/batch", "training img/s", "vs none"],
                [[r["name"], r["augment_us_per_batch"], f"{r['images_per_s']:,.0f}", f"{r['ratio_to_none']:.2f}"] for r in rows])
    if args.json:
        emit_json({"settings": rows, "batch_size": args.batch_size, "preset": args.preset, "quick": args.quick,
                   "load_average": [load_before, load_average()]})


if __name__ == "__main__":
    main()
