"""BatchNormLeakyReLU against flax's BatchNorm + leaky_relu: variables, values, running
averages and gradients; its hand-written gradient against autodiff in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lungseg_jax.ops import batchnorm, reference

SETTINGS = dict(momentum=0.9, epsilon=1e-3, slope=0.3)


def inputs(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    # Per-channel offsets and spreads, so normalisation matters.
    x = rng.normal(size=(2, 5, 4, 3)) * [0.5, 2.0, 1.0] + [1.0, -3.0, 0.0]
    return jnp.asarray(x, dtype), jnp.asarray(rng.normal(size=x.shape), dtype)


def variables_after_a_step(module, x):
    """Init, then one training step's update of the running averages, with scale and
    bias moved off their initial values."""
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    params = jax.tree.map(lambda p: p + jnp.linspace(0.5, 1.5, p.size).reshape(p.shape),
                          variables["params"])
    _, updates = module.apply({**variables, "params": params}, x, use_running_average=False,
                              mutable=["batch_stats"])
    return {"params": params, **updates}


@pytest.mark.parametrize("use_running_average", [False, True])
def test_equals_flax_batchnorm_then_leaky_relu(use_running_average):
    x, cotangent = inputs()
    ours, flax_module = batchnorm.BatchNormLeakyReLU(**SETTINGS), reference.BatchNormLeakyReLU(**SETTINGS)
    variables = variables_after_a_step(ours, x)
    reference_variables = variables_after_a_step(flax_module, x)
    assert jax.tree.structure(variables) == jax.tree.structure(reference_variables)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 variables, reference_variables)

    def loss(module, params, x):
        y = module.apply({**variables, "params": params}, x, use_running_average,
                         mutable=["batch_stats"])[0]
        return jnp.sum(y * cotangent), y

    (_, y), grads = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(
        ours, variables["params"], x)
    (_, y_ref), grads_ref = jax.value_and_grad(loss, argnums=(1, 2), has_aux=True)(
        flax_module, variables["params"], x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 grads, grads_ref)


def plain_batch_norm_leaky_relu(x, scale, bias, epsilon, slope):
    """The same function written plainly, differentiated by autodiff."""
    mean = x.mean((0, 1, 2))
    var = jnp.square(x - mean).mean((0, 1, 2))
    z = (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias
    return jnp.where(z >= 0, z, slope * z), mean, var


def test_hand_written_gradient_equals_autodiff_in_float64():
    with jax.enable_x64(True):
        x, g = inputs(jnp.float64)
        scale, bias = jnp.array([0.5, 1.0, 2.0]), jnp.array([0.1, -0.2, 0.3])
        # Cotangents for the returned mean and variance too (zero in training, where
        # they only feed the running averages).
        cotangents = (g, jnp.array([0.3, -1.0, 2.0]), jnp.array([1.5, 0.2, -0.7]))
        got = jax.vjp(lambda *a: batchnorm.batch_norm_leaky_relu(*a, 1e-3, 0.3),
                      x, scale, bias)[1](cotangents)
        want = jax.vjp(lambda *a: plain_batch_norm_leaky_relu(*a, 1e-3, 0.3),
                       x, scale, bias)[1](cotangents)
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_bfloat16_compute_keeps_float32_statistics():
    x, _ = inputs(jnp.bfloat16)
    module = batchnorm.BatchNormLeakyReLU(**SETTINGS, dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), x, use_running_average=False)
    y, updates = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves((variables, updates)))
    flax_module = reference.BatchNormLeakyReLU(**SETTINGS, dtype=jnp.bfloat16)
    y_ref, updates_ref = flax_module.apply(variables, x, use_running_average=False,
                                         mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(y_ref, np.float32),
                               rtol=1e-2, atol=1e-2)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates,
                 updates_ref)


@pytest.mark.parametrize("use_running_average", [False, True])
def test_input_bias_equals_flax_batchnorm_of_the_sum(use_running_average):
    x, cotangent = inputs()
    input_bias = jnp.array([0.7, -2.0, 0.1])
    ours, flax_module = batchnorm.BatchNormLeakyReLU(**SETTINGS), reference.BatchNormLeakyReLU(**SETTINGS)
    variables = ours.init(jax.random.key(0), x, use_running_average=False)
    _, updates = ours.apply(variables, x, False, input_bias, mutable=["batch_stats"])
    variables = {**variables, **updates}

    def loss(module, params, input_bias, x):
        y, updates = module.apply({**variables, "params": params}, x, use_running_average,
                                  input_bias, mutable=["batch_stats"])
        return jnp.sum(y * cotangent), (y, updates)

    grad = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)
    (_, (y, updates)), grads = grad(ours, variables["params"], input_bias, x)
    # reference.BatchNormLeakyReLU adds the bias to x, then normalises.
    (_, (y_ref, updates_ref)), grads_ref = grad(flax_module, variables["params"], input_bias, x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
                 updates, updates_ref)
    (g_params, g_bias, g_x), (g_params_ref, g_bias_ref, _) = grads, grads_ref
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 g_params, g_params_ref)
    if use_running_average:
        np.testing.assert_allclose(g_bias, g_bias_ref, rtol=1e-5, atol=1e-5)
    else:  # BatchNorm subtracts the batch mean: the true gradient is zero, ours exactly
        np.testing.assert_array_equal(g_bias, 0.0)
        np.testing.assert_allclose(g_bias_ref, 0.0, atol=1e-5)
    np.testing.assert_allclose(g_x, grads_ref[2], rtol=1e-5, atol=1e-5)
