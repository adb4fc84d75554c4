"""A label audit: which masks of a dataset look wrong, ranked for a person to check.

Every slice of a cross-validation's data, the known label errors included, is predicted
by the fold that did not train on it (each fold's snapshot ensemble with flip TTA, the
two largest components kept). A slice is suspicious when its mask disagrees with that
out-of-fold prediction, and when the mask fails anatomical checks that need no model:

* ``empty``: no lung at all (the other checks are then skipped).
* ``one_sided``: the smaller side of the body (split at the body's centre column) holds
  under ``ONE_SIDED_SHARE`` of the mask: a lung missing (of the 240 Kaggle masks, only
  ``ID_0079_Z_0072``; the next smallest share is 0.21).
* ``outside_body``: over ``OUTSIDE_BODY_SHARE`` of the mask lies outside the body (air
  around the patient labelled lung; skipped when no body is found).
* ``fragmented``: more than two components of at least ``MIN_COMPONENT_SHARE`` of the mask.

``suspicion = (1 - IoU(mask, out-of-fold prediction)) + FLAG_WEIGHT`` if any check
fails: the disagreement ranks, a failed check moves a slice up. The checks count once, not
each: one fault often fails several (air labelled lung is outside the body and is extra
components). Written into the output folder:
``audit.csv`` (every slice, most suspicious first) and ``audit_<rank>_<name>.png``
overlays of the top ones (slice, mask, prediction with its errors, uncertainty); a person
confirms each by eye before adding it to an errata file (``data/errata.json``'s form).
"""

import csv
import io

import cv2
import numpy as np
from etils import epath
from scipy import ndimage

from lungseg_jax.core import metrics
from lungseg_jax.core.files import write_atomic
from lungseg_jax.data import errata
from lungseg_jax.data.preprocess import preprocess, to_native
from lungseg_jax.data.sources import load_slices
from lungseg_jax.data.splits import assign_folds
from lungseg_jax.evaluation import report
from lungseg_jax.evaluation.evaluator import predict_steps
from lungseg_jax.rundir import split_record
from lungseg_jax.rundir.trained import restore_trained
from lungseg_jax.serving.inference import keep_largest_components

BODY_HU = -500.0  # soft tissue and bone; air and lung lie below
ONE_SIDED_SHARE, OUTSIDE_BODY_SHARE, MIN_COMPONENT_SHARE = 0.05, 0.05, 0.01
FLAG_WEIGHT = 0.25
CSV_FIELDS = ["rank", "name", "suspicion", "oof_iou", "flags", "smaller_side_share",
              "outside_body_share", "components", "fold", "known_error"]


def body_mask(image: np.ndarray) -> np.ndarray:
    """The patient's body: the largest region above ``BODY_HU``, its holes (lungs) filled."""
    count, labels = cv2.connectedComponents((image > BODY_HU).astype(np.uint8), connectivity=8)
    if count < 2:
        return np.zeros(image.shape, bool)
    largest = 1 + np.argmax(np.bincount(labels.ravel())[1:])
    return ndimage.binary_fill_holes(labels == largest)


def anatomy(image: np.ndarray, mask: np.ndarray) -> dict:
    """The model-free checks of a mask (module docstring), with the measures behind them."""
    mask = mask > 0
    area = int(mask.sum())
    if not area:
        return {"smaller_side_share": 0.0, "outside_body_share": 0.0, "components": 0,
                "flags": ["empty"]}
    body = body_mask(image)
    columns = np.flatnonzero(body.any(axis=0))
    centre = (columns[0] + columns[-1] + 1) / 2 if columns.size else mask.shape[1] / 2
    left = int(mask[:, :int(round(centre))].sum())
    smaller_side = min(left, area - left) / area
    outside = float((mask & ~body).sum() / area)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    components = int((stats[1:, cv2.CC_STAT_AREA] >= MIN_COMPONENT_SHARE * area).sum())
    flags = [name for name, failed in (
        ("one_sided", smaller_side < ONE_SIDED_SHARE),
        ("outside_body", columns.size > 0 and outside > OUTSIDE_BODY_SHARE),
        ("fragmented", components > 2)) if failed]
    return {"smaller_side_share": smaller_side, "outside_body_share": outside,
            "components": components, "flags": flags}


def folds_of(trained, names: list) -> np.ndarray:
    """Each slice's fold: the run that recorded it as validation (``split.json``), else (a
    known label error, or a slice added since) the fold ``assign_folds`` draws for it.
    ValueError naming a slice whose fold trained on it."""
    data = trained.config.data
    fold_of = assign_folds(names, data.cv.folds, data.cv.group_pattern, data.split_seed)
    records = [split_record.load_split(run.workdir) for run in trained.folds]
    for fold, record in enumerate(records):
        for name in record["validation"]:
            if name in names:
                fold_of[names.index(name)] = fold
    for name, fold in zip(names, fold_of):
        if name in records[fold]["train"]:
            raise ValueError(f"{name}: fold {fold} ({trained.folds[fold].workdir}) trained on "
                             "it, so no fold predicts it out of fold; the data changed since "
                             "the cross-validation ran")
    return fold_of


def out_of_fold(trained, slices, fold_of: np.ndarray, batch_size: int):
    """(probability, uncertainty) lists at each slice's own size: each slice predicted by
    its fold's run (snapshot ensemble, flip TTA), uncertainty the snapshots' std."""
    probability, uncertainty = [None] * len(slices), [None] * len(slices)
    for fold, run in enumerate(trained.folds):
        indices = np.flatnonzero(fold_of == fold)
        if not indices.size:
            continue
        images, _ = preprocess(slices.subset(indices), run.config.data)
        mean, std = predict_steps(run, images, run.snapshots, batch_size).of(run.snapshots,
                                                                              tta=True)
        for i, p, s in zip(indices, mean, std):
            shape = slices.masks[i].shape
            probability[i], uncertainty[i] = to_native(p, shape), to_native(s, shape)
    return probability, uncertainty


def audit(cv_dir: epath.PathLike, output: epath.PathLike, threshold: float = 0.5,
          top: int = 10, batch_size: int = 8) -> list:
    """Ranks every slice of ``cv_dir``'s data (module docstring), writes ``audit.csv`` and
    the top ``top`` overlays into ``output``, and returns the rows, most suspicious first."""
    trained = restore_trained(cv_dir)
    if not trained.folds:
        raise ValueError(f"{cv_dir} is not a cross-validation folder (no crossval.json): the "
                         "audit needs out-of-fold predictions (python -m lungseg_jax.crossval)")
    data = trained.config.data
    slices = load_slices(data)
    fold_of = folds_of(trained, slices.names)
    probability, uncertainty = out_of_fold(trained, slices, fold_of, batch_size)
    known = errata.load_errata(errata.errata_file(data.errata))
    rows, predictions = [], []
    for i, name in enumerate(slices.names):
        prediction = keep_largest_components(probability[i] > threshold)
        counts = np.asarray(metrics.pixel_counts(prediction[None], (slices.masks[i] > 0)[None]))
        iou = metrics.summarize(counts)["pooled_iou"]
        checks = anatomy(slices.images[i], slices.masks[i])
        rows.append({"name": name, "oof_iou": iou, "fold": int(fold_of[i]),
                     "suspicion": 1.0 - iou + FLAG_WEIGHT * bool(checks["flags"]),
                     "known_error": name in known, **checks, "index": i})
        predictions.append(prediction)
    rows.sort(key=lambda r: -r["suspicion"])
    folder = epath.Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
        if rank <= top:
            i = row["index"]
            report.write_overlay(
                folder / f"audit_{rank}_{row['name']}.png", slices.images[i], slices.masks[i],
                predictions[i], uncertainty[i], data,
                {"name": f"#{rank} {row['name']} {' '.join(row['flags'])}",
                 "iou": row["oof_iou"], "hd95_mm": None,
                 "hd95": report.hd95(predictions[i], slices.masks[i] > 0)})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({**r, "flags": " ".join(r["flags"])} for r in rows)
    write_atomic(folder / "audit.csv", text.getvalue())
    return rows
