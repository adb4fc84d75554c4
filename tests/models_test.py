"""Models: the study's parameter counts, shapes, and the fast ops against flax/jax's own."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lungseg_jax.model.unet import BLOCKS, MODELS, UNet
from lungseg_jax.ops import policy, reference, upsampling


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name, trainable, bn_stats", [
    ("incp_unet", 472_529, 3_360),
    ("conv_unet", 1_561_825, 1_920),
])
def test_parameter_counts_match_the_study_with_three_channels(name, trainable, bn_stats):
    model = MODELS[name]()
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)),
                                                  train=False))
    assert count(variables["params"]) == trainable
    assert count(variables["batch_stats"]) == bn_stats


@pytest.mark.parametrize("block, out_channels", [("inception", 32), ("conv", 32)])
def test_block_output_shape(block, out_channels):
    module = BLOCKS[block](features=8, bn_momentum=0.9)
    x = jnp.zeros((2, 16, 16, 5))
    y, _ = module.init_with_output(jax.random.key(0), x, train=False)
    assert y.shape == (2, 16, 16, out_channels)


@pytest.mark.parametrize("features", [(4,), (4, 8), (4, 8, 8)])
def test_unet_returns_one_logit_per_pixel_at_any_depth(features):
    model = UNet(block="inception", features=features)
    x = jnp.zeros((2, 32, 32, 1))
    y = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False)[0])
    assert y.shape == (2, 32, 32, 1) and y.dtype == jnp.float32


# ---- fast ops vs the library formulations (pooling and BatchNorm: their own tests)


def test_upsample_equals_reference_with_gradient():
    x = jax.random.normal(jax.random.key(1), (2, 8, 6, 3))
    np.testing.assert_array_equal(upsampling.upsample_2x(x), reference.upsample_2x(x))
    cotangent = jax.random.normal(jax.random.key(2), (2, 16, 12, 3))
    grad_fast = jax.grad(lambda v: jnp.sum(upsampling.upsample_2x(v) * cotangent))(x)
    grad_ref = jax.grad(lambda v: jnp.sum(reference.upsample_2x(v) * cotangent))(x)
    np.testing.assert_allclose(grad_fast, grad_ref, rtol=1e-6, atol=1e-6)


def loss_and_grads(model, variables, x, y):
    """Training-mode (loss, logits, new BatchNorm statistics) and the parameters' gradients."""
    def loss(params):
        logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                      mutable=["batch_stats"])
        return jnp.mean(jax.nn.softplus(logits) - y * logits), (logits, updates["batch_stats"])
    (value, (logits, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"])
    return value, logits, stats, grads


@pytest.mark.parametrize("name", ["incp_unet", "conv_unet"])
def test_reference_ops_have_the_fast_ops_parameters_and_values(name):
    fast, ref = (MODELS[name](features=(4, 8), ops=ops) for ops in ("fast", "reference"))
    x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 1))
    y = (jax.random.uniform(jax.random.key(4), (2, 16, 16, 1)) > 0.5).astype(jnp.float32)
    variables = fast.init(jax.random.key(0), x, train=False)
    assert (jax.tree.map(jnp.shape, ref.init(jax.random.key(0), x, train=False))
            == jax.tree.map(jnp.shape, variables))
    fast_loss, _, fast_stats, fast_grad = loss_and_grads(fast, variables, x, y)
    ref_loss, _, ref_stats, ref_grad = loss_and_grads(ref, variables, x, y)
    np.testing.assert_allclose(fast_loss, ref_loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 fast_stats, ref_stats)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 fast_grad, ref_grad)
    evaluated = [m.apply(variables, x, train=False) for m in (fast, ref)]
    np.testing.assert_allclose(*evaluated, rtol=1e-5, atol=1e-5)


def relative_errors(got, want) -> dict:
    """Per leaf: the largest difference from ``want``'s leaf, relative to that leaf's largest
    value (leaves that are zero in ``want``, the conv biases that feed BatchNorm: absolute)."""
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
    return {jax.tree_util.keystr(path): float(np.abs(np.asarray(g) - flat_want[path]).max()
                                              / max(np.abs(flat_want[path]).max(), 1e-12))
            for path, g in jax.tree_util.tree_leaves_with_path(got)}


@pytest.mark.parametrize("name", ["incp_unet", "conv_unet"])
@pytest.mark.parametrize("size", [128, 256])
def test_fast_ops_match_the_float64_reference_ops_at_the_trained_sizes(name, size):
    """The study's models (default features) as trained, the fast ops in float32, against
    the reference ops (flax's and lax's own) computing in float64 from the same parameters.
    Logits and BatchNorm statistics agree to float32 precision. Gradients: float32 itself is
    off float64 by up to 2e-2 of a leaf's largest value at 256 (flax's plain forms as much
    as ours), so the largest and the median of the leaves' errors must be no more than
    twice the plain forms' in float32 (or under 1e-5). On an AVX-512 host this covers the
    Winograd forms at their real shapes."""
    rng = np.random.default_rng(size)
    x = rng.random((2, size, size, 1)).astype(np.float32)
    y = (rng.random((2, size, size, 1)) > 0.5).astype(np.float32)
    fast = MODELS[name]()
    variables = fast.init(jax.random.key(0), x[:1], train=False)
    _, logits, stats, grads = loss_and_grads(fast, variables, x, y)
    _, _, _, plain_grads = loss_and_grads(MODELS[name](ops="reference"), variables, x, y)
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
        ref = MODELS[name](ops="reference", dtype=jnp.float64)
        _, ref_logits, ref_stats, ref_grads = loss_and_grads(ref, to64(variables), to64(x),
                                                             to64(y))
        assert ref_logits.dtype == jnp.float64
    values = relative_errors({"logits": logits, **stats}, {"logits": ref_logits, **ref_stats})
    assert max(values.values()) < 1e-5, values
    ours, plain = (np.array(list(relative_errors(g, ref_grads).values()))
                   for g in (grads, plain_grads))
    for statistic in (np.max, np.median):
        assert statistic(ours) <= max(2 * statistic(plain), 1e-5), (statistic, ours, plain)


SMALL_INCP_UNET = ("incp_unet", (4, 8))


def small_unet_grads(variables, params, x, y, dtype=jnp.float32, unet=SMALL_INCP_UNET):
    """Training-mode gradients of a small U-Net's loss at ``params``, computing in
    ``dtype``; ``unet``: (name, features)."""
    name, features = unet
    model = MODELS[name](features=features, dtype=dtype)

    def loss(p):
        logits, _ = model.apply({**variables, "params": p}, x, train=True,
                                mutable=["batch_stats"])
        return jnp.mean(jax.nn.softplus(logits) - y * logits)
    return jax.jit(jax.grad(loss))(params)


def float32_and_float64_grads(x, y, unet=SMALL_INCP_UNET):
    """Gradients of a small U-Net computed in float32 and, from the same parameters, by
    the same model computing in float64."""
    name, features = unet
    variables = MODELS[name](features=features).init(jax.random.key(0), x,
                                                            train=False)
    got = small_unet_grads(variables, variables["params"], x, y, unet=unet)
    with jax.enable_x64(True):
        to64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
        want = small_unet_grads(variables, to64(variables["params"]), to64(x), to64(y),
                                jnp.float64, unet)
    return got, want


def assert_close_per_leaf(got, want, relative, floor=1e-12):
    """Every leaf of ``got`` within ``relative`` of the largest value of ``want``'s (and
    within ``floor`` where that is zero: the conv biases that feed BatchNorm, whose true
    gradient is zero, exactly so in the fast ops)."""
    flat_want = dict(jax.tree_util.tree_leaves_with_path(want))
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        w = np.asarray(flat_want[path])
        np.testing.assert_allclose(g, w, atol=max(relative * np.abs(w).max(), floor),
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
    monkeypatch.setattr(policy, "host_has_avx512", lambda: True)
    assert policy.winograd_pays_off((2, 32, 32, 64), (3, 3, 64, 128))
    assert policy.winograd_pays_off((2, 32, 32, 64), (3, 3, 64, 64))
    rng = np.random.default_rng(1)
    x = (0.1 * rng.random((2, 64, 64, 1))).astype(np.float32)
    y = (rng.random((2, 64, 64, 1)) > 0.5).astype(np.float32)
    assert_close_per_leaf(*float32_and_float64_grads(x, y, ("conv_unet", (16, 32))), 1e-4)


def test_exactly_zero_gradients_are_those_of_the_conv_biases_that_feed_batchnorm():
    x = jax.random.normal(jax.random.key(7), (2, 16, 16, 1))
    y = (jax.random.uniform(jax.random.key(8), (2, 16, 16, 1)) > 0.5).astype(jnp.float32)
    variables = MODELS["incp_unet"](features=(4, 8)).init(jax.random.key(0), x,
                                                                  train=False)
    grads = small_unet_grads(variables, variables["params"], x, y)
    zeroed = [jax.tree_util.keystr(path)
              for path, g in jax.tree_util.tree_leaves_with_path(grads) if np.all(g == 0)]
    # Every block's conv biases (7 convs in each of 4 blocks: 2 levels, bottleneck, 1 up),
    # nothing else: not BatchNorm's bias, not the output conv's (no BatchNorm after it).
    assert len(zeroed) == 28
    assert all(n.endswith("['Conv_0']['bias']") and "ConvBNAct" in n for n in zeroed)
