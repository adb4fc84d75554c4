"""buffers: a value computed once on the CPU, exactly."""

import jax
import jax.numpy as jnp
import numpy as np

from lungseg_jax.ops import policy


def test_own_buffer_is_exact_and_survives_xla_as_a_conditional_both_ways():
    """The value and gradient are the identity's, and XLA keeps the conditional that
    makes the buffer (forward and, through autodiff, gradient): a conditional XLA folded
    away, as it does a constant predicate or two equal branches, would leave none."""
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 4))

    def loss(x):
        y = policy.own_buffer(jnp.sin(x))
        return jnp.sum(y * y) + jnp.sum(jnp.tanh(y))

    def plain(x):
        y = jnp.sin(x)
        return jnp.sum(y * y) + jnp.sum(jnp.tanh(y))

    np.testing.assert_array_equal(jax.jit(jax.grad(loss))(x), jax.jit(jax.grad(plain))(x))
    compiled = jax.jit(jax.grad(loss)).lower(x).compile().as_text()
    assert compiled.count(" conditional(") == 2
