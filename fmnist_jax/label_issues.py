"""Likely mislabelled training images, found by confident learning on out-of-fold predictions.

Each of K models trains on all folds but one and predicts the fold it never saw, so every training image
gets a probability vector from a model that did not learn its label. cleanlab's confident learning
(`cleanlab.filter.find_label_issues`) then flags the images whose given label those predictions contradict
both beyond the class's own confidence threshold and within the estimated noise rate of their class pair,
ranked by self-confidence: the probability the models give the label the image carries.

    issues = find_issues(dataset, LabelCheck(folds=4, epochs=10))    # {"n", "folds", "seconds", "issues": [...]}

It sits beside train_and_test.py, above training/ and data/: the CLI, the studio's background task and the
benchmark all call it.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from fmnist_jax.data.catalogue import Dataset
from fmnist_jax.data.splitting import Splits
from fmnist_jax.errors import UserError
from fmnist_jax.model import presets
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.loop import train
from fmnist_jax.training.trained import TrainedModel

Progress = Callable[[float, str], None]
MIN_PER_CLASS = 10  # training images per class below which a fold's model cannot say much about the class


class LabelCheckError(UserError):
    """A dataset or setting the label check cannot work with (too small, one class, folds out of range)."""


@dataclass(frozen=True)
class LabelCheck:
    """How the out-of-fold models train: K folds of the `preset` network for `epochs` each."""

    folds: int = 4
    preset: str = "fast"
    epochs: int = 10  # 4 flagged 1,169 of 12,000 at precision 0.46; 10 gave 0.62 (bench/NOTES.md, "Label check")
    limit: int | None = None  # check only the first N training images (file order)
    seed: int = 0

    def validate(self) -> "LabelCheck":
        if not 2 <= self.folds <= 20:
            raise LabelCheckError(f"--folds must be 2-20 (each model trains on the other folds), got {self.folds}")
        if not 1 <= self.epochs <= 100:
            raise LabelCheckError(f"--epochs must be 1-100, got {self.epochs}")
        if self.preset not in presets.PRESETS:
            raise LabelCheckError(f"unknown preset {self.preset!r}; choose one of {', '.join(presets.PRESETS)}")
        if self.limit is not None and self.limit < 1:
            raise LabelCheckError(f"--limit must be at least 1, got {self.limit}")
        return self

    def train_config(self) -> TrainConfig:
        """The preset's recommended settings for `epochs` epochs, without early stopping."""
        settings = {**presets.PRESETS[self.preset].train_defaults, "epochs": self.epochs, "seed": self.seed,
                    "early_stopping": False}
        return TrainConfig.from_dict(settings)


def fold_of_each(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each image's fold (0..folds-1), stratified: every class is dealt out evenly in a seeded random order."""
    rng = np.random.default_rng(seed)
    assignment = np.empty(len(labels), np.int64)
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        assignment[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # the next class starts where this one stopped, so fold sizes stay even
    return assignment


def _check_dataset(labels: np.ndarray, class_names: tuple[str, ...], folds: int) -> None:
    counts = np.bincount(labels, minlength=len(class_names))
    present = np.flatnonzero(counts)
    if len(present) < 2:
        raise LabelCheckError("the label check needs at least two classes in the training images")
    small = [class_names[i] for i in present if counts[i] < max(MIN_PER_CLASS, folds)]
    if small:
        raise LabelCheckError(f"class {small[0]!r} has {counts[class_names.index(small[0])]} training images; the "
                              f"label check needs at least {max(MIN_PER_CLASS, folds)} per class")


def out_of_fold_probs(images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...], check: LabelCheck,
                      progress: Progress | None = None, stop: threading.Event | None = None) -> np.ndarray:
    """(N, classes) probabilities, each row from the fold model that did not train on that image."""
    progress = progress or (lambda fraction, message: None)
    check = check.validate()
    _check_dataset(labels, class_names, check.folds)
    fold = fold_of_each(labels, check.folds, check.seed)
    cfg, spec = check.train_config(), presets.preset(check.preset, len(class_names))
    probs = np.zeros((len(labels), len(class_names)), np.float32)
    for k in range(check.folds):
        held = fold == k
        splits = Splits(images[~held], labels[~held], images[held], labels[held], images[held], labels[held], class_names)
        done: dict = {}
        for record in train(spec, cfg, splits, stop=stop):
            if record["kind"] == "chunk":
                share = (k + min(record["epoch_progress"], 1.0) / cfg.epochs + (record["epoch"] - 1) / cfg.epochs)
                progress(min(share / check.folds, 0.999), f"fold {k + 1} of {check.folds}: epoch {record['epoch']} of "
                                                          f"{cfg.epochs}")
            done = record
        if done.get("kind") == "error":
            raise LabelCheckError(f"fold {k + 1}'s model failed to train: {done.get('message')}")
        if stop is not None and stop.is_set():
            raise LabelCheckError("the label check was stopped")
        model = TrainedModel(spec, splits.input_shape, class_names, done["weights"], conv_impl=cfg.conv_impl,
                             tta_flip=cfg.tta_flip)
        probs[held] = model.predict_proba(images[held])
    progress(1.0, f"{check.folds} fold models trained")
    return probs


def rank_issues(labels: np.ndarray, probs: np.ndarray) -> list[dict]:
    """Confident learning's flagged rows, most likely wrong first: {index, given, suggested, quality}."""
    from cleanlab.filter import find_label_issues  # heavy (scikit-learn): only when a check runs

    present = np.unique(labels)
    # cleanlab expects classes 0..K-1 all present: compact them, then map back
    compact = np.searchsorted(present, labels)
    sub = probs[:, present]
    sub = sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)
    # n_jobs=1: cleanlab's worker processes would fork a process whose JAX threads are running
    # "both": flagged by the per-class threshold and by the noise-rate pruning alike. On Fashion-MNIST, with its
    # own shirt/T-shirt and pullover/coat confusions, either alone flagged twice the flips (precision 0.53-0.55).
    ranked = find_label_issues(compact, sub, return_indices_ranked_by="self_confidence", filter_by="both", n_jobs=1)
    return [{"index": int(i), "given": int(labels[i]), "suggested": int(present[int(np.argmax(sub[i]))]),
             "quality": round(float(sub[i, compact[i]]), 4)} for i in ranked]


def find_issues(dataset: Dataset, check: LabelCheck = LabelCheck(), files: list[str] | None = None,
                progress: Progress | None = None, stop: threading.Event | None = None) -> dict:
    """The label check of a dataset's training part: {n, folds, seconds, out_of_fold_accuracy, issues}.

    `index` is the training row in the dataset's own order (for an .npz, the row of x_train). With `files` (an
    image upload's file of each training row), each issue names its `file`, its `index` is that file's place
    in the sorted paths of the files checked, and `row` keeps the training row."""
    start = time.perf_counter()
    images, labels = dataset.train_images, np.asarray(dataset.train_labels)
    if check.limit is not None:
        images, labels = images[:check.limit], labels[:check.limit]
    probs = out_of_fold_probs(images, labels, tuple(dataset.class_names), check, progress, stop)
    issues = rank_issues(labels, probs)
    if files is not None:  # an image upload: `index` is the file's place among the checked files' sorted paths
        files = list(files)[:len(labels)]
        place = np.empty(len(files), np.int64)
        place[np.argsort(np.asarray(files), kind="stable")] = np.arange(len(files))
        for issue in issues:
            issue["row"], issue["file"] = issue["index"], files[issue["index"]]
            issue["index"] = int(place[issue["row"]])
    return {"n": int(len(labels)), "folds": check.folds, "seconds": round(time.perf_counter() - start, 1),
            "out_of_fold_accuracy": round(float(np.mean(probs.argmax(axis=1) == labels)), 4), "issues": issues}
