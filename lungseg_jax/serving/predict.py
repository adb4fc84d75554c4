"""Segmenting the lungs in CT slices and volumes with an exported model: planning a call's
outputs, segmenting, measuring and writing the results (docs/ct_inputs.md).

Inputs (named by ``serving.inputs``, read by ``serving.scans`` and ``serving.dicom``): 2-D
slices (TIFF, NPY, PNG), NIfTI volumes, DICOM series (a folder of ``.dcm`` files, or one
file) and folders of slices or volumes (their files).
For each input ``NAME`` it writes ``OUT/NAME_mask.EXT`` in the input's format and geometry
(a DICOM input: ``NAME_mask.nii.gz``), ``OUT/NAME.json`` (lung pixels and area in mm² when
the pixel spacing is known, or voxels and volume in mL) and, with ``uncertainty``,
``OUT/NAME_uncertainty.EXT``: the standard deviation of the snapshots' probabilities. With
``label_sides`` the mask holds 1 for the patient's right lung and 2 for the left, and the
report gives each side's amount.

Outputs are named by the input's stem alone, so ``plan_outputs`` plans every output of a
call, once, before anything is read or written and refuses the whole call when two inputs
would write one file (``a/x.tif`` and ``b/x.tif``, or ``scan.tif`` and ``scan.npy``, which
share ``scan.json``; names that differ only in case count as one, as they are on macOS and
Windows), when an output exists already (unless ``overwrite``) or when an output is an
input of the same call. Each file is written to a temporary file beside it and renamed into
place, so a crash leaves no half-written output; without ``overwrite`` the rename never
replaces a file made since the plan (that input fails with an OutputError). A bad input
(unreadable, empty, wrongly shaped, non-finite values) fails alone: ``predict_all`` yields
its error and goes on (the command prints the outcomes).
"""

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterator

import numpy as np

from lungseg_jax.core import files, progress
from lungseg_jax.data.preprocess import resize_image, to_native
from lungseg_jax.serving import exported, scans
from lungseg_jax.serving.inference import LEFT, RIGHT, lung_mask, with_flip_tta
from lungseg_jax.serving.inference import label_sides as side_labels
from lungseg_jax.serving.inputs import InputError, expand_inputs, output_suffix, split_name
from lungseg_jax.serving.scans import read_scan

__all__ = ["InputError", "Outcome", "OutputError", "Outputs", "describe", "measure",
           "outputs_of", "plan_outputs", "predict_all", "predict_file", "read_scan", "segment",
           "split_name"]


class OutputError(ValueError):
    """A call whose outputs would collide or replace a file; the message names the files."""


@dataclasses.dataclass(frozen=True)
class Outputs:
    """The files one input writes: its mask, its JSON report and its uncertainty map (or None)."""

    mask: str
    report: str
    uncertainty: str | None

    def paths(self) -> list:
        return [p for p in (self.mask, self.report, self.uncertainty) if p is not None]


def outputs_of(path: str, output: str, uncertainty: bool = False,
               kind: str | None = None) -> Outputs:
    """The files that input ``path`` (of ``kind``, by default by its suffix) writes into
    the folder ``output``."""
    stem, suffix = split_name(path)[0], output_suffix(path, kind)
    return Outputs(os.path.join(output, f"{stem}_mask{suffix}"),
                   os.path.join(output, f"{stem}.json"),
                   os.path.join(output, f"{stem}_uncertainty{suffix}") if uncertainty else None)


def _same_file_key(path: str) -> str:
    # Case-folded: names that differ only in case are one file on macOS and Windows.
    return os.path.realpath(path).casefold()


def _refuse_shared_outputs(plan: dict) -> None:
    writer = {}
    for path, outputs in plan.items():
        for out in outputs.paths():
            other = writer.setdefault(_same_file_key(out), path)
            if other != path:
                raise OutputError(f"{other} and {path} would both write {out}; outputs are "
                                  "named by the input's stem: rename one or predict them in "
                                  "separate calls with different --output folders")


def _refuse_replacing(plan: dict, overwrite: bool) -> None:
    inputs = {_same_file_key(p) for p in plan}
    for path, outputs in plan.items():
        for out in outputs.paths():
            if _same_file_key(out) in inputs:
                raise OutputError(f"{out}: the output of {path} is also an input of this call")
            if os.path.lexists(out) and not overwrite:
                raise OutputError(f"{out} exists (an output of {path}); give --overwrite to "
                                  "replace it")


def plan_outputs(paths: list, output: str, uncertainty: bool = False,
                 overwrite: bool = False) -> dict:
    """``{input: Outputs}`` for each input of ``paths`` of a supported format, folders
    expanded (``inputs.expand_inputs``; the others fail when read), checked before any work:
    raises OutputError naming the files if two inputs would write one file, an output is an
    input, or an output exists and not ``overwrite``."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise OutputError(f"{output}: --output exists and is not a folder")
    plan = {i.path: outputs_of(i.path, output, uncertainty, i.kind)
            for i in expand_inputs(paths) if i.error is None and i.kind is not None}
    _refuse_shared_outputs(plan)
    _refuse_replacing(plan, overwrite)
    return plan


def segment(model: exported.ExportedModel, slices: np.ndarray, batch_size: int = 8,
            uncertainty: bool = False, show_progress: bool | None = None, tta: bool = False):
    """(probability, uncertainty or None), each (D, H, W), for windowed slices (D, H, W).

    Slices are resized to the model's input, run in batches (with flip ``tta``,
    ``inference.with_flip_tta``), and the maps resized back.
    """
    snapshots, ensemble = ((with_flip_tta(model.snapshots), with_flip_tta(model.ensemble))
                           if tta else (model.snapshots, model.ensemble))
    size, _, channels = model.input_shape
    count, height, width = slices.shape
    bar = progress.Progress(count, 0, 1, enabled=show_progress if count > batch_size else False)
    probability, spread = [], []
    try:  # the bar gives stderr and the log handlers back even when the model fails
        for start in range(0, count, batch_size):
            batch = np.stack([resize_image(s, size) for s in slices[start:start + batch_size]])
            batch = np.repeat(batch[..., None], channels, axis=-1)
            if uncertainty:
                members = snapshots(batch, batch_size)
                probability.append(members.mean(axis=0))
                spread.append(members.std(axis=0))
            else:
                probability.append(ensemble(batch, batch_size))
            done = min(start + batch_size, count)
            if bar.due(done):  # always at the last batch: the bar ends at count/count
                bar.draw(done)
    finally:
        bar.close()

    def native(maps):
        return np.stack([to_native(m, (height, width)) for m in np.concatenate(maps)])

    return native(probability), native(spread) if uncertainty else None


def measure(mask: np.ndarray, scan: scans.Scan) -> dict:
    """Lung pixel or voxel count, with the area (mm², when the pixel spacing is known) or
    the volume (mL: voxels times ``scan.geometry.voxel_mm3``)."""
    count = int(np.count_nonzero(mask))
    if scan.is_volume:
        return {"lung_voxels": count,
                "lung_volume_ml": count * scan.geometry.voxel_mm3 / 1000.0,
                "voxel_size_mm": list(scan.spacing_mm)}
    spacing = scan.spacing_mm
    return {"lung_pixels": count,
            "lung_area_mm2": count * spacing[0] * spacing[1] if spacing else None,
            "pixel_spacing_mm": list(spacing) if spacing else None}


def _sides(labels: np.ndarray, scan: scans.Scan) -> dict:
    keep = ("lung_voxels", "lung_volume_ml", "lung_pixels", "lung_area_mm2")
    return {side: {k: v for k, v in measure(labels == value, scan).items() if k in keep}
            for side, value in (("right", RIGHT), ("left", LEFT))}


def predict_file(model: exported.ExportedModel, path: str, output: str, batch_size: int = 8,
                 uncertainty: bool = False, spacing_mm: float | None = None,
                 threshold: float | None = None, overwrite: bool = False,
                 label_sides: bool = False, outputs: Outputs | None = None) -> dict:
    """Segments one input (a file, or a folder holding a DICOM series) and writes its mask,
    JSON and (optionally) uncertainty map into the folder ``output``; returns the report.

    ``outputs``: this input's entry of the call's ``plan_outputs`` (planned here when None).
    ``label_sides``: the mask holds 1 (the patient's right lung) and 2 (left), and the report
    each side's amount. Raises InputError for a bad input (or sides that cannot be told: a
    volume whose orientation is not recorded) and OutputError for an output that exists
    (unless ``overwrite``), also one made since the plan.
    """
    meta = model.metadata
    scan = read_scan(path, (meta["hu_min"], meta["hu_max"]), spacing_mm)
    if label_sides and scan.sides_unknown:
        raise InputError(f"{path}: cannot tell the patient's right from left: "
                         f"{scan.sides_unknown}")
    if outputs is None:
        outputs = plan_outputs([path], output, uncertainty, overwrite)[path]
    if uncertainty and outputs.uncertainty is None:
        raise ValueError(f"{path}: outputs planned without the uncertainty map")
    threshold = meta["threshold"] if threshold is None else threshold
    probability, spread = segment(model, scan.slices, batch_size, uncertainty,
                                  tta=meta.get("tta", False))
    mask = lung_mask(probability, threshold, meta.get("postprocess", False), scan.is_volume)
    result = {"input": os.path.abspath(path), "shape": list(scan.shape),
              "threshold": threshold, "snapshot_steps": meta["snapshot_steps"],
              "variant": meta.get("variant", "ensemble"), **measure(mask, scan)}
    if scan.geometry is not None:
        result["orientation"] = scan.geometry.axcodes
    if label_sides:
        mask = side_labels(mask, scan.is_volume)
        result["sides"] = _sides(mask, scan)
    if scan.warnings:
        result["warnings"] = scan.warnings
    result["mask"] = outputs.mask
    os.makedirs(output, exist_ok=True)
    written = [(outputs.mask, mask, "labels" if label_sides else "mask")]
    if uncertainty:
        result["uncertainty"] = outputs.uncertainty
        written.append((outputs.uncertainty, spread, "uncertainty"))
    report = json.dumps(result, indent=2)
    try:
        for out, array, kind in written:
            scans.write_like(scan, array, out, kind, replace=overwrite)
        files.write_file_atomic(outputs.report, lambda tmp: pathlib.Path(tmp).write_text(report),
                                replace=overwrite)
    except FileExistsError as e:
        raise OutputError(f"{e.filename} exists (an output of {path}, made since the check); "
                          "give --overwrite to replace it") from e
    return result


def describe(result: dict) -> str:
    """The lungs' amount in a result: mL, mm² or pixels, whichever is known, and each
    side's when labelled."""
    def amount(r):
        if "lung_volume_ml" in r:
            return f"{r['lung_volume_ml']:.1f} mL"
        if r["lung_area_mm2"] is not None:
            return f"{r['lung_area_mm2']:.1f} mm²"
        return f"{r['lung_pixels']} pixels"

    sides = result.get("sides")
    return amount(result) + (f" (right {amount(sides['right'])}, left {amount(sides['left'])})"
                             if sides else "")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What became of one input of a call: its ``result`` (``predict_file``'s report), or
    the ``error`` (InputError or OutputError) that made it fail."""

    path: str
    result: dict | None = None
    error: ValueError | None = None


def predict_all(model: exported.ExportedModel, paths: list, output: str,
                overwrite: bool = False, plan: dict | None = None,
                **options) -> Iterator[Outcome]:
    """``predict_file`` for each input of ``paths`` (folders expanded; ``options``: its
    keyword arguments), one Outcome each, yielded as each is done: a bad input (or an
    output made since the plan) is an Outcome with its error, and the others go on.
    ``plan``: the call's ``plan_outputs`` (made here when None: its OutputError is raised
    by this call, before any work)."""
    if plan is None:
        plan = plan_outputs(paths, output, options.get("uncertainty", False), overwrite)
    return _outcomes(model, expand_inputs(paths), output, overwrite, plan, options)


def _outcomes(model, inputs: list, output: str, overwrite: bool, plan: dict,
              options: dict) -> Iterator[Outcome]:
    for item in inputs:
        try:
            if item.error is not None:
                raise item.error
            result = predict_file(model, item.path, output, overwrite=overwrite,
                                  outputs=plan.get(item.path), **options)
        except (InputError, OutputError) as e:  # OutputError: a file made since the plan
            yield Outcome(item.path, error=e)
        else:
            yield Outcome(item.path, result)
