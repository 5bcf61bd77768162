"""`train` and `evaluate` commands.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from fmnist_jax import settings
from fmnist_jax.cli.common import EXIT_USAGE, CliError, print_json, read_json_file

# ----------------------------------------------------------------------------- train

def _build_config(args: argparse.Namespace, base: dict | None) -> Any:
    from fmnist_jax.training.config import TrainConfig

    cfg = TrainConfig.from_dict(base) if base else TrainConfig()
    overrides = {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer,
                 "learning_rate": args.lr, "seed": args.seed, "schedule": args.schedule,
                 "chunk_steps": args.chunk_steps, "precision": args.precision, "conv_impl": args.conv_impl,
                 "label_smoothing": args.label_smoothing, "weight_decay": args.weight_decay,
                 "freeze_layers": args.freeze, "outlier_weight": args.outlier_weight,
                 "ema_decay": args.ema_decay, "tta_flip": args.tta_flip, "clean_epochs": args.clean_epochs,
                 "ensemble": args.ensemble}
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
    from fmnist_jax.data.splitting import SplitSpec

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
    from fmnist_jax.data import catalogue, splitting

    if dataset and Path(dataset).exists() and dataset not in catalogue.TFDS_DATASETS:
        from fmnist_jax.data.uploads import (
            importer,  # bring-your-own data: zip, csv, npz or IDX files
        )

        ds = importer.load_upload(dataset, progress=progress)
    else:
        ds = catalogue.load_dataset(dataset, data_dir=data_dir, progress=progress, origin="--data-dir")
    return splitting.make_splits(ds, split_spec)


def _import_if_path(args: argparse.Namespace) -> str:
    """The dataset name to train on: an uploaded file or folder is converted once and named "upload/<id>"."""
    from fmnist_jax.data import catalogue

    dataset = args.dataset or "fashion_mnist"
    if not (Path(dataset).exists() and dataset not in catalogue.TFDS_DATASETS):
        if args.image_size is not None or args.color is not None:
            raise CliError("--image-size and --color apply to an uploaded dataset: give --dataset a zip, csv, npz or IDX folder")
        return dataset
    from fmnist_jax.data.uploads import importer

    # The workspace name, not the path, goes into run.json: resume and evaluate load it from the cache.
    return importer.load_upload(dataset, image_size=args.image_size, color=args.color,
                               progress=None if args.json else _progress_bar).name


class _ProgressBar:
    """One progress line on stderr.

    On a terminal it redraws in place when its text changes, at most five times a second. Captured or piped
    (CI logs, a test), it writes a plain line only when the stage changes or every 10 s, so a slow machine's log
    stays short: a redraw every 0.25 s is 100 characters each.
    """

    def __init__(self) -> None:
        self._last_text = ""
        self._last_stage = ""
        self._last_time = 0.0
        self._drawn = False

    def __call__(self, fraction: float, message: str) -> None:
        filled = int(30 * min(1.0, fraction))
        text = f"[{'#' * filled}{'.' * (30 - filled)}] {message[:60]}"
        stage = re.sub(r"[\d.,:%]+", "", message)  # the words, without the counters that change every call
        now = time.monotonic()
        finished = fraction >= 1.0
        changed_stage = stage != self._last_stage
        if sys.stderr.isatty():
            if text == self._last_text or (not changed_stage and not finished and now - self._last_time < 0.2):
                return
            sys.stderr.write(f"\r{text:<92}")
            if finished:
                sys.stderr.write("\n")
            self._drawn = not finished
        else:
            if not (changed_stage or finished or now - self._last_time >= 10.0) or text == self._last_text:
                return
            sys.stderr.write(text + "\n")
        sys.stderr.flush()
        self._last_text, self._last_stage, self._last_time = text, stage, now

    def clear(self) -> None:
        """Wipe a line drawn in place, before a table row is printed under it."""
        if self._drawn and sys.stderr.isatty():
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()
        self._drawn = False
        self._last_text = ""


_progress_bar = _ProgressBar()


def _plan_resume(args: argparse.Namespace, resume_dir: Path) -> dict:
    """What `train --resume RUN` continues: the run's own spec, config, data and split."""
    from fmnist_jax import store
    from fmnist_jax.data import splitting
    from fmnist_jax.training.config import TrainConfig

    try:
        run = store.read_json(resume_dir / "run.json")
    except store.StoreError as error:
        raise CliError(f"cannot resume: {error}") from None
    cfg = TrainConfig.from_dict(run["config"])
    if args.epochs is not None:
        cfg = cfg.replace(epochs=args.epochs)
    done = int(run.get("epochs_completed") or 0)
    if run.get("status") in ("completed", "early_stopped") and done >= cfg.epochs:
        raise CliError(f"run {resume_dir} is already complete ({done} of {cfg.epochs} epochs, {run['status']}); "
                       f"give --epochs N (more than {done}) to train it further")
    return {"cfg": cfg, "spec": run["spec"], "preset": run.get("preset"), "dataset": run.get("dataset", "fashion_mnist"),
            "split": splitting.SplitSpec.from_dict(run["split"]), "limit": run.get("limit"), "run_dir": resume_dir}


def _plan_new(args: argparse.Namespace) -> dict:
    """What a new `train` run will do, checked as far as possible before the (possibly slow) data load."""
    from fmnist_jax import settings
    from fmnist_jax.model import layer_specs, presets

    if args.config:
        base = read_json_file(args.config, "config")
    elif not args.model and (args.preset or "fast") in presets.PRESETS:
        base = dict(presets.PRESETS[args.preset or "fast"].train_defaults)  # the preset's recommended settings
    else:
        base = None
    cfg = _build_config(args, base)
    run_dir = Path(args.out) if args.out else settings.home_dir() / "runs" / time.strftime("run-%Y%m%d-%H%M%S")
    if is_lead_process() and run_dir.exists() and any(run_dir.iterdir()):
        raise CliError(f"output folder {run_dir} is not empty; choose another --out or use --resume {run_dir}")
    spec, preset_name = None, None
    if args.model:
        spec = layer_specs.normalize_spec(read_json_file(args.model, "model spec"))
    else:
        preset_name = args.preset or "fast"
        presets.preset(preset_name)
    cfg.validate()
    return {"cfg": cfg, "spec": spec, "preset": preset_name, "dataset": _import_if_path(args),
            "split": _split_spec(args, cfg.seed), "limit": args.limit, "run_dir": run_dir}


def _show_records(records: Any, args: argparse.Namespace, epochs: int) -> tuple[dict, dict, dict]:
    """Print the live table (and progress bar) of a training run; returns its (start, done, test) records."""
    header = f"{'epoch':>5} {'loss':>7} {'acc':>7} {'val_loss':>8} {'val_acc':>7} {'sec':>6} {'img/s':>7}"
    seen: dict[str, dict] = {"start": {}, "done": {}, "test": {}}
    for record in records:
        kind = record["kind"]
        if kind in seen:
            seen[kind] = record
        if kind == "start":
            for warning in record.get("warnings", []):
                print(f"warning: {warning}", file=sys.stderr)
            print(f"training on {record['device']} x{record['devices']}, {record['train_size']:,} images, "
                  f"{record['steps_per_epoch']} steps/epoch, compiled in {record['compile_seconds']:.1f} s", file=sys.stderr)
            print(header, flush=True)
        elif kind == "chunk" and not args.json:
            _progress_bar(min(record["epoch_progress"], 0.999),
                          f"epoch {record['epoch']}/{epochs} loss {record['loss']:.4f} acc {record['accuracy']:.4f} "
                          f"{record['images_per_s']:,.0f} img/s")
        elif kind == "epoch":
            if not args.json:
                _progress_bar.clear()
            print(f"{record['epoch']:>5} {record['loss']:>7.4f} {record['accuracy']:>7.4f} {record['val_loss']:>8.4f} "
                  f"{record['val_accuracy']:>7.4f} {record['seconds']:>6.1f} {record['images_per_s']:>7,.0f}", flush=True)
        elif kind == "error":
            print(f"error: {record['message']}", file=sys.stderr)
    return seen["start"], seen["done"], seen["test"]


def join_processes(args: argparse.Namespace) -> None:
    """`--distributed`: jax.distributed.initialize, before any other JAX call; a clear CliError when it cannot."""
    import jax

    given = {"coordinator_address": args.coordinator, "num_processes": args.num_processes, "process_id": args.process_id}
    if not args.distributed:
        flags = {"coordinator_address": "--coordinator", "num_processes": "--num-processes", "process_id": "--process-id"}
        named = [flags[k] for k, v in given.items() if v is not None]
        if named:
            raise CliError(f"{', '.join(named)} only apply with --distributed")
        return
    if args.resume:
        raise CliError("--resume cannot be combined with --distributed: resume the run on one machine, or start a new one")
    if args.num_processes is not None and args.num_processes < 1:
        raise CliError(f"--num-processes must be at least 1, got {args.num_processes}")
    if args.process_id is not None and not 0 <= args.process_id < (args.num_processes or 1 << 30):
        raise CliError(f"--process-id must be from 0 to {args.num_processes - 1}, got {args.process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only clusters; GPUs and TPUs use their own
    try:
        jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})
    except (ValueError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CliError(f"--distributed could not join the other processes ({first}); outside Cloud TPU, SLURM, Open MPI "
                       f"and Kubernetes give --coordinator HOST:PORT --num-processes N --process-id I") from None


def is_lead_process() -> bool:
    """Process 0 of a distributed run, or the only process: the one that writes the run folder and prints."""
    import jax

    return jax.process_index() == 0


def cmd_train_plain(args: argparse.Namespace, spec: list | None = None, init_weights: dict | None = None,
                    meta: dict | None = None) -> int:
    """Train a preset, a spec file, or (transfer learning) `spec` starting from `init_weights`."""
    from fmnist_jax.model import layer_specs, presets
    from fmnist_jax.train_and_test import train_and_test
    from fmnist_jax.training.loop import TrainingError, run_to_completion

    resuming = bool(args.resume)
    plan = _plan_resume(args, Path(args.resume)) if resuming else _plan_new(args)
    if spec is not None:
        plan.update(spec=spec, preset=None)
    cfg, spec, dataset, run_dir = plan["cfg"], plan["spec"], plan["dataset"], plan["run_dir"]
    lead = is_lead_process()  # across processes, only process 0 writes the run folder and prints
    splits = load_splits_for(dataset, plan["split"], args.data_dir, _progress_bar if lead and not args.json else None)
    splits = splits.limit_train(plan["limit"])
    meta = {"preset": plan["preset"], "dataset": dataset, "limit": plan["limit"], "source": "cli", **(meta or {})}
    if not resuming:
        if plan["preset"] is not None:
            spec = presets.preset(plan["preset"], splits.num_classes)
        layer_specs.describe(spec, splits.input_shape, splits.num_classes)
        cfg.validate(train_size=len(splits.train_labels))
        if settings.public_mode():  # the Space's caps, before the model is built
            from fmnist_jax.studio import public

            public.check_job(public.job_figures(spec, splits.input_shape, splits.num_classes, cfg.batch_size,
                                                cfg.epochs, len(splits.train_labels), cfg.ensemble))
        if lead:
            run_dir.mkdir(parents=True, exist_ok=True)
        if dataset.startswith("upload/"):
            from fmnist_jax.data.uploads import importer

            meta["preprocess"] = importer.preprocess_settings(dataset)  # photos get the resize the images got
    try:
        records = train_and_test(spec, cfg, splits, run_dir if lead else None, resume=resuming, run_meta=meta,
                                 init_weights=init_weights)
        if not lead:  # the others train in step with process 0, silently
            return 0 if run_to_completion(records).get("status") != "failed" else EXIT_USAGE
        start_info, final, test = _show_records(records, args, cfg.epochs)
    except TrainingError as error:
        raise CliError(str(error)) from None
    result = {"run_dir": str(run_dir), "preset": plan["preset"], "epochs": final.get("epochs_completed"),
              "status": final.get("status"), "train_accuracy": final.get("train_accuracy"),
              "val_accuracy": final.get("val_accuracy"), "best_val_accuracy": final.get("best_val_accuracy"),
              "best_epoch": final.get("best_epoch"), "test_accuracy": test.get("test_accuracy"),
              "test_loss": test.get("test_loss"), "seconds": final.get("seconds"),
              "images_per_s": final.get("images_per_s"), "compile_seconds": start_info.get("compile_seconds"),
              "device": start_info.get("device"), "devices": start_info.get("devices"), "split": plan["split"].mode,
              "dataset": dataset, "train_size": len(splits.train_labels)}
    if args.json:
        print_json(result)
    else:
        print(f"test accuracy {result['test_accuracy'] or float('nan'):.4f}, loss {result['test_loss'] or float('nan'):.4f}; "
              f"run saved in {run_dir}")
    return 0 if final.get("status") != "failed" else EXIT_USAGE


# ----------------------------------------------------------------------------- evaluate

def cmd_evaluate(args: argparse.Namespace) -> int:
    from fmnist_jax import store
    from fmnist_jax.data import splitting
    from fmnist_jax.evaluate import evaluate_model
    from fmnist_jax.training.trained import TrainedModel

    run_dir = Path(args.run_dir)
    try:
        run = store.read_json(run_dir / "run.json")
        model = TrainedModel.from_run(run_dir)
    except store.StoreError as error:
        raise CliError(str(error)) from None
    splits = load_splits_for(run.get("dataset", "fashion_mnist"), splitting.SplitSpec.from_dict(run["split"]), args.data_dir)
    images, labels = {"test": (splits.test_images, splits.test_labels), "validation": (splits.val_images, splits.val_labels),
                      "train": (splits.train_images, splits.train_labels)}[args.split]
    start = time.perf_counter()
    metrics = evaluate_model(model, images, labels)
    seconds = time.perf_counter() - start
    if args.json:
        print_json({"run_dir": str(run_dir), "split": args.split, "accuracy": metrics["accuracy"], "loss": metrics["loss"],
                    "count": metrics["count"], "per_class": metrics["per_class"],
                    "confusion_matrix": metrics["confusion_matrix"], "most_confused": metrics["most_confused"],
                    "class_names": metrics["class_names"], "seconds": seconds,
                    **({"members": metrics["members"]} if "members" in metrics else {})})  # an ensemble's, each alone
        return 0
    print(f"{args.split}: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f} on {metrics['count']:,} images ({seconds:.1f} s)")
    if "members" in metrics:
        print(f"an ensemble of {len(metrics['members'])}; each member alone: "
              + ", ".join(f"{accuracy:.4f}" for accuracy in metrics["members"]))
    print(f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
    for row in metrics["per_class"]:
        print(f"{row['class']:<12} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>6.3f} {row['support']:>8}")
    print("most confused: " + "; ".join(f"{c['true']} -> {c['predicted']} ({c['count']})" for c in metrics["most_confused"][:5]))
    return 0
