"""Training throughput of the project's own training path against PyTorch eager, side by side in one run.

For each batch size, JAX windows (one compiled chunk of `train.build_program`, the program `train()`
runs, over device-resident uint8 data) alternate with PyTorch windows (the identical architecture
built from the same layer spec, the same optimizer, the same batch), so both see the same machine
load. Throughput is the median over windows after warm-up; compile time is reported separately.
A matmul in the run's precision measured in the same rounds gives the machine's usable peak, hence the
FLOP utilisation. `--precision bfloat16` trains JAX with bfloat16 compute (float32 weights) and PyTorch under
`torch.autocast` with bfloat16, so the two still compare like with like. Evaluation throughput (10,000 images
through `TrainedModel.predict_proba`) closes the run.

    python bench/throughput.py [--preset dls] [--batch-sizes 128,512] [--windows 7] [--precision float32] [--json]
    python bench/throughput.py --quick --json     # tiny sizes, for CI

JSON keys: jax_img_s_128, torch_img_s_128, ratio_128, jax_img_s_512, torch_img_s_512, ratio_512,
flop_utilisation_512, torch_compile_img_s_B and ratio_compile_B (torch.compile as a second reference,
alternated too; null with torch_compile_error where it does not work), jax_one_device_img_s_B and
ratio_devices_B (where the CPU is split into several devices, `fmnist_jax.training.cpu_devices`, the same
chunk on one device, alternated too), plus precision, devices, compile seconds, peak GFLOP/s, eval_img_s and the load
average.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

import _common  # noqa: F401  (puts the repository on sys.path)
import jax
import jax.numpy as jnp
import numpy as np
from _common import (
    emit_json,
    fashion_splits,
    load_average,
    median,
    predict_proba_rate,
    print_table,
)

from fmnist_jax.model import cpu_ops, layer_specs, presets
from fmnist_jax.training import program, trained
from fmnist_jax.training.config import TrainConfig

# ----------------------------------------------------------------------------- JAX

def jax_runner(spec: list, cfg: TrainConfig, images: np.ndarray, labels: np.ndarray,
               window_steps: int) -> tuple[Callable[[int], float], float]:
    """(run_window(window_index) -> seconds, compile_seconds) for the project's compiled training chunk, on the
    devices `train()` would use (`cfg.data_parallel="off"`: one device)."""
    steps_per_epoch = len(labels) // cfg.batch_size
    window_steps = min(window_steps, steps_per_epoch)
    graphdef, state = program.init_state(spec, images.shape[1:], 10, cfg, steps_per_epoch=steps_per_epoch)
    mesh = program._mesh_for(cfg, state["batch_stats"])
    chunk_fn, _, _ = program.build_program(graphdef, cfg, steps_per_epoch, mesh)
    placement = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh else jax.devices()[0]
    state = jax.device_put(state, placement)
    device_images, device_labels = jax.device_put(images, placement), jax.device_put(labels, placement)
    perm = jax.random.permutation(jax.random.key(0), len(labels)).astype(jnp.int32)
    epoch_key = jax.random.fold_in(program._base_key(cfg.seed), 1)
    if cfg.ensemble > 1:  # each member its own order and key, as in training
        perm = jnp.stack([jax.random.permutation(jax.random.key(k), len(labels)).astype(jnp.int32)
                          for k in range(cfg.ensemble)])
        epoch_key = jnp.stack([jax.random.fold_in(key, 1) for key in program._base_key(cfg.seed, cfg.ensemble)])
    plan = program.run_plan(cfg, steps_per_epoch)
    start = time.perf_counter()
    compiled = chunk_fn.lower(state, device_images, device_labels, perm, epoch_key, jnp.int32(0), plan,
                              length=window_steps).compile()
    compile_seconds = time.perf_counter() - start
    holder = {"state": state}

    def run_window(index: int) -> float:
        offset = (index * window_steps) % max(1, steps_per_epoch - window_steps + 1)
        t0 = time.perf_counter()
        holder["state"], sums = compiled(holder["state"], device_images, device_labels, perm, epoch_key, jnp.int32(offset), plan)
        sums.block_until_ready()
        return time.perf_counter() - t0

    run_window(0)  # warm-up: first execution allocates buffers
    return run_window, compile_seconds


# ----------------------------------------------------------------------------- PyTorch

def torch_model(spec: list, input_shape: tuple[int, int, int], num_classes: int) -> Any:
    """The same layer stack as `layers.build_model(spec)`, in PyTorch (NCHW, its native layout)."""
    import torch.nn as nn

    activations = {"relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
                   "leaky_relu": lambda: nn.LeakyReLU(0.01)}
    modules: list = []
    for step in layer_specs._walk(spec, input_shape, num_classes):
        p, kind, in_shape = step.params, step.params["type"], step.in_shape
        if kind == "conv2d":
            padding = p["kernel"] // 2 if p["padding"] == "same" else 0
            modules.append(nn.Conv2d(in_shape[-1], p["filters"], p["kernel"], p["stride"], padding, bias=p["use_bias"]))
        elif kind == "dense":
            modules.append(nn.Linear(in_shape[0], p["units"], bias=p["use_bias"]))
        elif kind in ("maxpool", "avgpool"):
            pool = nn.MaxPool2d if kind == "maxpool" else nn.AvgPool2d
            modules.append(pool(p["pool"], p["stride"], p["pool"] // 2 if p["padding"] == "same" else 0))
        elif kind == "batchnorm":
            modules.append(nn.BatchNorm2d(in_shape[-1], p["epsilon"], 1 - p["momentum"]) if len(in_shape) == 3
                           else nn.BatchNorm1d(in_shape[0], p["epsilon"], 1 - p["momentum"]))
        elif kind == "dropout":
            modules.append(nn.Dropout(p["rate"]))
        elif kind == "flatten":
            modules.append(nn.Flatten())
        elif kind == "globalavgpool":
            modules.extend([nn.AdaptiveAvgPool2d(1), nn.Flatten()])
        elif kind == "activation":
            modules.append(activations[p["function"]]())
        else:
            raise ValueError(f"no PyTorch equivalent for layer type {kind}")
        if kind in ("conv2d", "dense") and p["activation"] != "linear":
            modules.append(activations[p["activation"]]())
    return nn.Sequential(*modules)


def torch_runner(spec: list, cfg: TrainConfig, images: np.ndarray, labels: np.ndarray,
                 window_steps: int, compiled: bool = False) -> Callable[[int], float]:
    """run_window(window_index) -> seconds for PyTorch eager training with the same optimizer and batch
    (`compiled`: the model wrapped in torch.compile, compiled during the warm-up window; `cfg.precision` bfloat16:
    the forward pass under torch.autocast with bfloat16, PyTorch's counterpart of the JAX run's bfloat16 compute)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(cfg.seed)
    model = torch_model(spec, images.shape[1:], 10)
    model.train()
    if compiled:
        model = torch.compile(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), eps=cfg.epsilon)
    data = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # uint8, NCHW
    targets = torch.from_numpy(labels.astype(np.int64))
    perm = torch.randperm(len(labels))
    batch = cfg.batch_size
    steps_per_epoch = len(labels) // batch
    window_steps = min(window_steps, steps_per_epoch)

    def run_window(index: int) -> float:
        first = (index * window_steps) % max(1, steps_per_epoch - window_steps + 1)
        t0 = time.perf_counter()
        total = torch.zeros(())
        for step in range(first, first + window_steps):
            idx = perm[step * batch:(step + 1) * batch]
            x = data[idx].float().div_(255.0)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.precision == "bfloat16"):
                loss = F.cross_entropy(model(x), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
        float(total)
        return time.perf_counter() - t0

    run_window(0)
    return run_window


def compiled_torch_runner(spec: list, cfg: TrainConfig, images: np.ndarray, labels: np.ndarray, window_steps: int,
                          result: dict) -> Callable[[int], float] | None:
    """torch_runner with torch.compile, or None (the reason in result["torch_compile_error"]) where it does not
    work on this machine: it needs a C++ compiler and Triton or Inductor's CPU backend."""
    try:
        return torch_runner(spec, cfg, images, labels, window_steps, compiled=True)
    except Exception as error:  # Dynamo/Inductor fail with many exception types; the column then says why
        result["torch_compile_error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        return None


# ----------------------------------------------------------------------------- peak and evaluation

def matmul_peak_gflops(size: int, precision: str = "float32") -> float:
    """Sustained matmul rate in `precision` of this process right now (GFLOP/s), JAX and PyTorch, whichever is higher."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32).astype(precision)
    dot = jax.jit(lambda x: x @ x)
    dot(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(3):
        out = dot(a)
    out.block_until_ready()
    best = 3 * 2 * size ** 3 / (time.perf_counter() - t0)
    try:
        import torch
    except ImportError:
        return best / 1e9
    b = torch.randn(size, size, dtype=getattr(torch, precision))
    b @ b
    t0 = time.perf_counter()
    for _ in range(3):
        b @ b
    return max(best, 3 * 2 * size ** 3 / (time.perf_counter() - t0)) / 1e9


def eval_images_per_s(spec: list, images: np.ndarray, labels: np.ndarray, repeats: int) -> float:
    """Images/s of TrainedModel.predict_proba over the test images (the evaluation path), median of repeats."""
    graphdef, state = program.init_state(spec, images.shape[1:], 10, TrainConfig())
    weights = jax.device_get({"params": state["params"], "batch_stats": state["batch_stats"]})
    model = trained.TrainedModel(spec, images.shape[1:], tuple(str(i) for i in range(10)), weights)
    return predict_proba_rate(model, images, repeats)[0]


# ----------------------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="dls")
    parser.add_argument("--batch-sizes", default="128,512")
    parser.add_argument("--windows", type=int, default=7, help="timed windows per framework and batch size")
    parser.add_argument("--window-images", type=int, default=4096, help="images per timed window")
    parser.add_argument("--conv-impl", default="auto", help="auto, xla, im2col, xla_dots or winograd")
    parser.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                        help="compute precision of both frameworks (bfloat16: JAX bfloat16 compute, PyTorch autocast)")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    parser.add_argument("--no-torch-compile", action="store_true", help="leave out the torch.compile reference column")
    parser.add_argument("--quick", action="store_true", help="tiny sizes so CI can run it")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    windows, window_images = (1, 1) if args.quick else (args.windows, args.window_images)
    splits = fashion_splits(args.quick)
    images, labels = splits.train_images, splits.train_labels
    spec = presets.preset(args.preset)
    flops_per_image = layer_specs.describe(spec)["train_flops_per_image"]
    use_torch = not args.no_torch
    use_compile = use_torch and not args.no_torch_compile and not args.quick
    if use_torch:
        import torch
        torch.set_num_threads(args.torch_threads)
    load_before = load_average()

    result: dict[str, Any] = {"preset": args.preset, "precision": args.precision, "device": program.device_summary()["kind"],
                              "devices": len(jax.devices()),
                              "conv_impl": cpu_ops.resolve_conv_impl(args.conv_impl), "cpu_count": os.cpu_count(),
                              "torch_threads": args.torch_threads if use_torch else None, "quick": args.quick,
                              "torch_compile_error": None}
    rows, peaks = [], []
    for batch in batch_sizes:
        cfg = TrainConfig(batch_size=batch, conv_impl=args.conv_impl, precision=args.precision)
        window_steps = max(1, window_images // batch)
        run_jax, compile_seconds = jax_runner(spec, cfg, images, labels, window_steps)
        # the same chunk on one device, where the CPU is split into several (cpu_devices): the gain side by side
        run_one = (jax_runner(spec, cfg.replace(data_parallel="off"), images, labels, window_steps)[0]
                   if len(jax.devices()) > 1 else None)
        run_torch = torch_runner(spec, cfg, images, labels, window_steps) if use_torch else None
        run_compiled = compiled_torch_runner(spec, cfg, images, labels, window_steps, result) if use_compile else None
        jax_rates, torch_rates, compiled_rates, one_rates = [], [], [], []
        for index in range(windows):  # alternated windows: all of them see the same machine load
            jax_rates.append(window_steps * batch / run_jax(index + 1))
            if run_one:
                one_rates.append(window_steps * batch / run_one(index + 1))
            if run_torch:
                torch_rates.append(window_steps * batch / run_torch(index + 1))
            if run_compiled:
                compiled_rates.append(window_steps * batch / run_compiled(index + 1))
            peaks.append(matmul_peak_gflops(256 if args.quick else 2048, args.precision))
        jax_rate, torch_rate, compiled_rate = median(jax_rates), median(torch_rates), median(compiled_rates)
        one_rate = median(one_rates)
        result[f"jax_one_device_img_s_{batch}"] = round(one_rate, 1) if one_rate else None
        result[f"ratio_devices_{batch}"] = round(median([a / b for a, b in zip(jax_rates, one_rates)]), 3) if one_rates else None
        ratio = jax_rate / torch_rate if torch_rate else None
        result.update({f"jax_img_s_{batch}": round(jax_rate, 1), f"torch_img_s_{batch}": round(torch_rate, 1) if torch_rate else None,
                       f"ratio_{batch}": round(ratio, 3) if ratio else None, f"compile_s_{batch}": round(compile_seconds, 2),
                       f"torch_compile_img_s_{batch}": round(compiled_rate, 1) if compiled_rate else None,
                       f"ratio_compile_{batch}": round(jax_rate / compiled_rate, 3) if compiled_rate else None})
        pair_ratios = [j / t for j, t in zip(jax_rates, torch_rates)]
        rows.append([batch, jax_rate, torch_rate, ratio, f"{min(pair_ratios):.2f}-{max(pair_ratios):.2f}" if pair_ratios else None,
                     compiled_rate, jax_rate / compiled_rate if compiled_rate else None, compile_seconds, window_steps, windows])
    peak = median(peaks)
    result["peak_gflops"] = round(peak, 1)
    result["train_mflop_per_image"] = round(flops_per_image / 1e6, 2)
    for batch in batch_sizes:
        result[f"flop_utilisation_{batch}"] = round(result[f"jax_img_s_{batch}"] * flops_per_image / (peak * 1e9), 3)
    test_images = splits.test_images if not args.quick else splits.test_images[:256]
    result["eval_img_s"] = round(eval_images_per_s(presets.preset("fast"), test_images, splits.test_labels, 1 if args.quick else 5), 1)
    result["eval_img_s_dls"] = round(eval_images_per_s(spec, test_images, splits.test_labels, 1 if args.quick else 5), 1)
    result["load_average"] = [load_before, load_average()]

    print(f"training throughput, preset {args.preset} ({flops_per_image / 1e6:.1f} MFLOP per training image), "
          f"{result['device']}, {os.cpu_count()} cores, load average {load_before} -> {result['load_average'][1]}")
    print_table(["batch", "jax img/s", "torch img/s", "ratio", "pair range", "torch.compile img/s", "ratio to compiled",
                 "compile s", "steps/window", "windows"], rows)
    if any(result.get(f"ratio_devices_{b}") for b in batch_sizes):
        print(f"{len(jax.devices())} CPU devices (cpu_devices) against one, same windows: "
              + ", ".join(f"batch {b}: {result[f'jax_one_device_img_s_{b}']:,.0f} img/s on one, "
                          f"{result[f'ratio_devices_{b}']:.2f}x" for b in batch_sizes))
    if result.get("torch_compile_error"):
        print(f"torch.compile did not work here: {result['torch_compile_error']}")
    print(f"{args.precision} matmul peak {peak:.0f} GFLOP/s; FLOP utilisation "
          + ", ".join(f"batch {b}: {result[f'flop_utilisation_{b}']:.0%}" for b in batch_sizes))
    print(f"evaluation (10k test images, predict_proba): fast {result['eval_img_s']:,.0f} img/s, "
          f"{args.preset} {result['eval_img_s_dls']:,.0f} img/s")
    if args.json:
        emit_json(result)


if __name__ == "__main__":
    main()
