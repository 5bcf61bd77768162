"""Calibration on held-out data: a softmax temperature, and the top-probability threshold below which the
model says "not sure". Both are stored with the model, so every path that serves it decides the same.

Labels may be sets (data.label_sets): a photo is right when the top class is in its acceptable set, and
photos outside the classes (empty set) are the ones "not sure" is for.
"""
from __future__ import annotations

import numpy as np

from fmnist_jax.data.label_sets import acceptable_mask

MAX_KNOWN_UNSURE = 0.10    # at most this share of garments the model knows may be answered "not sure" ...
MIN_UNKNOWN_UNSURE = 0.60  # ... while at least this share of garments outside the classes should be


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits / temperature."""
    scaled = np.asarray(logits, np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the mean negative log-likelihood of the acceptable sets (log-spaced grid 0.25-8)."""
    accept = acceptable_mask(labels, logits.shape[1])
    known = accept.any(axis=1)
    if not known.any():
        raise ValueError("calibration needs held-out examples of the known classes")
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 200))
    nll = [-np.log(np.maximum((softmax(logits[known], t) * accept[known]).sum(axis=1), 1e-12)).mean() for t in grid]
    return float(grid[int(np.argmin(nll))])


def unsure_rates(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Accuracy on known examples ("not sure" counts as wrong) and "not sure" rates on known / outside examples."""
    accept = acceptable_mask(labels, probs.shape[1])
    known = accept.any(axis=1)
    unsure = probs.max(axis=1) < threshold
    right = accept[np.arange(len(probs)), probs.argmax(axis=1)] & ~unsure
    return {"known_accuracy": float(right[known].mean()) if known.any() else None,
            "unsure_known": float(unsure[known].mean()) if known.any() else None,
            "unsure_unknown": float(unsure[~known].mean()) if (~known).any() else None}


def _standard_error(rate: float, count: int) -> float:
    return float(np.sqrt(rate * (1 - rate) / max(count, 1)))


def choose_threshold(probs: np.ndarray, labels: np.ndarray, max_known_unsure: float = MAX_KNOWN_UNSURE,
                     min_unknown_unsure: float = MIN_UNKNOWN_UNSURE) -> tuple[float, dict]:
    """The "not sure" threshold: among those keeping known garments' "not sure" <= max_known_unsure and
    reaching min_unknown_unsure on the others, the one with the best known accuracy; if none reaches it,
    the one that catches most unknowns within the known budget. Returns (threshold, its rates).

    Both targets are tightened by one standard error of the held-out counts: a threshold that meets a
    target exactly on a few dozen held-out photos misses it on new photos about half the time."""
    accept = acceptable_mask(labels, probs.shape[1])
    known, unknown = int(accept.any(axis=1).sum()), int((~accept.any(axis=1)).sum())
    max_known_unsure = max(0.0, max_known_unsure - _standard_error(max_known_unsure, known))
    min_unknown_unsure = min(1.0, min_unknown_unsure + _standard_error(min_unknown_unsure, unknown))
    rows = []
    for threshold in np.round(np.arange(0.0, 0.995, 0.005), 3):
        rates = unsure_rates(probs, labels, float(threshold))
        rows.append((float(threshold), rates))
    allowed = [r for r in rows if (r[1]["unsure_known"] or 0.0) <= max_known_unsure]
    feasible = [r for r in allowed if (r[1]["unsure_unknown"] or 0.0) >= min_unknown_unsure]
    if feasible:
        best = max(feasible, key=lambda r: (r[1]["known_accuracy"] or 0.0, r[1]["unsure_unknown"] or 0.0))
    else:
        best = max(allowed, key=lambda r: (r[1]["unsure_unknown"] or 0.0, r[1]["known_accuracy"] or 0.0))
    return best[0], {**best[1], "meets_targets": bool(feasible)}


def calibrate(logits: np.ndarray, labels: np.ndarray) -> dict:
    """{"temperature", "unsure_threshold", and the held-out rates at that threshold} from held-out logits."""
    temperature = fit_temperature(logits, labels)
    threshold, rates = choose_threshold(softmax(logits, temperature), labels)
    return {"temperature": round(temperature, 4), "unsure_threshold": threshold, "held_out": {**rates, "n": int(len(labels))}}
