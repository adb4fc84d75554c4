"""2x2 max-pooling (NHWC) with gradients that are cheap on XLA's CPU backend.

The library formulation (``nn.max_pool``, a ``reduce_window``; ``ops.reference``)
differentiates through ``select_and_scatter``, which XLA's CPU backend runs many times
slower than the elementwise forms here (docs/performance.md#pooling-and-upsampling-as-reshapes). Both pools here
send each window's gradient to its first maximum in row-major order, as
``reduce_window``'s gradient (and PyTorch's, and TensorFlow's) does, with a
hand-written backward pass: each window's first maximum as an int8 index (a buffer of
its own on the CPU, as is the windows' gradient), then the input gradient in one
elementwise pass from it (autodiff of the stride-2 pool's
slices padded each window offset's gradient to the full size and summed four such
tensors). Same values, same gradients, ties included (``tests/pooling_test.py``).

``max_pool_2x2_same_of_upsampled`` pools a nearest-neighbour upsampled tensor from the
small one (the inception block's pool branch in the decoder, through
``max_pool_2x2_same_of``), without building it.
"""

import jax
import jax.numpy as jnp
from jax import lax

from lungseg_jax.ops.policy import materialized_on_cpu
from lungseg_jax.ops.upsampling import Upsampled, interleave_2x


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


def _per_window(first, g):
    """The windows' first maxima and gradients, each computed once into a buffer of its
    own on the CPU (``policy.materialized_on_cpu``). Every input gradient reads each window's several times
    (2x2 stride 2: once per input of the window; stride 1: once per window over the
    input), and XLA:CPU fused their computation (the comparisons, and whatever sums form
    ``g``) into that read, computing it again each time
    (docs/performance.md#values-computed-once)."""
    return materialized_on_cpu(first), materialized_on_cpu(g)


def _pool_2x2_bwd(residuals, g):
    x, y = residuals
    windows = _windows(x)
    first, g = _per_window(_first_maximum([windows[:, :, a, :, b] for a, b in WINDOW], y), g)
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
    return _pool_over(x, WINDOW)


def _pool_over(x, offsets):
    """The maximum of ``x`` shifted by each of ``offsets`` (-inf outside)."""
    y = x
    for di, dj in offsets[1:]:
        y = jnp.maximum(y, shift(x, di, dj, -jnp.inf))
    return y


def _route(x, y, g, offsets):
    """The gradient at ``x`` of windows over ``offsets`` (maxima ``y``, gradients ``g``):
    window (i, j)'s gradient goes to (i + di, j + dj) if that is its first maximum, so
    the gradient at p comes from window p - (di, dj) if its first maximum is offset k."""
    first, g = _per_window(_first_maximum([shift(x, di, dj, -jnp.inf) for di, dj in offsets], y),
                           g)
    dx = jnp.zeros_like(g)
    for k, (di, dj) in enumerate(offsets):
        dx = dx + jnp.where(shift(first, -di, -dj, -1) == k, shift(g, -di, -dj, 0),
                            jnp.zeros((), g.dtype))
    return dx


def _pool_same_fwd(x):
    y = _pool_over(x, WINDOW)
    return y, (x, y)


def _pool_same_bwd(residuals, g):
    x, y = residuals
    return (_route(x, y, g, WINDOW),)


max_pool_2x2_same.defvjp(_pool_same_fwd, _pool_same_bwd)


# The stride-1 pool of a nearest-neighbour 2x upsampled tensor, by output phase (row
# and column parity): a window at an even row spans one source row, at an odd row two
# (rows i and i + 1); the same for columns. Offsets in the source, row-major, so the
# first maximum is the same input as in the upsampled tensor's window.
PHASE_WINDOWS = {(0, 0): ((0, 0),), (0, 1): ((0, 0), (0, 1)), (1, 0): ((0, 0), (1, 0)),
                 (1, 1): WINDOW}


@jax.custom_vjp
def max_pool_2x2_same_of_upsampled(x):
    """``max_pool_2x2_same(upsample_2x(x))`` from ``x``: each output phase is a pool of
    ``x`` over that phase's window (``PHASE_WINDOWS``), the four interleaved. The
    upsampled tensor and its shifted copies are never built, and the gradient reaches
    ``x`` directly instead of through the upsampling's."""
    return _pool_of_upsampled(x)


def _pool_of_upsampled(x):
    return interleave_2x(lambda r, s: _pool_over(x, PHASE_WINDOWS[r, s]))


def _pool_of_upsampled_fwd(x):
    # Keeps only x: the backward pass recomputes the phase maxima (a few comparisons of
    # the small tensor) rather than holding four of them.
    return _pool_of_upsampled(x), x


def _pool_of_upsampled_bwd(x, g):
    n, h, w, c = x.shape
    g = g.reshape(n, h, 2, w, 2, c)
    dx = [_route(x, _pool_over(x, offsets), g[:, :, r, :, s], offsets)
          for (r, s), offsets in PHASE_WINDOWS.items()]
    return (sum(dx),)


max_pool_2x2_same_of_upsampled.defvjp(_pool_of_upsampled_fwd, _pool_of_upsampled_bwd)


def max_pool_2x2_same_of(part):
    """``max_pool_2x2_same`` of a layer input (``model.unet``: one part of a concatenation),
    an ``upsampling.Upsampled`` one from its small tensor."""
    if isinstance(part, Upsampled):
        return max_pool_2x2_same_of_upsampled(part.low)
    return max_pool_2x2_same(part)
