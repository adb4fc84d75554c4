"""Inference shared by evaluation and predict: flip test-time augmentation,
probabilities back at the slices' own size, thresholding and post-processing (2-D and 3-D).

Needs no flax, optax or orbax: a model is any function from a batch of model inputs
(N, S, S, C) to probabilities (N, S, S).
"""

import cv2
import numpy as np
from scipy import ndimage

from lungseg_jax.core.batches import in_batches
from lungseg_jax.data.preprocess import to_native


def plain_and_flip_tta(probability_fn, inputs: np.ndarray, batch_size: int):
    """(plain, flip-TTA) probabilities (N, S, S) of ``inputs`` (N, S, S, C): TTA averages
    in the un-flipped prediction of the horizontally flipped input."""
    n = len(inputs)
    both = in_batches(probability_fn, np.concatenate([inputs, inputs[:, :, ::-1]]), batch_size)
    return both[:n], (both[:n] + both[n:, :, ::-1]) / 2


def keep_largest_components(mask: np.ndarray, keep: int = 2) -> np.ndarray:
    """``mask`` (bool) with only its ``keep`` largest 8-connected components (the lungs)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                               connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = 1 + np.argsort(-areas, kind="stable")[:keep]
    return np.isin(labels, kept)


def keep_largest_components_3d(volume: np.ndarray, keep: int = 2) -> np.ndarray:
    """``volume`` (bool, slices first) with only its ``keep`` largest 26-connected
    components: the lungs of a volume, judged in 3-D rather than slice by slice."""
    labels, count = ndimage.label(volume, structure=np.ones((3, 3, 3)))
    if count <= keep:
        return volume.astype(bool)
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    kept = 1 + np.argsort(-sizes, kind="stable")[:keep]
    return np.isin(labels, kept)


def native_masks(probabilities, shapes, threshold: float, postprocess: bool) -> list:
    """Boolean masks at each of ``shapes`` (H, W): each probability map resized bilinearly
    to its shape, thresholded there, and optionally post-processed."""
    masks = [to_native(p, shape) > threshold for p, shape in zip(probabilities, shapes)]
    return [keep_largest_components(m) for m in masks] if postprocess else masks
