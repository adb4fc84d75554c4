"""Evaluation of a workdir's final weights, snapshots and snapshot ensemble on a folder.

Predictions are made at the training resolution, resized back (bilinear, on
probabilities) to each mask's own size and thresholded there, so the metrics
are always at the data's native resolution (512x512 for the study's set).

Variants combine the weights ('final' or 'ensemble': mean probability of the last
m snapshots), horizontal-flip test-time augmentation ('+tta': mean of the
prediction and the flipped prediction of the flipped slice) and post-processing
('+pp': keep the two largest connected components, the two lungs). Every variant
is scored on the test folder, and optionally on the training run's validation
split, where the winner is chosen (never on the test folder).
"""

import itertools
from typing import NamedTuple

import numpy as np
from absl import logging
from etils import epath

from lungseg_jax.core import metrics
from lungseg_jax.data import errata
from lungseg_jax.data.preprocess import preprocess, to_native
from lungseg_jax.data.slices import Slices
from lungseg_jax.data.sources import load_slices, read_configured_folder, train_val_slices
from lungseg_jax.evaluation import report
from lungseg_jax.model.unet import probability_fn
from lungseg_jax.rundir import split_record
from lungseg_jax.rundir.trained import Trained, restore_trained
from lungseg_jax.serving.inference import native_masks, plain_and_flip_tta


def native_counts(predictions: list, masks: list) -> np.ndarray:
    """(N, 4) pixel counts (see ``metrics.pixel_counts``) of native-size predictions."""
    return np.stack([np.asarray(metrics.pixel_counts(p[None], (m > 0)[None]))[0]
                     for p, m in zip(predictions, masks)])


def variant_name(weights: str, tta: bool, postprocess: bool) -> str:
    return weights + "+tta" * tta + "+pp" * postprocess


# (weights, tta, postprocess) of every variant, simplest first (it wins ties).
VARIANTS = list(itertools.product(("final", "ensemble"), (False, True), (False, True)))


class Predictions(NamedTuple):
    """Probabilities of one image set: ``plain[step]``/``tta[step]`` (N, H, W) per step."""

    plain: dict
    tta: dict

    def of(self, steps, tta: bool):
        """(mean probability, per-pixel std) over ``steps``."""
        stack = np.stack([(self.tta if tta else self.plain)[s] for s in steps])
        return stack.mean(0), stack.std(0)


def predict_steps(trained: Trained, images: np.ndarray, steps, batch_size: int) -> Predictions:
    """Plain and flip-TTA probabilities of ``images`` with each of ``steps``' variables."""
    predict = probability_fn(trained.model)
    plain, tta = {}, {}
    for step in steps:
        plain[step], tta[step] = plain_and_flip_tta(
            lambda batch, step=step: predict(trained.variables[step], batch), images, batch_size)
    return Predictions(plain, tta)


def native_predictions(probabilities, masks: list, threshold: float, postprocess: bool) -> list:
    """Boolean predictions at each mask's own size (``inference.native_masks``)."""
    return native_masks(probabilities, [m.shape for m in masks], threshold, postprocess)


def score(probabilities, masks: list, threshold: float, postprocess: bool) -> dict:
    """Pooled IoU, mean IoU and mean Dice at the masks' own sizes."""
    preds = native_predictions(probabilities, masks, threshold, postprocess)
    return metrics.summarize(native_counts(preds, masks))


def variant_counts(predictions: Predictions, masks: list, weights_steps: dict,
                   threshold: float) -> dict:
    """{variant name: (N, 4) per-image pixel counts} for every variant; ``weights_steps``:
    {'final'|'ensemble': steps}."""
    return {variant_name(weights, tta, postprocess): native_counts(native_predictions(
                predictions.of(weights_steps[weights], tta)[0], masks, threshold, postprocess),
                masks)
            for weights, tta, postprocess in VARIANTS}


def score_variants(predictions: Predictions, masks: list, weights_steps: dict,
                   threshold: float) -> dict:
    """{variant name: score} for every variant (``variant_counts``)."""
    return {name: metrics.summarize(counts) for name, counts
            in variant_counts(predictions, masks, weights_steps, threshold).items()}


class Validated(NamedTuple):
    """Every variant's per-slice counts on the validation slices of a run, or out of fold
    for a cross-validation: each fold's slices predicted by its own run."""

    names: list
    folds: np.ndarray  # the run (fold) that predicted each slice
    counts: dict  # variant name -> (N, 4)

    def scores(self) -> dict:
        return {name: metrics.summarize(c) for name, c in self.counts.items()}


def validate(trained: Trained, threshold: float, batch_size: int, ensemble_last: int = 0,
             source: Slices | None = None) -> Validated:
    """Each of ``trained.runs`` scored on its recorded validation slices, taken from
    ``source`` (the runs' data, ``load_slices`` of their config: read once here if not
    given, not once per fold)."""
    records = [split_record.load_split(run.workdir) for run in trained.runs]
    if source is None and any(record is not None for record in records):
        source = load_slices(trained.config.data)
    names, fold_ids, counts = [], [], []
    for fold, (run, record) in enumerate(zip(trained.runs, records)):
        val = validation_slices(run.config, record, source)
        members = run.last_snapshots(ensemble_last)
        images, _ = preprocess(val, run.config.data)
        predictions = predict_steps(run, images, sorted({*run.finals, *members}), batch_size)
        counts.append(variant_counts(predictions, val.masks,
                                     {"final": run.finals, "ensemble": members}, threshold))
        names += val.names
        fold_ids += [fold] * len(val)
    return Validated(names, np.array(fold_ids, int),
                     {name: np.concatenate([c[name] for c in counts]) for name in counts[0]})


def chosen_variant(chosen: tuple, weights_steps: dict, threshold: float) -> dict:
    """The variant the report shows, as ``export`` records it and ``predict`` applies it:
    its name, member steps (probabilities averaged), flip TTA, post-processing, threshold."""
    weights, tta, postprocess = chosen
    return {"name": variant_name(*chosen), "members": list(weights_steps[weights]), "tta": tta,
            "postprocess": postprocess, "threshold": threshold}


def validation_slices(config, record: dict | None, source: Slices) -> Slices:
    """The run's validation slices: those it recorded, from ``source`` (its data), checked
    against their digests; for a run that recorded none, its split drawn again from
    ``config.data``."""
    if record is None:
        return train_val_slices(config.data)[1]
    return split_record.recorded_subset(source, record["validation"],
                                        f"config.data ({config.data.source} {config.data.path})")


def evaluate_workdir(workdir: epath.PathLike, data_dir: str, threshold: float = 0.5,
                     batch_size: int = 8, ensemble_last: int = 0, tta: bool = False,
                     postprocess: bool = False, select_on_validation: bool = True,
                     report_prefix: epath.PathLike | None = None,
                     errata_file: str | None = errata.BUILTIN,
                     allow_overlap: bool = False, spacing_mm: float | None = None,
                     report_files: list | None = None) -> dict:
    """The evaluate CLI's result on ``data_dir``.

    ``final``, ``snapshots`` and ``ensemble`` (last ``ensemble_last`` snapshots, 0: all) are
    scored with the requested ``tta``/``postprocess``; ``variants`` holds every combination.
    ``select_on_validation`` also scores the variants on the run's validation split and names
    the ``winner`` there; the report (``report_prefix``.csv/.md/*.png) shows that winner, or
    else the requested ensemble variant. The slices of ``errata_file`` (the dataset's known
    label errors; None: none) are left out, and ``left_out`` names them. A ``data_dir``
    sharing a slice (by name or content) with the run's recorded training or validation
    data is refused unless ``allow_overlap``.
    """
    trained = restore_trained(workdir)
    config = trained.config
    try:
        members = trained.last_snapshots(ensemble_last)
    except ValueError as e:
        raise ValueError(f"ensemble_last={ensemble_last}: {e}") from None
    weights_steps = {"final": trained.finals, "ensemble": members}
    known_errors = errata.load_errata(errata_file)
    slices, left_out = errata.without_errata(read_configured_folder(data_dir, config.data),
                                             known_errors)
    left_out_why = errata.describe(left_out, known_errors)
    logging.info("%s", left_out_why)
    if not allow_overlap:
        shared = sorted({name for run in trained.runs
                         for name in split_record.overlap_of_run(run.workdir, slices)})
        if shared:
            raise ValueError(f"{data_dir} shares {len(shared)} slices with the run's training "
                             f"or validation data (by name or content): {shared[:5]}; evaluate "
                             "on held-out slices, or allow it (--allow_overlap)")
    images, _ = preprocess(slices, config.data)
    predictions = predict_steps(trained, images, sorted(trained.variables), batch_size)

    def requested(steps):
        return score(predictions.of(steps, tta)[0], slices.masks, threshold, postprocess)

    result = {"num_images": len(slices), "left_out": left_out,
              "left_out_why": left_out_why,
              "final": requested(trained.finals),
              "snapshots": [{"step": s, **requested([s])} for s in trained.snapshots],
              "ensemble": requested(members),
              "options": {"threshold": threshold, "ensemble_members": members, "tta": tta,
                          "postprocess": postprocess},
              "variants": score_variants(predictions, slices.masks, weights_steps, threshold)}
    chosen = ("ensemble", tta, postprocess)
    if trained.folds:
        result["crossval_folds"] = len(trained.folds)
    if select_on_validation:
        validated = validate(trained, threshold, batch_size, ensemble_last)
        val_scores = validated.scores()
        chosen = max(VARIANTS, key=lambda v: val_scores[variant_name(*v)]["pooled_iou"])
        result["validation"] = {"num_images": len(validated.names), "variants": val_scores,
                                "winner": variant_name(*chosen)}
    result["report_variant"] = variant_name(*chosen)
    result["chosen"] = chosen_variant(chosen, weights_steps, threshold)
    if report_prefix:
        weights, chosen_tta, chosen_pp = chosen
        probs, _ = predictions.of(weights_steps[weights], chosen_tta)
        _, uncertainty = predictions.of(members, chosen_tta)
        preds = native_predictions(probs, slices.masks, threshold, chosen_pp)
        report.write_report(report_prefix, result, workdir, config.data, slices, preds,
                            native_counts(preds, slices.masks),
                            [to_native(u, m.shape) for u, m in zip(uncertainty, slices.masks)],
                            data_dir=data_dir, spacing_mm=spacing_mm, written=report_files)
    return result


def format_table(result: dict) -> str:
    rows = [("final", result["final"])]
    rows += [(f"snapshot@{s['step']}", s) for s in result["snapshots"]]
    rows += [("ensemble", result["ensemble"])]
    rows += [(f"variant {name}", m) for name, m in result["variants"].items()]
    lines = [f"{'weights':<26}{'pooled IoU':>12}{'mean IoU':>10}{'mean Dice':>11}"]
    lines += [f"{name:<26}{m['pooled_iou']:>12.4f}{m['mean_iou']:>10.4f}{m['mean_dice']:>11.4f}"
              for name, m in rows]
    if "validation" in result:
        lines.append(f"validation winner ({result['validation']['num_images']} images): "
                     f"{result['validation']['winner']}")
    header = (f"{result['num_images']} images, threshold {result['options']['threshold']}; "
              f"{result['left_out_why']}")
    return header + "\n" + "\n".join(lines)
