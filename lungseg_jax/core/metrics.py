"""Segmentation metrics: pixel counts per image, and IoU and Dice pooled and per image."""

import jax.numpy as jnp
import numpy as np


def pixel_counts(pred, truth):
    """Per-image (intersection, union, predicted, true) pixel counts, an (N, 4) array.

    ``pred`` and ``truth`` are boolean (N, ...) numpy or jax arrays.
    """
    axes = tuple(range(1, pred.ndim))
    counts = [(pred & truth).sum(axes), (pred | truth).sum(axes), pred.sum(axes), truth.sum(axes)]
    return jnp.stack(counts, axis=-1)


def summarize(counts) -> dict:
    """Pooled IoU (sums over all images, as the study), mean per-image IoU and Dice.

    An image whose prediction and truth are both empty scores 1.
    """
    counts = np.asarray(counts, np.float64).reshape(-1, 4)
    inter, union, pred, true = counts.T
    empty = union == 0
    iou = np.where(empty, 1.0, inter / np.maximum(union, 1))
    dice = np.where(empty, 1.0, 2 * inter / np.maximum(pred + true, 1))
    return {"pooled_iou": float(inter.sum() / max(union.sum(), 1)),
            "mean_iou": float(iou.mean()), "mean_dice": float(dice.mean())}
