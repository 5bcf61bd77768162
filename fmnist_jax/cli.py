"""Command line: presets, train, evaluate, predict, serve, export. Same library calls as the UI.

Errors print one line to stderr and exit with status 2; there are no tracebacks for user mistakes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

EXIT_USAGE = 2


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + message
        raise CliError(f"{self.prog}: {message}")


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(type(value).__name__)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """Print one JSON object on one line (NaN/inf become null)."""
    print(json.dumps(_clean(value), default=_json_default), flush=True)


def _read_json_file(path: str, what: str) -> Any:
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise CliError(f"cannot read {what} {path}: {error.strerror or error}") from None
    if len(text) > 5_000_000:
        raise CliError(f"{what} {path} is larger than 5 MB")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise CliError(f"{what} {path} is not valid JSON: {error}") from None


# ----------------------------------------------------------------------------- presets

def cmd_presets(args: argparse.Namespace) -> int:
    from . import layers

    rows = layers.preset_table()
    if args.json:
        print_json([{"name": r["name"], "params": r["params"], "description": r["description"], "flops": r["flops"]} for r in rows])
        return 0
    print(f"{'name':<8} {'params':>11} {'MFLOPs':>8}  description")
    for r in rows:
        print(f"{r['name']:<8} {r['params']:>11,} {r['flops'] / 1e6:>8.1f}  {r['description']}")
    return 0


# ----------------------------------------------------------------------------- train

def _build_config(args: argparse.Namespace, base: dict | None) -> Any:
    from .config import TrainConfig

    cfg = TrainConfig.from_dict(base) if base else TrainConfig()
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer,
                 "learning_rate": args.lr, "seed": args.seed, "schedule": args.schedule,
                 "chunk_steps": args.chunk_steps, "precision": args.precision, "conv_impl": args.conv_impl,
                 "label_smoothing": args.label_smoothing, "weight_decay": args.weight_decay}
    changes = {k: v for k, v in overrides.items() if v is not None}
    if args.augment:
        augment = dict(cfg.augment.__dict__)
        for item in args.augment.split(","):
            key, _, value = item.partition("=")
            try:
                augment[key.strip()] = float(value)
            except ValueError:
                raise CliError(f"--augment expects name=value pairs like flip=0.5,shift=0.1; got {item!r}") from None
        changes["augment"] = augment
    return cfg.replace(**changes) if changes else cfg


def _split_spec(args: argparse.Namespace, seed: int) -> Any:
    from .data import SplitSpec

    spec = SplitSpec(mode=args.split, seed=seed)
    if args.fractions:
        try:
            spec.fractions = tuple(float(v) for v in args.fractions.split(","))
        except ValueError:
            raise CliError(f"--fractions expects three numbers like 0.8,0.1,0.1; got {args.fractions!r}") from None
    if args.val_fraction is not None:
        spec.val_fraction = args.val_fraction
    return spec.validate()


def load_splits_for(dataset: str, split_spec: Any, data_dir: str | None, progress: Any = None) -> Any:
    """Load a dataset by name (or an uploaded file/folder path) and split it."""
    from . import data

    if dataset and Path(dataset).exists() and dataset not in data.TFDS_DATASETS:
        from . import uploads  # bring-your-own data: zip, csv, npz or IDX files

        ds = uploads.load_upload(dataset, progress=progress)
    else:
        ds = data.load_dataset(dataset, data_dir=data_dir, progress=progress)
    return data.make_splits(ds, split_spec)


def _import_if_path(args: argparse.Namespace) -> str:
    """The dataset name to train on: an uploaded file or folder is converted once and named "upload/<id>"."""
    from . import data

    dataset = args.dataset or "fashion_mnist"
    if not (Path(dataset).exists() and dataset not in data.TFDS_DATASETS):
        if args.image_size is not None or args.color is not None:
            raise CliError("--image-size and --color apply to an uploaded dataset: give --dataset a zip, csv, npz or IDX folder")
        return dataset
    from . import uploads

    # The workspace name, not the path, goes into run.json: resume and evaluate load it from the cache.
    return uploads.load_upload(dataset, image_size=args.image_size, color=args.color,
                               progress=None if args.json else _progress_bar).name


def _progress_bar(fraction: float, message: str) -> None:
    filled = int(30 * min(1.0, fraction))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {message[:60]:<60}")
    if fraction >= 1.0:
        sys.stderr.write("\n")
    sys.stderr.flush()


def cmd_train(args: argparse.Namespace) -> int:
    from . import data, layers, settings, store
    from .jobs import train_and_test
    from .train import TrainingError, enable_compile_cache

    enable_compile_cache()
    resume_dir = Path(args.resume) if args.resume else None
    if resume_dir is not None:
        try:
            run = store.read_json(resume_dir / "run.json")
        except store.StoreError as error:
            raise CliError(f"cannot resume: {error}") from None
        from .config import TrainConfig
        cfg = TrainConfig.from_dict(run["config"])
        if args.epochs is not None:
            cfg = cfg.replace(epochs=args.epochs)
        spec, preset_name = run["spec"], run.get("preset")
        dataset = run.get("dataset", "fashion_mnist")
        split_spec = data.SplitSpec.from_dict(run["split"])
        limit, run_dir = run.get("limit"), resume_dir
    else:
        if args.config:
            base = _read_json_file(args.config, "config")
        elif not args.model and (args.preset or "fast") in layers.PRESETS:
            base = dict(layers.PRESETS[args.preset or "fast"].train_defaults)  # the preset's recommended settings
        else:
            base = None
        cfg = _build_config(args, base)
        dataset = _import_if_path(args)
        split_spec = _split_spec(args, cfg.seed)
        limit = args.limit
        run_dir = Path(args.out) if args.out else settings.home_dir() / "runs" / time.strftime("run-%Y%m%d-%H%M%S")
        if run_dir.exists() and any(run_dir.iterdir()):
            raise CliError(f"output folder {run_dir} is not empty; choose another --out or use --resume {run_dir}")
    if resume_dir is None:  # check what we can before the (possibly slow) data load
        if args.model:
            spec, preset_name = layers.normalize_spec(_read_json_file(args.model, "model spec")), None
        else:
            preset_name = args.preset or "fast"
            layers.preset(preset_name)
        cfg.validate()
    splits = load_splits_for(dataset, split_spec, args.data_dir, None if args.json else _progress_bar)
    splits = splits.limit_train(limit)
    if resume_dir is None:
        if preset_name is not None:
            spec = layers.preset(preset_name, splits.num_classes)
        layers.describe(spec, splits.input_shape, splits.num_classes)
        cfg.validate(train_size=len(splits.train_labels))
        run_dir.mkdir(parents=True, exist_ok=True)
    meta = {"preset": preset_name, "dataset": dataset, "limit": limit, "source": "cli"}
    if resume_dir is None and dataset.startswith("upload/"):
        from . import uploads

        meta["preprocess"] = uploads.preprocess_settings(dataset)  # photos get the resize the images got
    header = f"{'epoch':>5} {'loss':>7} {'acc':>7} {'val_loss':>8} {'val_acc':>7} {'sec':>6} {'img/s':>7}"
    start_info: dict = {}
    final: dict = {}
    test: dict = {}
    try:
        for record in train_and_test(spec, cfg, splits, run_dir, resume=resume_dir is not None, run_meta=meta):
            kind = record["kind"]
            if kind == "start":
                start_info = record
                for warning in record.get("warnings", []):
                    print(f"warning: {warning}", file=sys.stderr)
                print(f"training on {record['device']} x{record['devices']}, {record['train_size']:,} images, "
                      f"{record['steps_per_epoch']} steps/epoch, compiled in {record['compile_seconds']:.1f} s", file=sys.stderr)
                print(header, flush=True)
            elif kind == "chunk" and not args.json:
                _progress_bar(min(record["epoch_progress"], 0.999),
                              f"epoch {record['epoch']}/{cfg.epochs} loss {record['loss']:.4f} acc {record['accuracy']:.4f} "
                              f"{record['images_per_s']:,.0f} img/s")
            elif kind == "epoch":
                if not args.json:
                    sys.stderr.write("\r" + " " * 100 + "\r")
                print(f"{record['epoch']:>5} {record['loss']:>7.4f} {record['accuracy']:>7.4f} {record['val_loss']:>8.4f} "
                      f"{record['val_accuracy']:>7.4f} {record['seconds']:>6.1f} {record['images_per_s']:>7,.0f}", flush=True)
            elif kind == "error":
                print(f"error: {record['message']}", file=sys.stderr)
            elif kind == "test":
                test = record
            elif kind == "done":
                final = record
    except TrainingError as error:
        raise CliError(str(error)) from None
    result = {"run_dir": str(run_dir), "preset": preset_name, "epochs": final.get("epochs_completed"),
              "status": final.get("status"), "train_accuracy": final.get("train_accuracy"),
              "val_accuracy": final.get("val_accuracy"), "best_val_accuracy": final.get("best_val_accuracy"),
              "best_epoch": final.get("best_epoch"), "test_accuracy": test.get("test_accuracy"),
              "test_loss": test.get("test_loss"), "seconds": final.get("seconds"),
              "images_per_s": final.get("images_per_s"), "compile_seconds": start_info.get("compile_seconds"),
              "device": start_info.get("device"), "devices": start_info.get("devices"), "split": split_spec.mode,
              "dataset": dataset, "train_size": len(splits.train_labels)}
    if args.json:
        print_json(result)
    else:
        print(f"test accuracy {result['test_accuracy'] or float('nan'):.4f}, loss {result['test_loss'] or float('nan'):.4f}; "
              f"run saved in {run_dir}")
    return 0 if final.get("status") != "failed" else EXIT_USAGE


# ----------------------------------------------------------------------------- evaluate

def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import data, store
    from .evaluate import evaluate_model
    from .train import TrainedModel

    run_dir = Path(args.run_dir)
    try:
        run = store.read_json(run_dir / "run.json")
        model = TrainedModel.from_run(run_dir)
    except store.StoreError as error:
        raise CliError(str(error)) from None
    splits = load_splits_for(run.get("dataset", "fashion_mnist"), data.SplitSpec.from_dict(run["split"]), args.data_dir)
    images, labels = {"test": (splits.test_images, splits.test_labels), "validation": (splits.val_images, splits.val_labels),
                      "train": (splits.train_images, splits.train_labels)}[args.split]
    start = time.perf_counter()
    metrics = evaluate_model(model, images, labels)
    seconds = time.perf_counter() - start
    if args.json:
        print_json({"run_dir": str(run_dir), "split": args.split, "accuracy": metrics["accuracy"], "loss": metrics["loss"],
                    "count": metrics["count"], "per_class": metrics["per_class"],
                    "confusion_matrix": metrics["confusion_matrix"], "most_confused": metrics["most_confused"],
                    "class_names": metrics["class_names"], "seconds": seconds})
        return 0
    print(f"{args.split}: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f} on {metrics['count']:,} images ({seconds:.1f} s)")
    print(f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
    for row in metrics["per_class"]:
        print(f"{row['class']:<12} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} {row['support']:>8}")
    print("most confused: " + "; ".join(f"{c['true']} -> {c['predicted']} ({c['count']})" for c in metrics["most_confused"][:5]))
    return 0


# ----------------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `python -m fmnist_jax`."""
    parser = _Parser(prog="python -m fmnist_jax", description="Fashion-MNIST Studio command line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("presets", help="list model presets with parameter counts")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("train", help="train a model (or --resume a run)")
    p.add_argument("--preset", help="model preset (fast, dls, lenet, wide); default fast")
    p.add_argument("--model", help="model spec JSON file (a list of layers)")
    p.add_argument("--config", help="TrainConfig JSON file; flags override it (default: the preset's recommended settings)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer")
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--schedule", help="constant, cosine, warmup_cosine, one_cycle or step")
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--augment", help="augmentation strengths, e.g. flip=0.5,shift=0.1,rotation=10")
    p.add_argument("--precision", help="float32 or bfloat16")
    p.add_argument("--chunk-steps", type=int, help="optimizer steps per compiled chunk (metrics/stop granularity)")
    p.add_argument("--conv-impl", help="auto, xla or im2col")
    p.add_argument("--split", choices=("official", "pooled"), default="official")
    p.add_argument("--fractions", help="pooled split fractions train,val,test (default 0.8,0.1,0.1)")
    p.add_argument("--val-fraction", type=float, help="official split: validation fraction of the 60k train images")
    p.add_argument("--limit", type=int, help="train on the first N training examples only")
    p.add_argument("--dataset", help="TFDS dataset name, or a path to an uploaded dataset (zip, csv, npz, IDX folder)")
    p.add_argument("--data-dir", help="folder with the dataset's files (default $FMNIST_DATA_DIR)")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="uploaded dataset: resize images to NxN (e.g. 28, 32, 48, 64; default: their own size if small)")
    p.add_argument("--color", choices=("gray", "rgb"), help="uploaded dataset: grayscale or RGB (default: as the images are)")
    p.add_argument("--out", help="run folder (default $FMNIST_HOME/runs/run-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a stopped or killed run from its last checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run on a split")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=("test", "validation", "train"), default="test")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    _add_deploy_commands(sub)
    return parser


def _add_deploy_commands(sub: Any) -> None:
    from . import deploy_cli

    deploy_cli.add_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    from . import store
    from .data import DataUnavailable

    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except CliError as error:
        print(f"error: {error}", file=sys.stderr)
    except (ValueError, DataUnavailable, store.StoreError) as error:
        print(f"error: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
    return EXIT_USAGE
