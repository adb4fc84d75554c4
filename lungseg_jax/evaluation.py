"""Evaluation of a workdir's final weights, snapshots and snapshot ensemble on a folder.

Predictions are made at the training resolution, resized back (bilinear, on
probabilities) to each mask's own size and thresholded there, so the metrics
are always at the data's native resolution (512x512 for the study's set).
"""

import cv2
import jax
import numpy as np

from lungseg_jax import data, metrics, trainer


def make_predict_fn(model):
    """Jitted ``(variables, images) -> probabilities (N, H, W)``."""

    @jax.jit
    def predict(variables, images):
        return jax.nn.sigmoid(model.apply(variables, images, train=False)[..., 0])

    return predict


def predict_probabilities(predict_fn, variables, images: np.ndarray, batch_size: int):
    """Probabilities (N, H, W) for preprocessed ``images``, in fixed-size batches."""
    n = len(images)
    padded = np.concatenate([images, np.zeros((-n % batch_size, *images.shape[1:]),
                                              images.dtype)])
    out = [predict_fn(variables, padded[i:i + batch_size])
           for i in range(0, len(padded), batch_size)]
    return np.concatenate(jax.device_get(out))[:n]


def native_counts(probabilities: np.ndarray, masks: list, threshold: float) -> np.ndarray:
    """(N, 4) pixel counts after resizing each probability map to its mask's size."""
    counts = []
    for prob, mask in zip(probabilities, masks):
        h, w = mask.shape
        prob = cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR) if prob.shape != (h, w) \
            else prob
        counts.append(np.asarray(metrics.pixel_counts((prob > threshold)[None],
                                                      (mask > 0)[None]))[0])
    return np.stack(counts)


def evaluate_workdir(workdir: str, data_dir: str, threshold: float = 0.5,
                     batch_size: int = 8) -> dict:
    """The evaluate CLI's result: final, per-snapshot and ensemble metrics on ``data_dir``."""
    restored = trainer.restore_variables(workdir)
    slices = data.read_folder(data_dir)
    images, _ = data.preprocess(slices, restored.config.data)
    predict_fn = make_predict_fn(restored.model)
    probabilities = {step: predict_probabilities(predict_fn, v, images, batch_size)
                     for step, v in restored.variables.items()}

    def score(probs):
        return metrics.summarize(native_counts(probs, slices.masks, threshold))

    snapshots = restored.snapshot_steps or [restored.final_step]
    ensemble = np.mean([probabilities[s] for s in snapshots], axis=0)
    return {"num_images": len(slices),
            "final": score(probabilities[restored.final_step]),
            "snapshots": [{"step": s, **score(probabilities[s])} for s in snapshots],
            "ensemble": score(ensemble)}


def format_table(result: dict) -> str:
    rows = [("final", result["final"])]
    rows += [(f"snapshot@{s['step']}", s) for s in result["snapshots"]]
    rows += [("ensemble", result["ensemble"])]
    lines = [f"{'weights':<18}{'pooled IoU':>12}{'mean IoU':>10}{'mean Dice':>11}"]
    lines += [f"{name:<18}{m['pooled_iou']:>12.4f}{m['mean_iou']:>10.4f}{m['mean_dice']:>11.4f}"
              for name, m in rows]
    return f"{result['num_images']} images\n" + "\n".join(lines)
