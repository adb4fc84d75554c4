"""Pooling: values and gradients against flax's ``nn.max_pool`` and numpy, ties included
(of an upsampled tensor too, against ``jax.image.resize`` then the pool)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lungseg_jax.ops import pooling, reference

POOLS = [(pooling.max_pool_2x2, reference.max_pool_2x2),
         (pooling.max_pool_2x2_same, reference.max_pool_2x2_same),
         # From the small tensor, against the pool of the upsampled one (jax.image.resize).
         (pooling.max_pool_2x2_same_of_upsampled,
          lambda x: reference.max_pool_2x2_same(reference.upsample_2x(x)))]


def random_input(ties: bool):
    """(2, 8, 6, 3) floats; with ``ties``, values in {0, 1, 2}: most windows have several
    maxima, as constant CT background does."""
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (2, 8, 6, 3)) if ties else rng.normal(size=(2, 8, 6, 3))
    return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("pool, reference", POOLS)
def test_pool_equals_reduce_window_with_gradient(pool, reference, ties):
    x = random_input(ties)
    np.testing.assert_array_equal(pool(x), reference(x))
    cotangent = jax.random.normal(jax.random.key(2), pool(x).shape)
    grad = jax.grad(lambda v: jnp.sum(pool(v) * cotangent))(x)
    grad_ref = jax.grad(lambda v: jnp.sum(reference(v) * cotangent))(x)
    np.testing.assert_allclose(grad, grad_ref, rtol=1e-6, atol=1e-6)


def test_same_pool_matches_numpy_definition():
    x = np.random.default_rng(0).normal(size=(1, 5, 4, 2)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
    expected = np.maximum.reduce([padded[:, :-1, :-1], padded[:, 1:, :-1],
                                  padded[:, :-1, 1:], padded[:, 1:, 1:]])
    np.testing.assert_array_equal(pooling.max_pool_2x2_same(x), expected)


def test_same_pool_gradient_goes_to_each_windows_first_maximum():
    x = np.asarray(random_input(ties=True))
    g = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    n, h, w, c = x.shape
    expected = np.zeros_like(x)
    for b, i, j, k in np.ndindex(n, h, w, c):
        window = [(i + di, j + dj) for di, dj in ((0, 0), (0, 1), (1, 0), (1, 1))
                  if i + di < h and j + dj < w]
        values = [x[b, p, q, k] for p, q in window]
        p, q = window[int(np.argmax(values))]  # argmax: the first maximum
        expected[b, p, q, k] += g[b, i, j, k]
    grad = jax.grad(lambda v: jnp.sum(pooling.max_pool_2x2_same(v) * g))(jnp.asarray(x))
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pool, reference", POOLS)
def test_pool_keeps_bfloat16(pool, reference):
    x = random_input(ties=False).astype(jnp.bfloat16)
    y = pool(x)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32),
                                  np.asarray(reference(x), np.float32))
    assert jax.grad(lambda v: jnp.sum(pool(v)).astype(jnp.float32))(x).dtype == jnp.bfloat16


@pytest.mark.parametrize("pool", [pooling.max_pool_2x2, pooling.max_pool_2x2_same])
def test_pool_gradients_compute_each_window_s_values_once_on_the_cpu(pool):
    """The windows' first maxima and gradients come out of conditionals (``buffers``):
    two for the pool's backward pass."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4))
    compiled = jax.jit(jax.grad(lambda x: jnp.sum(jnp.tanh(pool(x))))).lower(x).compile()
    assert compiled.as_text().count(" conditional(") == 2
