"""Nearest-neighbour 2x upsampling, and convolutions of an upsampled tensor computed from
the small one.

The U-Net's decoder convolves ``upsample_2x(x)`` (with the skip connection). Built, that
tensor has four times the pixels of ``x`` and its convolutions cost four times as much;
but every 2x2 block of it repeats one pixel of ``x``, so:

* a 1x1 convolution commutes with the upsampling: ``upsample_2x(conv1x1(x))``;
* a 3x3 'same' convolution is, for each of the four output phases (row and column
  parity), a 2x2 convolution of ``x`` whose taps are sums of the kernel's rows and
  columns (``conv3x3_of_upsampled``): 16 instead of 36 tap products per 2x2 block of
  output.

``Upsampled(x)`` marks a layer input as ``upsample_2x(x)`` without building it;
``ops.conv.Conv`` takes it as one of its parts.
"""

import flax.struct
import jax
import jax.numpy as jnp
from jax import lax


def upsample_2x(x):
    """Nearest-neighbour 2x upsampling (NHWC)."""
    n, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
    return x.reshape(n, 2 * h, 2 * w, c)


@flax.struct.dataclass
class Upsampled:
    """``upsample_2x(low)``, not built: layers that can work from ``low`` do."""

    low: jax.Array

    @property
    def shape(self):
        n, h, w, c = self.low.shape
        return (n, 2 * h, 2 * w, c)


def interleave_2x(phase):
    """The (n, 2h, 2w, c) tensor whose pixel (2i + a, 2j + b) is ``phase(a, b)[:, i, j]``
    (each phase (n, h, w, c))."""
    rows = [jnp.stack([phase(a, b) for b in (0, 1)], axis=3) for a in (0, 1)]
    n, h, w, _, c = rows[0].shape
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, c)


def _phase_taps(w, axis):
    """The 3 taps along ``axis`` of a kernel applied to an upsampled input, as the 2x2
    (phase, offset) taps applied to the small one: output row ``2i`` reads small rows
    ``i - 1`` (tap 0) and ``i`` (taps 1 + 2), row ``2i + 1`` rows ``i`` (taps 0 + 1) and
    ``i + 1`` (tap 2)."""
    w0, w1, w2 = (lax.index_in_dim(w, i, axis, keepdims=False) for i in range(3))
    return jnp.stack([jnp.stack([w0, w1 + w2], axis), jnp.stack([w0 + w1, w2], axis)], axis)


def _sub_pixel_taps(w):
    """The HWIO 3x3 kernel as the (cin, 16 * cout) weights of the 16 phase taps, ordered
    (row phase, row offset, column phase, column offset)."""
    taps = _phase_taps(_phase_taps(w, 0), 2)
    return jnp.moveaxis(taps, 4, 0).reshape(w.shape[2], 16 * w.shape[3])


@jax.custom_vjp
def conv3x3_of_upsampled(x, w):
    """'Same' 3x3 convolution (HWIO kernel) of ``upsample_2x(x)``, from ``x``: one matrix
    product of ``x`` with the 16 phase taps' weights side by side, then for each output
    phase the sum of its four taps' products, each shifted to its offset. Its gradient
    (``custom_vjp``) stacks the output gradient's 16 shifted phases into one matrix for
    the two products back, where autodiff's would sum 16 padded copies
    (docs/performance.md#upsampled-tensor-never-built)."""
    return _sub_pixel_conv(x, w)


def _sub_pixel_conv(x, w):
    n, h, wd, _ = x.shape
    cout = w.shape[-1]
    z = jnp.dot(x.reshape(n * h * wd, -1), _sub_pixel_taps(w))
    z = jnp.pad(z.reshape(n, h, wd, 2, 2, 2, 2, cout), ((0, 0), (1, 1), (1, 1)) + ((0, 0),) * 5)
    # Output (2i + a, 2j + b) reads small pixel (i + a + r - 1, j + b + s - 1), padded +1.
    return interleave_2x(lambda a, b: sum(z[:, a + r:a + r + h, b + s:b + s + wd, a, r, b, s]
                                          for r in (0, 1) for s in (0, 1)))


def _conv3x3_of_upsampled_fwd(x, w):
    return _sub_pixel_conv(x, w), (x, w)


def _conv3x3_of_upsampled_bwd(residuals, g):
    x, w = residuals
    n, h, wd, cin = x.shape
    cout = w.shape[-1]
    taps, taps_pullback = jax.vjp(_sub_pixel_taps, w)
    # The product's gradient at small pixel (p, q), tap (a, r, b, s): the output
    # gradient of phase (a, b) at (p - a - r + 1, q - b - s + 1), padded +1.
    g = jnp.pad(g.reshape(n, h, 2, wd, 2, cout), ((0, 0), (1, 1), (0, 0), (1, 1), (0, 0), (0, 0)))
    dz = jnp.stack([g[:, 2 - a - r:2 - a - r + h, a, 2 - b - s:2 - b - s + wd, b]
                    for a in (0, 1) for r in (0, 1) for b in (0, 1) for s in (0, 1)], axis=3)
    dz = dz.reshape(n * h * wd, 16 * cout)
    dx = jnp.dot(dz, taps.T).reshape(x.shape)
    (dw,) = taps_pullback(jnp.dot(x.reshape(-1, cin).T, dz))
    return dx, dw


conv3x3_of_upsampled.defvjp(_conv3x3_of_upsampled_fwd, _conv3x3_of_upsampled_bwd)
