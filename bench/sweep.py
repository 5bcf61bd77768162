"""Choose a training config on validation accuracy: train each candidate, never look at the test set.

Each candidate is a benchmark config file ({"preset": ..., "config": {TrainConfig fields}}, the format
of bench/configs/, optionally with "layers": a layer spec list instead of the preset's) or an inline
JSON override of a base file ("preset" and "layers" replace the base's, other keys merge into its
config). The table shows, per candidate, the validation accuracy after every epoch, the final training accuracy (to tell under- from over-fitting)
and the wall time. The test split is not evaluated here; bench/time_to_accuracy.py reports it once a
config has been chosen.

    python bench/sweep.py --base bench/configs/fast_best.json \
        --candidate 'no-shift={"augment": {"flip": 0.5, "shift": 0}}' --candidate 'batch64={"batch_size": 64}'
    python bench/sweep.py --quick --json     # tiny synthetic run, for CI

JSON keys: candidates (name, preset, config, curve of {epoch, seconds, accuracy, val_accuracy},
best_val_accuracy, best_epoch, seconds), best (the name with the highest final validation accuracy).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _common
from _common import emit_json, fashion_splits, load_average, print_table

from fmnist_jax.model import presets
from fmnist_jax.training import loop, program
from fmnist_jax.training.config import TrainConfig

DEFAULT_BASE = _common.REPO / "bench" / "configs" / "fast_best.json"


def merge(base: dict, override: dict) -> dict:
    """`base` with `override` applied; nested dicts (augment) merge key by key."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_candidate(text: str, base: dict) -> tuple[str, dict]:
    """'name=JSON override' or 'name=path/to/config.json' -> (name, full benchmark config)."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--candidate must be NAME=JSON or NAME=FILE, got {text!r}")
    if value.lstrip().startswith("{"):
        override = json.loads(value)
        preset = override.pop("preset", base["preset"])
        spec = override.pop("layers", base.get("layers"))
        return name, {"preset": preset, "config": merge(base["config"], override), **({"layers": spec} if spec else {})}
    return name, json.loads(Path(value).read_text())


def run_candidate(name: str, values: dict, splits, epochs: int | None, quick: bool) -> dict:
    cfg = TrainConfig.from_dict(values["config"])
    if epochs is not None:
        cfg = cfg.with_epochs(epochs)
    if quick:
        cfg = cfg.with_epochs(1, batch_size=64, chunk_steps=4)
    cfg.validate()
    spec = values.get("layers") or presets.preset(values["preset"], splits.num_classes)
    start = time.perf_counter()
    curve = []
    for record in loop.train(spec, cfg, splits):
        if record["kind"] == "epoch":
            curve.append({"epoch": record["epoch"], "seconds": round(time.perf_counter() - start, 1),
                          "accuracy": round(record["accuracy"], 4), "val_accuracy": round(record["val_accuracy"], 4)})
            print(f"  {name}: epoch {record['epoch']:>3}  {curve[-1]['seconds']:7.1f} s  train {record['accuracy']:.4f}  "
                  f"val {record['val_accuracy']:.4f}", flush=True)
        elif record["kind"] == "error":
            raise SystemExit(f"{name}: training failed: {record['message']}")
        elif record["kind"] == "done":
            break
    best = max(curve, key=lambda c: c["val_accuracy"])
    return {"name": name, "preset": values["preset"] if "layers" not in values else "custom", "config": cfg.to_dict(), "curve": curve,
            "final_val_accuracy": curve[-1]["val_accuracy"], "best_val_accuracy": best["val_accuracy"],
            "best_epoch": best["epoch"], "seconds": curve[-1]["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=str(DEFAULT_BASE), help="benchmark config JSON the candidates modify")
    parser.add_argument("--candidate", action="append", default=[],
                        help="NAME=JSON override of the base config, or NAME=FILE; repeatable (the base runs first unless --no-base)")
    parser.add_argument("--no-base", action="store_true", help="do not run the base config itself")
    parser.add_argument("--epochs", type=int, help="override every candidate's epochs")
    parser.add_argument("--quick", action="store_true", help="one epoch on a small synthetic set, for CI")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    program.enable_compile_cache()
    base = json.loads(Path(args.base).read_text())
    candidates = ([] if args.no_base else [("base", base)]) + [parse_candidate(c, base) for c in args.candidate]
    if not candidates:
        raise SystemExit("nothing to run: give --candidate or drop --no-base")
    splits = fashion_splits(args.quick, seed=base["config"].get("seed", 0))
    load_before = load_average()
    results = [run_candidate(name, values, splits, args.epochs, args.quick) for name, values in candidates]

    print(f"validation sweep, base {Path(args.base).name}, {program.device_summary()['kind']}, "
          f"load average {load_before} -> {load_average()}")
    print_table(["candidate", "epochs", "train acc", "final val", "best val", "best epoch", "seconds"],
                [[r["name"], len(r["curve"]), f"{r['curve'][-1]['accuracy']:.4f}", f"{r['final_val_accuracy']:.4f}",
                  f"{r['best_val_accuracy']:.4f}", r["best_epoch"], r["seconds"]] for r in results])
    best = max(results, key=lambda r: r["final_val_accuracy"])
    print(f"best on final validation accuracy: {best['name']}")
    if args.json:
        emit_json({"candidates": results, "best": best["name"], "quick": args.quick,
                   "load_average": [load_before, load_average()]})


if __name__ == "__main__":
    main()
