"""`python -m fmnist_jax label-issues`: the likely mislabelled training images of a dataset, by confident
learning on out-of-fold predictions (fmnist_jax/label_issues.py)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fmnist_jax.cli.common import print_json
from fmnist_jax.cli.train import _progress_bar  # the CLI's one progress line (short when stderr is captured)

TABLE_ROWS = 30


def _dataset(name: str, data_dir: str | None) -> tuple[Any, list[str] | None]:
    """The dataset by TFDS name or upload path, and for an image upload the file of each training row."""
    from fmnist_jax.data import catalogue

    if Path(name).exists() and name not in catalogue.TFDS_DATASETS:
        from fmnist_jax.data.uploads import importer

        manifest = importer.import_upload(name)
        return catalogue.load_dataset(manifest["name"]), manifest.get("train_files")
    return catalogue.load_dataset(name, data_dir=data_dir, origin="--data-dir"), None


def cmd_label_issues(args: argparse.Namespace) -> int:
    from fmnist_jax import label_issues

    check = label_issues.LabelCheck(folds=args.folds, preset=args.preset, epochs=args.epochs, limit=args.limit,
                                    seed=args.seed).validate()
    dataset, files = _dataset(args.dataset, args.data_dir)
    result = label_issues.find_issues(dataset, check, files, None if args.json else _progress_bar)
    if args.json:
        print_json(result)
        return 0
    _progress_bar.clear()
    names = dataset.class_names
    print(f"{'index':>7}  {'given':<14} {'suggested':<14} {'quality':>7}  file")
    for issue in result["issues"][:TABLE_ROWS]:
        print(f"{issue['index']:>7}  {names[issue['given']]:<14} {names[issue['suggested']]:<14} "
              f"{issue['quality']:>7.3f}  {issue.get('file', '')}")
    more = len(result["issues"]) - TABLE_ROWS
    count = len(result["issues"])
    print(f"\n{count:,} likely label issue{'' if count == 1 else 's'} among {result['n']:,} training images "
          f"({result['folds']} out-of-fold models, out-of-fold accuracy {result['out_of_fold_accuracy']:.1%}, "
          f"{result['seconds']:.0f} s){f'; {more:,} more with --json' if more > 0 else ''}")
    return 0


def add_command(sub: Any) -> None:
    p = sub.add_parser("label-issues", help="find likely mislabelled training images (confident learning)")
    p.add_argument("--dataset", default="fashion_mnist", help="TFDS name, or an uploaded dataset's path (zip, csv, npz, IDX)")
    p.add_argument("--data-dir", help="folder with the dataset's files (default $FMNIST_DATA_DIR)")
    p.add_argument("--limit", type=int, help="check only the first N training images")
    p.add_argument("--folds", type=int, default=4, help="out-of-fold models to train (2-20; default 4)")
    p.add_argument("--preset", default="fast", help="model preset of the fold models (default fast)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per fold model (default 10)")
    p.add_argument("--seed", type=int, default=0, help="fold assignment and training seed")
    p.add_argument("--json", action="store_true", help="print {n, folds, seconds, issues: [...]} as one JSON object")
    p.set_defaults(func=cmd_label_issues)
