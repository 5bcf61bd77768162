"""TensorBoard event files for a run (written by tensorboardX): `tensorboard --logdir FMNIST_HOME/projects`
shows every run's loss, accuracy, learning rate and images/s per epoch, and its test accuracy.
"""
from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

FOLDER = "tensorboard"
EPOCH_SCALARS = {"loss/train": "loss", "loss/validation": "val_loss", "accuracy/train": "accuracy",
                 "accuracy/validation": "val_accuracy", "learning_rate": "learning_rate", "images_per_s": "images_per_s"}


class EventLog:
    """Appends a run's scalars to RUN/tensorboard/ (opened on first use; a resumed run adds to the same folder)."""

    def __init__(self, run_path: Path | None):
        self.folder = None if run_path is None else Path(run_path) / FOLDER
        self._writer: Any = None

    def _open(self) -> Any:
        if self._writer is None and self.folder is not None:
            from tensorboardX import SummaryWriter

            # A suffix of its own: two writers opened in the same second (the training, then the test pass)
            # would otherwise share one file name and the second would replace the first.
            self._writer = SummaryWriter(logdir=str(self.folder), flush_secs=10, filename_suffix=f".{secrets.token_hex(4)}")
        return self._writer

    def epoch(self, record: dict) -> None:
        """One finished epoch's figures, at step = its epoch number."""
        writer = self._open()
        if writer is None:
            return
        for tag, key in EPOCH_SCALARS.items():
            if record.get(key) is not None:
                writer.add_scalar(tag, float(record[key]), int(record["epoch"]))
        writer.flush()

    def test(self, accuracy: float, loss: float, epoch: int) -> None:
        """The final model's test-set figures, at its last epoch."""
        writer = self._open()
        if writer is not None:
            writer.add_scalar("accuracy/test", float(accuracy), int(epoch))
            writer.add_scalar("loss/test", float(loss), int(epoch))
            writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
