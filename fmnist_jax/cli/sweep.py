"""`python -m fmnist_jax sweep`: many trainings over a grid (or a random sample) of settings, one after another
within a budget, each saved as a run; the best on validation accuracy is reported (and the test accuracy of
each, which is not used to choose).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from fmnist_jax.cli.common import CliError, print_json


def _numbers(text: str, kind: type, flag: str) -> list:
    try:
        return [kind(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise CliError(f"{flag} expects a comma-separated list like 1e-3,3e-3; got {text!r}") from None


def cmd_sweep(args: argparse.Namespace) -> int:
    from fmnist_jax import settings
    from fmnist_jax.cli.train import load_splits_for
    from fmnist_jax.data.splitting import SplitSpec
    from fmnist_jax.model import presets
    from fmnist_jax.studio import sweeps
    from fmnist_jax.train_and_test import train_and_test
    from fmnist_jax.training.loop import run_to_completion

    spec = sweeps.SweepSpec(presets=[p for p in args.preset.split(",") if p], mode=args.mode, trials=args.trials,
                            learning_rates=_numbers(args.lr, float, "--lr"),
                            batch_sizes=_numbers(args.batch_size, int, "--batch-size"),
                            epochs=_numbers(args.epochs, int, "--epochs"), augment=_numbers(args.augment, float, "--augment"),
                            budget_minutes=args.budget_minutes, seed=args.seed)
    planned = sweeps.trials(spec)  # a grid too large is refused before any data is loaded
    out = Path(args.out) if args.out else settings.home_dir() / "sweeps" / time.strftime("sweep-%Y%m%d-%H%M%S")
    if out.exists() and any(out.iterdir()):
        raise CliError(f"output folder {out} is not empty; choose another --out")
    splits = load_splits_for(args.dataset, SplitSpec(mode="official", seed=args.seed), args.data_dir).limit_train(args.limit)
    if not args.json:
        print(f"sweep: {len(planned)} trial(s) planned, budget {spec.budget_minutes:g} min, {len(splits.train_labels):,} "
              f"training images", file=sys.stderr)

    def run_trial(number: int, values: dict, config: Any) -> dict:
        run_dir = out / f"trial-{number:02d}"
        meta = {"preset": values["preset"], "source": "cli-sweep", "sweep": out.name, "trial": values}
        config.validate(train_size=len(splits.train_labels))
        records = train_and_test(presets.preset(values["preset"], splits.num_classes), config, splits, run_dir,
                                 run_meta=meta)
        final = run_to_completion(records)
        if not args.json:
            print(f"trial {number}: {values} -> validation {final.get('best_val_accuracy') or 0:.4f}", file=sys.stderr)
        return {"val_accuracy": final.get("best_val_accuracy"), "test_accuracy": final.get("test_accuracy"),
                "run": str(run_dir), "status": final.get("status")}

    report = sweeps.run_sweep(spec, run_trial)
    rows = sweeps.table_rows(report)
    print(f"{'trial':>5} {'preset':>6} {'lr':>8} {'batch':>5} {'epochs':>6} {'augment':>7} {'val_acc':>7} "
          f"{'test_acc':>8} {'sec':>6}")
    for row in rows:
        print(f"{row['trial']:>5} {row['preset']:>6} {row['learning rate']:>8.1e} {row['batch size']:>5} "
              f"{row['epochs']:>6} {row['augmentation']:>7.2f} {row['val. accuracy'] or 0:>7.4f} "
              f"{row['test accuracy'] or 0:>8.4f} {row['seconds']:>6.1f}")
    if report["skipped"]:
        print(f"{report['skipped']} trial(s) not run: the {spec.budget_minutes:g}-minute budget was spent", file=sys.stderr)
    if args.json:
        print_json({**report, "out": str(out)})
    return 0


def add_commands(sub: Any) -> None:
    """Register `sweep` on the CLI's subparsers."""
    p = sub.add_parser("sweep", help="train a grid or a random sample of settings within a budget; best on validation")
    p.add_argument("--preset", default="fast", help="comma-separated presets (fast, fast256, fastres, dls, lenet, wide)")
    p.add_argument("--lr", default="1e-3", help="comma-separated learning rates, e.g. 3e-4,1e-3,3e-3")
    p.add_argument("--batch-size", default="128", help="comma-separated batch sizes")
    p.add_argument("--epochs", default="2", help="comma-separated epoch counts")
    p.add_argument("--augment", default="0", help="comma-separated augmentation strengths from 0 to 1")
    p.add_argument("--mode", choices=("grid", "random"), default="grid")
    p.add_argument("--trials", type=int, default=8, help="random mode: how many combinations to draw")
    p.add_argument("--budget-minutes", type=float, default=30.0, help="no new trial starts after this long")
    p.add_argument("--limit", type=int, help="train each trial on the first N training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="folder for the trials' runs (default FMNIST_HOME/sweeps/sweep-<time>)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on the last line")
    p.set_defaults(func=cmd_sweep)
