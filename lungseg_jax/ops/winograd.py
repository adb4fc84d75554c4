"""The 'same' 3x3 convolution by Winograd's minimal filtering, F(2x2, 3x3).

Each 2x2 block of outputs is computed from the 4x4 input tile around it (Lavin & Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016)::

    Y = A^T [ (G w G^T)  *  (B^T d B) ] A        (* elementwise over the 4x4 positions)

so the convolution becomes 16 independent matrix products, one per tile position,
``(tiles, cin) @ (cin, cout)``: 16 multiplies per 4 outputs instead of 36, 2.25x fewer
FLOPs, paid for with the tile transforms' memory traffic (the transformed input is 4x
the input). The transforms' coefficients are 0, +-1 and 1/2, so its float32 error
against a float64 direct convolution is no larger than XLA's own convolution's
(``tests/conv_test.py``). The gradients are autodiff's (two more batched products)
through transforms whose transposes are written out, each one product (the input
transform's then adds the overlapping tiles in one pass) instead of autodiff's 16 padded
copies (docs/performance.md#winograd-convolutions).

Needs even height and width. ``policy.winograd_pays_off`` decides where it is used.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lungseg_jax.ops.upsampling import interleave_2x

B_T = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]])
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
A_T = np.array([[1, 1, 1, 0], [0, 1, -1, -1]])
# Output phase ij (row i, column j of each 2x2 block) from the 16 products ab.
_PHASES_OF_PRODUCTS = np.einsum("ia,jb->ijab", A_T, A_T).reshape(4, 16)
# Tile pixel ij from the 16 positions ab: the input transform's transpose.
_PIXELS_OF_POSITIONS = np.einsum("ai,bj->ijab", B_T, B_T).reshape(16, 16)


def _combine(coefficients, terms):
    """``sum(c * t)`` over the nonzero coefficients, without multiplying by +-1."""
    out = None
    for c, term in zip(coefficients, terms):
        if c == 0:
            continue
        scaled = term if c == 1 else -term if c == -1 else term * float(c)
        out = scaled if out is None else out + scaled
    return out


def _input(x):
    n, h, w, c = x.shape
    th, tw = h // 2, w // 2
    # Pairs of rows and columns as axes of their own: tile row i is pair ty + i // 2,
    # member i % 2 (plain slices: strided ones were slower).
    pairs = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(n, th + 1, 2, tw + 1, 2, c)
    rows = [pairs[:, i // 2:i // 2 + th, i % 2] for i in range(4)]
    tiles = []
    for row in (_combine(B_T[a], rows) for a in range(4)):
        cols = [row[:, :, j // 2:j // 2 + tw, j % 2] for j in range(4)]
        tiles += [_combine(B_T[b], cols) for b in range(4)]
    return jnp.stack(tiles).reshape(16, n * th * tw, c)


def transform_input(x):
    """``B^T d B`` of every 4x4 tile of ``x`` (zero-padded by 1) at stride 2:
    ``(16, n * h/2 * w/2, c)``, tile position major."""
    return _transform_input(x, x.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _transform_input(x, shape):
    return _input(x)


def _transform_input_fwd(x, shape):
    return _input(x), None


def _transform_input_bwd(shape, _, g):
    # Each tile's 16 pixels from its 16 positions (one product with the transform's
    # 16x16 transpose), then the tiles added where they overlap: padded row 2p + s is
    # row s of tile p and row s + 2 of tile p - 1 (columns likewise).
    n, h, w, c = shape
    pixels = jnp.einsum("pk,ktc->ptc", _PIXELS_OF_POSITIONS.astype(g.dtype), g)
    pixels = pixels.reshape(4, 4, n, h // 2, w // 2, c)

    def shifted(a, down, right):
        return jnp.pad(a, ((0, 0), (down, 1 - down), (right, 1 - right), (0, 0)))

    padded = interleave_2x(lambda s, u: sum(shifted(pixels[s + 2 * dy, u + 2 * dx], dy, dx)
                                            for dy in (0, 1) for dx in (0, 1)))
    return (padded[:, 1:-1, 1:-1],)


_transform_input.defvjp(_transform_input_fwd, _transform_input_bwd)


def transform_kernel(w):
    """``G w G^T`` for every (input, output) channel pair: ``(16, cin, cout)``."""
    rows = [_combine(G[a], [w[k] for k in range(3)]) for a in range(4)]
    return jnp.stack([_combine(G[b], [row[k] for k in range(3)]) for row in rows
                      for b in range(4)])


def _output(m, shape):
    n, h, w, cout = shape
    m = m.reshape(4, 4, n, h // 2, w // 2, cout)
    halves = [[_combine(A_T[i], [m[a, b] for a in range(4)]) for b in range(4)]
              for i in range(2)]
    return interleave_2x(lambda i, j: _combine(A_T[j], halves[i]))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def transform_output(m, shape):
    """``A^T m A`` of each tile's 16 products: the 2x2 output blocks, as ``shape``."""
    return _output(m, shape)


def _transform_output_fwd(m, shape):
    return _output(m, shape), None


def _transform_output_bwd(shape, _, g):
    # dm[ab] = sum over phases ij of A_T[i, a] A_T[j, b] g_ij: one product with a 16x4
    # matrix reads each phase of g once; sums of phases per position, as the forward
    # pass has them, read 36 phases for 16 positions.
    n, h, w, cout = shape
    blocks = g.reshape(n, h // 2, 2, w // 2, 2, cout)
    phases = jnp.stack([blocks[:, :, i, :, j] for i in range(2) for j in range(2)])
    return (jnp.einsum("pk,ptc->ktc", _PHASES_OF_PRODUCTS.astype(g.dtype),
                       phases.reshape(4, -1, cout)),)


transform_output.defvjp(_transform_output_fwd, _transform_output_bwd)


def conv3x3(x, w):
    """'Same' 3x3 convolution, NHWC input with even height and width, HWIO kernel."""
    n, h, wd, _ = x.shape
    if h % 2 or wd % 2:
        raise ValueError(f"winograd.conv3x3 needs even height and width, got {x.shape}")
    tiles = transform_input(x)
    kernel = transform_kernel(w).astype(tiles.dtype)
    products = lax.dot_general(tiles, kernel, (((2,), (1,)), ((0,), (0,))))
    return transform_output(products, (n, h, wd, w.shape[-1]))
