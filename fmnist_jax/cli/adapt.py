"""`train --init-from MODEL [--photos FOLDER]`: transfer learning from a trained model, and adapting it to
real photos (set-valued targets, "not sure" for folders outside the classes, calibration on held-out photos)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from fmnist_jax.cli.common import EXIT_USAGE, CliError, print_json, read_json_file
from fmnist_jax.cli.train import (
    _build_config,
    _progress_bar,
    _show_records,
    cmd_train_plain,
)

# The recipe `train --init-from demo --photos FOLDER` uses unless --config says otherwise: chosen on photos
# held out of real-photos-train (bench/NOTES.md, "Real photos").
ADAPT_DEFAULTS: dict[str, Any] = {
    "epochs": 2, "batch_size": 64, "optimizer": "adam", "learning_rate": 1e-3, "schedule": "warmup_cosine",
    "warmup_epochs": 0.1, "label_smoothing": 0.1, "outlier_weight": 1.0, "set_loss": "best", "chunk_steps": 50,
    "augment": {"flip": 0.5, "shift": 0.08, "zoom": 0.1, "rotation": 8.0, "brightness": 0.1, "contrast": 0.2},
}


def _base_model(args: argparse.Namespace) -> Any:
    from fmnist_jax.deploy import predict

    try:
        return predict.load_model(args.init_from)
    except ValueError as error:
        raise CliError(f"--init-from: {error}") from None


def _run_dir(args: argparse.Namespace) -> Path:
    from fmnist_jax import settings

    run_dir = Path(args.out) if args.out else settings.home_dir() / "runs" / time.strftime("adapt-%Y%m%d-%H%M%S")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise CliError(f"output folder {run_dir} is not empty; choose another --out")
    return run_dir


def _photo_splits(args: argparse.Namespace, base: Any, preprocess: dict, seed: int) -> tuple[Any, Any]:
    """(splits, photo inputs) for adapting `base` to the photos in args.photos."""
    from fmnist_jax.data import catalogue
    from fmnist_jax.photos import adapt, folders

    try:
        folder = folders.read_photo_folder(args.photos, base.class_names)
        mix = adapt.PhotoMix(held_out=args.photo_held_out, photo_repeat=args.photo_repeat, seed=seed).validate()
    except ValueError as error:
        raise CliError(str(error)) from None
    fashion = catalogue.load_dataset("fashion_mnist", data_dir=args.data_dir, origin="--data-dir",
                                     progress=None if args.json else _progress_bar)
    inputs = folders.photo_inputs(folder, preprocess, base.input_shape, progress=None if args.json else _progress_bar)
    splits, _ = adapt.adaptation_splits(fashion, inputs, mix)
    return splits, inputs


def _calibrate(run_dir: Path, splits: Any, calibration_from: str | None) -> dict:
    """Fit the temperature and the "not sure" threshold on the held-out photos (or take them from another
    run's held-out photos); store them in run.json."""
    from fmnist_jax import store
    from fmnist_jax.training.calibrate import calibrate
    from fmnist_jax.training.trained import TrainedModel

    if calibration_from:
        try:
            calibration = store.read_json(Path(calibration_from) / "run.json")["calibration"]
        except (store.StoreError, KeyError, TypeError):
            raise CliError(f"--calibration-from: {calibration_from} is not a run with a calibration") from None
        calibration = {**calibration, "from_run": str(Path(calibration_from).resolve())}
    else:
        model = TrainedModel.from_run(run_dir)
        calibration = calibrate(model.predict_logits(splits.val_images), splits.val_labels)
    store.update_run(run_dir, calibration=calibration)
    return calibration


def cmd_adapt(args: argparse.Namespace) -> int:
    """Transfer learning from --init-from; with --photos, adaptation to real photos plus calibration."""
    from fmnist_jax.photos.pipeline_params import GRABCUT_PREPROCESS, resolve_preprocess
    from fmnist_jax.train_and_test import train_and_test
    from fmnist_jax.training.loop import TrainingError

    if args.resume or args.model or args.preset:
        raise CliError("--init-from keeps the starting model's layers; it cannot be combined with --resume, --model or --preset")
    if args.photos and not args.init_from:
        raise CliError("--photos adapts a trained model: give --init-from MODEL (for example --init-from demo)")
    if args.photos and not args.photo_held_out and not args.calibration_from:
        raise CliError("with --photo-held-out 0 no photo is left to calibrate on: give --calibration-from RUN, a run "
                       "of the same recipe with held-out photos")
    base = _base_model(args)
    if not args.photos:
        return cmd_train_plain(args, spec=base.spec, init_weights=base.weights,
                               meta={"init_from": args.init_from, "preprocess": base.preprocess})
    config = read_json_file(args.config, "config") if args.config else ADAPT_DEFAULTS
    cfg = _build_config(args, config)
    cfg.validate()
    preprocess = resolve_preprocess(GRABCUT_PREPROCESS if args.photo_mode == "grabcut" else base.preprocess,
                                    base.input_shape)
    run_dir = _run_dir(args)
    splits, inputs = _photo_splits(args, base, preprocess, cfg.seed)
    cfg.validate(train_size=len(splits.train_labels))
    run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"preset": None, "dataset": "fashion_mnist+photos", "source": "cli", "init_from": args.init_from,
            "photos": str(Path(args.photos).resolve()), "preprocess": preprocess,
            "photo_counts": {"train": int(len(inputs.labels) - len(splits.val_labels)), "held_out": int(len(splits.val_labels)),
                             "skipped": len(inputs.skipped)}}
    try:
        records = train_and_test(base.spec, cfg, splits, run_dir, run_meta=meta, init_weights=base.weights)
        start_info, final, test = _show_records(records, args, cfg.epochs)
    except TrainingError as error:
        raise CliError(str(error)) from None
    calibration = _calibrate(run_dir, splits, args.calibration_from) if final.get("status") != "failed" else None
    result = {"run_dir": str(run_dir), "init_from": args.init_from, "epochs": final.get("epochs_completed"),
              "status": final.get("status"), "train_accuracy": final.get("train_accuracy"),
              "val_accuracy": final.get("val_accuracy"), "best_val_accuracy": final.get("best_val_accuracy"),
              "test_accuracy": test.get("test_accuracy"), "test_loss": test.get("test_loss"),
              "seconds": final.get("seconds"), "images_per_s": final.get("images_per_s"),
              "device": start_info.get("device"), "calibration": calibration, "photos": meta["photo_counts"],
              "dataset": meta["dataset"], "train_size": len(splits.train_labels)}
    if args.json:
        print_json(result)
    else:
        held = (calibration or {}).get("held_out", {})
        print(f"Fashion-MNIST test accuracy {result['test_accuracy'] or float('nan'):.4f}; held-out photos: "
              f"accuracy {held.get('known_accuracy') or float('nan'):.3f}, 'not sure' {held.get('unsure_known') or 0:.1%} "
              f"of known / {held.get('unsure_unknown') or 0:.1%} of other garments; run saved in {run_dir}")
    return 0 if final.get("status") != "failed" else EXIT_USAGE
