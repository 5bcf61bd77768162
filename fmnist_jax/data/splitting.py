"""Split specs and splits: train/validation/test cuts (official or pooled, stratified, seeded), class
balance, sample galleries and pixel histograms for the Data page.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pydantic import Field, StrictBool

from fmnist_jax.checks import Real, Settings, Whole, choice
from fmnist_jax.data.catalogue import Dataset, ImageShapes

# ----------------------------------------------------------------------------- splits

SPLIT_MODES = ("official", "pooled")


class SplitSpec(Settings):
    """How to split: 'pooled' (shuffle all, cut by fractions) or 'official' (keep the test set, carve validation)."""

    kind: ClassVar[str] = "split"

    mode: choice(SPLIT_MODES) = Field("official", title="split mode")
    fractions: tuple[Real, Real, Real] = Field((0.8, 0.1, 0.1), title="fractions (train, validation, test)")
    val_fraction: Real = Field(0.1, gt=0, lt=1, title="validation fraction")
    seed: Whole = Field(0, ge=0, le=2**32 - 1, title="split seed")
    stratify: StrictBool = Field(True, title="stratify")

    def validate(self, num_classes: int | None = None, total: int | None = None,
                 test_total: int | None = None) -> "SplitSpec":
        """Raise ValueError with an actionable message if the spec cannot produce three usable splits."""
        self.recheck()
        if self.mode == "pooled":
            fractions = tuple(self.fractions)
            if min(fractions) < 0:
                raise ValueError(f"fractions cannot be negative, got {fractions}")
            if abs(sum(fractions) - 1.0) > 1e-6:
                raise ValueError(f"fractions must add up to 1, they add up to {sum(fractions):.4g}")
            if min(fractions) == 0:
                part = ("train", "validation", "test")[fractions.index(min(fractions))]
                raise ValueError(f"the {part} split would be empty; give it a fraction above 0")
        if num_classes is not None and total is not None:
            counts = self.counts(total, test_total)
            if self.mode == "official" and test_total is None:
                counts.pop("test")  # the source's own test set is not known here
            for part, count in counts.items():
                if count < num_classes:
                    raise ValueError(f"the {part} split would have {count} examples, fewer than the {num_classes} classes; "
                                     f"give it a larger fraction or use more data")
        return self

    def counts(self, total: int, test_total: int | None, val_total: int | None = None) -> dict[str, int]:
        """Split sizes for `total` training images plus the source's own test (and validation) images.

        pooled: everything is pooled and cut by fractions. official: the source's splits are kept and what
        it lacks is carved from its training images by val_fraction (validation; and test when it has none).
        """
        if self.mode == "pooled":
            all_count = total + (test_total or 0) + (val_total or 0)
            train = int(round(all_count * self.fractions[0]))
            val = int(round(all_count * self.fractions[1]))
            return {"train": train, "validation": val, "test": all_count - train - val}
        carved = int(round(total * self.val_fraction))
        val = val_total if val_total is not None else carved
        test = carved if test_total == 0 else (test_total if test_total is not None else 0)
        return {"train": total - (val_total is None) * carved - (test_total == 0) * carved, "validation": val, "test": test}


@dataclass
class Splits(ImageShapes):
    """Train, validation and test arrays ready for training."""

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    spec: SplitSpec = field(default_factory=SplitSpec)

    def counts(self) -> dict[str, int]:
        """Number of examples per split."""
        return {"train": len(self.train_labels), "validation": len(self.val_labels), "test": len(self.test_labels)}

    def limit_train(self, limit: int | None) -> "Splits":
        """A copy that keeps only the first `limit` training examples (None keeps all)."""
        if limit is None:
            return self
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        return Splits(self.train_images[:limit], self.train_labels[:limit], self.val_images, self.val_labels,
                      self.test_images, self.test_labels, self.class_names, self.spec)


def _cut(labels: np.ndarray, sizes: tuple[int, ...], rng: np.random.Generator, stratify: bool) -> list[np.ndarray]:
    """Indices of consecutive parts of the given sizes, optionally keeping class proportions."""
    if not stratify:
        order = rng.permutation(len(labels))
        bounds = np.cumsum((0,) + sizes)
        return [np.sort(order[bounds[i]:bounds[i + 1]]) for i in range(len(sizes))]
    total = len(labels)
    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    classes = np.unique(labels)
    wanted = np.array(sizes, dtype=np.float64) / total
    assigned = np.zeros(len(sizes), dtype=np.int64)
    for position, cls in enumerate(classes):
        members = rng.permutation(np.flatnonzero(labels == cls))
        if position == len(classes) - 1:
            share = np.array(sizes) - assigned  # the last class absorbs rounding so sizes are exact
        else:
            share = np.floor(wanted * len(members)).astype(np.int64)
            share[0] += len(members) - share.sum()
        share = np.clip(share, 0, None)
        bounds = np.cumsum(np.concatenate([[0], share]))
        for i in range(len(sizes)):
            parts[i].append(members[bounds[i]:bounds[i + 1]])
        assigned += share
    return [np.sort(np.concatenate(p)) for p in parts]


def split_counts(dataset: Dataset, spec: SplitSpec) -> dict[str, int]:
    """The split sizes make_splits will produce for this dataset (given validation/test splits included)."""
    return spec.counts(len(dataset.train_labels), len(dataset.test_labels),
                       len(dataset.val_labels) if dataset.has_val else None)


def default_spec(dataset: Dataset) -> SplitSpec:
    """The default split for a dataset: the source's own test set and 10% validation, with the carved share
    raised (up to 50%) when a small dataset would otherwise give a split fewer images than it has classes.
    A dataset too small for any share keeps the plain default, and the Data page says what to change."""
    for percent in range(10, 51):
        spec = SplitSpec(val_fraction=percent / 100)
        if min(split_counts(dataset, spec).values()) >= dataset.num_classes:
            return spec
    return SplitSpec()


def mode_labels(dataset: Dataset) -> dict[str, str]:
    """What each split mode means for this dataset, in the Data page's words: "official" keeps the source's own
    test set, or, for an upload without one, carves test images from the training images as it does validation."""
    official = ("Official test set + validation" if len(dataset.test_labels) else
                "Carve validation and test from the training images (this dataset has no test set of its own)")
    return {"official": official, "pooled": "Pool everything, cut by fractions"}


def edited_spec(saved: SplitSpec, changes: dict) -> SplitSpec:
    """The spec after the Data page's edits: `changes` holds only what the user moved (mode, seed, stratify, and the
    whole percents train, val and val_fraction); every other field keeps its stored value exactly. Not validated
    here: split_counts reports an impossible result in the user's words."""
    update = {name: changes[name] for name in ("mode", "seed", "stratify") if name in changes}
    if "train" in changes or "val" in changes:
        train = changes["train"] / 100 if "train" in changes else saved.fractions[0]
        val = changes["val"] / 100 if "val" in changes else saved.fractions[1]
        update["fractions"] = (train, val, round(1 - train - val, 6))
    if "val_fraction" in changes:
        update["val_fraction"] = changes["val_fraction"] / 100
    return saved.model_copy(update=update)


def make_splits(dataset: Dataset, spec: SplitSpec | None = None) -> Splits:
    """Split a dataset according to `spec`; the same seed always gives the same split, bit for bit.

    In official mode the splits a source provides are kept (an upload's val/ and test/ folders);
    validation, and test when the source has none, are carved from the training images.
    """
    spec = (spec or SplitSpec()).validate()
    rng = np.random.default_rng(spec.seed)
    counts = split_counts(dataset, spec)
    if spec.mode == "pooled":
        given_val = (dataset.val_images,) if dataset.has_val else ()
        images = np.concatenate([dataset.train_images, *given_val, dataset.test_images])
        labels = np.concatenate([dataset.train_labels, *((dataset.val_labels,) if dataset.has_val else ()), dataset.test_labels])
        sizes = (counts["train"], counts["validation"], counts["test"])
        _check_sizes(sizes, dataset.num_classes)
        train_idx, val_idx, test_idx = _cut(labels, sizes, rng, spec.stratify)
        val_images, val_labels = images[val_idx], labels[val_idx]
        test_images, test_labels = images[test_idx], labels[test_idx]
    else:
        images, labels = dataset.train_images, dataset.train_labels
        carve_val, carve_test = not dataset.has_val, len(dataset.test_labels) == 0
        _check_sizes((counts["train"], counts["validation"], counts["test"]), dataset.num_classes)
        sizes = (counts["train"],) + ((counts["validation"],) if carve_val else ()) + ((counts["test"],) if carve_test else ())
        train_idx, *carved = _cut(labels, sizes, rng, spec.stratify)
        val_images, val_labels = dataset.val_images, dataset.val_labels
        test_images, test_labels = dataset.test_images, dataset.test_labels
        if carve_val:
            val_idx = carved.pop(0)
            val_images, val_labels = images[val_idx], labels[val_idx]
        if carve_test:
            test_idx = carved.pop(0)
            test_images, test_labels = images[test_idx], labels[test_idx]
    # Training order is shuffled every epoch on the device; here we keep index order for reproducibility.
    return Splits(np.ascontiguousarray(images[train_idx]), labels[train_idx].astype(np.int32),
                  np.ascontiguousarray(val_images), np.asarray(val_labels, dtype=np.int32),
                  np.ascontiguousarray(test_images), np.asarray(test_labels, dtype=np.int32),
                  tuple(dataset.class_names), spec)


def _check_sizes(sizes: tuple[int, ...], num_classes: int) -> None:
    for part, count in zip(("train", "validation", "test"), sizes):
        if count < num_classes:
            raise ValueError(f"the {part} split would have {count} examples, fewer than the {num_classes} classes; "
                             f"give it a larger fraction or use more data")


def class_balance(splits: Splits) -> list[dict]:
    """Rows of (split, class, count) for charts and checks."""
    rows = []
    for part, labels in (("train", splits.train_labels), ("validation", splits.val_labels), ("test", splits.test_labels)):
        counts = np.bincount(labels, minlength=splits.num_classes)
        rows += [{"split": part, "class": splits.class_names[i], "count": int(c)} for i, c in enumerate(counts)]
    return rows


def sample_gallery(images: np.ndarray, labels: np.ndarray, per_class: int = 3, seed: int = 0) -> dict[int, np.ndarray]:
    """Up to `per_class` example images for each class label, chosen with a seed."""
    rng = np.random.default_rng(seed)
    out = {}
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        out[int(cls)] = images[rng.choice(members, size=min(per_class, len(members)), replace=False)]
    return out


def pixel_histogram(images: np.ndarray, bins: int = 32, sample: int = 2000, seed: int = 0) -> list[dict]:
    """Histogram of pixel intensities over a random sample of images."""
    rng = np.random.default_rng(seed)
    pick = images[rng.choice(len(images), size=min(sample, len(images)), replace=False)]
    counts, edges = np.histogram(pick, bins=bins, range=(0, 256))
    return [{"intensity": float(edges[i]), "count": int(c)} for i, c in enumerate(counts)]


def array_digest(*arrays: np.ndarray) -> str:
    """Short SHA-256 of arrays' bytes, used in manifests and cache keys."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]
