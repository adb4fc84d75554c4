"""Values computed once into buffers of their own on the CPU, where XLA would fuse them
into each consumer and compute them again there."""

import jax
import jax.numpy as jnp


def materialized_on_cpu(x):
    """``x``, computed once into a buffer of its own on the CPU (``own_buffer``), where
    XLA:CPU fuses a value's computation into each of its consumers and so computes it again
    in each (the inception block's output, ``models``; the pools' per-window values,
    ``pooling``). Other backends: XLA's choice."""
    return jax.lax.platform_dependent(x, cpu=own_buffer, default=lambda x: x)


def own_buffer(x):
    """``x``, out of a conditional whose two branches both return it. XLA runs a
    conditional as an operation of its own, so its operand and result are buffers no
    fusion reaches into (nor, through autodiff's conditional, the gradient's). An
    optimization barrier alone does not do it on the CPU: XLA:CPU removes barriers before
    fusing. The predicate (always false) and the false branch go through barriers so that
    XLA cannot fold the conditional away, which it does when the predicate is a constant or
    the branches are the same."""
    never = jax.lax.optimization_barrier(jnp.array(False))
    return jax.lax.cond(never, lambda x: x, jax.lax.optimization_barrier, x)
