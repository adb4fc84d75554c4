"""The built-in synthetic CT phantom set: training and tests need no download."""

import numpy as np

from lungseg_jax.data.slices import Slices


def _ellipse(yy, xx, cy, cx, ry, rx, angle=0.0):
    c, s = np.cos(angle), np.sin(angle)
    dy, dx = yy - cy, xx - cx
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def phantom(rng: np.random.Generator, size: int = 256):
    """One CT-like axial slice: (int16 HU image, uint8 0/1 lung mask), both ``size``^2.

    Air outside a body ellipse with a fat rim, soft tissue, a spine, a heart that
    indents the left lung, two lungs (about -850 HU) with vessels, and noise.
    """
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    u = rng.uniform
    image = np.full((size, size), -1000.0)
    body_ry, body_rx = u(0.55, 0.7), u(0.78, 0.92)
    image[_ellipse(yy, xx, 0.05, 0, body_ry, body_rx)] = -100.0  # fat
    image[_ellipse(yy, xx, 0.05, 0, body_ry - 0.05, body_rx - 0.05)] = 40.0  # soft tissue
    lung_ry, lung_rx, gap = u(0.2, 0.4), u(0.17, 0.27), u(0.07, 0.14)
    mask = np.zeros((size, size), bool)
    for side in (-1, 1):
        cx = side * (gap + lung_rx)
        mask |= _ellipse(yy, xx, u(-0.1, 0.05), cx, lung_ry * u(0.9, 1.1), lung_rx,
                         side * u(-0.3, 0.3))
    heart = _ellipse(yy, xx, u(0.05, 0.2), u(0.05, 0.15), u(0.15, 0.25), u(0.15, 0.25))
    mask &= ~heart
    image[heart] = 45.0
    image[mask] = -850.0
    lung_y, lung_x = yy[mask], xx[mask]
    for k in rng.integers(len(lung_y), size=rng.integers(8, 25)):  # vessels, part of the mask
        cy, cx = lung_y[k], lung_x[k]
        vessel = _ellipse(yy, xx, cy, cx, u(0.008, 0.025), u(0.008, 0.025)) & mask
        image[vessel] = u(-100, 60)
    image[_ellipse(yy, xx, body_ry - 0.05, 0, 0.09, 0.08)] = 700.0  # vertebra
    image += rng.normal(0.0, 25.0, image.shape)
    return np.clip(image, -1024, 3071).astype(np.int16), mask.astype(np.uint8)


def synthetic_slices(num_images: int, size: int, seed: int) -> Slices:
    """``num_images`` phantoms; the same (num_images, size, seed) gives the same set."""
    rng = np.random.default_rng(seed)
    pairs = [phantom(rng, size) for _ in range(num_images)]
    return Slices([f"phantom_{i:04d}" for i in range(num_images)],
                  [p[0] for p in pairs], [p[1] for p in pairs])
