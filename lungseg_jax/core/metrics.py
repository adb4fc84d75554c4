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

    One rule for empty sets, in every metric: where prediction and truth are both empty
    (an image, or for the pooled IoU the whole set), the score is 1: nothing to find, and
    nothing found.
    """
    counts = np.asarray(counts, np.float64).reshape(-1, 4)
    inter, union, pred, true = counts.T
    empty = union == 0
    iou = np.where(empty, 1.0, inter / np.maximum(union, 1))
    dice = np.where(empty, 1.0, 2 * inter / np.maximum(pred + true, 1))
    pooled = 1.0 if union.sum() == 0 else float(inter.sum() / union.sum())
    return {"pooled_iou": pooled, "mean_iou": float(iou.mean()), "mean_dice": float(dice.mean())}
