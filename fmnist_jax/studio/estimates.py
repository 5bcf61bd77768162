"""Previews and estimates the pages show: augmentation previews, montages, device and memory
figures, measured FLOP rate and epoch-time estimates.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np

from fmnist_jax import store
from fmnist_jax.data.augment import AugmentConfig
from fmnist_jax.model import layer_specs
from fmnist_jax.studio.projects import CONV_EFFICIENCY
from fmnist_jax.studio.tasks import run_history

# ----------------------------------------------------------------------------- previews and estimates

def augment_preview(images: np.ndarray, augment: AugmentConfig | dict, seed: int = 0, copies: int = 1) -> np.ndarray:
    """Augmented uint8 copies of images, through the same augment_batch the training step runs.

    Runs op by op (not jitted): each new slider value would otherwise compile a new program.
    """
    import jax
    import jax.numpy as jnp

    from fmnist_jax.data.augment import augment_batch

    cfg = augment if isinstance(augment, AugmentConfig) else AugmentConfig(**augment)
    cfg.validate()
    batch = np.repeat(np.asarray(images), copies, axis=0)
    floats = jnp.asarray(batch, dtype=jnp.float32) / 255.0
    if cfg.active():
        floats = augment_batch(floats, jax.random.key(seed), cfg)
    return np.asarray(jnp.round(floats * 255.0)).astype(np.uint8)


def upscale(image: np.ndarray, factor: int = 4) -> np.ndarray:
    """Nearest-neighbour enlargement of an (H, W[, C]) image so browsers do not blur small images."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def side_by_side(images: list[np.ndarray], height: int = 140, gap: int = 6) -> np.ndarray:
    """RGB uint8 strip of images scaled to one height (small ones enlarged without blur), white gaps between:
    a photo and what the model sees in one compact row, on a phone as on a desktop."""
    from PIL import Image

    parts = []
    for image in images:
        image = np.asarray(image)
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        picture = Image.fromarray(image).convert("RGB")
        width = max(1, round(picture.width * height / picture.height))
        small = max(picture.size) <= 64
        parts.append(np.asarray(picture.resize((width, height), Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS)))
    strip = np.full((height, sum(p.shape[1] for p in parts) + gap * (len(parts) - 1), 3), 255, np.uint8)
    left = 0
    for part in parts:
        strip[:, left:left + part.shape[1]] = part
        left += part.shape[1] + gap
    return strip


def montage(images: np.ndarray, columns: int, factor: int = 3, gap: int = 2) -> np.ndarray:
    """Tile uint8 (N, H, W[, C]) images into one grid image with grey gaps; colour images stay in colour."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    count, height, width = images.shape[:3]
    rows = max(1, math.ceil(count / columns))
    cell_h, cell_w = height * factor, width * factor
    canvas = np.full((rows * cell_h + (rows - 1) * gap, columns * cell_w + (columns - 1) * gap, *images.shape[3:]),
                     90, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (cell_h + gap):r * (cell_h + gap) + cell_h, c * (cell_w + gap):c * (cell_w + gap) + cell_w] = upscale(image, factor)
    return canvas


def describe_pixels(images: np.ndarray) -> str:
    """The Data page's caption under the pixel histogram, written from the images (uint8 (N, H, W, C)).

    The background is judged from the outermost ring of pixels: Fashion-MNIST's garments are bright on
    black; photos of objects on white are the negative of that; natural images have no common background.
    """
    images = np.asarray(images[:2000], np.float32)
    gray = images.mean(axis=-1) if images.ndim == 4 else images
    ring = np.concatenate([gray[:, 0, :], gray[:, -1, :], gray[:, :, 0], gray[:, :, -1]], axis=1)
    black = float(np.mean(np.all(images == 0, axis=-1) if images.ndim == 4 else images == 0))
    colour = images.ndim == 4 and images.shape[-1] == 3
    text = (f"Mean {'brightness' if colour else 'intensity'} {float(gray.mean()):.1f} / 255; "
            f"{black:.0%} of pixels are pure black. ")
    edge, spread = float(np.median(ring)), float(np.mean(np.abs(ring - np.median(ring)) < 24))
    if edge < 32 and spread > 0.6:
        return text + "The objects are bright on a dark background, as in Fashion-MNIST."
    if edge > 223 and spread > 0.6:
        return text + ("The objects are dark on a light background: the negative of Fashion-MNIST "
                       "(photos for this model should look the same).")
    return text + "Backgrounds vary from image to image, as in natural photos."


def configure_devices() -> int | None:
    """Split a CPU into one JAX device per core (training.cpu_devices) before the server runs anything on JAX,
    whichever page a visitor opens first; the device count, or None where JAX keeps what it has."""
    from fmnist_jax.training import cpu_devices

    return cpu_devices.configure()


def device_info() -> dict:
    """JAX backend, device kind and count, plus memory in use."""
    from fmnist_jax.training.program import device_summary

    return {**device_summary(), **memory_in_use()}


def memory_in_use() -> dict:
    """Process resident memory and, where the backend reports it, accelerator memory in bytes."""
    out: dict[str, int | None] = {"process_bytes": None, "device_bytes": None}
    try:
        with open("/proc/self/statm") as stream:
            out["process_bytes"] = int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import jax

        stats = jax.devices()[0].memory_stats()
        if stats:
            out["device_bytes"] = int(stats.get("bytes_in_use", 0))
    except Exception:  # not every backend implements memory_stats
        pass
    return out


_FLOPS_CACHE: dict[str, float] = {}


def measured_flops_per_second() -> float:
    """Matmul FLOP/s of the default device, measured once per process (about a quarter of a second)."""
    if "matmul" not in _FLOPS_CACHE:
        import jax
        import jax.numpy as jnp

        size = 512
        a = jnp.ones((size, size), jnp.float32)
        step = jax.jit(lambda x: (x @ x) * 1e-3)
        step(a).block_until_ready()
        repeats, t0 = 0, time.perf_counter()
        while repeats < 5 or time.perf_counter() - t0 < 0.2:
            step(a).block_until_ready()
            repeats += 1
        _FLOPS_CACHE["matmul"] = 2 * size ** 3 * repeats / (time.perf_counter() - t0)
    return _FLOPS_CACHE["matmul"]


def _run_records(ws: store.Workspace, project_id: str) -> list[tuple[dict, dict]]:
    """(summary, run.json) of a project's runs, newest first; unreadable run folders are left out."""
    out = []
    for run in ws.list_runs(project_id):
        try:
            out.append((run, store.read_json(Path(run["path"]) / "run.json")))
        except (store.StoreError, KeyError):
            continue
    return out


def estimate_epoch_seconds(ws: store.Workspace, project_id: str, spec: list, input_shape: tuple, num_classes: int,
                           train_size: int, val_size: int = 0, members: int = 1, batch_size: int | None = None) -> dict:
    """Estimated seconds per epoch (training plus the validation pass) from the model's FLOPs and a throughput,
    and the start-up before the first epoch (putting the data on the device, compiling).

    The throughput comes from this project's most recent run with history (its images/s times its
    model's FLOPs per image; its epochs included validation too), or else from a measured matmul rate
    times CONV_EFFICIENCY. The start-up is the most recent run's measured one ("startup": None before
    any run has recorded it; runs made before it was recorded count as none). An ensemble of `members` networks
    costs `members` times the FLOPs of one (its runs' images/s count each image once for all its members).

    Runs are taken by how closely they match, then newest first: the same layers, batch size and ensemble
    (their speed is this job's, measured), then the same layers, then any. A sweep's trial of another preset or
    batch no longer sets the figure for this one when a closer run exists.
    """
    info = layer_specs.describe(spec, input_shape, num_classes)
    flops_per_image = info["train_flops_per_image"] * members
    epoch_flops = train_size * flops_per_image + val_size * info["forward_flops"] * members
    wanted = layer_specs.normalize_spec(spec)

    def closeness(pair: tuple[dict, dict]) -> int:
        record = pair[1]
        try:
            same_layers = layer_specs.normalize_spec(record["spec"]) == wanted
        except (KeyError, ValueError, TypeError):
            return 2
        run_config = record.get("config") or {}
        same_job = (batch_size is None or run_config.get("batch_size") == batch_size) and \
            int(run_config.get("ensemble", 1)) == members
        return 0 if same_layers and same_job else 1 if same_layers else 2

    runs = sorted(_run_records(ws, project_id), key=closeness)  # stable: newest first within each rank
    startup = next(({"seconds": record["setup_seconds"] + record["compile_seconds"], "run": run["name"]}
                    for run, record in runs if "compile_seconds" in record and "setup_seconds" in record), None)
    for run, run_record in runs:
        history = run_history(run["path"])
        if not history:
            continue
        try:
            run_flops = layer_specs.describe(run_record["spec"], tuple(run_record["input_shape"]),
                                             len(run_record["class_names"]))["train_flops_per_image"]
            run_flops *= int((run_record.get("config") or {}).get("ensemble", 1))
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
        rate = float(np.median([h["images_per_s"] for h in history])) * run_flops
        return {"seconds": train_size * flops_per_image / rate, "flops_per_s": rate, "startup": startup,
                "source": f"speed of run {run['name']}", "flops_per_image": flops_per_image}
    rate = measured_flops_per_second() * CONV_EFFICIENCY
    return {"seconds": epoch_flops / rate, "flops_per_s": rate, "source": "measured matmul rate", "startup": startup,
            "flops_per_image": flops_per_image}
