"""Run folders on disk: state (de)serialisation, checkpoints and run.json updates. No pickle.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import serialization

from fmnist_jax import store
from fmnist_jax.data.splitting import Splits
from fmnist_jax.training.config import TrainConfig


def state_to_bytes(state: Any) -> bytes:
    """msgpack bytes of a pytree of arrays, keyed by tree path (no pickle, no code)."""
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
    return serialization.msgpack_serialize({jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat})


def state_from_bytes(template: Any, payload: bytes) -> Any:
    """Restore a pytree saved by state_to_bytes into `template`'s structure (ValueError on any mismatch)."""
    try:
        stored = serialization.msgpack_restore(payload)
    except Exception as error:  # msgpack raises many types for corrupt input
        raise ValueError(f"checkpoint is corrupt: {type(error).__name__}") from None
    if not isinstance(stored, dict):
        raise ValueError("checkpoint is not a weights file")
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in flat:
        key = jax.tree_util.keystr(path)
        if key not in stored:
            raise ValueError(f"checkpoint lacks {key}; it belongs to a different model")
        value = stored[key]
        shape = tuple(leaf.shape) if hasattr(leaf, "shape") else np.shape(leaf)  # arrays or abstract shapes
        if not isinstance(value, np.ndarray) or value.shape != shape:
            raise ValueError(f"checkpoint shape of {key} is {getattr(value, 'shape', '?')}, the model needs {shape}")
        leaves.append(value.astype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype))
    if len(stored) != len(flat):
        raise ValueError("checkpoint has extra entries; it belongs to a different model")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _jsonl(record: dict) -> str:
    import json
    return json.dumps(record) + "\n"


def _checkpoint(run_path: Path, state: dict, epoch: int, step: int, sums: np.ndarray, best: dict) -> None:
    meta = {"epoch": epoch, "step_in_epoch": step, "epoch_sums": [float(v) for v in sums],
            "best_epoch": best["epoch"], "best_value": best["value"], "best_val_accuracy": best["val_accuracy"],
            "best_since": best["since"]}
    store.save_checkpoint(run_path, state_to_bytes(state), meta)


def _write_run(run_path: Path, spec: list, cfg: TrainConfig, splits: Splits, run_meta: dict | None,
               status: str, history: list) -> None:
    existing = {}
    if (run_path / "run.json").exists():
        existing = store.read_json(run_path / "run.json")
        existing.pop("schema", None)
    record = {"name": run_path.name, "created": time.time(), **existing, **(run_meta or {}), "spec": spec,
              "config": cfg.to_dict(), "split": splits.spec.to_dict(), "input_shape": list(splits.input_shape),
              "class_names": list(splits.class_names), "status": status, "epochs_completed": len(history),
              "train_size": len(splits.train_labels)}
    store.atomic_write_json(run_path / "run.json", record)


