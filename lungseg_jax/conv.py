"""'Same' stride-1 convolution, in forms of its own where XLA:CPU's are slow.

XLA's CPU backend computes a convolution's weight gradient as another convolution
whose "kernel" is the whole image, and that path is slow: for the conv U-Net at
128x128 it took 2.9x PyTorch's time (BENCHMARKS.md, "What was measured"). The
gradient is a sum of matrix products, one per kernel tap ``k``::

    dW[k] = sum over pixels p of  x[p + k - pad]^T  g[p]

``conv2d_same`` keeps XLA's convolution for the input gradient and, on the CPU only
(``lax.platform_dependent``) and where it pays off (``gemm_pays_off``: not on hosts
with AVX-512, whose XLA convolution gradient is fast), computes ``dW`` with ``jnp.dot``:
one product per tap over shifted copies of ``x`` when ``x`` has no more channels than
``g``, else one product against the taps' shifted copies of ``g`` stacked side by
side (a tiny output dimension is what XLA's CPU dot handles worst). Other backends
keep XLA's own gradient. The forward pass is XLA's too, except on the CPU at the
U-Net's two ends, where XLA's convolution is slowest: the first layer's few input
channels (``conv_as_products``) and the last layer's single output channel
(``conv_as_tap_product``, gradient included), and in the middle, where 3x3
convolutions of medium-sized images ran at half the CPU's matrix-product speed
(``winograd.conv3x3``, all three passes). Same parameters, same outputs; the
gradient agrees to float tolerance (``tests/conv_test.py``). Being a ``custom_vjp``, it
supports reverse-mode differentiation only (``jax.grad``, not ``jax.jvp``).

XLA's own gradients are written as convolutions in XLA:CPU's canonical form (NHWC input,
HWIO kernel: ``input_grad_conv``, ``weight_grad_conv``), not left to autodiff, whose
transposed forms XLA:CPU rewrites into that form only at the top level of a program
(its ``ConvCanonicalization`` pass): inside a loop (the trainer's ``steps_per_call`` steps
per call) they became generic loops, and the conv U-Net's step took 844 ms instead of
104 (BENCHMARKS.md, ninth session).

``Conv`` is the models' layer: ``nn.Conv``'s parameters, applied to the channel
concatenation of its inputs without building it (``models``: the U-Net decoder's
upsampled path and skip connection), the upsampled one without building it either
(``upsampling.Upsampled``).
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lungseg_jax import runtime, winograd
from lungseg_jax.upsampling import Upsampled, conv3x3_of_upsampled, upsample_2x

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, w):
    kh, kw = w.shape[:2]
    return lax.conv_general_dilated(x, w, (1, 1), ((kh // 2, kh // 2), (kw // 2, kw // 2)),
                                    dimension_numbers=DIMENSION_NUMBERS)


FEW_INPUT_CHANNELS = 3  # the first layer's: CT's 1, or the peer's and the study's RGB copies


def products_pay_off(kernel_shape) -> bool:
    """Where the CPU forward pass is ``conv_as_products``: kernels larger than 1x1 that
    read at most ``FEW_INPUT_CHANNELS`` channels."""
    kh, kw, cin, _ = kernel_shape
    return cin <= FEW_INPUT_CHANNELS and kh * kw > 1


def tap_product_pays_off(kernel_shape) -> bool:
    """Where the CPU convolution is ``conv_as_tap_product``: no more outputs of all the
    taps together than input channels (the U-Net's last layer: 9 from 32)."""
    kh, kw, cin, cout = kernel_shape
    return kh * kw * cout <= cin


def conv_as_products(x, w):
    """The 'same' convolution as ``kh * kw * cin`` broadcast multiply-adds of shifted
    copies of ``x``, one fused loop. For the first layer's 3 input channels XLA:CPU's
    convolution ran at about 12 GFLOP/s (3->32 channels at 256x256, batch 4: 37 ms), a
    product over the 27 (tap, channel) pairs no faster; this loop took 13 ms."""
    kh, kw, cin, _ = w.shape
    return sum(xs[..., c:c + 1] * w[t // kw, t % kw, c]
               for t, xs in enumerate(_shifted(x, kh, kw)) for c in range(cin))


@jax.custom_vjp
def conv_as_tap_product(x, w):
    """The 'same' convolution as one matrix product of ``x`` with every tap's weights side
    by side, ``(cin, kh * kw * cout)``, then the sum of each tap's outputs shifted to its
    offset: ``out[p] = sum over taps k of (x w_k)[p + k - pad]``. For few output channels,
    where XLA:CPU's convolution is slowest (32->1 channels at 256x256, batch 4: 29 ms, this
    3.4 ms)."""
    return _tap_product(x, w)


def _tap_product(x, w):
    kh, kw, cin, cout = w.shape
    n, h, wd, _ = x.shape
    taps = w.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
    y = jnp.dot(x.reshape(-1, cin), taps).reshape(n, h, wd, kh * kw, cout)
    y = jnp.pad(y, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0), (0, 0)))
    return sum(y[:, i:i + h, j:j + wd, i * kw + j] for i in range(kh) for j in range(kw))


def _tap_product_fwd(x, w):
    return _tap_product(x, w), (x, w)


def _tap_product_bwd(residuals, g):
    # Tap k's products at p + k - pad get g[p]: the windows of g in reverse tap order,
    # stacked tap major for the weight gradient, whose product then contracts the pixels
    # as the inner dimension of its first operand (autodiff's contracted them as the
    # outer one of both: 2.8x slower, 32->1 channels at 128x128; the conv U-Net's step
    # 1.04x faster at 128, the same elsewhere). The input gradient is g convolved with the
    # kernel flipped, its channels swapped: for few output channels (the head's one) as
    # broadcast products, one pass that writes dx (autodiff's product with the windows
    # stacked tap minor wrote them first, 5.2 ms of the inception step at 256; without
    # that, the inception step ran 1.03x faster at 128 and 256, the conv U-Net's 1.03x at
    # 256 and 1.00x at 128; BENCHMARKS.md, eleventh session); else as that product.
    x, w = residuals
    kh, kw, cin, cout = w.shape
    windows = _shifted(g, kh, kw)[::-1]
    tap_major = jnp.stack(windows).transpose(0, 4, 1, 2, 3).reshape(kh * kw * cout, -1)
    dw = jnp.dot(tap_major, x.reshape(-1, cin)).reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2)
    flipped = input_grad_kernel(w)
    if products_pay_off(flipped.shape):
        return conv_as_products(g, flipped), dw
    tap_minor = jnp.stack(windows, axis=-2).reshape(-1, kh * kw * cout)
    taps = w.transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)
    return jnp.dot(tap_minor, taps).reshape(x.shape), dw


conv_as_tap_product.defvjp(_tap_product_fwd, _tap_product_bwd)


def _forward(x, w):
    """``_conv2d_same``'s forward: ``conv_as_products`` on the CPU where it pays off, else
    XLA's convolution."""
    if products_pay_off(w.shape):
        return lax.platform_dependent(x, w, cpu=conv_as_products, default=_xla_conv)
    return _xla_conv(x, w)


def _shifted(a, kh, kw):
    """The ``kh * kw`` windows of ``a`` zero-padded by half a kernel, in tap order."""
    n, h, w, _ = a.shape
    padded = jnp.pad(a, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return [padded[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)]


def weight_grad_gemm(x, g, kernel_shape, gemm_shape=None):
    """``dW`` of the 'same' convolution as matrix products (HWIO, like the kernel).

    Shifted copies of ``x`` when the kernel judged (``gemm_shape``, default
    ``kernel_shape``) has no more input than output channels, else of ``g``."""
    kh, kw, cin, cout = kernel_shape
    x2, g2 = x.reshape(-1, cin), g.reshape(-1, cout)
    if kh == kw == 1:
        return jnp.dot(x2.T, g2).reshape(kernel_shape)
    judged_in, judged_out = (kernel_shape if gemm_shape is None else gemm_shape)[2:]
    if judged_in <= judged_out:
        taps = [jnp.dot(xs.reshape(-1, cin).T, g2) for xs in _shifted(x, kh, kw)]
        return jnp.stack(taps).reshape(kernel_shape)
    # x[p + k - pad] g[p] summed over p equals x[q] g[q - k + pad]: the windows of g
    # in reverse tap order.
    g_taps = jnp.stack(_shifted(g, kh, kw)[::-1], axis=-2).reshape(-1, kh * kw * cout)
    dw = jnp.dot(x2.T, g_taps)
    return dw.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)


# XLA:CPU's own weight gradient: slow on a 2-core Zen 3 host (AVX2; the reason for
# ``weight_grad_gemm``), the faster of the two on a 2-core Zen 4 host (AVX-512), where
# the whole train step ran 1.10x (conv U-Net, 256x256) and 1.00-1.04x (other cases)
# faster with it than with the matrix products (BENCHMARKS.md).
HOST_HAS_AVX512 = runtime.host_cpu().get("avx512", False)
XLA_WEIGHT_GRAD_IS_FAST = HOST_HAS_AVX512


def gemm_pays_off(kernel_shape) -> bool:
    """Where whole-step timings on the CPU favour ``weight_grad_gemm``: on hosts without
    AVX-512, 1x1 kernels (no copies) and kernels between different channel counts.
    Between equal counts (the inception block's 3x3 convolutions) the tap copies cost
    time and memory."""
    kh, kw, cin, cout = kernel_shape
    return not XLA_WEIGHT_GRAD_IS_FAST and (kh == kw == 1 or cin != cout)


# Where XLA:CPU's 3x3 convolution ran at about 100 GFLOP/s and Winograd's transformed
# tensors (4x the input, 4x the output) did not cost more than it saved: images of at
# least 32x32, channel products of at least 2048, inputs of at most 2**21 and outputs of
# at most 2**20 elements (the traced, global batch's). Measured on a 2-core Zen 4 host
# (BENCHMARKS.md, seventh session). Larger layers gained less (128x128, batch 4, 32->64
# channels: 56 against 73 ms forward and backward; 64->32: 80 against 74, an input of
# 2**22); outputs up to 2**22 sped the conv U-Net's step at 256 by 1.013x only, and added
# 240 MB to its peak memory at 512.
# The rule was measured on an AVX-512 host only; AVX2 hosts, whose XLA convolutions and
# products compare differently (see XLA_WEIGHT_GRAD_IS_FAST), keep their forms until
# measured there.
WINOGRAD_ON_THIS_CPU = HOST_HAS_AVX512
WINOGRAD_MIN_PIXELS = 32 * 32
WINOGRAD_MIN_CHANNEL_PRODUCT = 2048
WINOGRAD_MAX_INPUT = 2**21
WINOGRAD_MAX_OUTPUT = 2**20


def winograd_pays_off(x_shape, kernel_shape, dtype=jnp.float32) -> bool:
    """Where the CPU convolution is ``winograd.conv3x3``: on AVX-512 hosts, in float32
    only (in bfloat16 its transforms would round where the direct convolution
    accumulates in float32), for known sizes only (not an exported model's symbolic
    batch)."""
    kh, kw, cin, cout = kernel_shape
    if not WINOGRAD_ON_THIS_CPU or not all(isinstance(d, int) for d in x_shape[:3]):
        return False
    n, h, w = x_shape[:3]
    return ((kh, kw) == (3, 3) and h % 2 == 0 and w % 2 == 0 and h * w >= WINOGRAD_MIN_PIXELS
            and cin * cout >= WINOGRAD_MIN_CHANNEL_PRODUCT
            and n * h * w * cin <= WINOGRAD_MAX_INPUT and n * h * w * cout <= WINOGRAD_MAX_OUTPUT
            and dtype == jnp.float32)


def conv2d_same(x, w, gemm_shape=None):
    """Stride-1 convolution, NHWC input, HWIO kernel of odd size, zero 'same' padding.

    On the CPU, ``conv_as_tap_product`` for few output channels and
    ``winograd.conv3x3`` where ``winograd_pays_off``; else the forward pass of
    ``_conv2d_same`` (``conv_as_products`` for few input channels on the CPU, else
    XLA's), with its weight gradient as matrix products where they pay off.
    ``gemm_shape``: the kernel shape that decides the weight gradient's form (default
    ``w``'s; a slice of a larger kernel passes the whole one's, see ``Conv``)."""
    cpu_form = (conv_as_tap_product if tap_product_pays_off(w.shape) else
                winograd.conv3x3 if winograd_pays_off(x.shape, w.shape, x.dtype) else None)
    if cpu_form is None:
        return _conv2d_same(x, w, gemm_shape)
    return lax.platform_dependent(x, w, cpu=cpu_form,
                                  default=lambda x, w: _conv2d_same(x, w, gemm_shape))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d_same(x, w, gemm_shape):
    """``conv2d_same`` with the input gradient XLA's and the weight gradient as matrix
    products on the CPU where ``gemm_pays_off``."""
    return _forward(x, w)


def _conv2d_same_fwd(x, w, gemm_shape):
    return _forward(x, w), (x, w)


def input_grad_conv(g, w):
    """``dx`` of the 'same' convolution, as XLA:CPU's own convolution in canonical form
    (NHWC, HWIO): ``g`` convolved with the kernel flipped and its channels swapped."""
    return _xla_conv(g, input_grad_kernel(w))


def input_grad_kernel(w):
    """The kernel whose 'same' convolution of the output gradient is the input gradient:
    ``w`` flipped, its channels swapped."""
    return w[::-1, ::-1].swapaxes(2, 3)


def weight_grad_conv(x, g, kernel_shape):
    """``dW`` of the 'same' convolution, as one XLA:CPU convolution in canonical form:
    ``x``'s channels as its batch, its batch as input channels, ``g`` as the kernel."""
    kh, kw = kernel_shape[:2]
    dw = lax.conv_general_dilated(x.transpose(3, 1, 2, 0), g.transpose(1, 2, 0, 3), (1, 1),
                                  ((kh // 2, kh // 2), (kw // 2, kw // 2)),
                                  dimension_numbers=DIMENSION_NUMBERS)
    return dw.transpose(1, 2, 0, 3)


def _conv2d_same_bwd(gemm_shape, residuals, g):
    x, w = residuals
    dx = input_grad_conv(g, w)

    def xla_weight_grad(x, g):
        return weight_grad_conv(x, g, w.shape).astype(w.dtype)

    def gemm_weight_grad(x, g):
        return weight_grad_gemm(x, g, w.shape, gemm_shape).astype(w.dtype)

    if gemm_pays_off(w.shape if gemm_shape is None else gemm_shape):
        return dx, lax.platform_dependent(x, g, cpu=gemm_weight_grad, default=xla_weight_grad)
    return dx, xla_weight_grad(x, g)


_conv2d_same.defvjp(_conv2d_same_fwd, _conv2d_same_bwd)


class Conv(nn.Module):
    """``nn.Conv(features, (k, k), padding="SAME")`` with a glorot-normal kernel (the same
    parameters) applied to the channel concatenation of ``parts``, computed as the sum of
    each part's ``conv2d_same`` with its slice of the kernel (``conv_of_upsampled`` for an
    ``Upsampled`` part).

    Each part's input gradient is then a buffer of its own. Of a concatenation's
    gradient, XLA:CPU fuses the slicing into the slices' consumers, so every term of the
    sum that forms it (one per layer reading the concatenation, each with all its
    channels) stayed live until the skip connection's last consumer, deep in the
    backward pass: the inception U-Net's peak scratch memory at 256x256 fell from 861 to
    543 MB with the parts kept apart (BENCHMARKS.md).

    ``add_bias=False`` creates the bias but leaves adding it to the caller, which reads it
    from ``variables`` (``models.ConvBNAct``: BatchNorm takes it into its mean)."""

    features: int
    kernel_size: int
    dtype: Any = jnp.float32
    add_bias: bool = True

    @nn.compact
    def __call__(self, *parts):
        k = self.kernel_size
        channels = sum(part.shape[-1] for part in parts)
        kernel = self.param("kernel", nn.initializers.glorot_normal(),
                            (k, k, channels, self.features), jnp.float32).astype(self.dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,),
                          jnp.float32).astype(self.dtype)
        out, start = bias if self.add_bias else 0, 0
        for part in parts:
            stop = start + part.shape[-1]
            if isinstance(part, Upsampled):
                convolve, part = conv_of_upsampled, part.low
            else:
                convolve = conv2d_same
            out = out + convolve(part.astype(self.dtype), kernel[:, :, start:stop], kernel.shape)
            start = stop
        return out


def conv_of_upsampled(x, w, gemm_shape=None):
    """``conv2d_same(upsample_2x(x), w)`` from ``x``: a 1x1 convolution before the
    upsampling; a 3x3 one in sub-pixel form on the CPU (``upsampling``; other backends
    convolve the upsampled tensor as before)."""
    if w.shape[:2] == (1, 1):
        return upsample_2x(conv2d_same(x, w, gemm_shape))
    built = functools.partial(_conv_of_built, gemm_shape=gemm_shape)
    if w.shape[:2] == (3, 3):
        return lax.platform_dependent(
            x, w, cpu=conv3x3_of_upsampled,
            default=built)
    return built(x, w)


def _conv_of_built(x, w, gemm_shape):
    return conv2d_same(upsample_2x(x), w, gemm_shape)
