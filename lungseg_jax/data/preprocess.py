"""Preprocessing: the Hounsfield window, resizing to the model's input and back."""

from typing import Sequence

import cv2
import numpy as np

from lungseg_jax.data.slices import Slices


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


def preprocess_masks(masks: Sequence[np.ndarray], image_size: int,
                     soft: bool = False) -> np.ndarray:
    """Training targets (N, S, S, 1) float32: each mask area-averaged to the size, as the
    fraction of lung in each pixel (``soft``) or that fraction thresholded at 0.5 (0/1)."""
    out = np.stack([resize_image((m > 0).astype(np.float32), image_size) for m in masks])
    return (out if soft else out >= 0.5)[..., None].astype(np.float32)


def preprocess(slices: Slices, data_config):
    """(images, masks) of ``slices`` as configured by ``config.data``."""
    images = preprocess_images(slices.images, data_config.image_size,
                               (data_config.hu_min, data_config.hu_max), data_config.channels)
    return images, preprocess_masks(slices.masks, data_config.image_size,
                                    data_config.soft_masks)
