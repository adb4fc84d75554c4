"""2x2 max-pooling (NHWC) with gradients that are cheap on XLA's CPU backend.

The library formulation (``nn.max_pool``, a ``reduce_window``) differentiates
through ``select_and_scatter``, which XLA's CPU backend runs 14-38x slower than the
elementwise forms here (forward and backward alone, BENCHMARKS.md). Both pools here
send each window's gradient to its first maximum in row-major order, as
``reduce_window``'s gradient (and PyTorch's, and TensorFlow's) does, with a
hand-written backward pass: each window's first maximum as an int8 index, then the
input gradient in one elementwise pass from it (autodiff of the stride-2 pool's
slices padded each window offset's gradient to the full size and summed four such
tensors: the inception U-Net's step ran 1.11x faster at 128 without them,
BENCHMARKS.md). Same values, same gradients, ties included (``tests/pooling_test.py``).
"""

import jax
import jax.numpy as jnp
from jax import lax


# A window's offsets in row-major order: its first maximum gets the gradient.
WINDOW = ((0, 0), (0, 1), (1, 0), (1, 1))


def _windows(x):
    """``x`` as (n, h/2, 2, w/2, 2, c): its 2x2 windows, offsets on axes 2 and 4."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x):
    """2x2 max-pool with stride 2: ``nn.max_pool(x, (2, 2), (2, 2))``."""
    return _pool_2x2(x)


def _pool_2x2(x):
    return _windows(x).max(axis=(2, 4))


def _pool_2x2_fwd(x):
    y = _pool_2x2(x)
    return y, (x, y)


def _first_maximum(candidates, y):
    """For each window, the index into ``candidates`` (its values at the ``WINDOW``
    offsets) of the first that equals its maximum ``y``, as int8."""
    first = jnp.full(y.shape, len(candidates) - 1, jnp.int8)
    for k in reversed(range(len(candidates) - 1)):
        first = jnp.where(candidates[k] == y, jnp.int8(k), first)
    return first


def _pool_2x2_bwd(residuals, g):
    x, y = residuals
    windows = _windows(x)
    first = _first_maximum([windows[:, :, a, :, b] for a, b in WINDOW], y)
    # The gradient of each window goes to the offset (a, b) with a * 2 + b == first.
    offset = (2 * lax.broadcasted_iota(jnp.int8, (1, 1, 2, 1, 2, 1), 2)
              + lax.broadcasted_iota(jnp.int8, (1, 1, 2, 1, 2, 1), 4))
    dx = jnp.where(offset == first[:, :, None, :, None], g[:, :, None, :, None],
                   jnp.zeros((), g.dtype))
    return (dx.reshape(x.shape),)


max_pool_2x2.defvjp(_pool_2x2_fwd, _pool_2x2_bwd)


def shift(a, di: int, dj: int, fill):
    """``out[:, i, j] = a[:, i + di, j + dj]``, ``fill`` where that falls outside ``a``."""
    return lax.pad(a, jnp.asarray(fill, a.dtype),
                   ((0, 0, 0), (-di, di, 0), (-dj, dj, 0), (0, 0, 0)))


@jax.custom_vjp
def max_pool_2x2_same(x):
    """Keras ``MaxPooling2D(2, strides=1, padding='same')``: the window at (i, j)
    covers rows i, i+1 and columns j, j+1; outside the image counts as -inf."""
    return _pool_same(x)


def _pool_same(x):
    y = x
    for di, dj in WINDOW[1:]:
        y = jnp.maximum(y, shift(x, di, dj, -jnp.inf))
    return y


def _pool_same_fwd(x):
    y = _pool_same(x)
    return y, (x, y)


def _pool_same_bwd(residuals, g):
    x, y = residuals
    first = _first_maximum([shift(x, di, dj, -jnp.inf) for di, dj in WINDOW], y)
    # Window (i, j)'s gradient goes to (i + di, j + dj) if that is its first maximum:
    # the gradient at p comes from window p - (di, dj) if its first maximum is at k.
    dx = jnp.zeros_like(g)
    for k, (di, dj) in enumerate(WINDOW):
        dx = dx + jnp.where(shift(first, -di, -dj, -1) == k, shift(g, -di, -dj, 0),
                            jnp.zeros((), g.dtype))
    return (dx,)


max_pool_2x2_same.defvjp(_pool_same_fwd, _pool_same_bwd)
