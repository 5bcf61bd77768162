"""Command line: presets, train, evaluate, sweep, label-issues, predict, explain, serve, export. Same library calls as the UI.

Errors print one line to stderr and exit with status 2; there are no tracebacks for user mistakes.

"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

from fmnist_jax.cli.common import EXIT_USAGE, CliError, Parser, print_json
from fmnist_jax.cli.train import cmd_evaluate, cmd_train_plain, join_processes

# ----------------------------------------------------------------------------- presets

def cmd_presets(args: argparse.Namespace) -> int:
    from fmnist_jax.model import presets

    rows = presets.preset_table()
    if args.json:
        print_json([{"name": r["name"], "params": r["params"], "description": r["description"], "flops": r["flops"]} for r in rows])
        return 0
    print(f"{'name':<8} {'params':>11} {'MFLOPs':>8}  description")
    for r in rows:
        print(f"{r['name']:<8} {r['params']:>11,} {r['flops'] / 1e6:>8.1f}  {r['description']}")
    return 0


# ----------------------------------------------------------------------------- parser

def _add_train_parser(sub: Any) -> None:
    """The `train` command and its flags."""
    p = sub.add_parser("train", help="train a model (or --resume a run)")
    p.add_argument("--preset", help="model preset (fast, fast256, fastres, dls, lenet, wide); default fast")
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
    p.add_argument("--clean-epochs", type=int, metavar="N", help="train the last N epochs without augmentation")
    p.add_argument("--precision", help="float32 or bfloat16")
    p.add_argument("--chunk-steps", type=int, help="optimizer steps per compiled chunk (metrics/stop granularity)")
    p.add_argument("--conv-impl", help="auto, xla, im2col, xla_dots or winograd (auto: winograd on CPU)")
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
    p.add_argument("--init-from", metavar="MODEL", help="transfer learning: start from a trained model (run folder, "
                                                        "bundle or 'demo'); its layers and classes are kept")
    p.add_argument("--freeze", type=int, metavar="N", help="transfer learning: keep the first N layers as they are")
    p.add_argument("--photos", metavar="FOLDER", help="adapt --init-from to real photos: class folders and a "
                                                       "classes.json of acceptable classes per folder ([] = not a class)")
    p.add_argument("--photo-mode", choices=("grabcut", "garment"), default="grabcut",
                   help="photo pipeline the adapted model trains and predicts with (default grabcut)")
    p.add_argument("--photo-held-out", type=float, default=0.2, help="share of each folder kept for validation and calibration")
    p.add_argument("--photo-repeat", type=int, default=6, help="mean times each training photo appears per epoch")
    p.add_argument("--calibration-from", metavar="RUN_DIR", help="take the temperature and 'not sure' threshold from "
                                                                 "a run with held-out photos (for --photo-held-out 0)")
    p.add_argument("--outlier-weight", type=float, help="weight of the 'not sure' loss for photos outside the classes")
    p.add_argument("--ensemble", type=int, metavar="N",
                   help="train N networks side by side (seeds S, S+1, ...) and predict with their mean logits")
    p.add_argument("--ema-decay", type=float, help="keep and evaluate a moving average of the weights (e.g. 0.999; 0: off)")
    p.add_argument("--tta-flip", action="store_true", default=None,
                   help="predict from the mean of each image's and its mirror image's logits (also in exports)")
    p.add_argument("--distributed", action="store_true",
                   help="train across machines with jax.distributed: run the same command on every process")
    p.add_argument("--coordinator", metavar="HOST:PORT", help="--distributed: address of process 0 "
                                                              "(auto-detected on Cloud TPU, SLURM, Open MPI, Kubernetes)")
    p.add_argument("--num-processes", type=int, metavar="N", help="--distributed: how many processes take part")
    p.add_argument("--process-id", type=int, metavar="I", help="--distributed: this process's rank, 0 to N-1")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    """`train`: a plain run, or with --init-from / --photos the transfer-learning path (cli/adapt.py), which builds
    on cli/train.py's helpers; routing here keeps the two modules from importing each other."""
    from fmnist_jax.training.program import enable_compile_cache

    join_processes(args)
    enable_compile_cache()
    if args.photos or args.init_from:
        from fmnist_jax.cli.adapt import cmd_adapt

        return cmd_adapt(args)
    return cmd_train_plain(args)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `python -m fmnist_jax`."""
    parser = Parser(prog="python -m fmnist_jax", description="Fashion-MNIST Studio command line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("presets", help="list model presets with parameter counts")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_presets)

    _add_train_parser(sub)

    p = sub.add_parser("evaluate", help="evaluate a run on a split")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=("test", "validation", "train"), default="test")
    p.add_argument("--data-dir")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    _add_deploy_commands(sub)
    return parser


def _add_deploy_commands(sub: Any) -> None:
    from fmnist_jax.cli import deploy, labels, sweep

    sweep.add_commands(sub)
    labels.add_command(sub)
    deploy.add_commands(sub)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    from fmnist_jax import store
    from fmnist_jax.data.catalogue import DataUnavailable

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
