"""Inference shared by evaluation and predict: flip test-time augmentation,
probabilities back at the slices' own size, thresholding and post-processing (2-D and 3-D),
and the lungs' sides.

Needs no flax, optax or orbax: a model is any function from a batch of model inputs
(N, S, S, C) to probabilities (N, S, S).
"""

import cv2
import numpy as np
from scipy import ndimage

from lungseg_jax.core.batches import in_batches
from lungseg_jax.data.preprocess import to_native

RIGHT, LEFT = 1, 2  # side labels: the patient's right and left lung
# A connected component is cut at the midline when each side holds at least this share of
# it (two lungs that touch); otherwise it goes whole to the side of its centroid.
JOINED_SHARE = 0.25


def flipped(inputs: np.ndarray) -> np.ndarray:
    """Model inputs (N, S, S, C) flipped horizontally (columns reversed)."""
    return inputs[:, :, ::-1]


def unflip_average(plain: np.ndarray, of_flipped: np.ndarray) -> np.ndarray:
    """Flip TTA: the mean of the maps (..., N, S, S) of the inputs and the un-flipped maps of
    the ``flipped`` inputs."""
    return (plain + of_flipped[..., ::-1]) / 2


def with_flip_tta(fn):
    """``fn`` (inputs (N, S, S, C), *args -> maps (..., N, S, S)) with flip TTA
    (``unflip_average``), as evaluation's ``+tta``."""
    return lambda inputs, *args: unflip_average(fn(inputs, *args), fn(flipped(inputs), *args))


def plain_and_flip_tta(probability_fn, inputs: np.ndarray, batch_size: int):
    """(plain, flip-TTA) probabilities (N, S, S) of ``inputs`` (N, S, S, C), from one pass
    over the inputs and their flips (``unflip_average``)."""
    n = len(inputs)
    both = in_batches(probability_fn, np.concatenate([inputs, flipped(inputs)]), batch_size)
    return both[:n], unflip_average(both[:n], both[n:])


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


def lung_mask(probability: np.ndarray, threshold: float, postprocess: bool,
              is_volume: bool = False) -> np.ndarray:
    """The mask of a probability map (H, W) or (D, H, W): thresholded, and with
    ``postprocess`` only the two largest components kept (the lungs): in 3-D for a volume,
    else per slice."""
    mask = probability > threshold
    if not postprocess:
        return mask
    if is_volume:
        return keep_largest_components_3d(mask)
    if mask.ndim == 2:
        return keep_largest_components(mask)
    return np.stack([keep_largest_components(m) for m in mask])


def native_masks(probabilities, shapes, threshold: float, postprocess: bool) -> list:
    """Boolean masks at each of ``shapes`` (H, W): each probability map resized bilinearly
    to its shape, thresholded there, and optionally post-processed (``lung_mask``)."""
    return [lung_mask(to_native(p, shape), threshold, postprocess)
            for p, shape in zip(probabilities, shapes)]


def _label_sides_3d(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    labels = np.zeros(mask.shape, np.uint8)
    where = np.nonzero(mask)
    if not where[0].size:
        return labels
    column = where[-1]
    midline = (column.min() + column.max()) / 2
    components, _ = ndimage.label(mask, structure=structure)
    component = components[where]
    size = np.bincount(component)
    rightward = column < midline  # image left: the patient's right
    right_share = np.bincount(component, weights=rightward, minlength=len(size))
    centroid = np.bincount(component, weights=column, minlength=len(size)) / np.maximum(size, 1)
    joined = np.minimum(right_share, size - right_share) >= JOINED_SHARE * size
    whole = np.where(centroid < midline, RIGHT, LEFT)
    labels[where] = np.where(joined[component], np.where(rightward, RIGHT, LEFT),
                             whole[component])
    return labels


def label_sides(mask: np.ndarray, is_volume: bool) -> np.ndarray:
    """``mask`` (D, H, W), in radiological display (image left = the patient's right), as
    uint8 labels: 0 background, ``RIGHT`` (1) the patient's right lung, ``LEFT`` (2) the left.

    The midline is the column halfway between the mask's outermost columns (over the whole
    volume, or per slice when not ``is_volume``). Each connected component (26-connected in
    3-D for a volume, else 8-connected per slice) goes whole to the side of its centroid,
    unless each side holds at least ``JOINED_SHARE`` of it (two lungs that touch): then it is
    cut at the midline.
    """
    if is_volume:
        return _label_sides_3d(mask, np.ones((3, 3, 3)))
    plane = np.zeros((3, 3, 3))
    plane[1] = 1
    return np.stack([_label_sides_3d(m[None], plane)[0] for m in mask]) if len(mask) \
        else np.zeros(mask.shape, np.uint8)
