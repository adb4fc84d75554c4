"""'Same' stride-1 convolution, in forms of its own where XLA:CPU's are slow.

``conv2d_same`` is the fast form of ``lax.conv_general_dilated`` with 'same' padding;
``ops.policy`` decides, per shape and host, where each form is used (on the CPU only,
through ``lax.platform_dependent``; other backends keep XLA's convolution):

* forward: ``conv_as_products`` for few input channels (the first layer),
  ``conv_as_tap_product`` for few output channels (the last layer, gradient included),
  ``winograd.conv3x3`` for mid-sized 3x3 layers, else XLA's convolution;
* weight gradient: matrix products (``weight_grad_gemm``) where they pay off, else
  XLA's convolution in canonical form (``weight_grad_conv``);
* input gradient: XLA's convolution in canonical form (``input_grad_conv``).

The gradients are written as convolutions in XLA:CPU's canonical form (NHWC, HWIO), not
left to autodiff, whose transposed forms XLA:CPU canonicalises only at a program's top
level, not inside the trainer's loop of steps. Being a ``custom_vjp``, it supports
reverse-mode differentiation only. ``Conv`` is the models' layer: ``nn.Conv``'s
parameters applied to the channel concatenation of its inputs without building it
(nor an ``upsampling.Upsampled`` input). Why and measured gains: docs/performance.md;
``ops.reference.Conv`` is the plain form it is tested against.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from lungseg_jax.ops import policy, winograd
from lungseg_jax.ops.upsampling import Upsampled, conv3x3_of_upsampled, upsample_2x

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, w):
    kh, kw = w.shape[:2]
    return lax.conv_general_dilated(x, w, (1, 1), ((kh // 2, kh // 2), (kw // 2, kw // 2)),
                                    dimension_numbers=DIMENSION_NUMBERS)


def conv_as_products(x, w):
    """The 'same' convolution as ``kh * kw * cin`` broadcast multiply-adds of shifted
    copies of ``x``, one fused loop: XLA:CPU's convolution is slowest for the first
    layer's few input channels (docs/performance.md#first-layer-as-broadcast-products)."""
    kh, kw, cin, _ = w.shape
    return sum(xs[..., c:c + 1] * w[t // kw, t % kw, c]
               for t, xs in enumerate(_shifted(x, kh, kw)) for c in range(cin))


@jax.custom_vjp
def conv_as_tap_product(x, w):
    """The 'same' convolution as one matrix product of ``x`` with every tap's weights side
    by side, ``(cin, kh * kw * cout)``, then the sum of each tap's outputs shifted to its
    offset: ``out[p] = sum over taps k of (x w_k)[p + k - pad]``. For few output channels,
    where XLA:CPU's convolution is slowest (docs/performance.md#head-as-one-tap-product)."""
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
    # stacked tap major for the weight gradient, so its product contracts the pixels as
    # the inner dimension. The input gradient is g convolved with the kernel flipped, its
    # channels swapped: broadcast products for the head's one channel, else a product.
    # Why: docs/performance.md#head-as-one-tap-product.
    x, w = residuals
    kh, kw, cin, cout = w.shape
    windows = _shifted(g, kh, kw)[::-1]
    tap_major = jnp.stack(windows).transpose(0, 4, 1, 2, 3).reshape(kh * kw * cout, -1)
    dw = jnp.dot(tap_major, x.reshape(-1, cin)).reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2)
    flipped = input_grad_kernel(w)
    if policy.products_pay_off(flipped.shape):
        return conv_as_products(g, flipped), dw
    tap_minor = jnp.stack(windows, axis=-2).reshape(-1, kh * kw * cout)
    taps = w.transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)
    return jnp.dot(tap_minor, taps).reshape(x.shape), dw


conv_as_tap_product.defvjp(_tap_product_fwd, _tap_product_bwd)


def _forward(x, w):
    """``_conv2d_same``'s forward: ``conv_as_products`` on the CPU where it pays off, else
    XLA's convolution."""
    if policy.products_pay_off(w.shape):
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


def conv2d_same(x, w, gemm_shape=None):
    """Stride-1 convolution, NHWC input, HWIO kernel of odd size, zero 'same' padding.

    On the CPU, ``conv_as_tap_product`` for few output channels and
    ``winograd.conv3x3`` where ``winograd_pays_off``; else the forward pass of
    ``_conv2d_same`` (``conv_as_products`` for few input channels on the CPU, else
    XLA's), with its weight gradient as matrix products where they pay off.
    ``gemm_shape``: the kernel shape that decides the weight gradient's form (default
    ``w``'s; a slice of a larger kernel passes the whole one's, see ``Conv``)."""
    cpu_form = (conv_as_tap_product if policy.tap_product_pays_off(w.shape) else
                winograd.conv3x3 if policy.winograd_pays_off(x.shape, w.shape, x.dtype) else None)
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

    if policy.gemm_pays_off(w.shape if gemm_shape is None else gemm_shape):
        return dx, lax.platform_dependent(x, g, cpu=gemm_weight_grad, default=xla_weight_grad)
    return dx, xla_weight_grad(x, g)


_conv2d_same.defvjp(_conv2d_same_fwd, _conv2d_same_bwd)


class Conv(nn.Module):
    """``nn.Conv(features, (k, k), padding="SAME")`` with a glorot-normal kernel (the same
    parameters) applied to the channel concatenation of ``parts``, computed as the sum of
    each part's ``conv2d_same`` with its slice of the kernel (``conv_of_upsampled`` for an
    ``Upsampled`` part).

    Each part's input gradient is then a buffer of its own, instead of a slice of a sum
    that XLA:CPU keeps live deep into the backward pass
    (docs/performance.md#decoder-concatenation-never-built).

    ``add_bias=False`` creates the bias but leaves adding it to the caller, which reads it
    from ``variables`` (``model.unet.ConvBNAct``: BatchNorm takes it into its mean)."""

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
