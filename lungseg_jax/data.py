"""Data: the synthetic CT phantom set, the dataset's folder layout, preprocessing, splits.

Everything here is host-side numpy, run once per training run; the training
step reads the preprocessed arrays from device memory (see ``trainer.py``).

Folder layout (Kaggle "Finding and Measuring Lungs in CT Data", 2D part)::

    DIR/2d_images/NAME.tif   int16 Hounsfield-like intensities
    DIR/2d_masks/NAME.tif    lung mask, 0/1 or 0/255 (binarised with > 0)
"""

import dataclasses
import os
from typing import Sequence

import cv2
import numpy as np
import tifffile

from lungseg_jax import validation

IMAGE_DIR, MASK_DIR = "2d_images", "2d_masks"
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class Slices:
    """Raw slices: names, Hounsfield images and binary masks (lists of 2-D arrays)."""

    names: list
    images: list
    masks: list

    def __len__(self):
        return len(self.names)

    def subset(self, indices) -> "Slices":
        return Slices([self.names[i] for i in indices], [self.images[i] for i in indices],
                      [self.masks[i] for i in indices])


# ----------------------------------------------------------------------------- phantoms


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


# ----------------------------------------------------------------------------- folders


def _tiff_names(folder: str) -> dict:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"missing folder {folder!r} (expected DIR/{IMAGE_DIR} and "
                                f"DIR/{MASK_DIR} with matching .tif files)")
    return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith(TIFF_SUFFIXES)}


def _read_tiff(path: str) -> np.ndarray:
    try:
        array = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for broken files
        raise ValueError(f"cannot read {path}: {e}") from e
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D slice, got shape {array.shape}")
    return array


def paired_tiff_names(path: str) -> tuple[dict, dict]:
    """``({name: image file}, {name: mask file})`` of ``path``'s slices, the same names.

    Raises FileNotFoundError/ValueError naming the folder, or the files without a partner.
    """
    images = _tiff_names(os.path.join(path, IMAGE_DIR))
    masks = _tiff_names(os.path.join(path, MASK_DIR))
    if not images:
        raise ValueError(f"no .tif images in {os.path.join(path, IMAGE_DIR)!r}")
    for missing, have, where in ((set(images) - set(masks), "images", MASK_DIR),
                                 (set(masks) - set(images), "masks", IMAGE_DIR)):
        if missing:
            raise ValueError(f"{len(missing)} {have} in {path!r} have no partner in {where}/: "
                             f"{sorted(missing)[:5]}")
    return images, masks


def read_folder(path: str) -> Slices:
    """Reads and checks ``path/2d_images/*.tif`` with ``path/2d_masks/*.tif`` (same names).

    Raises FileNotFoundError/ValueError naming the folder, file or value at fault.
    """
    images, masks = paired_tiff_names(path)
    slices = Slices([], [], [])
    for name in sorted(images):
        image, mask = _read_tiff(images[name]), _read_tiff(masks[name])
        validation.check_slice(images[name], image, masks[name], mask)
        slices.names.append(name)
        slices.images.append(image)
        slices.masks.append((mask > 0).astype(np.uint8))
    if not any(m.any() for m in slices.masks):
        raise ValueError(f"every mask in {os.path.join(path, MASK_DIR)!r} is empty")
    return slices


def write_folder(path: str, slices: Slices) -> None:
    """Writes ``slices`` in the dataset's folder layout (masks as 0/255 like Kaggle's)."""
    for sub in (IMAGE_DIR, MASK_DIR):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    for name, image, mask in zip(slices.names, slices.images, slices.masks):
        tifffile.imwrite(os.path.join(path, IMAGE_DIR, name + ".tif"), image)
        tifffile.imwrite(os.path.join(path, MASK_DIR, name + ".tif"),
                         (mask > 0).astype(np.uint8) * 255)


# ----------------------------------------------------------------------------- preprocessing


def window(image: np.ndarray, hu_min: float, hu_max: float) -> np.ndarray:
    """Hounsfield window: [hu_min, hu_max] -> [0, 1], clipped, float32."""
    scaled = (image.astype(np.float32) - hu_min) / (hu_max - hu_min)
    return np.clip(scaled, 0.0, 1.0)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Area-averaging resize of a float image to size x size (bilinear when upsampling)."""
    shrink = size <= min(image.shape)
    return cv2.resize(image, (size, size),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def to_native(probability: np.ndarray, shape) -> np.ndarray:
    """A probability (or uncertainty) map resized bilinearly to ``shape`` (H, W)."""
    h, w = shape
    if probability.shape == (h, w):
        return probability
    return cv2.resize(probability, (w, h), interpolation=cv2.INTER_LINEAR)


def preprocess_images(images: Sequence[np.ndarray], image_size: int,
                      hu_window: Sequence[float], channels: int) -> np.ndarray:
    """Model inputs (N, S, S, channels) float32 in [0, 1] from Hounsfield slices."""
    out = np.stack([resize_image(window(im, *hu_window), image_size) for im in images])
    return np.repeat(out[..., None], channels, axis=-1).astype(np.float32)


def preprocess_masks(masks: Sequence[np.ndarray], image_size: int) -> np.ndarray:
    """Training targets (N, S, S, 1) float32 0/1."""
    out = np.stack([resize_image(m.astype(np.float32), image_size) >= 0.5 for m in masks])
    return out[..., None].astype(np.float32)


def preprocess(slices: Slices, data_config):
    """(images, masks) of ``slices`` as configured by ``config.data``."""
    images = preprocess_images(slices.images, data_config.image_size,
                               (data_config.hu_min, data_config.hu_max), data_config.channels)
    return images, preprocess_masks(slices.masks, data_config.image_size)


def split_indices(n: int, val_fraction: float, seed: int):
    """Deterministic (train, validation) index arrays; validation gets round(n * fraction)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_slices(data_config) -> Slices:
    """All slices of the configured source (``synthetic``, ``folder`` or ``tfds``)."""
    if data_config.source == "synthetic":
        return synthetic_slices(data_config.synthetic.num_images, data_config.synthetic.size,
                                data_config.synthetic.seed)
    if data_config.source == "folder":
        return read_folder(data_config.path)
    if data_config.source == "tfds":
        from lungseg_jax import tfds_lungs  # optional dependency
        return tfds_lungs.load_slices(data_config.path, data_config.tfds_data_dir)
    raise ValueError(f"unknown config.data.source {data_config.source!r}; "
                     "expected 'synthetic', 'folder' or 'tfds'")


def load_train_val(data_config):
    """(train_images, train_masks, val_images, val_masks) preprocessed, as numpy."""
    slices = load_slices(data_config)
    train_idx, val_idx = split_indices(len(slices), data_config.val_fraction,
                                       data_config.split_seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"{len(slices)} slices with config.data.val_fraction="
                         f"{data_config.val_fraction} leave an empty train or validation set")
    return (*preprocess(slices.subset(train_idx), data_config),
            *preprocess(slices.subset(val_idx), data_config))


def split_folder(source: str, output: str, test_fraction: float, seed: int) -> dict:
    """Splits a dataset folder into ``output/train`` and ``output/test`` of symbolic links.

    Deterministic in ``seed``; nothing is copied. Returns {'train': n, 'test': n}.
    Refuses a ``test_fraction`` outside (0, 1), a split that leaves either part empty, and
    an ``output`` that already holds a split (another split's links would mix in).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction}: expected a fraction between 0 and 1")
    images, masks = paired_tiff_names(source)
    names = sorted(images)
    train_idx, test_idx = split_indices(len(names), test_fraction, seed)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError(f"{len(names)} slices with test_fraction={test_fraction} leave an "
                         "empty train or test set")
    for part in ("train", "test"):
        if os.path.exists(os.path.join(output, part)):
            raise FileExistsError(f"{os.path.join(output, part)!r} exists: remove it or "
                                  "choose another output folder")
    for part, indices in (("train", train_idx), ("test", test_idx)):
        for sub, files in ((IMAGE_DIR, images), (MASK_DIR, masks)):
            os.makedirs(os.path.join(output, part, sub))
            for i in indices:
                target = os.path.abspath(files[names[i]])
                os.symlink(target, os.path.join(output, part, sub, os.path.basename(target)))
    return {"train": len(train_idx), "test": len(test_idx)}
