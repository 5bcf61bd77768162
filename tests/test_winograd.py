"""Winograd 3x3 convolutions (fmnist_jax.model.winograd) against XLA's convolution, values and both gradients."""
from __future__ import annotations

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fmnist_jax.model import cpu_ops, winograd


def _xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return cpu_ops._xla_conv(x, kernel, 1, "valid")


def _grads(conv, x: jax.Array, kernel: jax.Array, weights: jax.Array) -> tuple:
    return jax.grad(lambda x, k: (conv(x, k) * weights).sum(), argnums=(0, 1))(x, kernel)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_transform_matrices_satisfy_the_bilinear_identity(m: int) -> None:
    a_t, g, b_t = (np.array(t) for t in winograd.matrices(m))
    n = m + 2
    assert a_t.shape == (m, n) and g.shape == (n, 3) and b_t.shape == (n, n)
    # sum_j A^T[i, j] G[j, k] B^T[j, t] = [t == i + k]: the 1-D correlation y_i = sum_k d_{i+k} g_k, exactly
    identity = np.einsum("ij,jk,jt->ikt", a_t, g, b_t)
    expected = np.zeros((m, 3, n))
    for i in range(m):
        for k in range(3):
            expected[i, k, i + k] = 1.0
    np.testing.assert_allclose(identity, expected, atol=1e-12)


def test_too_large_a_tile_is_refused() -> None:
    with pytest.raises(ValueError, match="interpolation points"):
        winograd.matrices(len(winograd.POINTS))
    assert all(isinstance(p, Fraction) for p in winograd.POINTS)


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("shape", [(2, 11, 11, 16, 24), (3, 13, 13, 8, 12), (2, 7, 10, 3, 5), (1, 3, 3, 2, 2),
                                   (2, 5, 8, 4, 4), (1, 28, 28, 1, 6)])
def test_values_and_gradients_match_xla(m: int, shape: tuple) -> None:
    batch, height, width, cin, cout = shape
    keys = jax.random.split(jax.random.key(m * 100 + height), 3)
    x = jax.random.normal(keys[0], (batch, height, width, cin))
    kernel = jax.random.normal(keys[1], (3, 3, cin, cout))
    weights = jax.random.normal(keys[2], (batch, height - 2, width - 2, cout))
    want = _xla(x, kernel)
    got = winograd.conv3x3(x, kernel, m)
    assert got.shape == want.shape
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(got, want, atol=2e-5 * scale, rtol=0)
    for got_grad, want_grad in zip(_grads(lambda x, k: winograd.conv3x3(x, k, m), x, kernel, weights),
                                   _grads(_xla, x, kernel, weights)):
        assert got_grad.shape == want_grad.shape
        np.testing.assert_allclose(got_grad, want_grad, atol=2e-5 * float(jnp.abs(want_grad).max()), rtol=0)


def test_a_wrong_transform_would_be_caught() -> None:
    # the tolerance above is tight enough to see one tap off by one pixel
    x = jax.random.normal(jax.random.key(0), (2, 9, 9, 8))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 8, 4))
    shifted = kernel.at[0, 0].set(kernel[0, 1])
    assert float(jnp.abs(winograd.conv3x3(x, shifted, 2) - _xla(x, kernel)).max()) > 1e-2


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_conv2d_apply_routes_3x3_stride_1_to_winograd_and_the_rest_to_matmuls(padding: str, monkeypatch) -> None:
    calls = []
    original = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda x, k, m: calls.append((x.shape, m)) or original(x, k, m))
    x = jax.random.normal(jax.random.key(3), (2, 10, 10, 8))
    for kernel_size, stride, cin, used in [(3, 1, 8, True), (3, 2, 8, False), (5, 1, 8, False), (3, 1, 4, False)]:
        calls.clear()
        kernel = jax.random.normal(jax.random.key(4), (kernel_size, kernel_size, cin, 6))
        got = cpu_ops.conv2d_apply(x[..., :cin], kernel, stride, padding, "winograd")
        want = cpu_ops.conv2d_apply(x[..., :cin], kernel, stride, padding, "xla")
        np.testing.assert_allclose(got, want, atol=1e-4 * float(jnp.abs(want).max()), rtol=0)
        assert bool(calls) == used, (kernel_size, stride, cin)
        if used:  # 'same' pads the image by one pixel first
            assert calls[0] == ((2, 12, 12, 8) if padding == "same" else (2, 10, 10, 8), cpu_ops.WINOGRAD_TILE)


def test_winograd_is_the_cpu_default() -> None:
    assert cpu_ops.resolve_conv_impl("auto") == ("winograd" if jax.default_backend() == "cpu" else "xla")
    assert cpu_ops.conv_impl_for(cpu_ops.resolve_conv_impl("auto"), train=False) != "winograd"
    assert cpu_ops.resolve_conv_impl("winograd") == "winograd"


def test_bfloat16_stays_close() -> None:
    x = jax.random.normal(jax.random.key(5), (2, 11, 11, 16))
    kernel = jax.random.normal(jax.random.key(6), (3, 3, 16, 8)) * 0.1
    got = winograd.conv3x3(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), 2)
    assert got.dtype == jnp.bfloat16
    want = _xla(x, kernel)
    assert float(jnp.abs(got.astype(jnp.float32) - want).max()) <= 0.03 * float(jnp.abs(want).max())


def test_a_conv_layer_uses_winograd_to_train_and_xla_forward_to_infer(monkeypatch) -> None:
    from fmnist_jax.model import layers

    calls = []
    original = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda x, k, m: calls.append(m) or original(x, k, m))
    model = layers.build_model([{"type": "conv2d", "filters": 8, "kernel": 3}, {"type": "conv2d", "filters": 4, "kernel": 3},
                                {"type": "flatten"}, {"type": "dense", "units": 3}], (9, 9, 1), 3, seed=0)
    x = jax.random.uniform(jax.random.key(7), (2, 9, 9, 1))
    trained = model(x, layers.Context(train=True, rng=jax.random.key(0), conv_impl="winograd"))
    assert len(calls) == 1  # the second convolution; the first has one input channel, below the minimum
    calls.clear()
    inferred = model(x, layers.Context(train=False, conv_impl="winograd"))
    assert calls == []
    np.testing.assert_allclose(trained, inferred, atol=1e-5)
    assert cpu_ops.conv_impl_for("winograd", False) == "xla_dots" and cpu_ops.conv_impl_for("im2col", False) == "im2col"
