"""Why Winograd's dls gradients differed from the plain reference by 2e-3 (bench/NOTES.md, attempt 43).

One SGD step of the compiled training chunk with each convolution implementation, on the batch of
tests/test_perf_correctness.py (64 synthetic images, seed 3; the test's helpers are reused, so the program and the
reference are exactly the test's). For every convolution layer: how many ReLU pre-activations change sign between
XLA's convolution and the implementation, and the largest difference of the pre-activations; then each parameter's
largest gradient difference, relative to the largest reference gradient, against the plain reference (lax.conv's
values) and against the same reference fed the implementation's forward values.

    python bench/winograd_branches.py [--impls xla_dots,winograd] [--preset dls] [--quick] [--json]
"""
from __future__ import annotations

import argparse
import sys

import _common
import jax
import jax.numpy as jnp
import numpy as np
from _common import emit_json, print_table

sys.path.insert(0, str(_common.REPO / "tests"))
import test_perf_correctness as reference  # noqa: E402  (the test's program step and reference model)

from fmnist_jax.data import catalogue  # noqa: E402
from fmnist_jax.model import cpu_ops, presets  # noqa: E402


def pre_activations(spec: list[dict], params: dict, x: jax.Array, values_of: str | None) -> list[jax.Array]:
    """Each convolution's pre-activation (before its ReLU) in the reference network, with `values_of`'s forward."""
    out: list[jax.Array] = []
    reference._reference_logits(spec, params, x, values_of, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impls", default="xla_dots,winograd")
    parser.add_argument("--preset", default="dls")
    parser.add_argument("--quick", action="store_true", help="accepted for CI; the run is already small (about a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    args = parser.parse_args()
    dataset = catalogue.synthetic_dataset(num_train=reference.BATCH, num_test=10, seed=3)
    images, labels = dataset.train_images, jnp.asarray(dataset.train_labels)
    spec = reference._without_dropout(presets.preset(args.preset))
    x = jnp.asarray(images, jnp.float32) / 255.0
    rows, result = [], {"preset": args.preset}
    for impl in args.impls.split(","):
        _, grads, params = reference._program_step(spec, impl, images, dataset.train_labels)
        values_of = cpu_ops.conv_impl_for(cpu_ops.resolve_conv_impl(impl), train=True)
        flips = [(int(((a > 0) != (b > 0)).sum()), float(jnp.abs(a - b).max()), a.size)
                 for a, b in zip(pre_activations(spec, params, x, None), pre_activations(spec, params, x, values_of))]
        plain = jax.grad(lambda p: reference._reference_loss(spec, p, x, labels))(params)
        same = jax.grad(lambda p: reference._reference_loss(spec, p, x, labels, values_of))(params)
        errors = []
        for path, grad, want_plain, want_same in zip(jax.tree_util.tree_leaves_with_path(plain), jax.tree.leaves(grads),
                                                     jax.tree.leaves(plain), jax.tree.leaves(same)):
            name = jax.tree_util.keystr(path[0])
            relative = [float(np.abs(grad - want).max()) / float(np.abs(want).max()) for want in (want_plain, want_same)]
            errors.append({"param": name, "vs_plain": relative[0], "vs_same_values": relative[1]})
            rows.append([impl, name, f"{relative[0]:.1e}", f"{relative[1]:.1e}"])
        result[impl] = {"sign_changes": [f[0] for f in flips], "max_pre_activation_difference": [f[1] for f in flips],
                        "pre_activations": [f[2] for f in flips], "gradient_errors": errors}
        print(f"{impl}: ReLU sign changes per convolution {[f[0] for f in flips]} of {[f[2] for f in flips]}, "
              f"largest pre-activation difference {max(f[1] for f in flips):.1e}")
    print_table(["impl", "parameter", "vs plain reference", "vs reference with the same values"], rows)
    if args.json:
        emit_json(result)


if __name__ == "__main__":
    main()
