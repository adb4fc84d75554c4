"""BatchNorm followed by LeakyReLU, with a hand-written gradient.

``BatchNormLeakyReLU`` computes what ``nn.leaky_relu(nn.BatchNorm(...)(x))`` does with
``use_fast_variance=False`` (float32 statistics, the two-pass variance, the same
parameters and running averages under the same names), but its training-mode
gradient is written out (``batch_norm_leaky_relu``) instead of derived by autodiff
through flax's ops. That gradient takes one reduction and one elementwise pass over
the activations, where the derived one takes several
(docs/performance.md#batchnorm-and-leakyrelu-gradient). ``tests/batchnorm_test.py`` checks values,
gradients and running averages against flax's modules (``ops.reference``).

The variance is the two-pass E[(x - mean)^2], not E[x^2] - mean^2, which cancels in
float32 when the mean is large against the spread (inputs offset by +3: gradients
2e-2..7e-2 off a float64 reference instead of 2e-4, 2 of 3 seeds).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


def _leaky_relu(z, slope):
    return jnp.where(z >= 0, z, slope * z)


def _statistics_dtype(dtype):
    return jnp.promote_types(dtype, jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_leaky_relu(x, scale, bias, epsilon: float, slope: float):
    """Training-mode BatchNorm over all axes but the last, then LeakyReLU(``slope``).

    Returns ``(y, mean, var)``: ``y`` in ``x``'s dtype, and the batch mean and
    (biased, two-pass) variance in float32, for the running averages.
    """
    y, mean, var, _ = _forward(x, scale, bias, epsilon, slope)
    return y, mean, var


def _normalize_leaky_relu(x, mean, inv, scale, bias, slope):
    """LeakyReLU((x - mean) * inv * scale + bias), computed in the statistics' dtype."""
    z = (x.astype(_statistics_dtype(x.dtype)) - mean) * (inv * scale) + bias
    return _leaky_relu(z, slope).astype(x.dtype)


def _forward(x, scale, bias, epsilon, slope):
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(_statistics_dtype(x.dtype))
    mean = x32.mean(axes)
    var = jnp.square(x32 - mean).mean(axes)
    inv = lax.rsqrt(var + epsilon)
    return _normalize_leaky_relu(x, mean, inv, scale, bias, slope), mean, var, inv


def _batch_norm_leaky_relu_fwd(x, scale, bias, epsilon, slope):
    y, mean, var, inv = _forward(x, scale, bias, epsilon, slope)
    return (y, mean, var), (x, mean, inv, scale, bias)


def _batch_norm_leaky_relu_bwd(epsilon, slope, residuals, cotangents):
    x, mean, inv, scale, bias = residuals
    g, g_mean, g_var = cotangents
    axes = tuple(range(x.ndim - 1))
    count = x.size // x.shape[-1]
    centered = x.astype(mean.dtype) - mean
    x_hat = centered * inv
    z = x_hat * scale + bias
    g_z = g.astype(mean.dtype) * jnp.where(z >= 0, 1.0, slope).astype(mean.dtype)
    g_bias = g_z.sum(axes)
    g_scale = (g_z * x_hat).sum(axes)
    # d/dx of scale * x_hat: the batch mean and variance depend on x too; plus the
    # cotangents of the returned statistics (zero when they only feed running averages).
    g_x = ((scale * inv) * (g_z - (g_bias + x_hat * g_scale) / count)
           + g_mean / count + centered * (2.0 * g_var / count))
    return g_x.astype(x.dtype), g_scale, g_bias


batch_norm_leaky_relu.defvjp(_batch_norm_leaky_relu_fwd, _batch_norm_leaky_relu_bwd)


class BatchNormLeakyReLU(nn.Module):
    """``nn.leaky_relu(nn.BatchNorm(momentum, epsilon, use_fast_variance=False)(x), slope)``
    with the same parameters (``scale``, ``bias``) and running averages (``mean``,
    ``var``); name it ``BatchNorm_0`` to keep flax's parameter paths."""

    momentum: float
    epsilon: float
    slope: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, use_running_average: bool, input_bias=None):
        """The layer applied to ``x + input_bias`` (per channel; None: no bias), without
        that sum: BatchNorm subtracts the mean, so the bias only moves the mean, the
        running one included. For a convolution's bias (``model.unet.ConvBNAct``): the
        sum would be a pass over the activations of its own, and the bias's gradient
        in training is exactly zero instead of float noise."""
        features = x.shape[-1:]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32)
        x = x.astype(self.dtype)
        input_bias = 0.0 if input_bias is None else input_bias.astype(jnp.float32)
        if use_running_average:
            inv = lax.rsqrt(ra_var.value + self.epsilon)
            return _normalize_leaky_relu(x, ra_mean.value - input_bias, inv, scale, bias,
                                         self.slope)
        y, mean, var = batch_norm_leaky_relu(x, scale, bias, self.epsilon, self.slope)
        if not self.is_initializing():
            ra_mean.value = (self.momentum * ra_mean.value
                             + (1 - self.momentum) * (mean + input_bias))
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
