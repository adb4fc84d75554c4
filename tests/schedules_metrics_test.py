"""Schedules against their closed form; losses and metrics against numpy."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lungseg_jax.core import metrics
from lungseg_jax.training import losses, schedules


def schedule(name, num_cycles=1):
    return ml_collections.ConfigDict({"name": name, "num_cycles": num_cycles})


def test_snapshot_schedule_is_cosine_restarted_every_cycle():
    total, cycles, lr0 = 90, 3, 1e-3
    fn = schedules.create_learning_rate_fn(schedule("snapshot", cycles), lr0, total)
    for t in range(total):
        expected = lr0 / 2 * (1 + math.cos(math.pi * (t % 30) / 30))
        np.testing.assert_allclose(float(fn(t)), expected, rtol=1e-5, atol=1e-9)
    for boundary in (30, 60):
        assert float(fn(boundary - 1)) < 0.01 * lr0  # annealed at the end of a cycle
        np.testing.assert_allclose(float(fn(boundary)), lr0, rtol=1e-6)  # restarted


def test_snapshot_steps_end_each_cycle():
    assert schedules.snapshot_steps(90, 3) == [30, 60, 90]
    assert schedules.snapshot_steps(10, 1) == [10]
    assert schedules.snapshot_steps(12, 12) == list(range(1, 13))


@pytest.mark.parametrize("total, cycles, message", [
    (10, 4, r"num_cycles=4 does not divide the run's 10 train steps .* do: 1, 2, 5 "),
    (100, 3, r"num_cycles=3 does not divide the run's 100 train steps .* do: 1, 2, 4 "),
    (10, 6, r"num_cycles=6 does not divide the run's 10 train steps .* do: 2, 5, 10 "),
    (4, 5, r"num_cycles=5 exceeds the run's 4 train steps"),
])
def test_cycles_that_would_be_unequal_are_refused_naming_counts_that_work(total, cycles,
                                                                          message):
    """10 steps in 4 cycles used to end cycles at 3, 6, 9, 10 (the last one step long, the
    step before the end at the full rate); 6 cycles lost a snapshot."""
    with pytest.raises(ValueError, match=message):
        schedules.snapshot_steps(total, cycles)
    with pytest.raises(ValueError, match=message):
        schedules.create_learning_rate_fn(schedule("snapshot", cycles), 1e-3, total)


def test_constant_and_cosine():
    const = schedules.create_learning_rate_fn(schedule("constant"), 0.1, 10)
    cos = schedules.create_learning_rate_fn(schedule("cosine"), 0.1, 10)
    assert float(const(7)) == pytest.approx(0.1)
    assert float(cos(0)) == pytest.approx(0.1) and float(cos(5)) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="warmup"):
        schedules.create_learning_rate_fn(schedule("warmup"), 0.1, 10)


def test_losses_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 4, 1)).astype(np.float32)
    masks = (rng.random((2, 4, 4, 1)) > 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-logits))
    bce = -np.mean(masks * np.log(p) + (1 - masks) * np.log(1 - p))
    dice = 1 - (2 * np.sum(p * masks) + 1) / (p.sum() + masks.sum() + 1)
    np.testing.assert_allclose(losses.bce_loss(jnp.array(logits), masks), bce, rtol=1e-5)
    np.testing.assert_allclose(losses.bce_dice_loss(jnp.array(logits), masks), bce + dice,
                               rtol=1e-5)


def test_pooled_and_mean_iou_and_dice():
    pred = np.zeros((2, 4, 4), bool)
    truth = np.zeros((2, 4, 4), bool)
    pred[0, :2] = True          # 8 px
    truth[0, :1] = True         # 4 px inside the prediction -> IoU 0.5, Dice 2*4/12
    pred[1, :, :1] = True       # 4 px
    truth[1, :, :2] = True      # 8 px -> IoU 0.5
    counts = metrics.pixel_counts(pred, truth)
    np.testing.assert_array_equal(counts, [[4, 8, 8, 4], [4, 8, 4, 8]])
    result = metrics.summarize(counts)
    assert result["pooled_iou"] == pytest.approx(8 / 16)
    assert result["mean_iou"] == pytest.approx(0.5)
    assert result["mean_dice"] == pytest.approx(8 / 12)


def test_pooled_iou_weights_large_images_more():
    result = metrics.summarize([[90, 100, 95, 95], [0, 10, 5, 5]])
    assert result["pooled_iou"] == pytest.approx(90 / 110)
    assert result["mean_iou"] == pytest.approx(0.45)


def test_empty_prediction_and_truth_score_one_in_every_metric():
    assert metrics.summarize([[0, 0, 0, 0]]) == {"pooled_iou": 1.0, "mean_iou": 1.0,
                                                 "mean_dice": 1.0}
    assert metrics.summarize([[0, 0, 0, 0], [0, 0, 0, 0]])["pooled_iou"] == 1.0
    # An empty image beside a scored one: it counts as 1 per image, nothing in the pooled.
    assert metrics.summarize([[0, 0, 0, 0], [1, 4, 2, 3]]) == {
        "pooled_iou": 0.25, "mean_iou": (1 + 0.25) / 2, "mean_dice": (1 + 2 / 5) / 2}
