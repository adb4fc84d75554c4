"""Models: the study's parameter counts, shapes, and the fast ops against flax/jax's own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lungseg_jax import conv, models, upsampling
from references import (FlaxBatchNormLeakyReLU, reference_pool_2x2, reference_pool_same,
                        reference_upsample)


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name, trainable, bn_stats", [
    ("incp_unet", 472_529, 3_360),
    ("conv_unet", 1_561_825, 1_920),
])
def test_parameter_counts_match_the_study_with_three_channels(name, trainable, bn_stats):
    model = models.MODELS[name]()
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                  train=False))
    assert count(variables["params"]) == trainable
    assert count(variables["batch_stats"]) == bn_stats


@pytest.mark.parametrize("block, out_channels", [("inception", 32), ("conv", 32)])
def test_block_output_shape(block, out_channels):
    module = models.BLOCKS[block](features=8, bn_momentum=0.9)
    x = jnp.zeros((2, 16, 16, 5))
    y, _ = module.init_with_output(jax.random.key(0), x, train=False)
    assert y.shape == (2, 16, 16, out_channels)


@pytest.mark.parametrize("features", [(4,), (4, 8), (4, 8, 8)])
def test_unet_returns_one_logit_per_pixel_at_any_depth(features):
    model = models.UNet(block="inception", features=features)
    x = jnp.zeros((2, 32, 32, 1))
    y = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False)[0])
    assert y.shape == (2, 32, 32, 1) and y.dtype == jnp.float32


# ---- fast ops vs the library formulations (pooling and BatchNorm: their own tests)


def test_upsample_equals_reference_with_gradient():
    x = jax.random.normal(jax.random.key(1), (2, 8, 6, 3))
    np.testing.assert_array_equal(upsampling.upsample_2x(x), reference_upsample(x))
    cotangent = jax.random.normal(jax.random.key(2), (2, 16, 12, 3))
    grad_fast = jax.grad(lambda v: jnp.sum(upsampling.upsample_2x(v) * cotangent))(x)
    grad_ref = jax.grad(lambda v: jnp.sum(reference_upsample(v) * cotangent))(x)
    np.testing.assert_allclose(grad_fast, grad_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["incp_unet", "conv_unet"])
def test_whole_model_equals_reference_formulation(name, monkeypatch):
    model = models.MODELS[name](features=(4, 8))
    x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 1))
    y = (jax.random.uniform(jax.random.key(4), (2, 16, 16, 1)) > 0.5).astype(jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)

    def loss_and_grad():
        def loss(params):
            logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                          mutable=["batch_stats"])
            return jnp.mean(jax.nn.softplus(logits) - y * logits), updates["batch_stats"]
        return jax.value_and_grad(loss, has_aux=True)(variables["params"])

    (fast_loss, fast_stats), fast_grad = loss_and_grad()
    monkeypatch.setattr(models, "max_pool_2x2", reference_pool_2x2)
    monkeypatch.setattr(models, "max_pool_2x2_same_of", reference_pool_same)
    monkeypatch.setattr(models, "Upsampled", reference_upsample)  # built, and convolved
    monkeypatch.setattr(models, "BatchNormLeakyReLU", FlaxBatchNormLeakyReLU)
    (ref_loss, ref_stats), ref_grad = loss_and_grad()
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 fast_stats, ref_stats)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 fast_grad, ref_grad)


SMALL_INCP_UNET = ("incp_unet", (4, 8))


def small_unet_grads(variables, params, x, y, dtype=jnp.float32, unet=SMALL_INCP_UNET):
    """Training-mode gradients of a small U-Net's loss at ``params``, computing in
    ``dtype``; ``unet``: (name, features)."""
    name, features = unet
    model = models.MODELS[name](features=features, dtype=dtype)

    def loss(p):
        logits, _ = model.apply({**variables, "params": p}, x, train=True,
                                mutable=["batch_stats"])
        return jnp.mean(jax.nn.softplus(logits) - y * logits)
    return jax.jit(jax.grad(loss))(params)


def float32_and_float64_grads(x, y, unet=SMALL_INCP_UNET):
    """Gradients of a small U-Net computed in float32 and, from the same parameters, by
    the same model computing in float64."""
    name, features = unet
    variables = models.MODELS[name](features=features).init(jax.random.key(0), x,
                                                            train=False)
    got = small_unet_grads(variables, variables["params"], x, y, unet=unet)
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
        want = small_unet_grads(variables, to64(variables["params"]), to64(x), to64(y),
                                jnp.float64, unet)
    return got, want


def assert_close_per_leaf(got, want, relative):
    """Every leaf of ``got`` within ``relative`` of the largest value of ``want``'s."""
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        w = np.asarray(flat_want[path])
        np.testing.assert_allclose(g, w, atol=relative * np.abs(w).max(),
                                   err_msg=jax.tree_util.keystr(path))


def test_float32_gradients_match_a_float64_reference():
    # Inputs in [0, 0.1). Largest error over the leaves, relative to each leaf's largest
    # gradient, measured 2026-11-26 over 3 seeds: 3e-6. (Offset by +3, float32 itself
    # runs out of digits: 2e-4 to 3e-2 with BatchNorm's two-pass variance, 2e-2 to 7e-2
    # with the fast E[x^2] - E[x]^2 form.)
    rng = np.random.default_rng(0)
    x = (0.1 * rng.random((2, 32, 32, 1))).astype(np.float32)
    y = (rng.random((2, 32, 32, 1)) > 0.5).astype(np.float32)
    assert_close_per_leaf(*float32_and_float64_grads(x, y), 1e-4)


def test_conv_unet_gradients_through_winograd_match_a_float64_reference(monkeypatch):
    # At 64x64, the 3x3 convolutions of the 32x32 level (64->128 channels, and the
    # decoder's 64->64 skip part) are Winograd's on the CPU in float32 (on a host that
    # uses it); float64 computes with XLA's convolution.
    monkeypatch.setattr(conv, "WINOGRAD_ON_THIS_CPU", True)
    assert conv.winograd_pays_off((2, 32, 32, 64), (3, 3, 64, 128))
    assert conv.winograd_pays_off((2, 32, 32, 64), (3, 3, 64, 64))
    rng = np.random.default_rng(1)
    x = (0.1 * rng.random((2, 64, 64, 1))).astype(np.float32)
    y = (rng.random((2, 64, 64, 1)) > 0.5).astype(np.float32)
    assert_close_per_leaf(*float32_and_float64_grads(x, y, ("conv_unet", (16, 32))), 1e-4)


def test_exactly_zero_gradients_are_those_of_the_conv_biases_that_feed_batchnorm():
    x = jax.random.normal(jax.random.key(7), (2, 16, 16, 1))
    y = (jax.random.uniform(jax.random.key(8), (2, 16, 16, 1)) > 0.5).astype(jnp.float32)
    variables = models.MODELS["incp_unet"](features=(4, 8)).init(jax.random.key(0), x,
                                                                  train=False)
    grads = small_unet_grads(variables, variables["params"], x, y)
    zeroed = [jax.tree_util.keystr(path)
              for path, g in jax.tree_util.tree_leaves_with_path(grads) if np.all(g == 0)]
    # Every block's conv biases (7 convs in each of 4 blocks: 2 levels, bottleneck, 1 up),
    # nothing else: not BatchNorm's bias, not the output conv's (no BatchNorm after it).
    assert len(zeroed) == 28
    assert all(n.endswith("['Conv_0']['bias']") and "ConvBNAct" in n for n in zeroed)
