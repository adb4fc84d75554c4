"""Training losses on logits: the study's binary cross-entropy, and BCE + soft Dice."""

import jax
import jax.numpy as jnp
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
