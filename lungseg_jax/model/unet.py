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

The operations come from an op set (``ops``: 'fast' or 'reference', see
``lungseg_jax.ops``). A layer takes the parts of a concatenation ("cat" above) and the
upsampled tensor ("up") as they are, so that the fast set never builds either.
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lungseg_jax.ops import SETS, forms

LEAKY_SLOPE = 0.3
BN_EPSILON = 1e-3


class ConvBNAct(nn.Module):
    """conv kxk 'same' (bias) of the concatenated ``parts`` -> BatchNorm -> LeakyReLU(0.3).

    The conv's bias goes to BatchNorm as its ``input_bias`` instead of being added: the
    same function, and the bias's training gradient is exactly its true value, zero
    (BatchNorm subtracts the mean), not float noise that Adam would scale up."""

    features: int
    kernel: int
    bn_momentum: float
    ops: str = "fast"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, *parts, train: bool):
        op = forms(self.ops)
        conv = op.Conv(self.features, self.kernel, dtype=self.dtype, add_bias=False)
        x = conv(*parts)
        return op.BatchNormLeakyReLU(momentum=self.bn_momentum, epsilon=BN_EPSILON,
                                     slope=LEAKY_SLOPE, dtype=self.dtype, name="BatchNorm_0")(
            x, not train, input_bias=conv.variables["params"]["bias"])


class InceptionBlock(nn.Module):
    """Four branches concatenated, ``4 * features`` channels out:
    1x1->3x3->3x3, 1x1->3x3, 1x1, and stride-1 2x2 max-pool->1x1, on the channel
    concatenation of ``parts``."""

    features: int
    bn_momentum: float
    ops: str = "fast"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, *parts, train: bool):
        cba = functools.partial(ConvBNAct, self.features, bn_momentum=self.bn_momentum,
                                ops=self.ops, dtype=self.dtype)
        a = cba(1)(*parts, train=train)
        a = cba(3)(a, train=train)
        a = cba(3)(a, train=train)
        b = cba(1)(*parts, train=train)
        b = cba(3)(b, train=train)
        c = cba(1)(*parts, train=train)
        d = cba(1)(*(forms(self.ops).max_pool_same(part) for part in parts), train=train)
        # Three layers read the block's output: computed once for all three
        # (docs/performance.md#values-computed-once).
        return forms(self.ops).materialize(jnp.concatenate([a, b, c, d], axis=-1))


class ConvBlock(nn.Module):
    """The conv U-Net's block: one conv3x3 with ``4 * features`` channels."""

    features: int
    bn_momentum: float
    ops: str = "fast"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, *parts, train: bool):
        return ConvBNAct(4 * self.features, 3, self.bn_momentum, ops=self.ops,
                         dtype=self.dtype)(*parts, train=train)


BLOCKS = {"inception": InceptionBlock, "conv": ConvBlock}


class UNet(nn.Module):
    """U-Net with ``len(features)`` pooling levels; returns logits (N, H, W, 1), float32
    (float64 when computing in float64).

    Inputs are NHWC with H and W divisible by ``2 ** len(features)``.
    ``dtype`` is the compute dtype (parameters stay float32).
    """

    block: str
    features: Sequence[int] = (8, 16, 32, 64)
    bn_momentum: float = 0.9
    ops: str = "fast"
    dtype: Any = jnp.float32

    @property
    def has_parallel_branches(self) -> bool:
        """Whether its blocks have convolutions that can run side by side (the inception
        block's four branches), not only one after another (the conv U-Net)."""
        return self.block == "inception"

    @nn.compact
    def __call__(self, x, train: bool):
        op = forms(self.ops)
        block = functools.partial(BLOCKS[self.block], bn_momentum=self.bn_momentum,
                                  ops=self.ops, dtype=self.dtype)
        x = x.astype(self.dtype)
        skips = []
        for level, f in enumerate(self.features):
            x = block(f)(x, train=train)
            if level == 0:
                skips.append(x)
            x = op.max_pool(x)
            if level < len(self.features) - 1:
                skips.append(x)
        x = block(self.features[-1])(x, train=train)
        for f in reversed(self.features[:-1]):
            x = block(f)(op.upsample(x), skips.pop(), train=train)
        logits = op.Conv(1, 3, dtype=self.dtype)(op.upsample(x), skips.pop())
        return logits.astype(jnp.promote_types(self.dtype, jnp.float32))


MODELS = {
    "incp_unet": functools.partial(UNet, block="inception"),
    "conv_unet": functools.partial(UNet, block="conv"),
}
OP_SETS = tuple(SETS)


def create_model(model_config) -> UNet:
    """The model named by ``config.model`` (``name``, ``features``, ``bn_momentum``,
    ``dtype``, ``ops``)."""
    return MODELS[model_config.name](features=tuple(model_config.features),
                                     bn_momentum=model_config.bn_momentum,
                                     ops=model_config.ops,
                                     dtype=jnp.dtype(model_config.dtype))


def init_variables(model: UNet, key, image_size: int, channels: int) -> dict:
    """``model``'s initial variables (``params``, ``batch_stats``) for square inputs of
    ``image_size`` with ``channels``; under ``jax.eval_shape``, just their shapes."""
    return model.init(key, jnp.zeros((1, image_size, image_size, channels)), train=False)


def probability_fn(model: UNet):
    """Jitted ``(variables, images) -> lung probabilities (N, H, W)``, in evaluation mode."""

    @jax.jit
    def probabilities(variables, images):
        return jax.nn.sigmoid(model.apply(variables, images, train=False)[..., 0])

    return probabilities
