"""Losses (on logits) and segmentation metrics (IoU, Dice; pooled and per image)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def bce_loss(logits, masks):
    """Mean binary cross-entropy of sigmoid(logits) against 0/1 masks (the study's loss)."""
    return optax.sigmoid_binary_cross_entropy(logits, masks).mean()


def soft_dice_loss(logits, masks, smooth: float = 1.0):
    """1 - soft Dice over the whole batch."""
    probs = jax.nn.sigmoid(logits)
    intersection = jnp.sum(probs * masks)
    return 1.0 - (2.0 * intersection + smooth) / (jnp.sum(probs) + jnp.sum(masks) + smooth)


def bce_dice_loss(logits, masks):
    return bce_loss(logits, masks) + soft_dice_loss(logits, masks)


LOSSES = {"bce": bce_loss, "bce_dice": bce_dice_loss}


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
