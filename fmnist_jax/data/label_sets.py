"""Set-valued labels in one int32 array: a photo in a "shoes" folder is right as Sandal, Sneaker or Ankle boot.

A label >= 0 is one class, as in every dataset. A label < 0 encodes a set of acceptable classes as a bit mask:
label = -(1 + sum of 2**class). The empty set (label -1) marks an example outside the classes (a hat for a
Fashion-MNIST model): it is trained towards "not sure" (a uniform answer, outlier exposure) and is never
counted as right. Keeping one int32 array means splits, shuffling and the jitted chunk need no second array.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

MAX_SET_CLASSES = 30  # bit masks must fit in a positive int32
OUTSIDE = -1          # the empty set: none of the classes fits


def encode_set(classes: Iterable[int], num_classes: int) -> int:
    """The int32 label of a set of acceptable classes (a single class stays its own index)."""
    members = sorted({int(c) for c in classes})
    if any(not 0 <= c < num_classes for c in members):
        raise ValueError(f"class indices must be 0..{num_classes - 1}, got {members}")
    if len(members) == 1:
        return members[0]
    if num_classes > MAX_SET_CLASSES:
        raise ValueError(f"sets of classes need at most {MAX_SET_CLASSES} classes, the model has {num_classes}")
    return -(1 + sum(1 << c for c in members))


def acceptable_mask(labels: Any, num_classes: int, xp: Any = np) -> Any:
    """Boolean (N, num_classes): which classes count as right for each label (all False outside the classes).

    `xp` is the array module: NumPy here, jax.numpy inside the jitted loss (the same decoding for both)."""
    labels = xp.asarray(labels)
    bits = xp.where(labels < 0, -labels - 1, 0)
    classes = xp.arange(num_classes)[None, :]
    from_sets = ((bits[:, None] >> classes) & 1) == 1
    return xp.where(labels[:, None] < 0, from_sets, labels[:, None] == classes)


def has_sets(labels: np.ndarray) -> bool:
    """True when any label is a set or outside the classes (plain datasets never are)."""
    return bool(np.asarray(labels).size) and bool((np.asarray(labels) < 0).any())
