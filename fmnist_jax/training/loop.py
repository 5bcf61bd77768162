"""The training generator: yields metric records chunk by chunk, writes the run as it goes.

`train` is the loop only; the run folder's bookkeeping is `RunWriter`'s (a no-op without a folder) and
the early-stopping and best-weights rule is `BestTracker`'s.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from fmnist_jax import store
from fmnist_jax.data.splitting import Splits
from fmnist_jax.errors import UserError
from fmnist_jax.model import layer_specs
from fmnist_jax.training import members as ensemble
from fmnist_jax.training.best import BestTracker
from fmnist_jax.training.checkpoint import (
    _checkpoint,
    _jsonl,
    _write_run,
    state_from_bytes,
    state_to_bytes,
)
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.events import EventLog
from fmnist_jax.training.optim import make_schedule
from fmnist_jax.training.program import (
    _base_key,
    _mesh_for,
    build_program,
    device_summary,
    eval_weights,
    evaluate_arrays,
    init_state,
    pad_rows,
    padded_size,
    run_plan,
    stage_epoch,
)


class TrainingError(UserError):
    """Training cannot start (bad config for this data, unusable checkpoint)."""


# ----------------------------------------------------------------------------- the run folder

@dataclass
class RunWriter:
    """Writes a run folder as training goes (run.json, history.jsonl, checkpoints, model); without a folder, nothing."""

    run_path: Path | None
    checkpoint_seconds: float = 5.0
    last_checkpoint: float = field(default_factory=time.perf_counter)
    events: EventLog | None = None

    def __post_init__(self) -> None:
        self.events = EventLog(self.run_path)

    def start(self, spec: list, cfg: TrainConfig, splits: Splits, run_meta: dict | None, history: list,
              start: dict) -> None:
        """run.json at the start, with the start-up times (the Hyperparameters page's estimate reads them)."""
        if self.run_path is not None:
            _write_run(self.run_path, spec, cfg, splits, run_meta, status="running", history=history)
            store.update_run(self.run_path, setup_seconds=start["setup_seconds"], compile_seconds=start["compile_seconds"])

    def mid_epoch(self, state: dict, epoch: int, step: int, sums: np.ndarray, best: BestTracker) -> None:
        """A checkpoint inside an epoch, at most every `checkpoint_seconds`."""
        if self.run_path is not None and time.perf_counter() - self.last_checkpoint >= self.checkpoint_seconds:
            _checkpoint(self.run_path, state, epoch, step, sums, best.as_meta())
            self.last_checkpoint = time.perf_counter()

    def stopped(self, state: dict, epoch: int, step: int, sums: np.ndarray, best: BestTracker, epochs_done: int) -> str:
        """A checkpoint where a stop request cut the epoch; returns the run's status, "stopped"."""
        if self.run_path is not None:
            _checkpoint(self.run_path, state, epoch, step, sums, best.as_meta())
            store.update_run(self.run_path, status="stopped", epochs_completed=epochs_done)
        self.events.close()
        return "stopped"

    def epoch_done(self, record: dict, state: dict, best: BestTracker, epochs_done: int) -> None:
        if self.run_path is None:
            return
        store.append_jsonl(self.run_path / "history.jsonl", record)
        self.events.epoch(record)
        if best.state is not None and best.epoch == record["epoch"]:
            store.atomic_write_bytes(self.run_path / "best.msgpack", best.state)
        _checkpoint(self.run_path, state, record["epoch"], 0, np.zeros(3), best.as_meta())
        self.last_checkpoint = time.perf_counter()  # the next mid-epoch one comes checkpoint_seconds after this
        store.update_run(self.run_path, epochs_completed=epochs_done, best_val_accuracy=best.val_accuracy,
                    best_epoch=best.epoch, seconds=record["elapsed"])

    def failed(self, message: str) -> None:
        self.events.close()
        if self.run_path is not None:
            store.update_run(self.run_path, status="failed", error=message)

    def finished(self, final: dict, status: str, epochs_done: int) -> None:
        self.events.close()
        if self.run_path is not None:
            store.atomic_write_bytes(self.run_path / "model.msgpack", state_to_bytes(final))
            store.update_run(self.run_path, status=status, epochs_completed=epochs_done)


def _resume(run_path: Path | None, state: Any, best: BestTracker) -> tuple[Any, int, int, np.ndarray, list, list]:
    """(state, epoch, step in epoch, the epoch's running sums, history, warnings) from the newest valid checkpoint."""
    if run_path is None:
        raise TrainingError("resume needs a run directory")
    try:
        payload, meta, warnings = store.load_latest_checkpoint(run_path)
        state = state_from_bytes(jax.device_get(state), payload)
    except (store.StoreError, ValueError) as error:
        raise TrainingError(f"cannot resume {run_path}: {error}") from None
    carried = np.asarray(meta.get("epoch_sums", [0, 0, 0]), dtype=np.float64)
    history = [r for r in store.read_jsonl(run_path / "history.jsonl") if r.get("epoch", 0) <= meta["epoch"]]
    best.restore(meta, run_path)
    store.atomic_write_bytes(run_path / "history.jsonl", "".join(_jsonl(r) for r in history).encode())
    return state, meta["epoch"], meta["step_in_epoch"], carried, history, warnings


# ----------------------------------------------------------------------------- the training generator

@dataclass
class _Loop:
    """What one training run keeps between chunks: the compiled chunk, the device-resident data and the clock."""

    cfg: TrainConfig
    splits: Splits
    steps_per_epoch: int
    chunk_len: int
    compiled: Any
    eval_fn: Any
    train_images: jax.Array | None  # None across processes (see epoch_data)
    train_labels: jax.Array | None
    base_key: jax.Array
    plan: dict  # program.run_plan: steps per epoch and the schedule's numbers
    t0: float = 0.0
    elapsed_before: float = 0.0
    mesh: Any = None
    staged: dict = field(default_factory=dict)  # across processes: {epoch: that epoch's staged batches}

    def epoch_inputs(self, epoch: int) -> tuple[jax.Array, jax.Array]:
        """The epoch's shuffling permutation and augmentation/dropout key (both from the seed); for an ensemble,
        one of each per member, stacked (member k's are those of a run with seed + k)."""
        if self.cfg.ensemble > 1:
            pairs = [self._member_inputs(key, epoch) for key in self.base_key]
            return jnp.stack([perm for perm, _ in pairs]), jnp.stack([key for _, key in pairs])
        return self._member_inputs(self.base_key, epoch)

    def _member_inputs(self, base_key: jax.Array, epoch: int) -> tuple[jax.Array, jax.Array]:
        epoch_key = jax.random.fold_in(base_key, epoch)
        count = len(self.splits.train_labels)
        perm = jax.random.permutation(jax.random.fold_in(epoch_key, 0), count).astype(jnp.int32)
        if self.train_images is not None:  # the resident set is padded to its size class, and so is the permutation
            perm = jnp.pad(perm, (0, self.train_images.shape[0] - count))
        return perm, jax.random.fold_in(epoch_key, 1)

    def epoch_data(self, epoch: int, perm: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The chunk's data arguments: the device-resident training set, or across processes the epoch's
        batches with each process holding its own devices' share (program.stage_epoch)."""
        if self.train_images is not None:
            return self.train_images, self.train_labels
        if epoch not in self.staged:
            self.staged = {epoch: stage_epoch(self.splits.train_images, self.splits.train_labels, np.asarray(perm),
                                              self.steps_per_epoch, self.cfg.batch_size, self.mesh)}
        return self.staged[epoch]

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def evaluate(self, state: dict, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        weights = eval_weights(state)
        if self.mesh is not None and not _across_processes(self.mesh):  # one device's copy: no duplicated work
            weights = jax.tree.map(lambda x: x.addressable_data(0), weights)
        loss, accuracy, _ = evaluate_arrays(self.eval_fn, weights["params"], weights["batch_stats"], images, labels,
                                            self.cfg.eval_batch_size)
        return loss, accuracy


def _not_finite_message(loss: float, epoch: int, cfg: TrainConfig) -> str:
    return (f"the loss became {'NaN' if np.isnan(loss) else 'infinite'} in epoch {epoch + 1}; "
            f"lower the learning rate (now {cfg.learning_rate:g}) or enable gradient clipping")


def _epoch_chunks(loop: _Loop, state: dict, epoch: int, step: int, sums: np.ndarray, stop: threading.Event,
                  writer: RunWriter, best: BestTracker) -> Generator[dict, None, tuple[dict, str, int]]:
    """Run one epoch's chunks from `step`, yielding 'chunk' records; returns (state, outcome, step) with the
    outcome "ok", "stopped" (at `step`) or an error message (`yield from` hands it to the caller)."""
    perm, epoch_key = loop.epoch_inputs(epoch)
    images, labels = loop.epoch_data(epoch, perm)
    while step < loop.steps_per_epoch:
        chunk_t0 = time.perf_counter()
        state, chunk_sums = loop.compiled(state, images, labels, perm, epoch_key, jnp.int32(step), loop.plan)
        chunk_sums = np.asarray(chunk_sums, dtype=np.float64)
        step = min(step + loop.chunk_len, loop.steps_per_epoch)
        chunk_seconds = time.perf_counter() - chunk_t0
        if not np.isfinite(chunk_sums[0]):
            return state, _not_finite_message(chunk_sums[0], epoch, loop.cfg), step
        sums += chunk_sums
        if step < loop.steps_per_epoch:
            # mid-epoch checkpoint before reporting: a crash or kill -9 loses at most the chunk in flight
            writer.mid_epoch(state, epoch, step, sums, best)
        yield {"kind": "chunk", "epoch": epoch + 1, "step": epoch * loop.steps_per_epoch + step,
               "epoch_progress": step / loop.steps_per_epoch, "loss": float(sums[0] / sums[2]),
               "accuracy": float(sums[1] / sums[2]), "images_per_s": float(chunk_sums[2] / max(chunk_seconds, 1e-9)),
               "elapsed": loop.elapsed()}
        if stop.is_set() and step < loop.steps_per_epoch:
            return state, "stopped", step
    return state, "ok", step


def _epoch_record(loop: _Loop, state: dict, epoch: int, sums: np.ndarray, first_step: int, epoch_start: float,
                  test_each_epoch: bool) -> dict:
    """The 'epoch' record: training sums, validation (and optionally test) metrics, speed and learning rate."""
    cfg, steps = loop.cfg, loop.steps_per_epoch
    val_loss, val_acc = loop.evaluate(state, loop.splits.val_images, loop.splits.val_labels)
    seconds = time.perf_counter() - epoch_start
    record = {"kind": "epoch", "epoch": epoch + 1, "loss": float(sums[0] / sums[2]), "accuracy": float(sums[1] / sums[2]),
              "val_loss": val_loss, "val_accuracy": val_acc, "seconds": seconds, "elapsed": loop.elapsed(),
              "images_per_s": (steps - first_step) * cfg.batch_size / seconds,
              "learning_rate": float(make_schedule(cfg, steps)((epoch + 1) * steps - 1))}
    if test_each_epoch:
        record["test_loss"], record["test_accuracy"] = loop.evaluate(state, loop.splits.test_images, loop.splits.test_labels)
    return record


def _start_from(state: dict, init_weights: dict, members: int = 1) -> dict:
    """The initial state with a trained model's weights (transfer learning); TrainingError if they do not fit.
    An ensemble starts every member from a single model's weights, or each from its own of an ensemble's."""
    template = {"params": state["params"], "batch_stats": state["batch_stats"]}
    extra_axes = np.ndim(jax.tree.leaves(init_weights)[0]) - np.ndim(jax.tree.leaves(template)[0])
    if members > 1 and extra_axes == -1:
        init_weights, extra_axes = ensemble.stack_members([init_weights] * members), 0
    try:
        weights = state_from_bytes(template, state_to_bytes(init_weights))
    except ValueError as error:
        hint = " (the starting model is an ensemble: train with as many ensemble members as it has)" if extra_axes == 1 else ""
        raise TrainingError(f"the starting model does not fit this model's layers{hint}: {error}") from None
    if "ema" in state:  # the average starts from the starting model too
        weights["ema"] = jax.tree.map(jnp.copy, weights)
    return {**state, **weights}


def _prepare(spec: Any, cfg: TrainConfig, splits: Splits,
             init_weights: dict | None = None) -> tuple[list, int, Any, Any, Any, Any, Any]:
    """Validate, build the initial state and the jitted programs: (spec, steps/epoch, mesh, state, chunk, eval, graphdef)."""
    cfg.validate(train_size=len(splits.train_labels))
    if cfg.ensemble > 1 and jax.process_count() > 1:
        raise TrainingError(f"an ensemble of {cfg.ensemble} trains its members side by side on one machine; train it "
                            f"without --distributed, or train a single model (ensemble 1) across the machines")
    spec = layer_specs.normalize_spec(spec)
    layer_specs.describe(spec, splits.input_shape, splits.num_classes)
    steps_per_epoch = len(splits.train_labels) // cfg.batch_size
    graphdef, state = init_state(spec, splits.input_shape, splits.num_classes, cfg, steps_per_epoch=steps_per_epoch)
    mesh = _mesh_for(cfg, state["batch_stats"])
    if mesh is not None and cfg.batch_size % mesh.size:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by the {mesh.size} devices for data-parallel training")
    if init_weights is not None:
        state = _start_from(state, init_weights, cfg.ensemble)
    chunk_fn, eval_fn, _ = build_program(graphdef, cfg, steps_per_epoch, mesh, staged=_across_processes(mesh))
    return spec, steps_per_epoch, mesh, state, chunk_fn, eval_fn, graphdef


def _across_processes(mesh: Any) -> bool:
    """Training spans several processes (jax.distributed): each keeps only its share of the batches."""
    return mesh is not None and jax.process_count() > 1


def _make_loop(cfg: TrainConfig, splits: Splits, steps_per_epoch: int, eval_fn: Any, mesh: Any, replicated: Any) -> _Loop:
    """The run's _Loop, with the training set on the device(s) unless training spans processes (then per epoch)."""
    resident = not _across_processes(mesh)
    rows = padded_size(len(splits.train_labels), splits.train_images[0].nbytes)
    return _Loop(cfg, splits, steps_per_epoch, min(cfg.chunk_steps, steps_per_epoch), None, eval_fn,
                 jax.device_put(pad_rows(splits.train_images, rows), replicated) if resident else None,
                 jax.device_put(pad_rows(splits.train_labels, rows), replicated) if resident else None,
                 _base_key(cfg.seed, cfg.ensemble), run_plan(cfg, steps_per_epoch), mesh=mesh)


def _start_record(loop: _Loop, cfg: TrainConfig, mesh: Any, startup: tuple[float, float], resumed: dict | None,
                  warnings: list) -> dict:
    """The 'start' record; startup = (seconds to build the model and put the data on the device, to compile)."""
    device = device_summary()
    return {"kind": "start", "epochs": cfg.epochs, "steps_per_epoch": loop.steps_per_epoch, "chunk_steps": loop.chunk_len,
            "train_size": len(loop.splits.train_labels), "val_size": len(loop.splits.val_labels),
            "device": device["kind"], "platform": device["platform"], "devices": mesh.size if mesh is not None else 1,
            "data_parallel": mesh is not None, "setup_seconds": round(startup[0], 3), "compile_seconds": round(startup[1], 3),
            "resumed_from": resumed, "warnings": warnings, "time": time.time()}


def _done_record(status: str, history: list, best: BestTracker, final: dict) -> dict:
    last = history[-1] if history else {}
    return {"kind": "done", "status": status, "epochs_completed": len(history), "best_epoch": best.epoch,
            "best_val_accuracy": best.val_accuracy, "train_accuracy": last.get("accuracy"),
            "val_accuracy": last.get("val_accuracy"), "seconds": last.get("elapsed", 0.0),
            "images_per_s": float(np.median([h["images_per_s"] for h in history])) if history else None,
            "weights": final}


def train(spec: Any, cfg: TrainConfig, splits: Splits, *, run_dir: str | Path | None = None,
          **options: Any) -> Iterator[dict]:
    """_train (below) with the run folder locked for as long as it runs: a second writer (a CLI --resume while
    the studio trains the same run, two tabs) gets TrainingError at once instead of mixing checkpoints."""
    with contextlib.ExitStack() as held:
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            try:
                held.enter_context(store.file_lock(Path(run_dir) / ".lock", wait=False))
            except store.Busy:
                raise TrainingError(f"the run folder {Path(run_dir).name} is in use by another training (the studio "
                                    f"or a CLI --resume); stop that one or wait for it to finish") from None
        yield from _train(spec, cfg, splits, run_dir=run_dir, **options)


def _train(spec: Any, cfg: TrainConfig, splits: Splits, *, run_dir: str | Path | None = None,
           stop: threading.Event | None = None, resume: bool = False, eval_test_each_epoch: bool = False,
           run_meta: dict | None = None, checkpoint_seconds: float = 5.0, init_weights: dict | None = None) -> Iterator[dict]:
    """Train `spec` on `splits`, yielding 'start', 'chunk', 'epoch' and finally 'done' (or 'error') records.

    With `run_dir`, writes run.json, history.jsonl and an atomic checkpoint after every epoch and on stop;
    mid-epoch checkpoints follow at most every `checkpoint_seconds` (0: after every chunk), so a killed
    process loses little. With `resume=True`, continues from the newest valid checkpoint in `run_dir`.
    `init_weights` ({"params", "batch_stats"} of a trained model with the same layers) starts from that model.
    """
    entered, stop, run_path = time.perf_counter(), stop or threading.Event(), (Path(run_dir) if run_dir else None)
    spec, steps_per_epoch, mesh, state, chunk_fn, eval_fn, _ = _prepare(spec, cfg, splits, init_weights)
    best, writer = BestTracker(cfg), RunWriter(run_path, checkpoint_seconds)
    history, warnings, start_epoch, start_step, carried = [], [], 0, 0, np.zeros(3)
    if resume:
        state, start_epoch, start_step, carried, history, warnings = _resume(run_path, state, best)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh else jax.devices()[0]
    state = jax.device_put(state, replicated)
    loop = _make_loop(cfg, splits, steps_per_epoch, eval_fn, mesh, replicated)
    compile_start = time.perf_counter()
    perm0, key0 = loop.epoch_inputs(start_epoch)
    loop.compiled = chunk_fn.lower(state, *loop.epoch_data(start_epoch, perm0), perm0, key0, jnp.int32(0),
                                   loop.plan, length=cfg.chunk_steps).compile()  # the loop ends at the epoch's end
    start = _start_record(loop, cfg, mesh, (compile_start - entered, time.perf_counter() - compile_start),
                          {"epoch": start_epoch, "step_in_epoch": start_step} if resume else None, warnings)
    writer.start(spec, cfg, splits, run_meta, history, start)
    yield start

    status, loop.t0 = "completed", time.perf_counter()
    writer.last_checkpoint = loop.t0
    loop.elapsed_before = history[-1]["elapsed"] if history else 0.0
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start, first_step = time.perf_counter(), (start_step if epoch == start_epoch else 0)
        sums = carried if epoch == start_epoch else np.zeros(3)
        state, outcome, step = yield from _epoch_chunks(loop, state, epoch, first_step, sums, stop, writer, best)
        if outcome == "stopped":
            status = writer.stopped(state, epoch, step, sums, best, len(history))
            break
        if outcome != "ok":
            writer.failed(outcome)
            yield {"kind": "error", "message": outcome, "epoch": epoch + 1}
            yield {"kind": "done", "status": "failed", "epochs_completed": len(history), "error": outcome}
            return
        record = _epoch_record(loop, state, epoch, sums, first_step, epoch_start, eval_test_each_epoch)
        best.update(epoch + 1, record["val_loss"], record["val_accuracy"], state)
        record["best_epoch"], record["best_val_accuracy"] = best.epoch, best.val_accuracy
        history.append(record)
        writer.epoch_done(record, state, best, len(history))
        yield record
        if best.should_stop() or stop.is_set():
            status = "early_stopped" if best.should_stop() else "stopped"
            break

    final = jax.device_get(eval_weights(state))
    if best.state is not None and status != "stopped":
        final = state_from_bytes(final, best.state)
    writer.finished(final, status, len(history))
    yield _done_record(status, history, best, final)


def run_to_completion(records: Iterator[dict], on_record: Callable[[dict], None] | None = None) -> dict:
    """Drain a training generator and return its final 'done' record."""
    final: dict = {}
    for record in records:
        if on_record:
            on_record(record)
        final = record
    return final
