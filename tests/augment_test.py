"""Augmentation: exact against numpy for flips and whole-pixel shifts; image/mask stay aligned."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lungseg_jax.data import augment


def batch(seed=0, n=2, size=12):
    rng = np.random.default_rng(seed)
    images = rng.random((n, size, size, 2)).astype(np.float32)
    masks = (rng.random((n, size, size, 1)) > 0.5).astype(np.float32)
    return images, masks


def params(n, flip_y=False, flip_x=False, shift_y=0.0, shift_x=0.0, zoom_y=1.0, zoom_x=1.0):
    full = lambda v: jnp.full((n,), v)  # noqa: E731
    return tuple(full(v) for v in (flip_y, flip_x, shift_y, shift_x, zoom_y, zoom_x))


def test_identity():
    images, masks = batch()
    out_images, out_masks = augment.apply_params(images, masks, params(2))
    np.testing.assert_allclose(out_images, images, atol=1e-6)
    np.testing.assert_array_equal(out_masks, masks)


@pytest.mark.parametrize("flip_y, flip_x", [(True, False), (False, True), (True, True)])
def test_flips_match_numpy(flip_y, flip_x):
    images, masks = batch()
    out_images, out_masks = augment.apply_params(images, masks, params(2, flip_y, flip_x))
    axes = tuple(a for a, f in ((1, flip_y), (2, flip_x)) if f)
    np.testing.assert_allclose(out_images, np.flip(images, axes), atol=1e-6)
    np.testing.assert_array_equal(out_masks, np.flip(masks, axes))


def test_whole_pixel_shift_matches_numpy_with_edge_fill():
    images, masks = batch(size=10)
    out_images, _ = augment.apply_params(images, masks, params(2, shift_y=0.2, shift_x=-0.1))
    # Content moves 2 rows down and 1 column left; vacated pixels repeat the edge.
    padded = np.pad(images, ((0, 0), (2, 0), (0, 1), (0, 0)), mode="edge")
    expected = padded[:, :10, 1:11]
    np.testing.assert_allclose(out_images, expected, atol=1e-6)


def test_zoom_scales_about_the_centre():
    size = 33
    images = np.zeros((1, size, size, 1), np.float32)
    images[0, 16, 20] = 1.0  # 4 px right of centre
    out, _ = augment.apply_params(images, images, params(1, zoom_y=0.5, zoom_x=0.5))
    # zoom < 1 reads source at (i - c) / zoom: the dot moves to 2 px right of centre.
    assert np.unravel_index(np.argmax(out[0, ..., 0]), (size, size)) == (16, 18)


def test_random_augmentation_keeps_image_and_mask_aligned(tiny_config):
    rng = np.random.default_rng(0)
    masks = np.zeros((8, 32, 32, 1), np.float32)
    for m in masks:
        y, x = rng.integers(4, 20, 2)
        m[y:y + 10, x:x + 8] = 1.0
    images = np.repeat(masks, 2, axis=-1)  # the image is the mask: alignment is checkable
    out_images, out_masks = jax.jit(
        lambda k, i, m: augment.augment(k, i, m, tiny_config.augment))(
        jax.random.key(7), images, masks)
    assert not np.array_equal(out_masks, masks)  # something happened
    np.testing.assert_array_equal(out_images[..., :1] >= 0.5, out_masks >= 0.5)
    assert set(np.unique(out_masks)) <= {0.0, 1.0}


def test_random_params_respect_ranges():
    flip_y, flip_x, shift_y, shift_x, zoom_y, zoom_x = augment.random_params(
        jax.random.key(0), 1000, flip=True, shift=0.1, zoom=0.1)
    assert 0.4 < float(flip_y.mean()) < 0.6 and 0.4 < float(flip_x.mean()) < 0.6
    assert float(jnp.abs(shift_y).max()) <= 0.1 and float(jnp.abs(shift_x).max()) <= 0.1
    for zoom in (zoom_y, zoom_x):
        assert 0.9 <= float(zoom.min()) < 0.91 and 1.09 < float(zoom.max()) <= 1.1
    no_flip = augment.random_params(jax.random.key(0), 100, flip=False, shift=0.1, zoom=0.1)
    assert not bool(no_flip[0].any() or no_flip[1].any())


def test_soft_masks_move_like_the_image_and_stay_fractional():
    images, _ = batch(seed=3, size=10)
    soft = images[..., :1]  # fractions in [0, 1]
    moved = params(2, flip_y=True, shift_x=0.2)
    out_images, out_soft = augment.apply_params(images, soft, moved, soft_masks=True)
    np.testing.assert_allclose(out_soft, out_images[..., :1], atol=1e-6)
    _, binary = augment.apply_params(images, soft, moved)
    np.testing.assert_array_equal(binary, (out_images[..., :1] >= 0.5).astype(np.float32))
