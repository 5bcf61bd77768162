"""Evaluation of a trained model on a split: loss, accuracy, confusion matrix, per-class metrics, mistakes."""
from __future__ import annotations

from typing import Callable

import numpy as np

from fmnist_jax.training.calibrate import softmax
from fmnist_jax.training.trained import TrainedModel


def metrics_from_probs(probs: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> dict:
    """All evaluation figures from predicted probabilities and true labels."""
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = len(class_names)
    predicted = probs.argmax(axis=1)
    true_prob = np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    correct = np.diag(confusion)
    precision = np.divide(correct, predicted_count, out=np.zeros(num_classes), where=predicted_count > 0)
    recall = np.divide(correct, support, out=np.zeros(num_classes), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes), where=(precision + recall) > 0)
    per_class = [{"class": class_names[i], "precision": float(precision[i]), "recall": float(recall[i]),
                  "f1": float(f1[i]), "support": int(support[i])} for i in range(num_classes)]
    off_diagonal = [(int(confusion[t, p]), t, p) for t in range(num_classes) for p in range(num_classes) if t != p and confusion[t, p]]
    confused = [{"true": class_names[t], "predicted": class_names[p], "count": c}
                for c, t, p in sorted(off_diagonal, reverse=True)[:10]]
    wrong = np.flatnonzero(predicted != labels)
    confidence = probs[wrong, predicted[wrong]]
    order = wrong[np.argsort(-confidence, kind="stable")]
    return {"accuracy": float((predicted == labels).mean()) if len(labels) else float("nan"),
            "loss": float(-np.log(true_prob).mean()) if len(labels) else float("nan"),
            "count": int(len(labels)), "confusion_matrix": confusion.tolist(), "per_class": per_class,
            "most_confused": confused, "mistakes": order.tolist(),
            "mistake_confidence": probs[order, predicted[order]].tolist(),
            "predicted": predicted.tolist(), "class_names": list(class_names)}


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Reliability diagram data: the examples binned by top-class probability, each bin's mean confidence and
    accuracy, and the expected calibration error (the count-weighted mean gap between the two)."""
    labels = np.asarray(labels, dtype=np.int64)
    confidence = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, gap = [], 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        if count:
            mean_confidence, accuracy = float(confidence[members].mean()), float(right[members].mean())
            gap += count * abs(accuracy - mean_confidence)
            rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "confidence": mean_confidence,
                         "accuracy": accuracy, "count": count})
    return {"bins": rows, "ece": gap / max(1, len(labels))}


def evaluate_model(model: TrainedModel, images: np.ndarray, labels: np.ndarray,
                   progress: Callable[[float, str], None] | None = None, batch: int = 1000) -> dict:
    """Evaluate a trained model on arrays, reporting progress per batch. The metrics use the model's calibrated
    probabilities; "calibration" compares them with the raw softmax (temperature 1) in reliability terms."""
    progress = progress or (lambda fraction, message: None)
    parts = []
    for start in range(0, len(images), batch):
        parts.append(model.predict_logits(images[start:start + batch], batch=batch))
        done = min(len(images), start + batch)
        progress(done / max(1, len(images)), f"Evaluated {done:,} of {len(images):,} images")
    logits = np.concatenate(parts) if parts else np.zeros((0, model.num_classes))
    probs = softmax(logits, model.temperature).astype(np.float32)
    metrics = metrics_from_probs(probs, labels, model.class_names)
    known = np.asarray(labels) >= 0  # set-valued labels (photos) have no single right class to bin
    metrics["calibration"] = {"temperature": model.temperature,
                              "before": reliability(softmax(logits[known], 1.0), np.asarray(labels)[known]),
                              "after": reliability(probs[known], np.asarray(labels)[known])}
    if model.members > 1:  # an ensemble: what each member alone gets right on the same images
        metrics["members"] = [member_accuracy(model.member(k), images, labels, batch) for k in range(model.members)]
    return metrics


def member_accuracy(member: TrainedModel, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    """The accuracy of one network's answers (an ensemble's member) on arrays, as metrics_from_probs counts it."""
    predicted = member.predict_logits(images, batch=batch).argmax(axis=1)
    return float((predicted == np.asarray(labels)).mean()) if len(predicted) else float("nan")
