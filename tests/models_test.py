"""Models: the study's parameter counts, shapes, and the fast ops against flax/jax's own."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lungseg_jax import models


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


# ---- fast ops vs the library formulations (values and gradients)


def reference_pool_2x2(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def reference_pool_same(x):
    return nn.max_pool(x, (2, 2), strides=(1, 1), padding=((0, 1), (0, 1)))


def reference_upsample(x):
    n, h, w, c = x.shape
    return jax.image.resize(x, (n, 2 * h, 2 * w, c), "nearest")


@pytest.mark.parametrize("fast, reference", [
    (models.max_pool_2x2, reference_pool_2x2),
    (models.max_pool_2x2_same, reference_pool_same),
    (models.upsample_2x, reference_upsample),
])
def test_fast_op_equals_reference_with_gradient(fast, reference):
    x = jax.random.normal(jax.random.key(1), (2, 8, 6, 3))
    np.testing.assert_array_equal(fast(x), reference(x))
    cotangent = jax.random.normal(jax.random.key(2), fast(x).shape)
    grad_fast = jax.grad(lambda v: jnp.sum(fast(v) * cotangent))(x)
    grad_ref = jax.grad(lambda v: jnp.sum(reference(v) * cotangent))(x)
    np.testing.assert_allclose(grad_fast, grad_ref, rtol=1e-6, atol=1e-6)


def test_same_pool_matches_numpy_definition():
    x = np.random.default_rng(0).normal(size=(1, 5, 4, 2)).astype(np.float32)
    padded = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=-np.inf)
    expected = np.maximum.reduce([padded[:, :-1, :-1], padded[:, 1:, :-1],
                                  padded[:, :-1, 1:], padded[:, 1:, 1:]])
    np.testing.assert_array_equal(models.max_pool_2x2_same(x), expected)


@pytest.mark.parametrize("name", ["incp_unet", "conv_unet"])
def test_whole_model_equals_reference_formulation(name, monkeypatch):
    model = models.MODELS[name](features=(4, 8))
    x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 1))
    y = (jax.random.uniform(jax.random.key(4), (2, 16, 16, 1)) > 0.5).astype(jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)

    def loss_and_grad():
        def loss(params):
            logits, _ = model.apply({**variables, "params": params}, x, train=True,
                                    mutable=["batch_stats"])
            return jnp.mean(jax.nn.softplus(logits) - y * logits)
        return jax.value_and_grad(loss)(variables["params"])

    fast_loss, fast_grad = loss_and_grad()
    monkeypatch.setattr(models, "max_pool_2x2", reference_pool_2x2)
    monkeypatch.setattr(models, "max_pool_2x2_same", reference_pool_same)
    monkeypatch.setattr(models, "upsample_2x", reference_upsample)
    ref_loss, ref_grad = loss_and_grad()
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 fast_grad, ref_grad)


def test_float32_gradients_match_a_float64_reference():
    model = models.MODELS["incp_unet"](features=(4, 8))
    # A large mean against a small spread: what breaks E[x^2] - E[x]^2 in float32.
    x = 0.1 * jax.random.uniform(jax.random.key(5), (2, 32, 32, 1)) + 10.0
    y = (jax.random.uniform(jax.random.key(6), (2, 32, 32, 1)) > 0.5).astype(jnp.float32)
    variables = model.init(jax.random.key(0), x, train=False)

    def grads(params, x, y):
        def loss(p):
            logits, _ = model.apply({**variables, "params": p}, x, train=True,
                                    mutable=["batch_stats"])
            return jnp.mean(jax.nn.softplus(logits) - y * logits)
        return jax.grad(loss)(params)

    got = jax.jit(grads)(variables["params"], x, y)
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
        want = jax.jit(grads)(to64(variables["params"]), np.asarray(x, np.float64),
                              np.asarray(y, np.float64))
    flat_got = jax.tree_util.tree_leaves_with_path(got)
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
    for path, g in flat_got:
        name = jax.tree_util.keystr(path)
        if "bias" in name and "Conv" in name:
            continue  # conv biases before BatchNorm: true gradient 0, only noise to compare
        # The four 1x1 kernels that read x itself: their gradient sum(x * g) cancels
        # (x ~ 10 +- 0.03, sum(g) = 0 after BatchNorm) like E[x^2] - E[x]^2 does, so even
        # exact BatchNorm leaves 2e-4..7e-4 of float32 noise there (by XLA's summation
        # order); the fast-variance formula gives 1e-3..4e-3 on them.
        reads_input = "InceptionBlock_0" in name and "kernel" in name and g.size == 4
        w = np.asarray(flat_want[path])
        np.testing.assert_allclose(g, w, atol=(1e-3 if reads_input else 1e-4) * np.abs(w).max()
                                   + 1e-9, err_msg=name)
