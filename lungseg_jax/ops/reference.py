"""The plain forms of the U-Net's operations: flax's and lax's own, nothing host-specific.

``config.model.ops = "reference"`` builds the models from these; the fast forms
(``ops.forms('fast')``) are tested against them. They have the fast forms' constructors and
parameter names, so either set restores the other's checkpoints.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


class Conv(nn.Module):
    """'Same' convolution (glorot-normal kernel, zero bias) of the channel concatenation
    of ``parts``; ``add_bias=False`` creates the bias but leaves adding it to the caller
    (as ``ops.conv.Conv``)."""

    features: int
    kernel_size: int
    dtype: Any = jnp.float32
    add_bias: bool = True

    @nn.compact
    def __call__(self, *parts):
        x = jnp.concatenate(parts, axis=-1).astype(self.dtype)
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.glorot_normal(),
                            (k, k, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        y = lax.conv_general_dilated(x, kernel.astype(self.dtype), (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype) if self.add_bias else y


class BatchNormLeakyReLU(nn.BatchNorm):
    """flax's ``nn.BatchNorm`` (two-pass variance) then ``nn.leaky_relu(slope)``, with
    ``ops.batchnorm.BatchNormLeakyReLU``'s call: an ``input_bias`` is added to ``x`` first."""

    slope: float = 0.3
    use_fast_variance: bool = False

    def __call__(self, x, use_running_average: bool, input_bias=None):
        if input_bias is not None:
            x = x + input_bias.astype(x.dtype)
        return nn.leaky_relu(super().__call__(x, use_running_average=use_running_average),
                             self.slope)


def max_pool_2x2(x):
    """2x2 max-pool, stride 2."""
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def max_pool_2x2_same(x):
    """Keras ``MaxPooling2D(2, strides=1, padding='same')``."""
    return nn.max_pool(x, (2, 2), strides=(1, 1), padding=((0, 1), (0, 1)))


def upsample_2x(x):
    """Nearest-neighbour 2x upsampling (NHWC)."""
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), "nearest")


def identity(x):
    return x
