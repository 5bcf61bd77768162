"""What a candidate change costs the training chunk, before spending a validation run on it.

Takes the same base config and `--candidate NAME=JSON` (or NAME=FILE) overrides as bench/sweep.py, so the
stacks and settings timed here are exactly the ones the sweep would train. The training chunks of the base and of
every candidate are compiled first and then run in alternated windows on random uint8 images (machine noise hits
them alike); the table reports each one's median images per second, its ratio to the base and its parameter count.
An ensemble's images per second count each image once per member (each member trains on its own batches), so a
ratio of 1.0 means an ensemble costs exactly its members' single runs.
A candidate that is not within a few percent of the base's rate is not "the same cost" for the 15-minute recipe.

    python bench/model_cost.py --base bench/configs/round2/best_94_val10_fast256.json \
        --candidate 'gelu={"layers": [...]}' --candidate 'nadam={"optimizer": "nadam"}' [--windows 9] [--json]
    python bench/model_cost.py --quick --json     # tiny sizes, for CI

JSON keys: rows (name, preset, params, forward_flops, images, batch_size, members, images_per_s, ratio_to_base), base,
windows, window_images, quick, load_average.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import _common
import numpy as np
from _common import emit_json, load_average, median, print_table
from sweep import parse_candidate
from throughput import jax_runner

from fmnist_jax.model import presets
from fmnist_jax.model.layer_specs import describe
from fmnist_jax.training import program
from fmnist_jax.training.config import TrainConfig

DEFAULT_BASE = _common.REPO / "bench" / "configs" / "round2" / "best_94_val10_fast256.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=str(DEFAULT_BASE), help="benchmark config the candidates override")
    parser.add_argument("--candidate", action="append", default=[], help="NAME=JSON override of the base, or NAME=FILE")
    parser.add_argument("--windows", type=int, default=9, help="timed windows per row (with 5, two identical rows differed by up to 0.15x here)")
    parser.add_argument("--window-images", type=int, default=4096, help="images per timed window")
    parser.add_argument("--quick", action="store_true", help="tiny sizes so CI can run it")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    base = json.loads(Path(args.base).read_text())
    configs = {"base": base}
    for text in args.candidate:
        name, values = parse_candidate(text, base)
        if name in configs:
            raise SystemExit(f"two rows are named {name!r}")
        configs[name] = values
    if args.quick:
        args.windows, args.window_images = 2, 64

    program.enable_compile_cache()
    rng = np.random.default_rng(0)
    count = max(2 * args.window_images, 512)
    images = rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.int32)
    load_before = load_average()

    runners, meta = {}, {}
    for name, values in configs.items():
        cfg = TrainConfig.from_dict(values["config"])
        if args.quick:
            cfg = cfg.replace(batch_size=16)
        spec = values.get("layers") or presets.preset(values["preset"])
        window_steps = max(1, args.window_images // cfg.batch_size)
        runners[name], _ = jax_runner(spec, cfg, images, labels, window_steps)
        summary = describe(spec, (28, 28, 1))
        meta[name] = {"preset": "custom" if values.get("layers") else values["preset"],
                      "params": summary["total_params"], "forward_flops": summary["forward_flops"],
                      # an ensemble trains each member on its own images: a window is members x batches of them
                      "images": window_steps * cfg.batch_size * cfg.ensemble, "batch_size": cfg.batch_size,
                      "members": cfg.ensemble}
    seconds: dict[str, list[float]] = {name: [] for name in configs}
    for window in range(1, args.windows + 1):  # alternated: every row once per round
        for name, run_window in runners.items():
            seconds[name].append(run_window(window))

    rows = [{"name": name, **meta[name], "images_per_s": round(meta[name]["images"] / median(seconds[name]), 1)}
            for name in configs]
    for row in rows:
        row["ratio_to_base"] = round(row["images_per_s"] / rows[0]["images_per_s"], 3)
    print(f"training-chunk cost against {Path(args.base).name}; {args.windows} alternated windows of "
          f"~{args.window_images} images; load average {load_before} -> {load_average()}")
    print_table(["row", "model", "parameters", "forward MFLOPs", "batch", "members", "training img/s", "vs base"],
                [[r["name"], r["preset"], f"{r['params']:,}", f"{r['forward_flops'] / 1e6:.1f}", r["batch_size"],
                  r["members"], f"{r['images_per_s']:,.0f}", f"{r['ratio_to_base']:.3f}"] for r in rows])
    if args.json:
        emit_json({"rows": rows, "base": str(args.base), "windows": args.windows, "window_images": args.window_images,
                   "quick": args.quick, "load_average": [load_before, load_average()]})


if __name__ == "__main__":
    main()
