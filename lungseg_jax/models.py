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

Speed on XLA's CPU backend: pooling and upsampling are written as reshapes
and shifted slices instead of ``nn.max_pool``/``jax.image.resize`` (their
gradients are much cheaper there). ``tests/models_test.py`` checks each
against the library formulation.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

LEAKY_SLOPE = 0.3
glorot_normal = nn.initializers.glorot_normal()


def max_pool_2x2(x):
    """2x2 max-pool with stride 2 (NHWC): ``nn.max_pool(x, (2, 2), (2, 2))``."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def max_pool_2x2_same(x):
    """Keras ``MaxPooling2D(2, strides=1, padding='same')``: window at (i, j) covers
    rows i, i+1 and columns j, j+1; the last row/column sees only itself."""
    right = jnp.concatenate([x[:, :, 1:], x[:, :, -1:]], axis=2)
    x = jnp.maximum(x, right)
    down = jnp.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    return jnp.maximum(x, down)


def upsample_2x(x):
    """Nearest-neighbour 2x upsampling (NHWC)."""
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
    return x.reshape(n, 2 * h, 2 * w, c)


class ConvBNAct(nn.Module):
    """conv kxk 'same' (bias) -> BatchNorm -> LeakyReLU(0.3)."""

    features: int
    kernel: int
    bn_momentum: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(self.features, (self.kernel, self.kernel), padding="SAME",
                    kernel_init=glorot_normal, dtype=self.dtype)(x)
        # use_fast_variance=False: E[(x - mean)^2] instead of E[x^2] - mean^2, which
        # cancels catastrophically in float32 (gradients 5e-3 off a float64 reference
        # instead of 1e-6, measured on the inception U-Net at 64x64), at no measured cost.
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=1e-3, dtype=self.dtype, use_fast_variance=False)(x)
        return nn.leaky_relu(x, LEAKY_SLOPE)


class InceptionBlock(nn.Module):
    """Four branches concatenated, ``4 * features`` channels out:
    1x1->3x3->3x3, 1x1->3x3, 1x1, and stride-1 2x2 max-pool->1x1."""

    features: int
    bn_momentum: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        cba = functools.partial(ConvBNAct, self.features, bn_momentum=self.bn_momentum,
                                dtype=self.dtype)
        a = cba(1)(x, train)
        a = cba(3)(a, train)
        a = cba(3)(a, train)
        b = cba(1)(x, train)
        b = cba(3)(b, train)
        c = cba(1)(x, train)
        d = cba(1)(max_pool_2x2_same(x), train)
        return jnp.concatenate([a, b, c, d], axis=-1)


class ConvBlock(nn.Module):
    """The conv U-Net's block: one conv3x3 with ``4 * features`` channels."""

    features: int
    bn_momentum: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        return ConvBNAct(4 * self.features, 3, self.bn_momentum, dtype=self.dtype)(x, train)


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
            x = block(f)(x, train)
            if level == 0:
                skips.append(x)
            x = max_pool_2x2(x)
            if level < len(self.features) - 1:
                skips.append(x)
        x = block(self.features[-1])(x, train)
        for f in reversed(self.features[:-1]):
            x = jnp.concatenate([upsample_2x(x), skips.pop()], axis=-1)
            x = block(f)(x, train)
        x = jnp.concatenate([upsample_2x(x), skips.pop()], axis=-1)
        logits = nn.Conv(1, (3, 3), padding="SAME", kernel_init=glorot_normal,
                         dtype=self.dtype)(x)
        return logits.astype(jnp.float32)


MODELS = {
    "incp_unet": functools.partial(UNet, block="inception"),
    "conv_unet": functools.partial(UNet, block="conv"),
}


def create_model(model_config) -> UNet:
    """The model named by ``config.model`` (``name``, ``features``, ``bn_momentum``, ``dtype``)."""
    return MODELS[model_config.name](features=tuple(model_config.features),
                                     bn_momentum=model_config.bn_momentum,
                                     dtype=jnp.dtype(model_config.dtype))
