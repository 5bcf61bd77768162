"""Peak memory and time of importing a Fashion-MNIST-sized pixel CSV (Kaggle form: label,pixel1..pixel784).

Writes a 70,000-row CSV (the official train and test images; or --quick: 2,000 synthetic rows) into a
temporary folder, imports it in a fresh process with the studio's importer, and reports the process's peak
resident memory, and its growth over the resident memory just before the import, beside the memory the
imported arrays need (Linux: /proc/self/statm).

    python bench/csv_memory.py [--rows 70000] [--quick] [--json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, emit_json, load_average, print_table

MEASURE = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from fmnist_jax.data.uploads import importer
import os
baseline = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024  # resident now
start = time.perf_counter()
manifest = importer.import_upload({path!r}, home={home!r})
print(json.dumps({{"seconds": time.perf_counter() - start, "baseline_kib": baseline,
                  "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "counts": manifest["counts"]}}))
"""


def write_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """label,pixel1..pixelN rows, written in blocks (the benchmark's own memory stays small)."""
    with path.open("w") as out:
        out.write("label," + ",".join(f"pixel{i + 1}" for i in range(images[0].size)) + "\n")
        for start in range(0, len(images), 5000):
            block = np.column_stack([labels[start:start + 5000], images[start:start + 5000].reshape(-1, images[0].size)])
            out.write("\n".join(",".join(map(str, row)) for row in block.tolist()) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=70_000)
    parser.add_argument("--quick", action="store_true", help="2,000 synthetic rows, no data files needed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from fmnist_jax.data import catalogue

    if args.quick:
        dataset = catalogue.synthetic_dataset(num_train=2000, num_test=10, seed=0)
        images, labels = dataset.train_images, dataset.train_labels
    else:
        dataset = catalogue.load_dataset("fashion_mnist")
        images = np.concatenate([dataset.train_images, dataset.test_images])[:args.rows]
        labels = np.concatenate([dataset.train_labels, dataset.test_labels])[:args.rows]
    with tempfile.TemporaryDirectory() as folder:
        csv_path = Path(folder) / "train.csv"
        write_csv(csv_path, images, labels)
        script = MEASURE.format(repo=str(REPO), path=str(csv_path), home=str(Path(folder) / "home"))
        started = time.perf_counter()
        output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        result.update(rows=len(labels), csv_mib=round(csv_path.stat().st_size / 2**20, 1),
                      arrays_mib=round(images.nbytes / 2**20, 1), wall_seconds=round(time.perf_counter() - started, 1),
                      load_average=load_average())
    peak = result["peak_kib"] / 1024
    growth = (result["peak_kib"] - result["baseline_kib"]) / 1024
    print_table(["rows", "CSV MiB", "image arrays MiB", "peak RSS MiB", "growth during import MiB", "import s"],
                [[f"{result['rows']:,}", result["csv_mib"], result["arrays_mib"], f"{peak:,.0f}", f"{growth:,.0f}",
                  f"{result['seconds']:.1f}"]])
    if args.json:
        emit_json(result)


if __name__ == "__main__":
    main()
