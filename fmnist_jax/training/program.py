"""The jitted training chunk and evaluation: forward functions, data parallelism, micro-batches,
initial state, and the compilation cache.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fmnist_jax.model import cpu_ops, layers
from fmnist_jax.training import cpu_devices
from fmnist_jax.training import members as ensemble
from fmnist_jax.training.config import TrainConfig
from fmnist_jax.training.optim import (
    RunTimeRate,
    is_correct,
    loss_and_correct,
    make_optimizer,
    schedule_plan,
    schedule_value,
    set_nll,
)

PRNG_IMPL = "threefry2x32"

cpu_devices.configure()  # one device per core, before anything runs on JAX (cpu_devices)


COMPILE_CACHE_MAX_BYTES = 512 * 2**20


def enable_compile_cache(home: str | Path | None = None) -> None:
    """Persist compiled XLA programs under the workspace so a second start skips compilation."""
    from fmnist_jax import settings

    jax.config.update("jax_compilation_cache_dir", str(settings.home_dir(home) / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)  # least recently used go first


def device_summary() -> dict:
    """Backend, device kind and count, e.g. {'platform': 'cpu', 'kind': 'cpu', 'count': 1}."""
    devices = jax.devices()
    return {"platform": devices[0].platform, "kind": devices[0].device_kind, "count": len(devices)}


# ----------------------------------------------------------------------------- compiled steps

def _context(cfg: TrainConfig, train: bool, rng: jax.Array | None, row_offset: jax.Array | int = 0) -> layers.Context:
    dtype = jnp.bfloat16 if cfg.precision == "bfloat16" else jnp.float32
    return layers.Context(train=train, rng=rng, dtype=dtype, conv_impl=cpu_ops.resolve_conv_impl(cfg.conv_impl),
                          row_offset=row_offset)


def make_forward(graphdef: Any, cfg: TrainConfig, members: int = 1) -> Callable:
    """forward(params, batch_stats, images_float, train, rng[, row_offset]) -> (logits, new_batch_stats).

    With `members` > 1 the weights are an ensemble's, stacked along a first axis (init_state), and the forward
    pass is the ensemble's prediction, the mean of its members' logits (members.mean_forward)."""
    one = member_forward(graphdef, cfg)
    return one if members == 1 else ensemble.mean_forward(one)


def member_forward(graphdef: Any, cfg: TrainConfig) -> Callable:
    """The forward pass of one network (one member's weights)."""
    def forward(params: Any, batch_stats: Any, images: jax.Array, train: bool, rng: jax.Array | None,
                row_offset: jax.Array | int = 0):
        # fresh Variable objects owned by the current trace (NNX refuses to mutate ones from outer traces)
        model = nnx.merge(graphdef, jax.tree.map(lambda v: v, params), jax.tree.map(lambda v: v, batch_stats))
        logits = model(images, _context(cfg, train, rng, row_offset))
        return logits, nnx.state(model, nnx.BatchStat)
    return forward


def _mesh_for(cfg: TrainConfig, batch_stats: Any = None) -> jax.sharding.Mesh | None:
    """The data-parallel mesh over every device, or None for one device. In one process on a CPU, 'auto' splits only
    models without batch statistics whose batch divides evenly (cpu_devices); elsewhere, every model."""
    devices = jax.devices()
    if cfg.ensemble > 1:  # the members train side by side on one device (TrainConfig.validate refuses "on")
        return None
    if cfg.data_parallel == "off" or (cfg.data_parallel == "auto" and len(devices) == 1):
        return None
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    if cfg.data_parallel == "auto" and devices[0].platform == "cpu" and jax.process_count() == 1:
        # one process's CPU devices serve cpu_devices.sharded_gradients only (attempt 19)
        return mesh if cpu_devices.applies(mesh, batch_stats) and cfg.batch_size % mesh.size == 0 else None
    return mesh


# bench/NOTES.md attempts 6, 28 and 34: on one device 16 and 32 are level (+-5% over four alternated runs);
# on one device per core, 16 is 1.09x faster
CPU_MICRO_BATCH = 16


def _micro_batches(batch: int, mesh: jax.sharding.Mesh | None, batch_stats: Any) -> int:
    """How many pieces a CPU computes one batch's gradient in (1 = all at once).

    Only for models without batch statistics (BatchNorm over a piece would change the maths) and
    single-device runs; accelerators want the whole batch at once.
    """
    if mesh is not None or jax.default_backend() != "cpu" or jax.tree.leaves(batch_stats):
        return 1
    parts = batch // CPU_MICRO_BATCH
    return parts if parts > 1 and batch % parts == 0 else 1


def sum_pieces(grad_fn: Callable, params: Any, batch_stats: Any, images: jax.Array, labels: jax.Array, key: jax.Array,
               first_row: jax.Array | int, parts: int) -> tuple:
    """(summed loss, correct, summed gradients) of `images` in `parts` equal pieces, one after another."""
    piece = images.shape[0] // parts
    images = images.reshape((parts, piece) + images.shape[1:])
    labels = labels.reshape(parts, piece)

    def accumulate(part: jax.Array, totals: tuple) -> tuple:
        (loss, (_, correct)), grads = grad_fn(params, batch_stats, images[part], labels[part], key, first_row + part * piece)
        return jax.tree.map(jnp.add, totals, (loss, correct, grads))

    zeros = (jnp.float32(0), jnp.int32(0), jax.tree.map(jnp.zeros_like, params))
    return jax.lax.fori_loop(0, parts, accumulate, zeros)


CPU_INFERENCE_PIECE = 256


def inference_logits(forward: Callable, params: Any, batch_stats: Any, images: jax.Array,
                     tta_flip: bool = False) -> jax.Array:
    """Logits of uint8 images in inference mode; with `tta_flip`, the mean of the logits of each image and its
    mirror image (left-right), the test-time augmentation every inference path applies the same way."""
    logits = _inference_logits(forward, params, batch_stats, images)
    if tta_flip:
        logits = (logits + _inference_logits(forward, params, batch_stats, images[:, :, ::-1])) / 2
    return logits


def _inference_logits(forward: Callable, params: Any, batch_stats: Any, images: jax.Array) -> jax.Array:
    """Logits of uint8 images in inference mode; on a CPU, in pieces of at most CPU_INFERENCE_PIECE images.

    A 1,000-image batch of activations spills out of the CPU's caches; the same work in pieces of
    about 250 runs 1.4x faster (bench/NOTES.md). Inference has no batch statistics, so this is exact.
    """
    def logits_of(part: jax.Array) -> jax.Array:
        return forward(params, batch_stats, part.astype(jnp.float32) / 255.0, False, None)[0]

    count = images.shape[0]
    pieces = -(-count // CPU_INFERENCE_PIECE)
    if pieces <= 1 or jax.default_backend() != "cpu":
        return logits_of(images)
    # Equal pieces of ceil(count / pieces) images, the last padded with blank images whose logits are
    # dropped: an awkward count (a prime, say) never degrades to pieces of one image.
    piece = -(-count // pieces)
    padded = jnp.concatenate([images, jnp.zeros((pieces * piece - count,) + images.shape[1:], images.dtype)])
    logits = jax.lax.map(logits_of, padded.reshape((pieces, piece) + images.shape[1:]))
    return logits.reshape((pieces * piece,) + logits.shape[2:])[:count]


def make_batch_gradients(forward: Callable, cfg: TrainConfig, mesh: jax.sharding.Mesh | None) -> Callable:
    """(state, images, labels, key) -> ((loss, (new batch_stats, correct)), gradients) for one training batch."""
    batch = cfg.batch_size

    def loss_fn(params: Any, batch_stats: Any, images: jax.Array, labels: jax.Array, key: jax.Array,
                row_offset: jax.Array | int = 0):
        logits, new_stats = forward(params, batch_stats, images, True, key, row_offset)
        loss, correct = loss_and_correct(logits, labels, cfg)
        return loss, (new_stats, correct)

    # batch_stats is an argument (not a closure) so NNX mutates it at the trace level it lives on
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def piece_gradients(params: Any, batch_stats: Any, images: jax.Array, labels: jax.Array, key: jax.Array,
                        first_row: jax.Array | int, parts: int) -> tuple:
        return sum_pieces(grad_fn, params, batch_stats, images, labels, key, first_row, parts)

    def batch_gradients(state: dict, images: jax.Array, labels: jax.Array, key: jax.Array):
        # Same gradient as the whole batch at once (the model has no batch statistics, and each piece draws
        # its rows' slice of the batch's dropout masks), computed in cache-sized pieces: on a CPU the patch
        # matrices of a large batch spill out of cache.
        if cpu_devices.applies(mesh, state["batch_stats"]):  # each device its rows, in pieces
            parts = _micro_batches(batch // mesh.size, None, state["batch_stats"])
            loss, correct, grads = cpu_devices.sharded_gradients(piece_gradients, mesh, parts, state["params"],
                                                                 state["batch_stats"], images, labels, key)
            parts *= mesh.size
        else:
            parts = _micro_batches(batch, mesh, state["batch_stats"])
            if parts == 1:
                return grad_fn(state["params"], state["batch_stats"], images, labels, key)
            loss, correct, grads = piece_gradients(state["params"], state["batch_stats"], images, labels, key, 0, parts)
        return (loss / parts, (state["batch_stats"], correct)), jax.tree.map(lambda g: g / parts, grads)

    return batch_gradients


def make_evaluate(forward: Callable, tta_flip: bool = False) -> Callable:
    """(params, batch_stats, images, labels, mask) -> ([summed NLL, correct] over the mask, logits)."""
    def evaluate(params: Any, batch_stats: Any, images: jax.Array, labels: jax.Array, mask: jax.Array):
        logits = inference_logits(forward, params, batch_stats, images, tta_flip)
        log_probs = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(log_probs, jnp.maximum(labels, 0)[:, None], axis=1)[:, 0]
        nll = jnp.where(labels < 0, set_nll(log_probs, labels, 1.0), nll)  # set-valued labels (data.label_sets)
        right = is_correct(logits, labels)
        return jnp.stack([(nll * mask).sum(), (right * mask).sum()]), logits

    return evaluate


PADDED_BYTES = 64 * 2**20


def padded_size(count: int, row_bytes: int) -> int:
    """The rows the device-resident training set is padded to: a power of two, and at least as many rows as
    fit in 64 MiB (65,536 Fashion-MNIST images). So every training set up to that size shares one compiled
    program (a run on 2,000 images and one on all 60,000), and larger ones share one per doubling; the
    padding rows are never drawn (the permutation covers the real rows)."""
    floor = 1 << max(10, (PADDED_BYTES // max(1, int(row_bytes))).bit_length() - 1)
    return max(floor, 1 << max(0, int(count) - 1).bit_length())


def pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """`array` with zero rows appended up to `rows` (never drawn: the permutation covers the real rows)."""
    missing = rows - len(array)
    return array if missing <= 0 else np.concatenate([array, np.zeros((missing,) + array.shape[1:], array.dtype)])


# Settings the compiled chunk takes as arguments (run_plan, the keys) or never reads (evaluation, stopping).
RUN_TIME_FIELDS = ("epochs", "clean_epochs", "learning_rate", "warmup_epochs", "step_every_epochs", "step_factor", "seed", "early_stopping",
                   "patience", "min_delta", "monitor", "restore_best", "eval_batch_size", "tta_flip")


def program_key(spec: Any, cfg: TrainConfig, input_shape: tuple, num_classes: int, train_size: int) -> str:
    """A short key for the compiled training chunk of these settings: equal keys, one compiled program."""
    fields = {name: value for name, value in cfg.to_dict().items() if name not in RUN_TIME_FIELDS}
    rows = padded_size(train_size, int(np.prod(input_shape)))  # uint8 images: a byte per value
    text = json.dumps([spec, fields, list(input_shape), num_classes, rows], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def run_plan(cfg: TrainConfig, steps_per_epoch: int) -> dict[str, jax.Array]:
    """The chunk's run-time numbers: steps per epoch and the learning-rate schedule's (optim.schedule_plan)."""
    plan = {name: jnp.float32(value) for name, value in schedule_plan(cfg, steps_per_epoch).items()}
    return {**plan, "steps_per_epoch": jnp.int32(steps_per_epoch)}


def stage_epoch(images: np.ndarray, labels: np.ndarray, perm: np.ndarray, steps: int, batch: int,
                mesh: jax.sharding.Mesh) -> tuple[jax.Array, jax.Array]:
    """One epoch's batches as global arrays shaped (steps, batch, ...), split along the batch over the mesh.

    For training across processes (jax.distributed): every process computes the same permutation, and
    puts on its own devices only the columns of each batch that they compute on
    (jax.make_array_from_process_local_data), so no device holds the whole training set and the
    batches are exactly those of a single-process run.
    """
    order = np.asarray(perm)[: steps * batch].reshape(steps, batch)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data"))
    shape = (steps, batch) + images.shape[1:]
    columns = [index[1] for index in sharding.addressable_devices_indices_map(shape).values()]
    low = min(c.start or 0 for c in columns)
    high = max(batch if c.stop is None else c.stop for c in columns)
    local = order[:, low:high]
    return (jax.make_array_from_process_local_data(sharding, images[local], shape),
            jax.make_array_from_process_local_data(sharding, labels[local], (steps, batch)))


def build_program(graphdef: Any, cfg: TrainConfig, steps_per_epoch: int, mesh: jax.sharding.Mesh | None,
                  staged: bool = False) -> tuple[Callable, Callable, optax.GradientTransformation]:
    """The jitted chunk (a loop of train steps) and eval functions; compiled on first call.

    The chunk takes the whole training set and the epoch's permutation, or (`staged`) the epoch's
    batches already in order (stage_epoch; the permutation is then unused), and the run's plan
    (run_plan: steps per epoch and the learning-rate schedule's numbers) as arguments. With the
    training set padded to its size class (padded_size), the compiled chunk depends on the model,
    the batch and the optimizer's kind, not on the epochs, the training-set size or the learning rate:
    one compile serves every such run (the studio's warm-up compiles it before Start)."""
    rate = RunTimeRate()
    tx = make_optimizer(cfg, steps_per_epoch, rate)
    members = cfg.ensemble
    batch = cfg.batch_size
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")) if mesh else None
    batch_gradients = make_batch_gradients(member_forward(graphdef, cfg), cfg, mesh)
    if members > 1:  # each member its own batch, key, loss and gradient, in one compiled step
        batch_gradients = ensemble.member_gradients(batch_gradients, members)

    def shard(x: jax.Array) -> jax.Array:
        return jax.lax.with_sharding_constraint(x, batch_sharding) if batch_sharding is not None else x

    def train_step(state: dict, images: jax.Array, labels: jax.Array, key: jax.Array,
                   plan: dict) -> tuple[dict, jax.Array]:
        (loss, (new_stats, correct)), grads = batch_gradients(state, images, labels, key)
        with rate.given(schedule_value(cfg.schedule, state["step"], plan)):
            updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {"params": params, "batch_stats": new_stats, "opt_state": opt_state, "step": state["step"] + 1}
        if "ema" in state:
            new_state["ema"] = ema_update(state["ema"], {"params": params, "batch_stats": new_stats}, state["step"], cfg.ema_decay)
        rows = images.shape[-4]  # (batch, H, W, C), or (members, batch, H, W, C)
        return new_state, jnp.stack([loss * rows, correct.astype(jnp.float32), jnp.float32(rows)])

    def chunk(state: dict, images: jax.Array, labels: jax.Array, perm: jax.Array, epoch_key: jax.Array,
              start: jax.Array, plan: dict, length: int) -> tuple[dict, jax.Array]:
        def body(step_in_epoch: jax.Array, carry: tuple[dict, jax.Array]) -> tuple[dict, jax.Array]:
            state, sums = carry
            if staged:
                x, y = images[step_in_epoch], labels[step_in_epoch]
            else:  # an ensemble's perm is (members, rows): each member its own order (and key, below)
                idx = ensemble.member_batch(perm, step_in_epoch, batch, members)
                x, y = images[idx], labels[idx]
            x, y = shard(x.astype(jnp.float32) / 255.0), shard(y)
            key = ensemble.step_keys(epoch_key, step_in_epoch, members)
            if cfg.augment.active():  # a run-time switch: the clean last epochs share the compiled program
                x = jax.lax.cond(state["step"] < plan["augment_until"],
                                 lambda x: ensemble.augment(x, key, cfg.augment, members), lambda x: x, x)
            state, step_sums = train_step(state, x, y, key, plan)
            return state, sums + step_sums

        # A loop with a run-time trip count: the epoch's last, shorter chunk reuses this program, and
        # no per-step conditional forces XLA to copy the optimizer state in and out of its branches.
        stop = jnp.minimum(start + length, plan["steps_per_epoch"])
        return jax.lax.fori_loop(start, stop, body, (state, jnp.zeros(3, jnp.float32)))

    chunk_jit = jax.jit(chunk, static_argnames=("length",), donate_argnums=(0,))
    return chunk_jit, jax.jit(make_evaluate(make_forward(graphdef, cfg, members), cfg.tta_flip)), tx


# ----------------------------------------------------------------------------- state

def ema_update(average: dict, current: dict, step: jax.Array, decay: float) -> dict:
    """One step of the weights' exponential moving average. The decay ramps up as (1 + step) / (10 + step)
    until it reaches `decay`, so the average forgets the random initial weights within the first steps."""
    rate = jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda a, c: (rate * a + (1.0 - rate) * c).astype(a.dtype), average, current)


def eval_weights(state: dict) -> dict:
    """The weights to evaluate, checkpoint as best and keep: the moving average when the run keeps one."""
    return state["ema"] if "ema" in state else {"params": state["params"], "batch_stats": state["batch_stats"]}


def init_state(spec: Any, splits_shape: tuple[int, int, int], num_classes: int, cfg: TrainConfig,
               tx: optax.GradientTransformation | None = None, steps_per_epoch: int = 1) -> tuple[Any, dict]:
    """(graphdef, state) for a fresh model: params, batch stats, optimizer state and step counter."""
    graphdef, params, batch_stats = nnx.split(layers.build_model(spec, splits_shape, num_classes, seed=cfg.seed),
                                              nnx.Param, nnx.BatchStat)
    if cfg.ensemble > 1:  # member k starts as a run with seed + k would, the members stacked along a first axis
        others = [nnx.split(layers.build_model(spec, splits_shape, num_classes, seed=cfg.seed + k), nnx.Param, nnx.BatchStat)
                  for k in range(1, cfg.ensemble)]
        params = ensemble.stack_members([params] + [other[1] for other in others])
        batch_stats = ensemble.stack_members([batch_stats] + [other[2] for other in others])
    tx = tx or make_optimizer(cfg, steps_per_epoch)
    state = {"params": params, "batch_stats": batch_stats, "opt_state": tx.init(params), "step": jnp.int32(0)}
    if cfg.ema_decay > 0:  # its own buffers: the chunk donates the state, and a buffer cannot be donated twice
        state["ema"] = jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})
    return graphdef, state


def _base_key(seed: int, members: int = 1) -> jax.Array:
    """The run's key; for an ensemble, one per member (member k's is a run with seed + k's)."""
    if members > 1:
        return jnp.stack([jax.random.key(seed + k, impl=PRNG_IMPL) for k in range(members)])
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
