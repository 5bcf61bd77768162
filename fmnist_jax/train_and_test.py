"""A training run and its test-set measurement, as one generator: the shared path of the CLI, the studio's
background jobs and the benchmarks. It sits beside evaluate.py, above training/ (it measures with
evaluate.metrics_from_probs, and evaluate imports training.trained), so the CLI and the benchmarks need not
reach up into the studio for it."""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from fmnist_jax import store
from fmnist_jax.data.splitting import Splits
from fmnist_jax.evaluate import metrics_from_probs
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.events import EventLog
from fmnist_jax.training.loop import train
from fmnist_jax.training.trained import TrainedModel


def train_and_test(spec: Any, cfg: TrainConfig, splits: Splits, run_dir: str | Path | None = None,
                   stop: threading.Event | None = None, resume: bool = False, run_meta: dict | None = None,
                   eval_test_each_epoch: bool = False, init_weights: dict | None = None,
                   test_progress: Callable[[float], None] | None = None) -> Iterator[dict]:
    """Training records, then one 'test' record with test-set loss and accuracy, then the final 'done'.

    The shared path of the CLI, the background jobs and the benchmarks. `test_progress` hears the fraction of the
    test set measured so far (0 before the first batch, 1 after the last), for a page that shows the test pass.
    """
    done = None
    for record in train(spec, cfg, splits, run_dir=run_dir, stop=stop, resume=resume, run_meta=run_meta,
                        eval_test_each_epoch=eval_test_each_epoch, init_weights=init_weights):
        if record["kind"] == "done":
            done = record
            break
        yield record
    assert done is not None
    # Training is over (completed, stopped or early-stopped, and saved): say so before the test-set pass.
    yield {"kind": "trained", "status": done["status"], "epochs_completed": done["epochs_completed"]}
    weights = done.pop("weights", None)
    if weights is not None and (done["epochs_completed"] > 0 or done["status"] == "stopped"):
        model = TrainedModel(spec, splits.input_shape, splits.class_names, weights, conv_impl=cfg.conv_impl,
                             tta_flip=cfg.tta_flip, members=cfg.ensemble)
        probs = _test_probs(model, splits.test_images, cfg.eval_batch_size, test_progress)
        metrics = metrics_from_probs(probs, splits.test_labels, splits.class_names)
        done.update(test_accuracy=metrics["accuracy"], test_loss=metrics["loss"])
        yield {"kind": "test", "test_accuracy": metrics["accuracy"], "test_loss": metrics["loss"]}
        if run_dir is not None:
            log = EventLog(Path(run_dir))
            log.test(metrics["accuracy"], metrics["loss"], done["epochs_completed"])
            log.close()
            store.update_run(run_dir, test_accuracy=metrics["accuracy"], test_loss=metrics["loss"], finished=time.time())
            store.atomic_write_json(Path(run_dir) / "evaluation-test.json",
                                    {k: v for k, v in metrics.items() if k != "predicted"})
    yield done


def _test_probs(model: TrainedModel, images: np.ndarray, batch: int,
                progress: Callable[[float], None] | None) -> np.ndarray:
    """The model's probabilities on the test images, batch by batch, telling `progress` the fraction done."""
    if progress is None:
        return model.predict_proba(images, batch=batch)
    progress(0.0)
    parts = []
    for start in range(0, len(images), batch):
        parts.append(model.predict_proba(images[start:start + batch], batch=batch))
        progress(min(1.0, (start + batch) / max(len(images), 1)))
    return np.concatenate(parts) if parts else model.predict_proba(images, batch=batch)
