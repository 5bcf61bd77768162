"""Which saliency method is faithful for the demo model: the deletion test, on the garment, not the input, speed.

    python bench/explanations.py                    # 500 Fashion-MNIST test images (FMNIST_DATA_DIR), every method
    python bench/explanations.py --quick --json     # CI: the 50 test images the repo carries

For each method of `explain` it maps the images (the explained class is the model's answer), then:
- the deletion curves of fmnist_jax/deploy/faithfulness.py: the explained class's mean probability after the
  k most salient pixels, or k random garment pixels (> 40), take their blurred copy's values, for k = 5%...50%
  of the image's garment pixels; "area" is the mean over k (lower deletes faster);
- the share of maps on the garment (mean on pixels > 40 >= 2x the mean on pixels <= 10) and the map's
  correlation with the image;
- ms per image, one image at a time after compilation (median of 30).
Then it runs `python -m fmnist_jax explain demo IMAGE... --out DIR --json` on the first 50 images written as
PNGs, reads the heat maps back, and scores them on the garment: the issue's check, through the command.
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
from _common import REPO, emit_json, load_average, median, print_table

from fmnist_jax.deploy import explain, faithfulness, predict

SAMPLES = REPO / "tests" / "data" / "fashion_mnist_test_samples.npz"


def test_images(count: int, quick: bool) -> tuple[np.ndarray, str]:
    if not quick:
        from fmnist_jax.data import catalogue

        return np.asarray(catalogue.load_dataset("fashion_mnist").test_images[:count]), \
            f"the first {count} Fashion-MNIST test images"
    with np.load(SAMPLES, allow_pickle=False) as stored:
        return stored["images"][..., None], "the 50 test images in tests/data"


def ms_per_image(model: object, images: np.ndarray, method: str, repeats: int = 30) -> float:
    explain.explain(model, images[:1], method)  # compile for a batch of one
    seconds = []
    for image in images[:repeats]:
        start = time.perf_counter()
        explain.explain(model, image[None], method)
        seconds.append(time.perf_counter() - start)
    return 1000.0 * median(seconds)


def through_the_cli(images: np.ndarray, folder: Path) -> dict:
    """`explain demo` on PNGs of the images: the share of its written maps on the garment, and its method."""
    from PIL import Image

    paths = []
    for k, image in enumerate(images):
        paths.append(folder / f"test-{k:03d}.png")
        Image.fromarray(image[..., 0]).save(paths[-1])
    command = [sys.executable, "-m", "fmnist_jax", "explain", "demo", *map(str, paths), "--out", str(folder / "maps"),
               "--json"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"explain failed: {done.stderr[-2000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    maps = np.stack([np.asarray(Image.open(r["heatmap"]), np.float32) / 255.0 for r in results])
    return {"images": len(results), "method": sorted({r["method"] for r in results}),
            "on_garment": float(faithfulness.on_garment(images, maps).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="test images for the deletion test (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="the random garment pixels' seed")
    parser.add_argument("--quick", action="store_true", help="the 50 shipped test images: no data folder needed")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line at the end")
    args = parser.parse_args()

    model = predict.load_model("demo")
    images, source = test_images(args.images, args.quick)
    classes = model.predict_proba(images).argmax(axis=1)
    methods = {}
    for method in explain.METHODS:
        start = time.perf_counter()
        maps, chosen = explain.explain(model, images, method)
        assert (chosen == classes).all()
        methods[method] = {**faithfulness.report(model, images, maps, classes, seed=args.seed),
                           "batch_seconds": round(time.perf_counter() - start, 2),
                           "ms_per_image": round(ms_per_image(model, images, method), 2)}
    with tempfile.TemporaryDirectory() as folder:
        cli = through_the_cli(images[:50], Path(folder))

    print(f"Saliency methods on {source}, demo model; deletion areas are the explained class's mean probability "
          f"over k = 5%...50% of the garment (lower = deletes faster). Load {load_average()}.")
    print_table(["method", "deletion (salient)", "deletion (random)", "beats random", "on garment", "corr mean",
                 "corr max", "ms/image"],
                [[explain.TITLES[m] + (" (default)" if m == explain.BEST else ""), f"{r['salient_area']:.3f}",
                  f"{r['random_area']:.3f}", "yes" if r["beats_random"] else "no", f"{r['on_garment']:.0%}",
                  f"{r['correlation_mean']:.2f}", f"{r['correlation_max']:.2f}", f"{r['ms_per_image']:.1f}"]
                 for m, r in methods.items()])
    print()
    print_table(["k (of garment)"] + [explain.TITLES[m] for m in methods] + ["random"],
                [[f"{f:.0%}"] + [f"{r['salient'][i]:.3f}" for r in methods.values()]
                 + [f"{methods[explain.BEST]['random'][i]:.3f}"] for i, f in enumerate(faithfulness.FRACTIONS)])
    print(f"\nexplain demo on {cli['images']} PNGs ({', '.join(cli['method'])}): maps on the garment for "
          f"{cli['on_garment']:.0%}")
    if args.json:
        emit_json({"images": len(images), "source": source, "default": explain.BEST, "methods": methods,
                   "cli": cli, "load": load_average()})


if __name__ == "__main__":
    main()
