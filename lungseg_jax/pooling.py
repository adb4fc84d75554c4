"""2x2 max-pooling (NHWC) with gradients that are cheap on XLA's CPU backend.

The library formulation (``nn.max_pool``, a ``reduce_window``) differentiates
through ``select_and_scatter``, which XLA's CPU backend runs 14-38x slower than the
elementwise forms here (forward and backward alone, BENCHMARKS.md); and the plain ``jnp.maximum``/``max`` forms split the
gradient between tied inputs with divisions and extra passes. Both pools here send
each window's gradient to its first maximum in row-major order, as
``reduce_window``'s gradient (and PyTorch's, and TensorFlow's) does: same values,
same gradients, ties included (``tests/pooling_test.py``).
"""

import jax
import jax.numpy as jnp
from jax import lax


@jax.custom_jvp
def maximum_first(x, y):
    """``jnp.maximum`` whose gradient goes to ``x`` on ties instead of half to each."""
    return jnp.maximum(x, y)


@maximum_first.defjvp
def _maximum_first_jvp(primals, tangents):
    x, y = primals
    x_dot, y_dot = tangents
    return jnp.maximum(x, y), jnp.where(x >= y, x_dot, y_dot)


def max_pool_2x2(x):
    """2x2 max-pool with stride 2: ``nn.max_pool(x, (2, 2), (2, 2))``."""
    n, h, w, c = x.shape
    x = x.reshape(n, h // 2, 2, w // 2, 2, c)
    top = maximum_first(x[:, :, 0, :, 0], x[:, :, 0, :, 1])
    bottom = maximum_first(x[:, :, 1, :, 0], x[:, :, 1, :, 1])
    return maximum_first(top, bottom)


def shift(a, di: int, dj: int, fill):
    """``out[:, i, j] = a[:, i + di, j + dj]``, ``fill`` where that falls outside ``a``."""
    return lax.pad(a, jnp.asarray(fill, a.dtype),
                   ((0, 0, 0), (-di, di, 0), (-dj, dj, 0), (0, 0, 0)))


# A window's offsets in row-major order: its first maximum gets the gradient.
WINDOW = ((0, 0), (0, 1), (1, 0), (1, 1))


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
    zero = jnp.zeros_like(g)
    taken = jnp.zeros(g.shape, bool)
    dx = zero
    for di, dj in WINDOW:
        # Window (i, j)'s gradient goes to (i + di, j + dj) if that is its first maximum.
        wins = ~taken & (shift(x, di, dj, -jnp.inf) == y)
        taken = taken | wins
        dx = dx + shift(jnp.where(wins, g, zero), -di, -dj, 0)
    return (dx,)


max_pool_2x2_same.defvjp(_pool_same_fwd, _pool_same_bwd)
