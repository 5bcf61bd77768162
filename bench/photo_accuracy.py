"""Photo-like accuracy: a model on phone-photo-like renderings of Fashion-MNIST images, pipeline vs naive resize.

The renderings (fmnist_jax.photos) un-negate each garment onto a textured light background (or keep it
bright on a dark one), scale, tint, rotate and move it off-centre, add a shadow and noise, and JPEG it.
"Naive" is grayscale + squash to 28x28, what an app without the pipeline would feed the model.

    python bench/photo_accuracy.py demo --split test --count 1000
    python bench/photo_accuracy.py demo --split validation --preprocess '{"fill": 0.3}'   # tune on validation only
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fmnist_jax.data import catalogue, splitting
from fmnist_jax.deploy import predict
from fmnist_jax.photos import pipeline_params, synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder, bundle (.zip) or 'demo'")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="test for reporting; validation (the official split's 10%% carved from train, seed 0) for tuning")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preprocess", help="JSON object of pipeline settings to override (tuning)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model = predict.load_model(args.model)
    if args.preprocess:
        model.preprocess = pipeline_params.resolve_preprocess({**model.preprocess, **json.loads(args.preprocess)}, model.input_shape)
    dataset = catalogue.load_dataset("fashion_mnist")
    if args.split == "test":
        images, labels = dataset.test_images, dataset.test_labels
    else:
        splits = splitting.make_splits(dataset, splitting.SplitSpec(mode="official", val_fraction=0.1, seed=0))
        images, labels = splits.val_images, splits.val_labels
    start = time.perf_counter()
    result = synthetic.evaluate_photo_like(model, images, labels, args.count, args.seed)
    result.update(split=args.split, seconds=round(time.perf_counter() - start, 1))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['count']} photo-like {args.split} images (seed {args.seed}), {result['seconds']} s")
    print(f"{'':<24} {'pipeline':>9} {'naive':>7}")
    print(f"{'all':<24} {result['pipeline_accuracy']:>9.3f} {result['naive_accuracy']:>7.3f}")
    for part in ("light_background", "dark_background"):
        row = result[part]
        if row["count"]:
            print(f"{part.replace('_', ' ') + ' (' + str(row['count']) + ')':<24} {row['pipeline_accuracy']:>9.3f} {row['naive_accuracy']:>7.3f}")
    print(f"clean originals: {result['clean_accuracy']:.3f}")


if __name__ == "__main__":
    main()
