"""'Same' stride-1 convolution whose weight gradient runs as matrix products on the CPU.

XLA's CPU backend computes a convolution's weight gradient as another convolution
whose "kernel" is the whole image, and that path is slow: for the conv U-Net at
128x128 it took 2.9x PyTorch's time (BENCHMARKS.md, "What was measured"). The
gradient is a sum of matrix products, one per kernel tap ``k``::

    dW[k] = sum over pixels p of  x[p + k - pad]^T  g[p]

``conv2d_same`` keeps XLA's convolution for the forward pass and the input gradient
and, on the CPU only (``lax.platform_dependent``) and where it pays off
(``gemm_pays_off``), computes ``dW`` with ``jnp.dot``:
one product per tap over shifted copies of ``x`` when ``x`` has no more channels than
``g``, else one product against the taps' shifted copies of ``g`` stacked side by
side (a tiny output dimension is what XLA's CPU dot handles worst). Other backends
keep XLA's own gradient. Same parameters, same outputs; the gradient agrees to
float tolerance (``tests/conv_test.py``). Being a ``custom_vjp``, it supports
reverse-mode differentiation only (``jax.grad``, not ``jax.jvp``).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, w, precision):
    kh, kw = w.shape[:2]
    return lax.conv_general_dilated(x, w, (1, 1), ((kh // 2, kh // 2), (kw // 2, kw // 2)),
                                    dimension_numbers=DIMENSION_NUMBERS, precision=precision)


def _shifted(a, kh, kw):
    """The ``kh * kw`` windows of ``a`` zero-padded by half a kernel, in tap order."""
    n, h, w, _ = a.shape
    padded = jnp.pad(a, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    return [padded[:, i:i + h, j:j + w] for i in range(kh) for j in range(kw)]


def weight_grad_gemm(x, g, kernel_shape, precision=None):
    """``dW`` of the 'same' convolution as matrix products (HWIO, like the kernel)."""
    kh, kw, cin, cout = kernel_shape
    x2, g2 = x.reshape(-1, cin), g.reshape(-1, cout)
    if kh == kw == 1:
        return jnp.dot(x2.T, g2, precision=precision).reshape(kernel_shape)
    if cin <= cout:
        taps = [jnp.dot(xs.reshape(-1, cin).T, g2, precision=precision)
                for xs in _shifted(x, kh, kw)]
        return jnp.stack(taps).reshape(kernel_shape)
    # x[p + k - pad] g[p] summed over p equals x[q] g[q - k + pad]: the windows of g
    # in reverse tap order.
    g_taps = jnp.stack(_shifted(g, kh, kw)[::-1], axis=-2).reshape(-1, kh * kw * cout)
    dw = jnp.dot(x2.T, g_taps, precision=precision)
    return dw.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3)


def gemm_pays_off(kernel_shape) -> bool:
    """Where whole-step timings on the CPU favour ``weight_grad_gemm``: 1x1 kernels (no
    copies) and kernels between different channel counts. Between equal counts (the
    inception block's 3x3 convolutions) the tap copies cost time and memory."""
    kh, kw, cin, cout = kernel_shape
    return kh == kw == 1 or cin != cout


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_same(x, w, precision=None):
    """Stride-1 convolution, NHWC input, HWIO kernel of odd size, zero 'same' padding."""
    return _xla_conv(x, w, precision)


def _conv2d_same_fwd(x, w, precision):
    return _xla_conv(x, w, precision), (x, w)


def _conv2d_same_bwd(precision, residuals, g):
    x, w = residuals
    _, input_grad = jax.vjp(lambda x: _xla_conv(x, w, precision), x)
    (dx,) = input_grad(g)

    def xla_weight_grad(x, g):
        (dw,) = jax.vjp(lambda w: _xla_conv(x, w, precision), w)[1](g)
        return dw

    def gemm_weight_grad(x, g):
        return weight_grad_gemm(x, g, w.shape, precision).astype(w.dtype)

    if gemm_pays_off(w.shape):
        return dx, lax.platform_dependent(x, g, cpu=gemm_weight_grad, default=xla_weight_grad)
    return dx, xla_weight_grad(x, g)


conv2d_same.defvjp(_conv2d_same_fwd, _conv2d_same_bwd)


def flax_conv_general_dilated(lhs, rhs, window_strides, padding, *, lhs_dilation=None,
                              rhs_dilation=None, dimension_numbers=None,
                              feature_group_count=1, precision=None):
    """``nn.Conv(conv_general_dilated=...)`` hook: routes flax's NHWC 'same' stride-1
    convolution to ``conv2d_same``; anything else is refused, not silently slowed."""
    kh, kw = rhs.shape[:2]
    supported = (lhs.ndim == 4 and tuple(window_strides) == (1, 1)
                 and kh % 2 == 1 and kw % 2 == 1
                 and (padding == "SAME" or [tuple(p) for p in padding]
                      == [(kh // 2, kh // 2), (kw // 2, kw // 2)])
                 and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
                 and feature_group_count == 1
                 and dimension_numbers == lax.conv_dimension_numbers(
                     lhs.shape, rhs.shape, DIMENSION_NUMBERS))
    if not supported:
        raise ValueError(
            "conv2d_same handles only 2-D NHWC convolutions with odd kernels, stride 1, "
            f"'SAME' padding, no dilation and no groups; got kernel {rhs.shape}, "
            f"strides {tuple(window_strides)}, padding {padding}, dilation "
            f"{lhs_dilation}/{rhs_dilation}, groups {feature_group_count}")
    return conv2d_same(lhs, rhs, precision)
