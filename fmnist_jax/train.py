"""Jit-compiled training over device-resident data, as a generator of metric records.

The whole training split lives on the device as uint8. One compiled function runs a chunk of
`chunk_steps` optimizer steps in one `lax.fori_loop` (gathering each batch from an on-device permutation),
so Python is touched once per chunk: that is when metrics are reported and a stop request is seen.
Random keys are derived from (seed, epoch, step), so a resumed run repeats an uninterrupted one.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, serialization

from . import layers, store
from .augment import augment_batch
from .config import TrainConfig
from .data import Splits

PRNG_IMPL = "threefry2x32"


def enable_compile_cache(home: str | Path | None = None) -> None:
    """Persist compiled XLA programs under the workspace so a second start skips compilation."""
    from . import settings

    jax.config.update("jax_compilation_cache_dir", str(settings.home_dir(home) / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def device_summary() -> dict:
    """Backend, device kind and count, e.g. {'platform': 'cpu', 'kind': 'cpu', 'count': 1}."""
    devices = jax.devices()
    return {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)}


# ----------------------------------------------------------------------------- optimizer and loss

def make_schedule(cfg: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning-rate schedule over the planned steps."""
    total = max(1, cfg.epochs * steps_per_epoch)
    lr = cfg.learning_rate
    if cfg.schedule == "constant":
        return optax.constant_schedule(lr)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, total)
    if cfg.schedule == "warmup_cosine":
        warmup = min(total - 1, int(cfg.warmup_epochs * steps_per_epoch))
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total, end_value=0.0)
    if cfg.schedule == "one_cycle":
        return optax.cosine_onecycle_schedule(total, lr)
    boundaries = {e * steps_per_epoch: cfg.step_factor for e in range(cfg.step_every_epochs, cfg.epochs, cfg.step_every_epochs)}
    return optax.piecewise_constant_schedule(lr, boundaries)


def learning_rate_curve(cfg: TrainConfig, steps_per_epoch: int, points: int = 100) -> list[dict]:
    """(step, epoch, learning_rate) samples of the schedule, for the Hyperparameters page preview."""
    schedule = make_schedule(cfg, steps_per_epoch)
    total = max(1, cfg.epochs * steps_per_epoch)
    steps = np.unique(np.linspace(0, total - 1, points).astype(int))
    return [{"step": int(s), "epoch": float(s / steps_per_epoch), "learning_rate": float(schedule(int(s)))} for s in steps]


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The Optax optimizer a config names, with its schedule, weight decay and clipping."""
    lr = make_schedule(cfg, steps_per_epoch)
    name = cfg.optimizer
    if name == "sgd":
        base = optax.sgd(lr, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    elif name == "rmsprop":
        base = optax.rmsprop(lr, decay=cfg.rho, eps=cfg.epsilon, momentum=cfg.momentum or None)
    elif name == "adadelta":
        base = optax.adadelta(lr, rho=cfg.rho, eps=cfg.epsilon)
    elif name == "adagrad":
        base = optax.adagrad(lr, eps=cfg.epsilon)
    elif name == "adamax":
        base = optax.adamax(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.epsilon)
    elif name == "adam":
        base = optax.adam(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.epsilon)
    elif name == "nadam":
        base = optax.nadam(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.epsilon)
    elif name == "adamw":
        base = optax.adamw(lr, b1=cfg.beta1, b2=cfg.beta2, eps=cfg.epsilon, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}")
    chain = []
    if cfg.grad_clip:
        chain.append(optax.clip_by_global_norm(cfg.grad_clip))
    if cfg.weight_decay and name != "adamw":
        chain.append(optax.add_decayed_weights(cfg.weight_decay))
    return optax.chain(*chain, base) if chain else base


def loss_and_correct(logits: jax.Array, labels: jax.Array, cfg: TrainConfig) -> tuple[jax.Array, jax.Array]:
    """Mean training loss (cross-entropy with label smoothing, or focal) and number of correct predictions."""
    num_classes = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits)
    onehot = jax.nn.one_hot(labels, num_classes)
    if cfg.label_smoothing:
        onehot = onehot * (1 - cfg.label_smoothing) + cfg.label_smoothing / num_classes
    if cfg.loss == "focal":
        weight = (1.0 - jnp.exp(log_probs)) ** cfg.focal_gamma
        per_example = -(weight * onehot * log_probs).sum(-1)
    else:
        per_example = -(onehot * log_probs).sum(-1)
    correct = (logits.argmax(-1) == labels).sum()
    return per_example.mean(), correct


# ----------------------------------------------------------------------------- compiled steps

@dataclass
class Program:
    """The compiled functions for one (model, config, data shape) combination."""

    graphdef: Any
    tx: optax.GradientTransformation
    chunk: Callable
    evaluate: Callable
    compile_seconds: float


def _context(cfg: TrainConfig, train: bool, rng: jax.Array | None) -> layers.Context:
    dtype = jnp.bfloat16 if cfg.precision == "bfloat16" else jnp.float32
    return layers.Context(train=train, rng=rng, dtype=dtype, conv_impl=layers.resolve_conv_impl(cfg.conv_impl))


def make_forward(graphdef: Any, cfg: TrainConfig) -> Callable:
    """forward(params, batch_stats, images_float, train, rng) -> (logits, new_batch_stats)."""
    def forward(params: Any, batch_stats: Any, images: jax.Array, train: bool, rng: jax.Array | None):
        # fresh Variable objects owned by the current trace (NNX refuses to mutate ones from outer traces)
        model = nnx.merge(graphdef, jax.tree.map(lambda v: v, params), jax.tree.map(lambda v: v, batch_stats))
        logits = model(images, _context(cfg, train, rng))
        return logits, nnx.state(model, nnx.BatchStat)
    return forward


def _mesh_for(cfg: TrainConfig) -> jax.sharding.Mesh | None:
    devices = jax.devices()
    if cfg.data_parallel == "off" or (cfg.data_parallel == "auto" and len(devices) == 1):
        return None
    return jax.sharding.Mesh(np.array(devices), ("data",))


CPU_MICRO_BATCH = 32


def _micro_batches(batch: int, mesh: jax.sharding.Mesh | None, batch_stats: Any) -> int:
    """How many pieces a CPU computes one batch's gradient in (1 = all at once).

    Only for models without batch statistics (BatchNorm over a piece would change the maths) and
    single-device runs; accelerators want the whole batch at once.
    """
    if mesh is not None or jax.default_backend() != "cpu" or jax.tree.leaves(batch_stats):
        return 1
    parts = batch // CPU_MICRO_BATCH
    return parts if parts > 1 and batch % parts == 0 else 1


CPU_INFERENCE_PIECE = 256


def inference_logits(forward: Callable, params: Any, batch_stats: Any, images: jax.Array) -> jax.Array:
    """Logits of uint8 images in inference mode; on a CPU, in pieces of at most CPU_INFERENCE_PIECE images.

    A 1,000-image batch of activations spills out of the CPU's caches; the same work in pieces of
    about 250 runs 1.4x faster (bench/NOTES.md). Inference has no batch statistics, so this is exact.
    """
    def logits_of(part: jax.Array) -> jax.Array:
        return forward(params, batch_stats, part.astype(jnp.float32) / 255.0, False, None)[0]

    count = images.shape[0]
    pieces = next(k for k in range(1, count + 1) if count % k == 0 and count // k <= CPU_INFERENCE_PIECE)
    if pieces == 1 or jax.default_backend() != "cpu":
        return logits_of(images)
    logits = jax.lax.map(logits_of, images.reshape((pieces, count // pieces) + images.shape[1:]))
    return logits.reshape((count,) + logits.shape[2:])


def build_program(graphdef: Any, cfg: TrainConfig, steps_per_epoch: int, mesh: jax.sharding.Mesh | None) -> tuple[Callable, Callable, optax.GradientTransformation]:
    """The jitted chunk (a loop of train steps) and eval functions; compiled on first call."""
    tx = make_optimizer(cfg, steps_per_epoch)
    forward = make_forward(graphdef, cfg)
    batch = cfg.batch_size
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")) if mesh else None

    def shard(x: jax.Array) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, batch_sharding) if batch_sharding is not None else x

    def loss_fn(params: Any, batch_stats: Any, images: jax.Array, labels: jax.Array, key: jax.Array):
        logits, new_stats = forward(params, batch_stats, images, True, key)
        loss, correct = loss_and_correct(logits, labels, cfg)
        return loss, (new_stats, correct)

    # batch_stats is an argument (not a closure) so NNX mutates it at the trace level it lives on
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def batch_gradients(state: dict, images: jax.Array, labels: jax.Array, key: jax.Array):
        parts = _micro_batches(batch, mesh, state["batch_stats"])
        if parts == 1:
            return grad_fn(state["params"], state["batch_stats"], images, labels, key)
        # Same gradient as the whole batch at once (the model has no batch statistics), computed in
        # cache-sized pieces: on a CPU the patch matrices of a large batch spill out of cache.
        images = images.reshape((parts, batch // parts) + images.shape[1:])
        labels = labels.reshape(parts, batch // parts)

        def accumulate(part: jax.Array, totals: tuple):
            (loss, (_, correct)), grads = grad_fn(state["params"], state["batch_stats"], images[part], labels[part],
                                                  jax.random.fold_in(key, part))
            return jax.tree.map(jnp.add, totals, (loss, correct, grads))

        zeros = (jnp.float32(0), jnp.int32(0), jax.tree.map(jnp.zeros_like, state["params"]))
        loss, correct, grads = jax.lax.fori_loop(0, parts, accumulate, zeros)
        return (loss / parts, (state["batch_stats"], correct)), jax.tree.map(lambda g: g / parts, grads)

    def train_step(state: dict, images: jax.Array, labels: jax.Array, key: jax.Array) -> tuple[dict, jax.Array]:
        (loss, (new_stats, correct)), grads = batch_gradients(state, images, labels, key)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {"params": params, "batch_stats": new_stats, "opt_state": opt_state, "step": state["step"] + 1}
        return new_state, jnp.stack([loss * images.shape[0], correct.astype(jnp.float32), jnp.float32(images.shape[0])])

    def chunk(state: dict, images: jax.Array, labels: jax.Array, perm: jax.Array, epoch_key: jax.Array,
              start: jax.Array, length: int) -> tuple[dict, jax.Array]:
        def body(step_in_epoch: jax.Array, carry: tuple[dict, jax.Array]) -> tuple[dict, jax.Array]:
            state, sums = carry
            idx = jax.lax.dynamic_slice(perm, (step_in_epoch * batch,), (batch,))
            x = shard(images[idx].astype(jnp.float32) / 255.0)
            y = shard(labels[idx])
            key = jax.random.fold_in(epoch_key, step_in_epoch)
            if cfg.augment.active():
                x = augment_batch(x, jax.random.fold_in(key, 7919), cfg.augment)
            state, step_sums = train_step(state, x, y, key)
            return state, sums + step_sums

        # A loop with a run-time trip count: the epoch's last, shorter chunk reuses this program, and
        # no per-step conditional forces XLA to copy the optimizer state in and out of its branches.
        stop = jnp.minimum(start + length, steps_per_epoch)
        return jax.lax.fori_loop(start, stop, body, (state, jnp.zeros(3, jnp.float32)))

    def evaluate(params: Any, batch_stats: Any, images: jax.Array, labels: jax.Array, mask: jax.Array):
        logits = inference_logits(forward, params, batch_stats, images)
        log_probs = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
        correct = (logits.argmax(-1) == labels)
        return jnp.stack([(nll * mask).sum(), (correct * mask).sum()]), logits

    chunk_jit = jax.jit(chunk, static_argnames=("length",), donate_argnums=(0,))
    return chunk_jit, jax.jit(evaluate), tx


# ----------------------------------------------------------------------------- state

def init_state(spec: Any, splits_shape: tuple[int, int, int], num_classes: int, cfg: TrainConfig,
               tx: optax.GradientTransformation | None = None, steps_per_epoch: int = 1) -> tuple[Any, dict]:
    """(graphdef, state) for a fresh model: params, batch stats, optimizer state and step counter."""
    model = layers.build_model(spec, splits_shape, num_classes, seed=cfg.seed)
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    tx = tx or make_optimizer(cfg, steps_per_epoch)
    state = {"params": params, "batch_stats": batch_stats, "opt_state": tx.init(params), "step": jnp.int32(0)}
    return graphdef, state


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
        if not isinstance(value, np.ndarray) or value.shape != np.shape(leaf):
            raise ValueError(f"checkpoint shape of {key} is {getattr(value, 'shape', '?')}, the model needs {np.shape(leaf)}")
        leaves.append(value.astype(np.asarray(leaf).dtype))
    if len(stored) != len(flat):
        raise ValueError("checkpoint has extra entries; it belongs to a different model")
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _base_key(seed: int) -> jax.Array:
    return jax.random.key(seed, impl=PRNG_IMPL)


# ----------------------------------------------------------------------------- evaluation helper

def evaluate_arrays(evaluate_fn: Callable, params: Any, batch_stats: Any, images: np.ndarray, labels: np.ndarray,
                    batch: int, want_logits: bool = False) -> tuple[float, float, np.ndarray | None]:
    """(mean loss, accuracy, logits or None) over arrays, in fixed-size padded batches (one compile)."""
    total = len(labels)
    if total == 0:
        return float("nan"), float("nan"), None
    batch = min(batch, total)
    sums = np.zeros(2)
    outputs = []
    for start in range(0, total, batch):
        x = images[start:start + batch]
        y = labels[start:start + batch]
        count = len(y)
        if count < batch:
            x = np.concatenate([x, np.zeros((batch - count,) + x.shape[1:], x.dtype)])
            y = np.concatenate([y, np.zeros(batch - count, y.dtype)])
        mask = (np.arange(batch) < count).astype(np.float32)
        part, logits = evaluate_fn(params, batch_stats, x, y, mask)
        sums += np.asarray(part)
        if want_logits:
            outputs.append(np.asarray(logits)[:count])
    return float(sums[0] / total), float(sums[1] / total), (np.concatenate(outputs) if want_logits else None)


# ----------------------------------------------------------------------------- the training generator

class TrainingError(RuntimeError):
    """Training cannot start (bad config for this data, unusable checkpoint)."""


def train(spec: Any, cfg: TrainConfig, splits: Splits, *, run_dir: str | Path | None = None,
          stop: threading.Event | None = None, resume: bool = False, eval_test_each_epoch: bool = False,
          run_meta: dict | None = None, checkpoint_seconds: float = 5.0) -> Iterator[dict]:
    """Train `spec` on `splits`, yielding 'start', 'chunk', 'epoch' and finally 'done' (or 'error') records.

    With `run_dir`, writes run.json, history.jsonl and an atomic checkpoint after every epoch and on stop;
    mid-epoch checkpoints follow at most every `checkpoint_seconds` (0: after every chunk), so a killed
    process loses little. With `resume=True`, continues from the newest valid checkpoint in `run_dir`.
    """
    cfg.validate(train_size=len(splits.train_labels))
    spec = layers.normalize_spec(spec)
    layers.describe(spec, splits.input_shape, splits.num_classes)
    stop = stop or threading.Event()
    run_path = Path(run_dir) if run_dir else None
    steps_per_epoch = len(splits.train_labels) // cfg.batch_size
    mesh = _mesh_for(cfg)
    if mesh is not None and cfg.batch_size % mesh.size:
        raise ValueError(f"batch size {cfg.batch_size} must be divisible by the {mesh.size} devices for data-parallel training")
    graphdef, state = init_state(spec, splits.input_shape, splits.num_classes, cfg, steps_per_epoch=steps_per_epoch)
    chunk_fn, eval_fn, _ = build_program(graphdef, cfg, steps_per_epoch, mesh)

    history: list[dict] = []
    start_epoch, start_step, carried = 0, 0, np.zeros(3)
    best = {"epoch": None, "value": None, "val_accuracy": None, "state": None, "since": 0}
    warnings: list[str] = []
    if resume:
        if run_path is None:
            raise TrainingError("resume needs a run directory")
        try:
            payload, meta, warnings = store.load_latest_checkpoint(run_path)
            state = state_from_bytes(jax.device_get(state), payload)
        except (store.StoreError, ValueError) as error:
            raise TrainingError(f"cannot resume {run_path}: {error}") from None
        start_epoch, start_step = meta["epoch"], meta["step_in_epoch"]
        carried = np.asarray(meta.get("epoch_sums", [0, 0, 0]), dtype=np.float64)
        history = [r for r in store.read_jsonl(run_path / "history.jsonl") if r.get("epoch", 0) <= start_epoch]
        best.update({k: meta.get(f"best_{k}") for k in ("epoch", "value", "val_accuracy")})
        best["since"] = meta.get("best_since", 0)
        if best["epoch"] is not None and (run_path / "best.msgpack").exists():
            best["state"] = (run_path / "best.msgpack").read_bytes()
        store.atomic_write_bytes(run_path / "history.jsonl", "".join(_jsonl(r) for r in history).encode())

    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh else jax.devices()[0]
    state = jax.device_put(state, replicated)
    train_images = jax.device_put(splits.train_images, replicated)
    train_labels = jax.device_put(splits.train_labels, replicated)
    chunk_len = min(cfg.chunk_steps, steps_per_epoch)
    base_key = _base_key(cfg.seed)

    def epoch_inputs(epoch: int) -> tuple[jax.Array, jax.Array]:
        epoch_key = jax.random.fold_in(base_key, epoch)
        perm = jax.random.permutation(jax.random.fold_in(epoch_key, 0), len(splits.train_labels)).astype(jnp.int32)
        return perm, jax.random.fold_in(epoch_key, 1)

    compile_start = time.perf_counter()
    perm0, key0 = epoch_inputs(start_epoch)
    compiled = chunk_fn.lower(state, train_images, train_labels, perm0, key0, jnp.int32(0), length=chunk_len).compile()
    compile_seconds = time.perf_counter() - compile_start
    device = device_summary()
    info = {"kind": "start", "epochs": cfg.epochs, "steps_per_epoch": steps_per_epoch, "chunk_steps": chunk_len,
            "train_size": len(splits.train_labels), "val_size": len(splits.val_labels),
            "device": device["kind"], "platform": device["platform"], "devices": device["count"],
            "data_parallel": mesh is not None, "compile_seconds": round(compile_seconds, 3),
            "resumed_from": {"epoch": start_epoch, "step_in_epoch": start_step} if resume else None,
            "warnings": warnings, "time": time.time()}
    if run_path is not None:
        _write_run(run_path, spec, cfg, splits, run_meta, status="running", history=history)
    yield info

    status, t0 = "completed", time.perf_counter()
    last_checkpoint = t0
    elapsed_before = history[-1]["elapsed"] if history else 0.0
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        perm, epoch_key = epoch_inputs(epoch)
        epoch_start = time.perf_counter()
        sums = carried if epoch == start_epoch else np.zeros(3)
        step = start_step if epoch == start_epoch else 0
        while step < steps_per_epoch:
            chunk_t0 = time.perf_counter()
            state, chunk_sums = compiled(state, train_images, train_labels, perm, epoch_key, jnp.int32(step))
            chunk_sums = np.asarray(chunk_sums, dtype=np.float64)
            step = min(step + chunk_len, steps_per_epoch)
            chunk_seconds = time.perf_counter() - chunk_t0
            if not np.isfinite(chunk_sums[0]):
                message = (f"the loss became {'NaN' if np.isnan(chunk_sums[0]) else 'infinite'} in epoch {epoch + 1}; "
                           f"lower the learning rate (now {cfg.learning_rate:g}) or enable gradient clipping")
                if run_path is not None:
                    _update_run(run_path, status="failed", error=message)
                yield {"kind": "error", "message": message, "epoch": epoch + 1}
                yield {"kind": "done", "status": "failed", "epochs_completed": len(history), "error": message}
                return
            sums += chunk_sums
            if run_path is not None and step < steps_per_epoch and time.perf_counter() - last_checkpoint >= checkpoint_seconds:
                # mid-epoch checkpoint before reporting: a crash or kill -9 loses at most the chunk in flight
                _checkpoint(run_path, state, epoch, step, sums, best)
                last_checkpoint = time.perf_counter()
            yield {"kind": "chunk", "epoch": epoch + 1, "step": epoch * steps_per_epoch + step,
                   "epoch_progress": step / steps_per_epoch, "loss": float(sums[0] / sums[2]), "accuracy": float(sums[1] / sums[2]),
                   "images_per_s": float(chunk_sums[2] / max(chunk_seconds, 1e-9)),
                   "elapsed": elapsed_before + time.perf_counter() - t0}
            if stop.is_set() and step < steps_per_epoch:
                status = "stopped"
                break
        if status == "stopped":
            if run_path is not None:
                _checkpoint(run_path, state, epoch, step, sums, best)
                _update_run(run_path, status="stopped", epochs_completed=len(history))
            break
        val_loss, val_acc, _ = evaluate_arrays(eval_fn, state["params"], state["batch_stats"], splits.val_images,
                                               splits.val_labels, cfg.eval_batch_size)
        seconds = time.perf_counter() - epoch_start
        record = {"kind": "epoch", "epoch": epoch + 1, "loss": float(sums[0] / sums[2]), "accuracy": float(sums[1] / sums[2]),
                  "val_loss": val_loss, "val_accuracy": val_acc, "seconds": seconds,
                  "elapsed": elapsed_before + time.perf_counter() - t0,
                  "images_per_s": (steps_per_epoch - (start_step if epoch == start_epoch else 0)) * cfg.batch_size / seconds,
                  "learning_rate": float(make_schedule(cfg, steps_per_epoch)((epoch + 1) * steps_per_epoch - 1))}
        if eval_test_each_epoch:
            record["test_loss"], record["test_accuracy"], _ = evaluate_arrays(
                eval_fn, state["params"], state["batch_stats"], splits.test_images, splits.test_labels, cfg.eval_batch_size)
        monitored = val_acc if cfg.monitor == "val_accuracy" else -val_loss
        if best["value"] is None or monitored > best["value"] + cfg.min_delta:
            best.update(epoch=epoch + 1, value=monitored, val_accuracy=val_acc, since=0)
            if cfg.early_stopping and cfg.restore_best:
                best["state"] = state_to_bytes({"params": state["params"], "batch_stats": state["batch_stats"]})
        else:
            best["since"] += 1
        record["best_epoch"], record["best_val_accuracy"] = best["epoch"], best["val_accuracy"]
        history.append(record)
        if run_path is not None:
            store.append_jsonl(run_path / "history.jsonl", record)
            if best["state"] is not None and best["epoch"] == epoch + 1:
                store.atomic_write_bytes(run_path / "best.msgpack", best["state"])
            _checkpoint(run_path, state, epoch + 1, 0, np.zeros(3), best)
            _update_run(run_path, epochs_completed=len(history), best_val_accuracy=best["val_accuracy"],
                        best_epoch=best["epoch"], seconds=record["elapsed"])
        yield record
        start_step = 0
        if cfg.early_stopping and best["since"] >= cfg.patience:
            status = "early_stopped"
            break
        if stop.is_set():
            status = "stopped"
            break

    final = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    if best["state"] is not None and status != "stopped":
        final = state_from_bytes(final, best["state"])
    if run_path is not None:
        store.atomic_write_bytes(run_path / "model.msgpack", state_to_bytes(final))
        _update_run(run_path, status=status, epochs_completed=len(history))
    last = history[-1] if history else {}
    yield {"kind": "done", "status": status, "epochs_completed": len(history), "best_epoch": best["epoch"],
           "best_val_accuracy": best["val_accuracy"], "train_accuracy": last.get("accuracy"),
           "val_accuracy": last.get("val_accuracy"), "seconds": last.get("elapsed", 0.0),
           "images_per_s": float(np.median([h["images_per_s"] for h in history])) if history else None,
           "weights": final}


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


def _update_run(run_path: Path, **changes: Any) -> None:
    record = store.read_json(run_path / "run.json")
    record.pop("schema", None)
    record.update(changes)
    store.atomic_write_json(run_path / "run.json", record)


def run_to_completion(records: Iterator[dict], on_record: Callable[[dict], None] | None = None) -> dict:
    """Drain a training generator and return its final 'done' record."""
    final: dict = {}
    for record in records:
        if on_record:
            on_record(record)
        final = record
    return final


# ----------------------------------------------------------------------------- trained models

class TrainedModel:
    """A trained network ready for inference: spec, weights, class names and preprocessing settings."""

    def __init__(self, spec: list, input_shape: tuple[int, int, int], class_names: tuple[str, ...], weights: dict,
                 preprocess: dict | None = None, card: dict | None = None, conv_impl: str = "auto"):
        self.spec = layers.normalize_spec(spec)
        self.input_shape = tuple(int(v) for v in input_shape)
        self.class_names = tuple(class_names)
        self.preprocess = dict(preprocess or {})
        self.card = dict(card or {})
        model = layers.build_model(self.spec, self.input_shape, len(self.class_names))
        self.graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        template = jax.device_get({"params": params, "batch_stats": batch_stats})
        if not isinstance(weights, (bytes, bytearray)):
            weights = state_to_bytes(weights)  # one validation path for every source of weights
        weights = state_from_bytes(template, bytes(weights))
        self.weights = jax.device_put(weights)
        ctx_cfg = TrainConfig(conv_impl=conv_impl)
        forward = make_forward(self.graphdef, ctx_cfg)
        self._probs = jax.jit(lambda w, x: jax.nn.softmax(inference_logits(forward, w["params"], w["batch_stats"], x)))

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def predict_proba(self, images: np.ndarray, batch: int = 1000) -> np.ndarray:
        """Class probabilities for uint8 images shaped (N, H, W, C); batches are padded to powers of two."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[..., None]
        if images.shape[1:] != self.input_shape:
            raise ValueError(f"images have shape {images.shape[1:]}, the model expects {self.input_shape}")
        out = []
        for start in range(0, len(images), batch):
            part = images[start:start + batch]
            size = 1 << max(0, math.ceil(math.log2(len(part))))  # few distinct shapes -> few compiles
            padded = np.concatenate([part, np.zeros((size - len(part),) + part.shape[1:], part.dtype)]) if size > len(part) else part
            out.append(np.asarray(self._probs(self.weights, padded))[:len(part)])
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def weights_bytes(self) -> bytes:
        """msgpack bytes of the weights (params and batch statistics)."""
        return state_to_bytes(self.weights)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "TrainedModel":
        """Load the final weights of a finished or stopped run (StoreError/ValueError if unusable)."""
        run_path = Path(run_dir)
        run = store.read_json(run_path / "run.json")
        weights_path = run_path / "model.msgpack"
        if not weights_path.exists():
            raise store.StoreError(f"run {run_path.name} has no trained weights yet (still running, or it failed)")
        return cls(run["spec"], tuple(run["input_shape"]), tuple(run["class_names"]), weights_path.read_bytes(),
                   run.get("preprocess"), {k: run.get(k) for k in ("test_accuracy", "best_val_accuracy", "epochs_completed")})
