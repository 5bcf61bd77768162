"""A CPU split into one JAX device per core, and a batch's gradient computed across those devices in pieces.

One XLA CPU device runs a training step's small matrix products one after another, each spread over
the cores by a shared thread pool; for the 16-32 image pieces a CPU computes gradients in (see
`program.CPU_MICRO_BATCH`) that keeps two cores only 80% busy (1.6 CPU-seconds per second). With one
device per core, each device takes its share of the batch's rows, computes their gradient in pieces
of its own, and one `psum` adds the shares: both cores stay busy, and dls trains
1.16-1.19x faster at batch 128 and 1.24-1.27x at batch 512 (bench/NOTES.md, attempt 34). The gradient is the whole batch's, up to float rounding:
each piece draws its rows' slice of the batch's dropout masks.

Only models without batch statistics take this path (BatchNorm over a device's share would change
the maths, and attempt 19 measured BatchNorm models slower on two host devices), so on a CPU
`program._mesh_for` only builds a mesh for those, and evaluation runs on one device.

On an AVX-512 CPU, `configure` also lets XLA compile its own loops for 512-bit vectors (`prefer_wide_vectors`).
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import jax

from fmnist_jax import settings

SETTING = "FMNIST_CPU_DEVICES"
MOST_AUTO_DEVICES = 4  # measured on 2 cores only; more devices than this are left to the setting


def wanted_count(value: str | None = None) -> int:
    """How many devices to split the CPU into: `FMNIST_CPU_DEVICES` (a number; 1 keeps one device), or by
    default ("auto") one per usable core, at most MOST_AUTO_DEVICES."""
    text = (os.environ.get(SETTING, "auto") if value is None else value).strip().lower()
    if text in ("", "auto"):
        return max(1, min(settings.usable_cores(), MOST_AUTO_DEVICES))
    try:
        count = int(text)
    except ValueError:
        raise ValueError(f"{SETTING} must be 'auto' or a whole number of devices, got {text!r}") from None
    if not 1 <= count <= 256:
        raise ValueError(f"{SETTING} must be between 1 and 256, got {count}")
    return count


WIDE_VECTORS = "--xla_cpu_prefer_vector_width=512"


def has_avx512(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether the CPU has AVX-512 (Linux's /proc/cpuinfo flags; False where that cannot be read)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            return any(line.startswith("flags") and " avx512f" in line for line in handle)
    except OSError:
        return False


def prefer_wide_vectors(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """On an AVX-512 CPU, let XLA's own loops (element-wise work, copies, the optimizer) use 512-bit vectors instead
    of its default 256: dls trains 1.02-1.05x faster on per-core devices (bench/NOTES.md, attempt 40). Whether the
    flag was added; an explicit `--xla_cpu_prefer_vector_width` in XLA_FLAGS wins. Like the device count it only
    takes effect before JAX starts its backends."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_prefer_vector_width" in flags or not has_avx512(cpuinfo):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {WIDE_VECTORS}".strip()
    return True


def configure(value: str | None = None) -> int | None:
    """Ask JAX for `wanted_count()` CPU devices (and wide vectors, `prefer_wide_vectors`); the count, or None where
    it is left as it is.

    It only takes effect before JAX has run anything (it is called when `program` is imported); an
    explicit `--xla_force_host_platform_device_count` in XLA_FLAGS wins. Accelerators are unaffected.
    """
    prefer_wide_vectors()
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        return None
    try:
        count = wanted_count(value)
    except ValueError as error:  # a typo in the setting must not stop the app from starting
        warnings.warn(f"{error}; training uses one CPU device", stacklevel=2)
        return None
    if count == jax.config.jax_num_cpu_devices:
        return count
    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:  # JAX already started its backends: this process keeps the devices it has
        return None
    return count


def applies(mesh: jax.sharding.Mesh | None, batch_stats: Any) -> bool:
    """Whether a batch's gradient is computed by `sharded_gradients`: a CPU mesh in one process and a model without
    batch statistics (training across processes keeps XLA's own data parallelism, tested through the CLI)."""
    return (mesh is not None and mesh.devices.flat[0].platform == "cpu" and jax.process_count() == 1
            and not jax.tree.leaves(batch_stats))


def sharded_gradients(piece_gradients: Callable, mesh: jax.sharding.Mesh, parts: int, params: Any, batch_stats: Any,
                      images: jax.Array, labels: jax.Array, key: jax.Array) -> tuple:
    """(loss, correct, gradients) of the whole batch, summed over `parts` pieces on each of the mesh's devices.

    `piece_gradients(params, batch_stats, images, labels, key, first_row, parts)` sums one device's pieces;
    `first_row` is the device's first row in the whole batch, so its dropout masks are the batch's.
    """
    spec = jax.sharding.PartitionSpec
    local = images.shape[0] // mesh.size

    def per_device(params: Any, images: jax.Array, labels: jax.Array, key: jax.Array) -> tuple:
        first_row = jax.lax.axis_index("data") * local
        totals = piece_gradients(params, batch_stats, images, labels, key, first_row, parts)
        return jax.lax.psum(totals, "data")

    return jax.shard_map(per_device, mesh=mesh, in_specs=(spec(), spec("data"), spec("data"), spec()),
                         out_specs=spec(), check_vma=False)(params, images, labels, key)
