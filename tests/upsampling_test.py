"""Convolutions of an upsampled tensor computed from the small one, against convolving the
built upsampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lungseg_jax.ops import conv, reference, upsampling


def conv_of_built(x, w):
    return lax.conv_general_dilated(reference.upsample_2x(x), w, (1, 1), "SAME",
                                    dimension_numbers=conv.DIMENSION_NUMBERS)


def value_and_grads(fn, x, w, g):
    y, pullback = jax.vjp(fn, x, w)
    return (y, *pullback(g))


@pytest.mark.parametrize("x_shape, kernel_shape", [
    ((2, 5, 6, 3), (3, 3, 3, 4)),  # odd and even sizes
    ((1, 4, 4, 8), (3, 3, 8, 1)),  # one output channel (the U-Net's head)
    ((2, 3, 3, 2), (1, 1, 2, 5)),  # 1x1: before the upsampling
    ((1, 4, 3, 2), (5, 5, 2, 3)),  # other sizes: the upsampled tensor built
])
def test_conv_of_upsampled_equals_convolving_the_built_upsampling(x_shape, kernel_shape):
    rng = np.random.default_rng(0)
    x = rng.normal(size=x_shape).astype(np.float32)
    w = rng.normal(size=kernel_shape).astype(np.float32)
    n, h, wd, _ = x_shape
    g = rng.normal(size=(n, 2 * h, 2 * wd, kernel_shape[3])).astype(np.float32)
    got = jax.jit(lambda: value_and_grads(conv.conv_of_upsampled, x, w, g))()
    want = jax.jit(lambda: value_and_grads(conv_of_built, x, w, g))()
    for name, a, b in zip(("output", "input grad", "weight grad"), got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5, err_msg=name)


def test_sub_pixel_form_matches_a_numpy_convolution():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 3, 4, 2)).astype(np.float32)
    w = rng.normal(size=(3, 3, 2, 3)).astype(np.float32)
    up = np.pad(x.repeat(2, axis=1).repeat(2, axis=2), ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = sum(np.einsum("nhwc,co->nhwo", up[:, i:i + 6, j:j + 8], w[i, j])
               for i in range(3) for j in range(3))
    np.testing.assert_allclose(upsampling.conv3x3_of_upsampled(x, w), want, rtol=1e-5,
                               atol=1e-5)


def test_upsampled_part_of_conv_equals_the_built_one():
    rng = np.random.default_rng(2)
    low = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
    skip = jnp.asarray(rng.normal(size=(2, 8, 8, 2)), jnp.float32)
    layer = conv.Conv(4, 3)
    params = layer.init(jax.random.key(0), upsampling.upsample_2x(low), skip)

    def loss(params, lazy):
        up = upsampling.Upsampled(low) if lazy else upsampling.upsample_2x(low)
        return jnp.sum(jnp.tanh(layer.apply(params, up, skip)))

    for a, b in zip(jax.value_and_grad(loss)(params, True),
                    jax.value_and_grad(loss)(params, False)):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                     a, b)


def test_upsampled_reports_the_built_shape():
    low = jnp.arange(2 * 3 * 5 * 4, dtype=jnp.float32).reshape(2, 3, 5, 4)
    assert upsampling.Upsampled(low).shape == (2, 6, 10, 4)


def test_cpu_convolves_the_small_tensor_other_backends_the_built_one():
    x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 3))

    def lowered(platform):
        return jax.jit(conv.conv_of_upsampled).trace(x, w).lower(
            lowering_platforms=(platform,)).as_text()

    assert "convolution" not in lowered("cpu") and "dot_general" in lowered("cpu")
    assert "convolution" in lowered("cuda")
