"""Versions of a dataset's labels: an overlay of relabelled and excluded training rows, never a copy.

A label check (fmnist_jax/label_issues.py) flags likely mislabelled images. The user keeps, relabels or excludes
each one, and the choices become a version: {"relabel": {row: class}, "exclude": [row, ...]}. The rows are
training rows in the dataset's own order. Applying a version to the shared arrays gives the dataset a run
trains on. The original arrays stay untouched and selectable as version 0. A version is a few kilobytes, so a
public workspace's disk cap is never spent on copies of Fashion-MNIST.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field, replace

import numpy as np

from fmnist_jax.data.catalogue import Dataset
from fmnist_jax.errors import UserError

MAX_EDITS = 100_000


class LabelEditError(UserError):
    """Edits that do not fit the dataset: a row or class out of range, or every image excluded."""


@dataclass
class LabelEdits:
    """Relabelled rows (row -> new class) and excluded rows of a dataset's training part."""

    relabel: dict[int, int] = field(default_factory=dict)
    exclude: set[int] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.relabel or self.exclude)

    def to_dict(self) -> dict:
        return {"relabel": {str(k): int(v) for k, v in sorted(self.relabel.items())}, "exclude": sorted(self.exclude)}

    @classmethod
    def from_dict(cls, values: dict) -> "LabelEdits":
        try:
            relabel = {int(k): int(v) for k, v in dict(values.get("relabel") or {}).items()}
            exclude = {int(v) for v in values.get("exclude") or []}
        except (TypeError, ValueError, AttributeError) as error:
            raise LabelEditError(f"label edits must be {{'relabel': {{row: class}}, 'exclude': [row]}} ({error})") from None
        if len(relabel) + len(exclude) > MAX_EDITS:
            raise LabelEditError(f"{len(relabel) + len(exclude):,} label edits; at most {MAX_EDITS:,} are kept")
        return cls(relabel, exclude)

    def check(self, dataset: Dataset) -> "LabelEdits":
        """These edits, or LabelEditError naming the first row or class the dataset does not have."""
        rows, classes = len(dataset.train_labels), len(dataset.class_names)
        for row in [*self.relabel, *self.exclude]:
            if not 0 <= row < rows:
                raise LabelEditError(f"row {row} is not a training row of {dataset.name} (0-{rows - 1})")
        for row, cls in self.relabel.items():
            if not 0 <= cls < classes:
                raise LabelEditError(f"row {row} is relabelled to class {cls}; {dataset.name} has classes 0-{classes - 1}")
        if len(self.exclude) >= rows:
            raise LabelEditError("every training image would be excluded; keep at least one")
        return self


def apply(dataset: Dataset, edits: LabelEdits, version: int) -> Dataset:
    """The dataset with the edits applied to its training part (a relabelled copy of the labels, excluded rows
    left out); validation and test parts are the source's own. Version 0 or no edits: the dataset itself."""
    if version == 0 or not edits:
        return dataset
    edits.check(dataset)
    labels = np.array(dataset.train_labels, copy=True)
    for row, cls in edits.relabel.items():
        labels[row] = cls
    keep = np.ones(len(labels), bool)
    keep[list(edits.exclude)] = False
    images = dataset.train_images if keep.all() else dataset.train_images[keep]
    return replace(dataset, name=f"{dataset.name}@labels-v{version}", train_images=images, train_labels=labels[keep])


def corrected_csv(dataset: Dataset, edits: LabelEdits, files: list[str] | None = None) -> str:
    """CSV of every edited row: file (image uploads) or index, given and corrected class ("excluded")."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["file" if files else "index", "given", "corrected"])
    names = dataset.class_names
    for row in sorted({*edits.relabel, *edits.exclude}):
        corrected = "excluded" if row in edits.exclude else names[edits.relabel[row]]
        writer.writerow([files[row] if files else row, names[int(dataset.train_labels[row])], corrected])
    return out.getvalue()
