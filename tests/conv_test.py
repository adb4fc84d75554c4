"""conv2d_same: XLA's forward, weight gradient as matrix products on the CPU, the CPU's
forms (broadcast products, one product to all taps, Winograd's F(2x2, 3x3)); Conv, the
models' layer, on the parts of a concatenation."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lungseg_jax.model.unet import MODELS
from lungseg_jax.ops import conv, policy, reference, upsampling, winograd

# Weight gradient (on the CPU): 1x1 one product; no more input than output channels
# one product per tap; more input channels the taps of g stacked into one product.
KERNEL_SHAPES = [
    (1, 1, 3, 5),  # 1x1
    (3, 3, 2, 5),  # fewer input channels; forward as broadcast products (few inputs)
    (3, 3, 4, 4),  # equal channels
    (3, 3, 6, 4),  # more input channels; XLA's forward
    (5, 3, 3, 2),  # non-square odd kernel; forward as broadcast products
    (3, 3, 19, 2),  # few outputs: forward and gradients through one product to all taps
    (3, 3, 40, 4),  # the same, the input gradient as a product too (more than 3 outputs)
]


def numpy_weight_grad(x, g, kernel_shape):
    """dW[i, j] = sum over pixels of x[p + (i, j) - pad]^T g[p], straight from the definition."""
    kh, kw, _, _ = kernel_shape
    _, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return np.stack([np.stack([np.einsum("nhwc,nhwo->co", padded[:, i:i + h, j:j + w], g)
                               for j in range(kw)]) for i in range(kh)])


def numpy_conv(x, w):
    """The 'same' convolution straight from its definition: out[p] = sum over taps k of
    x[p + k - pad] w[k]."""
    kh, kw, _, _ = w.shape
    _, h, wd, _ = x.shape
    padded = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return sum(np.einsum("nhwc,co->nhwo", padded[:, i:i + h, j:j + wd], w[i, j])
               for i in range(kh) for j in range(kw))


def random_case(kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, 7, 6, kernel_shape[2])).astype(np.float32)
    w = rng.normal(size=kernel_shape).astype(np.float32)
    g = rng.normal(size=(2, 7, 6, kernel_shape[3])).astype(np.float32)
    return x, w, g


def xla_conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                    dimension_numbers=conv.DIMENSION_NUMBERS)


@pytest.mark.parametrize("kernel_shape", KERNEL_SHAPES)
def test_weight_grad_gemm_matches_numpy_definition(kernel_shape):
    x, _, g = random_case(kernel_shape)
    got = jax.jit(conv.weight_grad_gemm, static_argnums=2)(x, g, kernel_shape)
    np.testing.assert_allclose(got, numpy_weight_grad(x, g, kernel_shape), rtol=1e-5, atol=1e-5)


def numpy_input_grad(g, w):
    """dx[q] = sum over taps k of g[q - k + pad] w[k]^T, straight from the definition."""
    kh, kw, _, _ = w.shape
    _, h, wd, _ = g.shape
    padded = np.pad(g, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return sum(np.einsum("nhwo,co->nhwc", padded[:, kh - 1 - i:kh - 1 - i + h,
                                                 kw - 1 - j:kw - 1 - j + wd], w[i, j])
               for i in range(kh) for j in range(kw))


@pytest.mark.parametrize("kernel_shape", KERNEL_SHAPES)
def test_gradient_convolutions_match_numpy_definition(kernel_shape):
    x, w, g = random_case(kernel_shape, seed=3)
    np.testing.assert_allclose(jax.jit(conv.input_grad_conv)(g, w), numpy_input_grad(g, w),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jax.jit(conv.weight_grad_conv, static_argnums=2)(
        x, g, kernel_shape), numpy_weight_grad(x, g, kernel_shape), rtol=1e-4, atol=1e-4)


def test_gradients_in_a_loop_are_canonical_xla_convolutions(monkeypatch):
    """XLA:CPU rewrites autodiff's transposed convolutions into its fast canonical form
    only at a program's top level; inside a loop (the trainer's steps per call) they would
    run as generic loops, 8x slower. Ours are canonical already."""
    monkeypatch.setattr(policy, "host_has_avx512", lambda: True)
    x, w, g = random_case((3, 3, 6, 4))

    def steps(x, w, g):
        def step(_, xw):
            dx, dw = jax.vjp(conv.conv2d_same, *xw)[1](g)
            return xw[0] - 0.1 * dx, xw[1] - 0.1 * dw
        return jax.lax.fori_loop(0, 3, step, (x, w))

    hlo = jax.jit(steps).lower(x, w, g).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)
    assert len(labels) == 2  # input and weight gradients (the output is unused)
    assert set(labels) == {"b01f_01io->b01f"}


@pytest.fixture(params=[False, True], ids=["gemm_weight_grads", "xla_weight_grads"])
def host_avx512(request, monkeypatch):
    """Both CPU weight-gradient rules, whatever this host's CPU."""
    monkeypatch.setattr(policy, "host_has_avx512", lambda: request.param)
    return request.param


@pytest.fixture
def host_without_avx512(monkeypatch):
    monkeypatch.setattr(policy, "host_has_avx512", lambda: False)


def against_xla_convolution(fn, x, w, g):
    """(name, fn's, XLA convolution's) for the output and both gradients at cotangent g."""
    def pullback(f):
        y, vjp = jax.vjp(f, x, w)
        return (y, *vjp(g))

    got, want = jax.jit(lambda: pullback(fn))(), jax.jit(lambda: pullback(xla_conv))()
    return zip(("output", "input grad", "weight grad"), got, want)


@pytest.mark.parametrize("kernel_shape", KERNEL_SHAPES)
def test_value_and_both_gradients_equal_xla_convolution(kernel_shape, host_avx512):
    x, w, g = random_case(kernel_shape, seed=1)
    for name, a, b in against_xla_convolution(conv.conv2d_same, x, w, g):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("form", [conv.conv_as_products, conv.conv_as_tap_product])
@pytest.mark.parametrize("kernel_shape", KERNEL_SHAPES)
def test_cpu_forward_forms_match_numpy_definition(form, kernel_shape):
    x, w, _ = random_case(kernel_shape, seed=2)
    np.testing.assert_allclose(jax.jit(form)(x, w), numpy_conv(x, w), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_shape, form", [
    ((3, 3, 3, 32), "broadcast products"),  # the U-Net's first layer
    ((3, 3, 32, 1), "one product to all taps"),  # its last layer (the skip connection's part)
    ((3, 3, 8, 8), "XLA's convolution"),
    ((1, 1, 3, 8), "XLA's convolution"),
])
def test_forward_form_on_cpu_by_channel_counts(kernel_shape, form):
    assert policy.products_pay_off(kernel_shape) == (form == "broadcast products")
    assert policy.tap_product_pays_off(kernel_shape) == (form == "one product to all taps")
    x, w, _ = random_case(kernel_shape)

    def forward_hlo(platform):
        return jax.jit(conv.conv2d_same).trace(x, w).lower(
            lowering_platforms=(platform,)).as_text()

    assert ("convolution" in forward_hlo("cpu")) == (form == "XLA's convolution")
    assert "convolution" in forward_hlo("cuda")


def weight_grad_hlo(platform, kernel_shape=(3, 3, 4, 8), gemm_shape=None):
    x, w, g = random_case(kernel_shape)

    def weight_grad(w):
        return jax.vjp(lambda w: conv.conv2d_same(x, w, gemm_shape), w)[1](g)[0]

    return jax.jit(weight_grad).trace(w).lower(lowering_platforms=(platform,)).as_text()


def test_weight_gradient_is_a_matrix_product_on_cpu_and_xla_convolution_elsewhere(
        host_without_avx512):
    assert "convolution" not in weight_grad_hlo("cpu")
    assert "dot_general" in weight_grad_hlo("cpu")
    assert "convolution" in weight_grad_hlo("cuda")


def test_weight_gradient_is_xla_convolution_on_cpus_with_avx512(monkeypatch):
    monkeypatch.setattr(policy, "host_has_avx512", lambda: True)
    for kernel_shape in [(3, 3, 4, 8), (1, 1, 4, 8)]:
        assert not policy.gemm_pays_off(kernel_shape)
        assert "convolution" in weight_grad_hlo("cpu", kernel_shape)


def test_equal_channel_kernels_keep_xla_weight_gradient_on_cpu(host_without_avx512):
    assert not policy.gemm_pays_off((3, 3, 4, 4))
    assert "convolution" in weight_grad_hlo("cpu", (3, 3, 4, 4))
    assert "convolution" not in weight_grad_hlo("cpu", (1, 1, 4, 4))
    # A slice of a larger kernel (``Conv`` on several parts) goes by the whole kernel.
    assert "convolution" not in weight_grad_hlo("cpu", (3, 3, 4, 4), gemm_shape=(3, 3, 12, 4))


def test_conv_keeps_parameters_and_outputs_of_nn_conv():
    # The same parameters from the same key as the library layer the models used before:
    # checkpoints written with it still load, and give the same outputs.
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    plain = nn.Conv(4, (3, 3), padding="SAME", kernel_init=nn.initializers.glorot_normal())
    ours = conv.Conv(4, 3)
    variables = plain.init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, ours.init(jax.random.key(1), x), variables)
    np.testing.assert_allclose(ours.apply(variables, x), plain.apply(variables, x),
                               rtol=1e-6, atol=1e-6)


def test_conv_without_adding_its_bias_has_the_same_parameters():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    with_bias, without = conv.Conv(4, 3), conv.Conv(4, 3, add_bias=False)
    variables = with_bias.init(jax.random.key(1), x)
    jax.tree.map(np.testing.assert_array_equal, without.init(jax.random.key(1), x), variables)
    variables = jax.tree.map(lambda v: v + 1.0, variables)  # a bias that is not zero
    np.testing.assert_allclose(without.apply(variables, x) + variables["params"]["bias"],
                               with_bias.apply(variables, x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_conv_of_parts_equals_conv_of_their_concatenation(kernel_size):
    keys = jax.random.split(jax.random.key(2), 3)
    parts = (jax.random.normal(keys[0], (2, 8, 6, 3)), jax.random.normal(keys[1], (2, 8, 6, 5)))
    cotangent = jax.random.normal(keys[2], (2, 8, 6, 4))
    layer = conv.Conv(4, kernel_size)
    variables = layer.init(jax.random.key(3), *parts)
    assert variables["params"]["kernel"].shape == (kernel_size, kernel_size, 8, 4)

    def pullback(apply):
        y, vjp = jax.vjp(apply, variables, parts)
        return y, *vjp(cotangent)

    got = pullback(lambda v, p: layer.apply(v, *p))
    want = pullback(lambda v, p: layer.apply(v, jnp.concatenate(p, axis=-1)))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


WINOGRAD_CASES = [  # (batch, height, width, cin, cout): square, oblong, one tile, one output
    (2, 6, 8, 3, 5), (1, 2, 2, 4, 4), (2, 10, 4, 7, 1), (1, 8, 8, 16, 9)]


@pytest.mark.parametrize("n, h, w, cin, cout", WINOGRAD_CASES)
def test_winograd_matches_numpy_definition(n, h, w, cin, cout):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, h, w, cin)).astype(np.float32)
    k = rng.normal(size=(3, 3, cin, cout)).astype(np.float32)
    np.testing.assert_allclose(jax.jit(winograd.conv3x3)(x, k), numpy_conv(x, k),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n, h, w, cin, cout", WINOGRAD_CASES)
def test_winograd_value_and_both_gradients_equal_xla_convolution(n, h, w, cin, cout):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n, h, w, cin)).astype(np.float32)
    k = rng.normal(size=(3, 3, cin, cout)).astype(np.float32)
    g = rng.normal(size=(n, h, w, cout)).astype(np.float32)
    for name, a, b in against_xla_convolution(winograd.conv3x3, x, k, g):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max(), err_msg=name)


def test_winograd_output_transform_gradient_equals_autodiff():
    shape = (2, 6, 4, 5)
    m = jax.random.normal(jax.random.key(5), (16, 2 * 3 * 2, 5))
    g = jax.random.normal(jax.random.key(6), shape)
    written = jax.vjp(lambda m: winograd.transform_output(m, shape), m)[1](g)[0]
    autodiff = jax.vjp(lambda m: winograd._output(m, shape), m)[1](g)[0]
    np.testing.assert_allclose(written, autodiff, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 2, 2, 1), (2, 6, 4, 5), (3, 4, 8, 2)])
def test_winograd_input_transform_gradient_equals_autodiff(shape):
    x = jax.random.normal(jax.random.key(7), shape)
    tiles, written_vjp = jax.vjp(winograd.transform_input, x)
    g = jax.random.normal(jax.random.key(8), tiles.shape)
    autodiff = jax.vjp(winograd._input, x)[1](g)[0]
    np.testing.assert_allclose(written_vjp(g)[0], autodiff, rtol=1e-6, atol=1e-6)


def test_winograd_rejects_odd_sizes_by_shape():
    with pytest.raises(ValueError, match=r"even height and width, got \(1, 5, 4, 2\)"):
        winograd.conv3x3(jnp.zeros((1, 5, 4, 2)), jnp.zeros((3, 3, 2, 2)))


@pytest.fixture
def winograd_host(monkeypatch):
    """A host where the CPU uses Winograd's form (one with AVX-512), whatever this one is."""
    monkeypatch.setattr(policy, "host_has_avx512", lambda: True)


def test_no_winograd_on_other_hosts(monkeypatch):
    monkeypatch.setattr(policy, "host_has_avx512", lambda: False)
    assert not policy.winograd_pays_off((4, 32, 32, 64), (3, 3, 64, 128))


@pytest.mark.parametrize("x_shape, kernel_shape, dtype, chosen", [
    ((4, 64, 64, 32), (3, 3, 32, 64), jnp.float32, True),  # conv U-Net at 128: level 1
    ((4, 32, 32, 64), (3, 3, 64, 128), jnp.float32, True),  # level 2
    ((4, 32, 32, 64), (3, 3, 64, 128), jnp.bfloat16, False),  # float32 only
    ((4, 64, 64, 32), (3, 3, 32, 32), jnp.float32, False),  # few channels (a skip part)
    ((4, 16, 16, 128), (3, 3, 128, 256), jnp.float32, False),  # small image
    ((4, 64, 64, 64), (3, 3, 64, 128), jnp.float32, False),  # large output (at 256)
    ((4, 64, 64, 256), (3, 3, 256, 32), jnp.float32, False),  # large input
    ((4, 33, 32, 64), (3, 3, 64, 128), jnp.float32, False),  # odd height
    ((4, 32, 32, 64), (5, 5, 64, 128), jnp.float32, False),  # not 3x3
    (jax.export.symbolic_shape("b, 32, 32, 64"), (3, 3, 64, 128), jnp.float32, False),
])
def test_winograd_form_on_cpu_by_shape(x_shape, kernel_shape, dtype, chosen, winograd_host):
    assert policy.winograd_pays_off(x_shape, kernel_shape, dtype) == chosen


def test_winograd_on_cpu_and_xla_convolution_elsewhere(winograd_host):
    x, w = jnp.zeros((1, 32, 32, 64)), jnp.zeros((3, 3, 64, 64))
    assert policy.winograd_pays_off(x.shape, w.shape)

    def train_hlo(platform):
        def pullback(x, w):
            return jax.vjp(conv.conv2d_same, x, w)[1](x)
        return jax.jit(pullback).trace(x, w).lower(lowering_platforms=(platform,)).as_text()

    assert "convolution" not in train_hlo("cpu") and "dot_general" in train_hlo("cpu")
    assert "convolution" in train_hlo("cuda")


def model_layer_cases(name: str, size: int, batch: int = 4) -> list:
    """Every distinct convolution the model ``name`` computes in a train step at ``size``:
    ``(part shape, kernel slice shape, whole kernel shape, part is upsampled)`` for each
    part of each ``Conv`` layer, as ``Conv`` calls ``conv2d_same``/``conv_of_upsampled``."""
    cases = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, conv.Conv):
            k, channels = module.kernel_size, sum(part.shape[-1] for part in args)
            for part in args:
                upsampled = isinstance(part, upsampling.Upsampled)
                shape = part.low.shape if upsampled else part.shape
                cases.append((tuple(shape), (k, k, shape[-1], module.features),
                              (k, k, channels, module.features), upsampled))
        return next_fun(*args, **kwargs)

    model = MODELS[name]()
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((batch, size, size, 1)),
                                          train=False))
    return sorted(set(cases))


def float64_conv_pullback(x, w, g, upsampled):
    """(output, input gradient, weight gradient) of lax's 'same' convolution (of the
    upsampled ``x`` where ``upsampled``), computed in float64."""
    with jax.enable_x64(True):
        def f(x, w):
            if upsampled:
                x = reference.upsample_2x(x)
            return lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                            dimension_numbers=conv.DIMENSION_NUMBERS)
        x64, w64, g64 = (np.asarray(a, np.float64) for a in (x, w, g))
        y, vjp = jax.vjp(jax.jit(f), x64, w64)
        return tuple(np.asarray(a) for a in (y, *vjp(g64)))


@pytest.mark.parametrize("avx512", [True, False], ids=["avx512_host", "avx2_host"])
@pytest.mark.parametrize("name", ["incp_unet", "conv_unet"])
@pytest.mark.parametrize("size", [128, pytest.param(256, marks=pytest.mark.slow)])
def test_every_model_convolution_matches_float64_lax_at_the_trained_sizes(
        monkeypatch, name, size, avx512):
    """Each convolution a train step computes (batch 4, the models' real layer shapes, each
    part of a concatenation with its slice of the kernel), in whatever form the CPU policy
    picks for it on either kind of host, against lax's convolution in float64: the output,
    the input gradient and the weight gradient, each within 2e-5 of its largest value."""
    monkeypatch.setattr(policy, "host_has_avx512", lambda: avx512)
    rng = np.random.default_rng(size)
    for x_shape, kernel_shape, whole_kernel, upsampled in model_layer_cases(name, size):
        x = rng.normal(size=x_shape).astype(np.float32)
        w = (rng.normal(size=kernel_shape) / np.sqrt(np.prod(kernel_shape[:3]))).astype(
            np.float32)
        n, h, wd, _ = x_shape
        out_hw = (2 * h, 2 * wd) if upsampled else (h, wd)
        g = rng.normal(size=(n, *out_hw, kernel_shape[-1])).astype(np.float32)
        form = conv.conv_of_upsampled if upsampled else conv.conv2d_same

        def pullback(x, w):
            y, vjp = jax.vjp(lambda x, w: form(x, w, whole_kernel), x, w)
            return (y, *vjp(g))

        got = jax.jit(pullback)(x, w)
        want = float64_conv_pullback(x, w, g, upsampled)
        for what, a, b in zip(("output", "input gradient", "weight gradient"), got, want):
            np.testing.assert_allclose(
                a, b, rtol=0, atol=2e-5 * np.abs(b).max(),
                err_msg=f"{what} of {x_shape} * {kernel_shape} (upsampled: {upsampled})")
