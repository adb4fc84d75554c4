"""The study's augmentation, jittable: flips, +-shift, zoom, on image and mask together.

Every transform here is axis-aligned (a flip, shift and zoom per axis), so the
bilinear resampling of an (H, W) plane is separable: ``out = Ry @ img @ Rx.T``
with two small interpolation matrices. That is two matmuls per image instead
of a gather, exact for flips and whole-pixel shifts, and the same matrices
move the mask (re-binarised at 0.5 unless it is soft), so image and mask stay aligned.
Out-of-range source pixels take the nearest edge value (Keras' 'nearest' fill).
"""

import jax
import jax.numpy as jnp


def interpolation_matrix(size: int, flip, shift, zoom):
    """(size, size) bilinear resampling matrix for one axis.

    Output pixel i reads the source coordinate
    ``c + s * (i - c) / zoom - shift * size`` with ``c`` the centre and ``s = -1``
    when flipped, clipped to the image.
    """
    centre = (size - 1) / 2.0
    sign = jnp.where(flip, -1.0, 1.0)
    out = jnp.arange(size, dtype=jnp.float32)
    source = centre + sign * (out - centre) / zoom - shift * size
    source = jnp.clip(source, 0.0, size - 1.0)
    return jnp.maximum(0.0, 1.0 - jnp.abs(source[:, None] - out[None, :]))


def random_params(rng, batch: int, flip: bool, shift: float, zoom: float):
    """Per-image (flip_y, flip_x, shift_y, shift_x, zoom_y, zoom_x), each of shape (batch,)."""
    k_flip, k_shift, k_zoom = jax.random.split(rng, 3)
    flips = jax.random.bernoulli(k_flip, 0.5, (2, batch)) & flip
    shifts = jax.random.uniform(k_shift, (2, batch), minval=-shift, maxval=shift)
    zooms = jax.random.uniform(k_zoom, (2, batch), minval=1.0 - zoom, maxval=1.0 + zoom)
    return flips[0], flips[1], shifts[0], shifts[1], zooms[0], zooms[1]


def apply_params(images, masks, params, soft_masks: bool = False):
    """Resamples images (B, H, W, C) and masks (B, H, W, 1) with per-image params; masks
    are re-binarised at 0.5 unless ``soft_masks`` (lung fractions, kept fractional)."""
    flip_y, flip_x, shift_y, shift_x, zoom_y, zoom_x = params
    _, h, w, _ = images.shape
    ry = jax.vmap(lambda f, s, z: interpolation_matrix(h, f, s, z))(flip_y, shift_y, zoom_y)
    rx = jax.vmap(lambda f, s, z: interpolation_matrix(w, f, s, z))(flip_x, shift_x, zoom_x)

    def resample(x):
        return jnp.einsum("bij,bjkc,blk->bilc", ry, x, rx, precision=jax.lax.Precision.HIGHEST)

    moved = resample(masks)
    return resample(images), moved if soft_masks else (moved >= 0.5).astype(masks.dtype)


def augment(rng, images, masks, aug_config, soft_masks: bool = False):
    """Random flips, shifts and zooms as configured by ``config.augment``."""
    if not aug_config.enabled:
        return images, masks
    params = random_params(rng, images.shape[0], aug_config.flip, aug_config.shift,
                           aug_config.zoom)
    return apply_params(images, masks, params, soft_masks)
