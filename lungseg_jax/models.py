"""The study's two U-Nets in Flax linen: inception blocks or plain conv blocks.

Skeleton (``features=(8, 16, 32, 64)``, as in the study)::

    x = block(8);  b0 = x;  pool;  b1 = x
    x = block(16); pool;    b2 = x
    x = block(32); pool;    b3 = x
    x = block(64); pool;    x = block(64)            # bottleneck
    up, cat b3, block(32); up, cat b2, block(16); up, cat b1, block(8)
    up, cat b0, conv3x3 -> 1 logit per pixel (sigmoid lives in the loss)

``block`` is the inception block (four branches, ``4f`` channels out) or a
single conv3x3(4f). Every conv is 'same' with bias and glorot-normal init and
is followed by BatchNorm (epsilon 1e-3 as Keras; momentum configurable: Keras'
0.99 lets the running statistics lag far behind the weights in a short run, so
evaluation-mode predictions collapse, the study's 0.0-IoU failure) and
LeakyReLU(0.3).

Speed on XLA's CPU backend: pooling (``lungseg_jax.pooling``) and upsampling
are written as reshapes and shifts instead of ``nn.max_pool``/``jax.image.resize``
(their gradients are much cheaper there), and ``lungseg_jax.conv`` computes
convolutions in forms of its own where XLA's are slow there (the weight gradients on
hosts without AVX-512, the first and last layers). Memory: the
decoder's concatenations ("cat" above) are never built; the layers that read one take
its parts (``Conv(...)(up, skip)``, max-pooling each part), so the skip connection's
gradient is a buffer of its own instead of a slice of a sum that XLA keeps unreduced
until the encoder's backward pass (BENCHMARKS.md). Nor is the upsampled tensor built
("up" above: ``Upsampled(x)``; ``lungseg_jax.upsampling``): the convolutions and the
inception block's pool branch work from ``x``. ``tests/models_test.py``,
``tests/conv_test.py``, ``tests/pooling_test.py`` and ``tests/upsampling_test.py`` check
each against the library formulation.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from lungseg_jax.batchnorm import BatchNormLeakyReLU
from lungseg_jax.buffers import materialized_on_cpu
from lungseg_jax.conv import Conv
from lungseg_jax.pooling import max_pool_2x2, max_pool_2x2_same_of
from lungseg_jax.upsampling import Upsampled

LEAKY_SLOPE = 0.3


class ConvBNAct(nn.Module):
    """conv kxk 'same' (bias) of the concatenated ``parts`` -> BatchNorm -> LeakyReLU(0.3).

    The conv's bias goes to BatchNorm as its ``input_bias`` instead of being added: the
    same function with one pass over the activations less, and the bias's training
    gradient is exactly its true value, zero (BatchNorm subtracts the mean). Computed
    through the sum it was float noise, which Adam scales up to real steps, differently
    on every device layout, and which evaluation-mode BatchNorm then carried in its
    running means."""

    features: int
    kernel: int
    bn_momentum: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, *parts, train: bool):
        conv = Conv(self.features, self.kernel, dtype=self.dtype, add_bias=False)
        x = conv(*parts)
        return BatchNormLeakyReLU(self.bn_momentum, epsilon=1e-3, slope=LEAKY_SLOPE,
                                  dtype=self.dtype, name="BatchNorm_0")(
            x, not train, input_bias=conv.variables["params"]["bias"])


class InceptionBlock(nn.Module):
    """Four branches concatenated, ``4 * features`` channels out:
    1x1->3x3->3x3, 1x1->3x3, 1x1, and stride-1 2x2 max-pool->1x1, on the channel
    concatenation of ``parts``."""

    features: int
    bn_momentum: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, *parts, train: bool):
        cba = functools.partial(ConvBNAct, self.features, bn_momentum=self.bn_momentum,
                                dtype=self.dtype)
        a = cba(1)(*parts, train=train)
        a = cba(3)(a, train=train)
        a = cba(3)(a, train=train)
        b = cba(1)(*parts, train=train)
        b = cba(3)(b, train=train)
        c = cba(1)(*parts, train=train)
        d = cba(1)(*(max_pool_2x2_same_of(part) for part in parts), train=train)
        # Computed once on the CPU: XLA fused the concatenation (and the four branches'
        # BatchNorm and LeakyReLU) into each of its three consumers; the step ran 1.11x
        # (128) and 1.12x (256) faster with it computed once (BENCHMARKS.md, tenth session).
        return materialized_on_cpu(jnp.concatenate([a, b, c, d], axis=-1))


class ConvBlock(nn.Module):
    """The conv U-Net's block: one conv3x3 with ``4 * features`` channels."""

    features: int
    bn_momentum: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, *parts, train: bool):
        return ConvBNAct(4 * self.features, 3, self.bn_momentum,
                         dtype=self.dtype)(*parts, train=train)


BLOCKS = {"inception": InceptionBlock, "conv": ConvBlock}


class UNet(nn.Module):
    """U-Net with ``len(features)`` pooling levels; returns float32 logits (N, H, W, 1).

    Inputs are NHWC with H and W divisible by ``2 ** len(features)``.
    ``dtype`` is the compute dtype (parameters stay float32).
    """

    block: str
    features: Sequence[int] = (8, 16, 32, 64)
    bn_momentum: float = 0.9
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        block = functools.partial(BLOCKS[self.block], bn_momentum=self.bn_momentum,
                                  dtype=self.dtype)
        x = x.astype(self.dtype)
        skips = []
        for level, f in enumerate(self.features):
            x = block(f)(x, train=train)
            if level == 0:
                skips.append(x)
            x = max_pool_2x2(x)
            if level < len(self.features) - 1:
                skips.append(x)
        x = block(self.features[-1])(x, train=train)
        for f in reversed(self.features[:-1]):
            x = block(f)(Upsampled(x), skips.pop(), train=train)
        logits = Conv(1, 3, dtype=self.dtype)(Upsampled(x), skips.pop())
        return logits.astype(jnp.float32)


MODELS = {
    "incp_unet": functools.partial(UNet, block="inception"),
    "conv_unet": functools.partial(UNet, block="conv"),
}


def has_parallel_branches(model_config) -> bool:
    """Whether the model's blocks have convolutions that can run side by side (the
    inception block's four branches), not only one after another (the conv U-Net)."""
    return MODELS[model_config.name].keywords["block"] == "inception"


def create_model(model_config) -> UNet:
    """The model named by ``config.model`` (``name``, ``features``, ``bn_momentum``, ``dtype``)."""
    return MODELS[model_config.name](features=tuple(model_config.features),
                                     bn_momentum=model_config.bn_momentum,
                                     dtype=jnp.dtype(model_config.dtype))
