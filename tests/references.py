"""The library formulations that the fast ops of ``lungseg_jax`` are tested against."""

import flax.linen as nn
import jax
import jax.numpy as jnp


def reference_pool_2x2(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def reference_pool_same(x):
    return nn.max_pool(x, (2, 2), strides=(1, 1), padding=((0, 1), (0, 1)))


def reference_upsample(x):
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), "nearest")


class _BatchNormThenLeakyReLU(nn.BatchNorm):
    slope: float = 0.3

    def __call__(self, x, use_running_average: bool, input_bias=None):
        if input_bias is not None:
            x = x + input_bias.astype(x.dtype)
        return nn.leaky_relu(super().__call__(x, use_running_average=use_running_average),
                             self.slope)


def FlaxBatchNormLeakyReLU(momentum, epsilon, slope, dtype=jnp.float32, name=None):
    """``batchnorm.BatchNormLeakyReLU`` as flax's ``nn.BatchNorm`` then ``nn.leaky_relu``:
    same constructor, same variable names; an ``input_bias`` is added to ``x`` first."""
    return _BatchNormThenLeakyReLU(momentum=momentum, epsilon=epsilon, slope=slope,
                                   dtype=dtype, use_fast_variance=False, name=name)
