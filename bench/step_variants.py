"""Training-step variants side by side: the measurements behind bench/NOTES.md rounds 3-6 (attempts 26, 28, 29, 34-37, 42).

Each comparison builds one compiled training chunk per variant with `throughput.jax_runner` (the program
`train()` runs), in one process, and alternates their windows, so every variant sees the same machine load.
A variant swaps one library function for the duration of its compile:

  masks   dropout masks from threefry (16-bit halves of each word, the code before round 3) vs the hash (now)
  pieces  gradient pieces of 32 / 8 / 16 images (program.CPU_MICRO_BATCH; 16 is the default)
  devices the whole chunk on one device vs on one device per core (cpu_devices; now, where JAX has several)
  conv    convolution gradients as matmuls with XLA's forward (xla_dots, now) vs everything as patches @ matrix
  dense   the model as it trains vs with no gradient for the wide dense layer's weight (an upper bound of
          what that weight's per-piece gradient costs; not a training variant, so not in the default set)
  pool    max pooling's gradient from JAX's max reduction vs from the forward pass's mask (now)
  precision  float32 vs bfloat16 compute (float32 weights; `precision` in TrainConfig): what bfloat16 costs or
          gives on this CPU (not a training-step change, so not in the default set)
  kgrad   a convolution's kernel gradient from the row-major patch matrix (XLA copies it into the transposed
          layout the matmul reads) vs from patches built in that transposed layout (now, attempt 37); both xla_dots
  winograd  3x3 convolutions as xla_dots vs Winograd F(3x3, 3x3) vs F(2x2, 3x3) (now, attempt 42)

`--breakdown` adds where one piece's forward + backward time goes, layer by layer (jax.grad of the model's
prefixes, no dropout; `--piece N` images, default the library's piece size).

    python bench/step_variants.py [--compare masks,pieces,pool,devices,conv,kgrad,winograd] [--preset dls] [--batch-sizes 128,512]
                                  [--windows 9] [--breakdown [--piece 16]] [--json]
    python bench/step_variants.py --quick --json     # tiny sizes, for CI

JSON: {comparison: {batch: {variant: img/s, ..., "ratio": median per-window ratio of the last variant to the
first}}}, "breakdown": [{layer, ms}], load average.
"""
from __future__ import annotations

import argparse
import functools
import math
import time
from typing import Any, Callable

import _common  # noqa: F401  (puts the repository on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
import throughput
from _common import emit_json, load_average, median, print_table

from fmnist_jax.model import cpu_ops, layers, presets
from fmnist_jax.training import program
from fmnist_jax.training.config import TrainConfig


def threefry_mask(key: jax.Array, keep_probability: float, shape: tuple, row_offset: Any = 0) -> jax.Array:
    """The dropout mask before round 3: threefry words, two 16-bit uniforms per word."""
    size = math.prod(shape)
    words = jax.random.bits(jax.random.fold_in(key, row_offset), ((size + 1) // 2,), jnp.uint32)
    halves = jnp.concatenate([words & 0xFFFF, words >> 16])[:size]
    return (halves < round(keep_probability * 65536)).reshape(shape)


def reduction_pool(x: jax.Array, window: int, kind: str) -> jax.Array:
    """Pooling whose max gradient is JAX's own gradient of a max reduction (before attempt 29)."""
    tiles = cpu_ops._tiles(x, window)
    return tiles.max(axis=(2, 4)) if kind == "maxpool" else tiles.mean(axis=(2, 4))


def frozen_wide_dense(self: layers.Dense, x: jax.Array, ctx: layers.Context) -> jax.Array:
    """A dense layer whose weight gets no gradient when it has over 1,000 inputs (dls's 10368x128 head): an upper
    bound on what computing that weight's gradient once per batch, instead of once per piece, could save. Not a
    training variant (that weight never learns)."""
    kernel = self.kernel[...]
    if kernel.shape[0] <= 1000:
        return _DENSE_CALL(self, x, ctx)
    y = x.astype(ctx.dtype) @ jax.lax.stop_gradient(kernel).astype(ctx.dtype)
    if self.bias is not None:
        y = y + self.bias[...].astype(ctx.dtype)
    return layers.ACTIVATIONS[self.activation](y)


_DENSE_CALL = layers.Dense.__call__


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rowmajor_conv_grads(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    """cpu_ops._conv_matmul_grads before attempt 37: the kernel gradient contracts the row-major patch matrix."""
    return cpu_ops._xla_conv(x, kernel, 1, padding)


def _rowmajor_fwd(x: jax.Array, kernel: jax.Array, padding: str) -> tuple[jax.Array, tuple]:
    return cpu_ops._xla_conv(x, kernel, 1, padding), (x, kernel)


def _rowmajor_bwd(padding: str, residuals: tuple, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    patches = cpu_ops._patches(x, kernel.shape[0], kernel.shape[1], 1, padding)
    return cpu_ops._conv_input_grad(x, kernel, grad, padding), jnp.einsum("bhwk,bhwo->ko", patches, grad).reshape(kernel.shape)


rowmajor_conv_grads.defvjp(_rowmajor_fwd, _rowmajor_bwd)

_CONTEXT = program._context


def bfloat16_context(cfg: TrainConfig, train: bool, rng: Any, row_offset: Any = 0) -> layers.Context:
    """The forward context of `cfg` with bfloat16 compute, whatever its precision says."""
    return _CONTEXT(cfg.replace(precision="bfloat16"), train, rng, row_offset)


def _swap(module: Any, name: str, value: Any) -> Callable[[], None]:
    def apply() -> None:
        setattr(module, name, value)
    return apply


def _winograd(tile: int) -> Callable[[], None]:
    def apply() -> None:
        cpu_ops.resolve_conv_impl = lambda conv_impl="auto": "winograd"
        cpu_ops.WINOGRAD_TILE = tile
    return apply


def _xla_dots_with(conv_matmul_grads: Callable) -> Callable[[], None]:
    """Every convolution as xla_dots (attempt 37 predates Winograd), with this kernel-gradient path."""
    def apply() -> None:
        cpu_ops.resolve_conv_impl = lambda conv_impl="auto": "xla_dots"
        cpu_ops._conv_matmul_grads = conv_matmul_grads
    return apply


COMPARISONS: dict[str, list[tuple[str, Callable[[], None]]]] = {
    "masks": [("threefry", _swap(layers, "_keep_mask", threefry_mask)), ("hash", _swap(layers, "_keep_mask", cpu_ops._keep_mask))],
    "pieces": [(f"{n} images", _swap(program, "CPU_MICRO_BATCH", n)) for n in (32, 8, 16)],  # ratio: 16 vs 32
    "devices": [("one device", _swap(program, "_mesh_for", lambda cfg, batch_stats=None: None)),
                ("per core", _swap(program, "_mesh_for", program._mesh_for))],
    "conv": [("xla_dots", _swap(cpu_ops, "resolve_conv_impl", lambda conv_impl="auto": "xla_dots")),
             ("im2col", _swap(cpu_ops, "resolve_conv_impl", lambda conv_impl="auto": "im2col"))],
    "winograd": [("xla_dots", _swap(cpu_ops, "resolve_conv_impl", lambda conv_impl="auto": "xla_dots")),
                 ("F3", _winograd(3)), ("F2", _winograd(2))],
    "dense": [("trained", _swap(layers.Dense, "__call__", _DENSE_CALL)),
              ("frozen head", _swap(layers.Dense, "__call__", frozen_wide_dense))],
    "pool": [("reduction", _swap(layers, "_tiled_pool", reduction_pool)), ("mask", _swap(layers, "_tiled_pool", cpu_ops._tiled_pool))],
    "precision": [("float32", _swap(program, "_context", _CONTEXT)), ("bfloat16", _swap(program, "_context", bfloat16_context))],
    "kgrad": [("row-major patches", _xla_dots_with(rowmajor_conv_grads)),
              ("transposed patches", _xla_dots_with(cpu_ops._conv_matmul_grads))],
}


_LIBRARY = (layers._keep_mask, layers._tiled_pool, program.CPU_MICRO_BATCH, program._mesh_for, cpu_ops.resolve_conv_impl,
            _DENSE_CALL, cpu_ops._conv_matmul_grads, _CONTEXT, cpu_ops.WINOGRAD_TILE)


def _restore() -> None:
    (layers._keep_mask, layers._tiled_pool, program.CPU_MICRO_BATCH, program._mesh_for, cpu_ops.resolve_conv_impl,
     layers.Dense.__call__, cpu_ops._conv_matmul_grads, program._context, cpu_ops.WINOGRAD_TILE) = _LIBRARY


def compare(name: str, spec: list, batch: int, images: np.ndarray, labels: np.ndarray, steps: int,
            windows: int) -> dict:
    """{variant: img/s, "ratio": median over windows of (first variant's seconds / last variant's seconds)}."""
    cfg = TrainConfig(batch_size=batch, optimizer="adam", learning_rate=1e-3, epochs=1)
    runners = {}
    for label, apply in COMPARISONS[name]:
        apply()
        try:
            runners[label] = throughput.jax_runner(spec, cfg, images, labels, steps)[0]
        finally:
            _restore()
    seconds: dict[str, list[float]] = {label: [] for label in runners}
    for index in range(windows):
        for label, run in runners.items():
            seconds[label].append(run(index))
    first, last = next(iter(seconds)), list(seconds)[-1]
    out: dict[str, Any] = {label: round(steps * batch / median(times), 1) for label, times in seconds.items()}
    out["ratio"] = round(median([a / b for a, b in zip(seconds[first], seconds[last])]), 3)
    return out


def breakdown(spec: list, piece: int, repeats: int) -> list[dict]:
    """Milliseconds each layer adds to jax.grad of the model's prefixes on one piece (no dropout; a layer that adds
    nothing can read slightly negative: the figures are medians of separate programs)."""
    spec = [dict(layer, rate=0.0) if layer["type"] == "dropout" else layer for layer in spec]
    model = layers.build_model(spec)
    from flax import nnx
    graphdef, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    images = jnp.asarray(np.random.default_rng(0).random((piece, 28, 28, 1)), jnp.float32)
    ctx = layers.Context(train=True, rng=jax.random.key(0), conv_impl=cpu_ops.resolve_conv_impl("auto"))
    rows, previous = [], 0.0
    for depth in range(1, len(model.layers) + 1):
        def loss(params: Any, stats: Any, depth: int = depth) -> jax.Array:
            # BatchNorm's running statistics are an argument, copied into this trace, as in program.make_forward:
            # NNX refuses to update variables that belong to an outer trace
            copy = jax.tree.map(lambda v: v, stats)
            x = images
            for layer in nnx.merge(graphdef, params, copy, rest).layers[:depth]:
                x = layer(x, ctx)
            return jnp.sum(x * x)
        grad = jax.jit(jax.grad(loss))
        jax.block_until_ready(grad(params, stats))
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(grad(params, stats))
            samples.append(time.perf_counter() - start)
        total = median(samples) * 1e3
        rows.append({"layer": f"{depth}: {spec[depth - 1]['type']}", "ms": round(total - previous, 3),
                     "cumulative_ms": round(total, 3)})
        previous = total
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", default="masks,pieces,pool,devices,conv,kgrad,winograd")
    parser.add_argument("--preset", default="dls")
    parser.add_argument("--batch-sizes", default="128,512")
    parser.add_argument("--windows", type=int, default=9)
    parser.add_argument("--window-images", type=int, default=2048)
    parser.add_argument("--breakdown", action="store_true", help="also time each layer of one gradient piece")
    parser.add_argument("--piece", type=int, default=program.CPU_MICRO_BATCH, help="images in the --breakdown piece")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    names = [n for n in args.compare.split(",") if n]
    unknown = [n for n in names if n not in COMPARISONS]
    if unknown:
        parser.error(f"unknown comparison {', '.join(unknown)}; choose from {', '.join(COMPARISONS)}")
    batches = [32] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    windows, window_images = (2, 64) if args.quick else (args.windows, args.window_images)
    rng = np.random.default_rng(0)
    count = 512 if args.quick else 8192
    images = rng.integers(0, 256, (count, 28, 28, 1), dtype=np.uint8)
    labels = rng.integers(0, 10, count).astype(np.int32)
    spec = presets.preset(args.preset)
    load_before = load_average()
    results: dict[str, Any] = {}
    rows = []
    for name in names:
        for batch in batches:
            out = compare(name, spec, batch, images, labels, max(2, window_images // batch), windows)
            results.setdefault(name, {})[str(batch)] = out
            variants = ", ".join(f"{k} {v:,.0f}" for k, v in out.items() if k != "ratio")
            rows.append([name, batch, variants, out["ratio"]])
    print(f"training-step variants, preset {args.preset}, alternated windows, load average {load_before}")
    print_table(["comparison", "batch", "img/s per variant", "last / first"], rows)
    payload: dict[str, Any] = {"preset": args.preset, "quick": args.quick, **results}
    if args.breakdown or args.quick:
        payload["breakdown"] = breakdown(spec, 4 if args.quick else args.piece, 3 if args.quick else 40)
        print_table(["layer", "ms", "cumulative ms"], [[r["layer"], r["ms"], r["cumulative_ms"]] for r in payload["breakdown"]])
    payload["load_average"] = [load_before, load_average()]
    if args.json:
        emit_json(payload)


if __name__ == "__main__":
    main()
