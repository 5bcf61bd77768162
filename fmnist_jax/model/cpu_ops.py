"""CPU tricks behind one switch (`conv_impl`): a convolution whose gradients are matmuls over patches,
pooling by reshape + max for non-overlapping windows, and dropout masks from a counter-based hash.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from fmnist_jax.model import winograd
from fmnist_jax.model.layer_specs import Shape, _same_pads, _window_out

CONV_IMPLS = ("auto", "xla", "im2col", "xla_dots", "winograd")

# winograd: output tile size m of F(m x m, 3 x 3) (F(3x3) and F(4x4) measured slower, bench/NOTES.md attempt 42), and
# the fewest input channels it applies to (fewer: xla_dots). A one-channel first layer measured 1.24x faster in dls's
# 16-image pieces but 0.88x at `fast`'s 32 images of 30 px, 8 channels 1.07x, 16 channels 2.28x (gradient included)
WINOGRAD_TILE = 2
WINOGRAD_MIN_CHANNELS = 8


# ----------------------------------------------------------------------------- modules

def conv2d_apply(x: jax.Array, kernel: jax.Array, stride: int, padding: str, impl: str) -> jax.Array:
    """2-D convolution, NHWC x HWIO: XLA's convolution, patches @ matrix, or XLA's forward with matmul gradients.

    On CPU, XLA lowers the gradients of a convolution to slow generic loops (the kernel gradient is a
    convolution whose window is the whole image), while its forward convolution and its matmuls are
    fast. 'xla_dots' keeps XLA's forward (so inference never builds patches) and computes both
    gradients from patches with matmuls; 'im2col' does everything as one matmul over extracted
    patches; 'winograd' computes 3x3 stride-1 convolutions with at least WINOGRAD_MIN_CHANNELS input
    channels by Winograd's F(2x2, 3x3) (`winograd`: 2.25x fewer multiplies, forward and both gradients)
    and the rest as 'xla_dots'. All give the same numbers up to float rounding.
    """
    if impl == "xla":
        return _xla_conv(x, kernel, stride, padding)
    if impl == "winograd":
        if kernel.shape[:2] == (3, 3) and stride == 1 and kernel.shape[2] >= WINOGRAD_MIN_CHANNELS:
            return winograd.conv3x3(_padded(x, 3, 3, 1, padding), kernel, WINOGRAD_TILE)
        impl = "xla_dots"
    if impl == "xla_dots" and stride == 1:
        return _conv_matmul_grads(x, kernel, padding)
    kh, kw, cin, cout = kernel.shape
    return _patches(x, kh, kw, stride, padding) @ kernel.reshape(kh * kw * cin, cout)


def _xla_conv(x: jax.Array, kernel: jax.Array, stride: int, padding: str) -> jax.Array:
    pad = "SAME" if padding == "same" else "VALID"
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _padding(x: jax.Array, kh: int, kw: int, stride: int, padding: str) -> tuple[tuple[int, int], tuple[int, int]]:
    if padding != "same":
        return (0, 0), (0, 0)
    return _same_pads(x.shape[1], kh, stride), _same_pads(x.shape[2], kw, stride)


def _padded(x: jax.Array, kh: int, kw: int, stride: int, padding: str) -> jax.Array:
    """`x` with its 'same' padding added ('valid': `x` as it is)."""
    if padding != "same":
        return x
    pad_h, pad_w = _padding(x, kh, kw, stride, padding)
    return jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))


def _patches(x: jax.Array, kh: int, kw: int, stride: int, padding: str) -> jax.Array:
    """(B, out_h, out_w, kh*kw*C): every output position's input window, taps in (row, column) order."""
    out_h = _window_out(x.shape[1], kh, stride, padding)
    out_w = _window_out(x.shape[2], kw, stride, padding)
    x = _padded(x, kh, kw, stride, padding)
    taps = [x[:, i:i + (out_h - 1) * stride + 1:stride, j:j + (out_w - 1) * stride + 1:stride, :]
            for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=-1) if len(taps) > 1 else taps[0]


def _patches_transposed(x: jax.Array, kh: int, kw: int, padding: str) -> jax.Array:
    """(kh*kw*C, B*out_h*out_w): `_patches` of a stride-1 convolution transposed, built from the channels-first
    image, so each tap is a contiguous block of rows."""
    x = _padded(x, kh, kw, 1, padding)
    batch, height, width, channels = x.shape
    out_h, out_w = height - kh + 1, width - kw + 1
    planes = x.transpose(3, 0, 1, 2)
    taps = [planes[:, :, i:i + out_h, j:j + out_w] for i in range(kh) for j in range(kw)]
    return jnp.stack(taps).reshape(kh * kw * channels, batch * out_h * out_w)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_matmul_grads(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    return _xla_conv(x, kernel, 1, padding)


def _conv_matmul_grads_fwd(x: jax.Array, kernel: jax.Array, padding: str) -> tuple[jax.Array, tuple]:
    return _xla_conv(x, kernel, 1, padding), (x, kernel)


def _conv_matmul_grads_bwd(padding: str, residuals: tuple, grad: jax.Array) -> tuple[jax.Array, jax.Array]:
    x, kernel = residuals
    kh, kw, _, cout = kernel.shape
    # kernel gradient: (taps x input channels, positions) @ (positions, output channels), with the patch matrix
    # built in that transposed layout, so XLA does not copy a row-major patch matrix into it (attempt 37)
    grad_kernel = (_patches_transposed(x, kh, kw, padding) @ grad.reshape(-1, cout)).reshape(kernel.shape)
    return _conv_input_grad(x, kernel, grad, padding), grad_kernel.astype(kernel.dtype)


def _conv_input_grad(x: jax.Array, kernel: jax.Array, grad: jax.Array, padding: str) -> jax.Array:
    """A stride-1 convolution's input gradient: each output position's patch gradient (one matmul), added back onto
    the padded image."""
    kh, kw, cin, cout = kernel.shape
    batch, out_h, out_w, _ = grad.shape
    patch_grads = (grad @ kernel.reshape(kh * kw * cin, cout).T).reshape(batch, out_h, out_w, kh * kw, cin)
    pad_h, pad_w = _padding(x, kh, kw, 1, padding)
    full_h, full_w = x.shape[1] + sum(pad_h), x.shape[2] + sum(pad_w)
    grad_padded = sum(
        jnp.pad(patch_grads[:, :, :, i * kw + j, :], ((0, 0), (i, full_h - out_h - i), (j, full_w - out_w - j), (0, 0)))
        for i in range(kh) for j in range(kw))
    grad_x = grad_padded[:, pad_h[0]:pad_h[0] + x.shape[1], pad_w[0]:pad_w[0] + x.shape[2], :]
    return grad_x.astype(x.dtype)


_conv_matmul_grads.defvjp(_conv_matmul_grads_fwd, _conv_matmul_grads_bwd)


def _tiled_pool(x: jax.Array, window: int, kind: str) -> jax.Array:
    """Non-overlapping pooling as a reshape and a reduction (same values as reduce_window, VALID padding).

    XLA's CPU backend turns the gradient of a max reduce_window into a select-and-scatter that
    builds index tensors for every window (a quarter of dls's step time); the gradient of a plain
    max reduction is one fused compare-and-select, and `_tile_max` makes it cheaper still.
    """
    if kind == "maxpool":
        return _tile_max(x, window)
    return _tiles(x, window).mean(axis=(2, 4))


def _tiles(x: jax.Array, window: int) -> jax.Array:
    """(B, H, W, C) -> (B, H//window, window, W//window, window, C), dropping the rows and columns a VALID pool drops."""
    batch, height, width, channels = x.shape
    out_h, out_w = height // window, width // window
    return x[:, :out_h * window, :out_w * window, :].reshape(batch, out_h, window, out_w, window, channels)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tile_max(x: jax.Array, window: int) -> jax.Array:
    """Max over each tile, whose gradient reuses the forward pass's "which inputs are the maximum" mask.

    JAX's gradient of a max reduction compares every input with its recomputed window maximum and
    counts ties in the backward pass; keeping the comparison from the forward pass as a byte mask
    (instead of the float input) makes the pooling layer's gradient cheaper: 1.03-1.07x for a whole `fast`
    step at batch 32, 1.01-1.03x for dls (bench/NOTES.md, attempt 29). The gradient is JAX's own:
    a tie splits the gradient evenly between the tied inputs (tested).
    """
    return _tiles(x, window).max(axis=(2, 4))


def _tile_max_fwd(x: jax.Array, window: int) -> tuple[jax.Array, tuple]:
    tiles = _tiles(x, window)
    y = tiles.max(axis=(2, 4))
    return y, (tiles == y[:, :, None, :, None, :], x.shape)


def _tile_max_bwd(window: int, residuals: tuple, grad: jax.Array) -> tuple[jax.Array]:
    hits, shape = residuals
    batch, out_h, _, out_w, _, channels = hits.shape
    share = grad / hits.sum(axis=(2, 4)).astype(grad.dtype)
    grad_x = jnp.where(hits, share[:, :, None, :, None, :], 0).reshape(batch, out_h * window, out_w * window, channels)
    return (jnp.pad(grad_x, ((0, 0), (0, shape[1] - out_h * window), (0, shape[2] - out_w * window), (0, 0))),)


_tile_max.defvjp(_tile_max_fwd, _tile_max_bwd)


def _mix32(h: jax.Array) -> jax.Array:
    """lowbias32 (from C. Wellons' hash prospector, its improved constants): a bijection of uint32 in which
    every input bit flips each output bit with probability ~1/2."""
    h = (h ^ (h >> 16)) * jnp.uint32(0x21F0AAAD)
    h = (h ^ (h >> 15)) * jnp.uint32(0x735A2D97)
    return h ^ (h >> 15)


def _keep_mask(key: jax.Array, keep_probability: float, shape: Shape, row_offset: jax.Array | int = 0) -> jax.Array:
    """Bernoulli(keep_probability) mask: a counter-based hash of each element's index under two seeds drawn from `key`.

    Threefry-2x32, JAX's generator, costs 20 rounds per pair of 32-bit words and vectorises poorly on XLA CPU:
    dropout masks were 14% of a dls training step. Two rounds of an integer hash over the element index
    (fused into the multiply that applies the mask) make the same Bernoulli masks 4-5x cheaper
    (bench/NOTES.md, attempt 26). The index is global, so a sharded batch draws the same mask as a
    whole one; the seeds come from `key`, so masks stay reproducible and independent across layers
    and steps (tests check the kept fraction, neighbour and cross-key correlations). `row_offset` is the
    first row's place in the whole batch: a piece of a micro-batched gradient draws exactly its slice of
    the whole batch's mask.
    """
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    first = jnp.asarray(row_offset, jnp.uint32) * jnp.uint32(math.prod(shape[1:]))
    index = jax.lax.iota(jnp.uint32, math.prod(shape)).reshape(shape) + first
    words = _mix32(_mix32(index + seeds[0]) ^ seeds[1])
    return words < jnp.uint32(min(round(keep_probability * 2.0**32), 2**32 - 1))


def conv_impl_for(impl: str, train: bool) -> str:
    """The implementation a forward pass uses: 'winograd' pays in training, where both gradients run through it;
    inference keeps XLA's forward convolution ('xla_dots'), which the evaluation path runs faster (bench/NOTES.md,
    attempt 42)."""
    return "xla_dots" if impl == "winograd" and not train else impl


def resolve_conv_impl(conv_impl: str = "auto") -> str:
    """'auto' -> 'winograd' on CPU (3x3 stride-1 convolutions with enough channels by F(2x2, 3x3) in training,
    the rest and all inference as 'xla_dots'; measured in bench/NOTES.md, attempt 42), XLA's convolution elsewhere.

    Every implementation rounds differently, so a ReLU whose pre-activation lies within rounding of 0 can take the
    other branch than in XLA's convolution: one such element of dls's 663,552 moved its convolution gradients by 2e-3
    relative to a plain reference (bench/NOTES.md, attempt 43); with the same pre-activations they agree to 1e-6."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {', '.join(CONV_IMPLS)}, got {conv_impl!r}")
    if conv_impl != "auto":
        return conv_impl
    return "winograd" if jax.default_backend() == "cpu" else "xla"
