"""The best epoch so far, its weights when they are to be restored, and early stopping's patience count.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fmnist_jax.training.checkpoint import state_to_bytes
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.program import eval_weights


@dataclass
class BestTracker:
    """The best epoch so far by the monitored metric, its weights when they are to be restored, and the patience count."""

    cfg: TrainConfig
    epoch: int | None = None
    value: float | None = None
    val_accuracy: float | None = None
    state: bytes | None = None
    since: int = 0

    def as_meta(self) -> dict:
        """The fields a checkpoint stores (the shape `_checkpoint` expects)."""
        return {"epoch": self.epoch, "value": self.value, "val_accuracy": self.val_accuracy, "since": self.since,
                "state": self.state}

    def restore(self, meta: dict, run_path: Path) -> None:
        """Take the best-epoch record of a checkpoint's metadata (and best.msgpack) when resuming."""
        self.epoch, self.value, self.val_accuracy = (meta.get(f"best_{k}") for k in ("epoch", "value", "val_accuracy"))
        self.since = meta.get("best_since", 0)
        if self.epoch is not None and (run_path / "best.msgpack").exists():
            self.state = (run_path / "best.msgpack").read_bytes()

    def update(self, epoch: int, val_loss: float, val_accuracy: float, state: dict) -> bool:
        """Record one finished epoch; True when it is the new best."""
        monitored = val_accuracy if self.cfg.monitor == "val_accuracy" else -val_loss
        if self.value is not None and monitored <= self.value + self.cfg.min_delta:
            self.since += 1
            return False
        self.epoch, self.value, self.val_accuracy, self.since = epoch, monitored, val_accuracy, 0
        if self.cfg.early_stopping and self.cfg.restore_best:
            self.state = state_to_bytes(eval_weights(state))
        return True

    def should_stop(self) -> bool:
        """Early stopping: no improvement for `patience` epochs."""
        return self.cfg.early_stopping and self.since >= self.cfg.patience
