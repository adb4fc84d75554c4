"""Out-of-fold scores of a cross-validation folder (``rundir.folds``).

Each slice is predicted by the fold that did not train on it, so every slice of the
data counts once, on weights that never saw it. Written into the folder:

    DIR/crossval.csv            per slice and variant (long form): name, group, fold,
                                variant, IoU, Dice and the pixel counts that pool
    DIR/crossval_summary.json   per variant: pooled IoU over all out-of-fold slices, mean
                                IoU and Dice, each fold's pooled IoU, their mean and std

The known label errors (``config.data.errata``) are in no fold's validation set, so in
no figure; the summary names them.
"""

import csv
import io
import json

import numpy as np
from etils import epath

from lungseg_jax.core import metrics
from lungseg_jax.core.files import write_atomic
from lungseg_jax.data import errata
from lungseg_jax.data.sources import load_slices
from lungseg_jax.data.splits import group_of
from lungseg_jax.evaluation.evaluator import VARIANTS, Validated, validate, variant_name
from lungseg_jax.rundir.trained import restore_trained

CSV_FILE, SUMMARY_FILE = "crossval.csv", "crossval_summary.json"
CSV_FIELDS = ["name", "group", "fold", "variant", "iou", "dice", "intersection", "union",
              "predicted", "true"]


def summarize_folds(validated: Validated) -> dict:
    """{variant: pooled/mean scores over every slice, plus each fold's pooled IoU, and the
    mean and standard deviation of those}."""
    folds = sorted(set(validated.folds.tolist()))
    out = {}
    for name, counts in validated.counts.items():
        per_fold = [metrics.summarize(counts[validated.folds == f])["pooled_iou"]
                    for f in folds]
        out[name] = {**metrics.summarize(counts), "fold_pooled_iou": per_fold,
                     "fold_mean": float(np.mean(per_fold)), "fold_std": float(np.std(per_fold))}
    return out


def csv_rows(validated: Validated, group_pattern: str) -> list:
    rows = []
    for i, name in enumerate(validated.names):
        for variant, counts in validated.counts.items():
            scores = metrics.summarize(counts[i])
            rows.append({"name": name, "group": group_of(name, group_pattern),
                         "fold": int(validated.folds[i]), "variant": variant,
                         "iou": scores["mean_iou"], "dice": scores["mean_dice"],
                         **dict(zip(CSV_FIELDS[6:], (int(c) for c in counts[i])))})
    return rows


def cross_validate(cv_dir: epath.PathLike, threshold: float = 0.5, batch_size: int = 8) -> dict:
    """Scores every fold's run on its own fold, writes the files of the module docstring
    and returns the summary."""
    trained = restore_trained(cv_dir)
    config = trained.config
    source = load_slices(config.data)  # read once: the folds' validation slices and errata
    validated = validate(trained, threshold, batch_size, source=source)
    known = errata.load_errata(errata.errata_file(config.data.errata))
    left_out = errata.leave_out(source.names, known)[1]
    summary = {"folds": len(trained.folds), "num_images": len(validated.names),
               "threshold": threshold, "group_pattern": config.data.cv.group_pattern,
               "left_out": left_out, "left_out_why": errata.describe(left_out, known),
               "variants": summarize_folds(validated)}
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(csv_rows(validated, config.data.cv.group_pattern))
    write_atomic(epath.Path(cv_dir) / CSV_FILE, text.getvalue())
    write_atomic(epath.Path(cv_dir) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"{summary['folds']}-fold cross-validation, {summary['num_images']} slices out "
             f"of fold, threshold {summary['threshold']}; {summary['left_out_why']}",
             f"{'variant':<22}{'pooled IoU':>11}{'mean IoU':>10}{'mean Dice':>11}"
             f"{'folds: mean':>13}{'std':>8}"]
    for weights, tta, pp in VARIANTS:
        name = variant_name(weights, tta, pp)
        m = summary["variants"][name]
        lines.append(f"{name:<22}{m['pooled_iou']:>11.4f}{m['mean_iou']:>10.4f}"
                     f"{m['mean_dice']:>11.4f}{m['fold_mean']:>13.4f}{m['fold_std']:>8.4f}")
    return "\n".join(lines)
