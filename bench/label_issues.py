"""How well `label-issues` finds flipped labels: a Fashion-MNIST .npz with a known share of labels flipped to
another class, checked by the CLI itself, scored against the flips.

    python bench/label_issues.py                    # 12,000 training images, 5% flipped, 4 folds x 10 epochs
    python bench/label_issues.py --quick --json     # CI: 1,200 synthetic images, 2 folds x 1 epoch

It writes the .npz (x_train, y_train with the flips, x_test, y_test, class_names), runs
`python -m fmnist_jax label-issues --dataset FILE --json` in a fresh process, and prints precision and recall
against the flips, how often the suggested class is the original one on the true hits, and the seconds. With
--sheet, it draws the flagged images that were not flipped (some are Fashion-MNIST's own mistakes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (puts the repository on sys.path)
import numpy as np
from _common import REPO, emit_json, load_average, print_table

from fmnist_jax.data import catalogue


def flipped_npz(path: Path, images: np.ndarray, labels: np.ndarray, test: tuple[np.ndarray, np.ndarray],
                class_names: tuple[str, ...], share: float, seed: int) -> np.ndarray:
    """Write the .npz with `share` of the training labels moved to another class; returns the flipped rows."""
    rng = np.random.default_rng(seed)
    flipped = np.sort(rng.choice(len(labels), int(round(share * len(labels))), replace=False))
    noisy = labels.copy()
    noisy[flipped] = (labels[flipped] + rng.integers(1, len(class_names), len(flipped))) % len(class_names)
    np.savez(path, x_train=images[..., 0], y_train=noisy, x_test=test[0][..., 0], y_test=test[1],
             class_names=np.asarray(class_names))
    return flipped


def score(issues: list[dict], flipped: np.ndarray, original: np.ndarray) -> dict:
    """Precision and recall of the flagged rows against the flips, and the suggestion's agreement on true hits."""
    flagged = {issue["index"] for issue in issues}
    truth = set(int(i) for i in flipped)
    hits = [issue for issue in issues if issue["index"] in truth]
    return {"flagged": len(flagged), "flipped": len(truth), "true_hits": len(hits),
            "precision": round(len(hits) / max(len(flagged), 1), 4), "recall": round(len(hits) / max(len(truth), 1), 4),
            "suggested_is_original": round(float(np.mean([h["suggested"] == original[h["index"]] for h in hits])), 4)
            if hits else None}


def contact_sheet(path: Path, images: np.ndarray, issues: list[dict], flipped: np.ndarray, names: tuple[str, ...],
                  limit: int = 48) -> int:
    """A PNG of the flagged images that were not flipped, with their given and suggested classes."""
    from PIL import Image, ImageDraw

    unflipped = [issue for issue in issues if issue["index"] not in set(flipped.tolist())][:limit]
    cell, columns = 112, 8
    sheet = Image.new("RGB", (columns * cell, max(1, -(-len(unflipped) // columns)) * (cell + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    for n, issue in enumerate(unflipped):
        x, y = (n % columns) * cell, (n // columns) * (cell + 28)
        sheet.paste(Image.fromarray(images[issue["index"], ..., 0]).resize((cell - 8, cell - 8)), (x + 4, y + 2))
        draw.text((x + 4, y + cell - 4), f"{names[issue['given']][:9]} -> {names[issue['suggested']][:9]}", fill="black")
    sheet.save(path)
    return len(unflipped)


def _data(quick: bool, count: int) -> tuple[np.ndarray, np.ndarray, tuple, tuple[str, ...]]:
    if quick:
        data = catalogue.synthetic_dataset(num_train=1200, num_test=100, seed=1)
        return data.train_images, data.train_labels, (data.test_images, data.test_labels), data.class_names
    data = catalogue.load_fashion_mnist()
    return (data.train_images[:count], data.train_labels[:count], (data.test_images[:1000], data.test_labels[:1000]),
            data.class_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12_000, help="Fashion-MNIST training images (the first N)")
    parser.add_argument("--share", type=float, default=0.05, help="share of labels flipped to another class")
    parser.add_argument("--seed", type=int, default=0, help="which labels flip, and to what")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--preset", default="fast")
    parser.add_argument("--sheet", type=Path, help="draw the flagged images that were not flipped to this PNG")
    parser.add_argument("--quick", action="store_true", help="1,200 synthetic images, 2 folds of 1 epoch (CI)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    if args.quick:
        args.folds, args.epochs = 2, 1

    images, labels, test, names = _data(args.quick, args.images)
    with tempfile.TemporaryDirectory(prefix="label-issues-") as work:
        npz = Path(work) / "flipped.npz"
        flipped = flipped_npz(npz, images, labels, test, names, args.share, args.seed)
        command = [sys.executable, "-m", "fmnist_jax", "label-issues", "--dataset", str(npz), "--folds", str(args.folds),
                   "--epochs", str(args.epochs), "--preset", args.preset, "--json"]
        env = {**os.environ, "PYTHONPATH": str(REPO), "FMNIST_HOME": str(Path(work) / "home")}
        start = time.perf_counter()
        finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if finished.returncode != 0:
        raise SystemExit(f"label-issues failed: {finished.stderr[-2000:]}")
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    scores = score(result["issues"], flipped, labels)
    print_table(["images", "flipped", "flagged", "true hits", "precision", "recall", "suggested = original",
                 "out-of-fold acc.", "seconds"],
                [[result["n"], scores["flipped"], scores["flagged"], scores["true_hits"], scores["precision"],
                  scores["recall"], scores["suggested_is_original"], result["out_of_fold_accuracy"], round(wall, 1)]])
    print(f"\n{args.folds} folds x {args.epochs} epochs of {args.preset}, {os.cpu_count()} cores, "
          f"load average {load_average()}; `label-issues` itself took {result['seconds']} s")
    if args.sheet:
        print(f"{contact_sheet(args.sheet, images, result['issues'], flipped, names)} unflipped flags drawn: {args.sheet}")
    if args.json:
        emit_json({**scores, "n": result["n"], "folds": args.folds, "epochs": args.epochs, "preset": args.preset,
                   "seconds": round(wall, 1), "check_seconds": result["seconds"],
                   "out_of_fold_accuracy": result["out_of_fold_accuracy"], "load_average": load_average()})


if __name__ == "__main__":
    main()
