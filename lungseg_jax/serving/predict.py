"""Segmenting the lungs in CT slices and volumes with an exported model.

Inputs: 2-D slices as TIFF or NPY (Hounsfield values), PNG (8/16-bit grey, taken
as already windowed: 0 = hu_min, max = hu_max), any size; 3-D CT volumes as NIfTI
(``.nii``/``.nii.gz``, Hounsfield values, run slice by slice along the third axis).
For each ``NAME.EXT`` it writes ``OUT/NAME_mask.EXT`` (same format and geometry:
TIFF/PNG 0/255, NPY/NIfTI 0/1), ``OUT/NAME.json`` (lung pixels and area in mm²
when the pixel spacing is known, or voxels and volume in mL) and, with
``--uncertainty``, ``OUT/NAME_uncertainty.EXT``: the standard deviation of the
snapshots' probabilities (PNG: scaled by 2 * 255).

Outputs are named by the input's stem alone, so ``plan_outputs`` plans every output of a
call before anything is read or written and refuses the whole call when two inputs would
write one file (``a/x.tif`` and ``b/x.tif``, or ``scan.tif`` and ``scan.npy``, which share
``scan.json``; names that differ only in case count as one, as they are on macOS and
Windows), when an output exists already (unless ``overwrite``) or when an output is an
input of the same call. Each file is written to a temporary file beside it and renamed
into place, so a crash leaves no half-written output. A bad input (unreadable, empty,
wrongly shaped, non-finite values) is reported and skipped; the exit status is 1 if any
input failed.
"""

import contextlib
import dataclasses
import json
import os
import sys

import cv2
import numpy as np
import tifffile

from lungseg_jax.core import files, progress
from lungseg_jax.data.preprocess import resize_image, to_native, window
from lungseg_jax.data.slices import as_slice
from lungseg_jax.serving import exported
from lungseg_jax.serving.inference import keep_largest_components, keep_largest_components_3d

SLICE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
VOLUME_SUFFIXES = (".nii", ".nii.gz")
TIFF_UNIT_MM = {3: 10.0}  # ResolutionUnit CENTIMETER; inch (2) is usually a display default


class InputError(ValueError):
    """A bad input; the message names the file and what is wrong."""


class OutputError(ValueError):
    """A call whose outputs would collide or replace a file; the message names the files."""


@dataclasses.dataclass
class Scan:
    """Windowed slices (D, H, W) in [0, 1] and what is needed to write results back."""

    slices: np.ndarray
    suffix: str
    spacing_mm: tuple | None  # (row, column[, slice]) spacing
    nifti: object = None  # the source nibabel image, for its affine and header


@dataclasses.dataclass(frozen=True)
class Outputs:
    """The files one input writes: its mask, its JSON report and its uncertainty map (or None)."""

    mask: str
    report: str
    uncertainty: str | None

    def paths(self) -> list:
        return [p for p in (self.mask, self.report, self.uncertainty) if p is not None]


def split_name(path: str) -> tuple:
    """(stem, suffix), with ``.nii.gz`` as one suffix; the suffix lower-cased."""
    base = os.path.basename(path)
    if base.lower().endswith(".nii.gz"):
        return base[:-7], ".nii.gz"
    stem, suffix = os.path.splitext(base)
    return stem, suffix.lower()


def outputs_of(path: str, output: str, uncertainty: bool = False) -> Outputs:
    """The files that input ``path`` writes into the folder ``output``."""
    stem, suffix = split_name(path)
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
    """``{input: Outputs}`` for each of ``paths`` of a supported format (the others fail
    when read), checked before any work: raises OutputError naming the files if two inputs
    would write one file, an output is an input, or an output exists and not ``overwrite``."""
    if os.path.exists(output) and not os.path.isdir(output):
        raise OutputError(f"{output}: --output exists and is not a folder")
    plan = {p: outputs_of(p, output, uncertainty) for p in paths
            if split_name(p)[1] in SLICE_SUFFIXES + VOLUME_SUFFIXES}
    _refuse_shared_outputs(plan)
    _refuse_replacing(plan, overwrite)
    return plan


@contextlib.contextmanager
def _reading(path: str):
    """Turns the exception of a reader of ``path`` into an InputError naming the file."""
    try:
        yield
    except Exception as e:  # the readers raise many types for broken files
        raise InputError(f"{path}: cannot read: {e}") from e


def _nonempty(array: np.ndarray, path: str, kind: str) -> np.ndarray:
    if array.size == 0:
        raise InputError(f"{path}: empty {kind}, shape {array.shape}")
    return array


def _slice_2d(array: np.ndarray, path: str) -> np.ndarray:
    try:
        return _nonempty(as_slice(array, path), path, "slice")
    except ValueError as e:
        raise InputError(str(e)) from e


def _axial_volume(values: np.ndarray, path: str) -> np.ndarray:
    """(x, y, z) voxels as non-empty, finite axial slices (z, y, x): rows along y, columns
    along x; InputError naming ``path`` (and the first bad voxel) otherwise."""
    # Squeeze only trailing singleton axes (e.g. a 4-D file with one time point).
    while values.ndim > 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {values.shape}")
    slices = _nonempty(np.transpose(values, (2, 1, 0)), path, "volume")
    if not np.all(np.isfinite(slices)):
        bad = np.argwhere(~np.isfinite(slices))[0]
        raise InputError(f"{path}: non-finite voxel value {slices[tuple(bad)]} at "
                         f"(slice, row, column) {tuple(int(i) for i in bad)}")
    return slices


def _tiff_spacing(page) -> tuple | None:
    x, y, unit = (page.tags.get(n) for n in ("XResolution", "YResolution", "ResolutionUnit"))
    if x is None or y is None or unit is None:
        return None
    unit_mm = TIFF_UNIT_MM.get(int(unit.value))
    (xn, xd), (yn, yd) = x.value, y.value
    if unit_mm is None or not xn or not yn:
        return None
    return (unit_mm * yd / yn, unit_mm * xd / xn)


def _read_png(path: str) -> np.ndarray:
    """An already windowed PNG (grey, or colour made grey) as (1, H, W) in [0, 1]."""
    with _reading(path):
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"{path}: cannot read as PNG")
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[-1] == 4
                             else cv2.COLOR_BGR2GRAY)
    image = _slice_2d(image, path)
    return (image / np.iinfo(image.dtype).max).astype(np.float32)[None]


def _read_volume(path: str, suffix: str, hu_window: tuple) -> Scan:
    try:
        import nibabel  # optional dependency
    except ImportError as e:  # reported like any bad input; the other inputs go on
        raise InputError(f"{path}: reading NIfTI volumes needs nibabel: "
                         'pip install -e ".[nifti]"') from e
    with _reading(path):
        volume = nibabel.load(path)
        values = np.asarray(volume.dataobj, np.float32)
        zooms = [float(z) for z in volume.header.get_zooms()[:3]]
    slices = _axial_volume(values, path)
    return Scan(window(slices, *hu_window), suffix, (zooms[1], zooms[0], zooms[2]), volume)


def read_scan(path: str, hu_window: tuple, spacing_mm: float | None = None) -> Scan:
    """Reads one input; raises InputError for unreadable, unsupported, empty, mis-shaped or
    non-finite files."""
    _, suffix = split_name(path)
    if suffix not in SLICE_SUFFIXES + VOLUME_SUFFIXES:
        raise InputError(f"{path}: unsupported format {suffix or '(no suffix)'!r}; expected "
                         f"one of {', '.join(SLICE_SUFFIXES + VOLUME_SUFFIXES)}")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    given = (spacing_mm, spacing_mm) if spacing_mm else None
    if suffix in VOLUME_SUFFIXES:
        return _read_volume(path, suffix, hu_window)
    if suffix == ".png":
        return Scan(_read_png(path), suffix, given)
    if suffix == ".npy":
        with _reading(path):
            image, spacing = np.load(path, allow_pickle=False), None
    else:
        with _reading(path), tifffile.TiffFile(path) as tif:
            image, spacing = tif.asarray(), _tiff_spacing(tif.pages[0])
    return Scan(window(_slice_2d(image, path), *hu_window)[None], suffix, spacing or given)


def with_flip_tta(fn):
    """``fn`` (model inputs (N, S, S, C) -> maps (..., N, S, S)) averaged with its
    un-flipped maps of the horizontally flipped inputs, as evaluation's ``+tta``."""
    return lambda batch, size: (fn(batch, size) + fn(batch[:, :, ::-1], size)[..., ::-1]) / 2


def segment(model: exported.ExportedModel, slices: np.ndarray, batch_size: int = 8,
            uncertainty: bool = False, show_progress: bool | None = None, tta: bool = False):
    """(probability, uncertainty or None), each (D, H, W), for windowed slices (D, H, W).

    Slices are resized to the model's input, run in batches (with flip ``tta``), and the
    maps resized back.
    """
    snapshots, ensemble = ((with_flip_tta(model.snapshots), with_flip_tta(model.ensemble))
                           if tta else (model.snapshots, model.ensemble))
    size, _, channels = model.input_shape
    count, height, width = slices.shape
    bar = progress.Progress(count, 0, 1, enabled=show_progress if count > batch_size else False)
    probability, spread = [], []
    for start in range(0, count, batch_size):
        batch = np.stack([resize_image(s, size) for s in slices[start:start + batch_size]])
        batch = np.repeat(batch[..., None], channels, axis=-1)
        if uncertainty:
            members = snapshots(batch, batch_size)
            probability.append(members.mean(axis=0))
            spread.append(members.std(axis=0))
        else:
            probability.append(ensemble(batch, batch_size))
        if bar.due():
            bar.draw(min(start + batch_size, count))
    bar.close()

    def native(maps):
        return np.stack([to_native(m, (height, width)) for m in np.concatenate(maps)])

    return native(probability), native(spread) if uncertainty else None


def lung_mask(probability: np.ndarray, threshold: float, postprocess: bool,
              is_volume: bool) -> np.ndarray:
    """The (D, H, W) mask of a probability map: thresholded, and with ``postprocess`` only
    the two largest components kept (the lungs): in 3-D for a volume, else per slice."""
    mask = probability > threshold
    if not postprocess:
        return mask
    if is_volume:
        return keep_largest_components_3d(mask)
    return np.stack([keep_largest_components(m) for m in mask])


def measure(mask: np.ndarray, spacing_mm: tuple | None, is_volume: bool) -> dict:
    """Lung pixel or voxel count, with area (mm²) or volume (mL) when spacing is known."""
    count = int(mask.sum())
    if is_volume:
        volume = count * float(np.prod(spacing_mm)) / 1000.0
        return {"lung_voxels": count, "lung_volume_ml": volume, "voxel_size_mm": spacing_mm}
    area = count * spacing_mm[0] * spacing_mm[1] if spacing_mm else None
    return {"lung_pixels": count, "lung_area_mm2": area, "pixel_spacing_mm": spacing_mm}


def _write_atomic(path: str, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, synced and renamed over ``path``:
    a crash leaves ``path`` as it was, never half-written."""
    folder, base = os.path.split(path)
    # The temporary name keeps the suffix: the writers pick the format (and compression) by it.
    tmp = os.path.join(folder, f".{base}.{os.getpid()}.tmp{split_name(base)[1]}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_format(scan: Scan, array: np.ndarray, path: str, kind: str) -> None:
    if scan.nifti is not None:
        import nibabel
        values = np.transpose(array, (2, 1, 0))
        values = values.astype(np.uint8) if kind == "mask" else values.astype(np.float32)
        header = scan.nifti.header.copy()
        header.set_data_dtype(values.dtype)
        image = nibabel.Nifti1Image(values, scan.nifti.affine, header)
        image.header.set_slope_inter(1.0, 0.0)
        nibabel.save(image, path)
        return
    image = array[0]
    if scan.suffix == ".npy":
        np.save(path, image.astype(np.uint8) if kind == "mask" else image.astype(np.float32))
    elif scan.suffix == ".png":
        scale = 255 if kind == "mask" else 2 * 255
        if not cv2.imwrite(path, np.clip(np.rint(image * scale), 0, 255).astype(np.uint8)):
            raise OSError(f"{path}: OpenCV could not write the PNG")  # it returns, not raises
    else:
        image = (image * 255).astype(np.uint8) if kind == "mask" else image.astype(np.float32)
        resolution = {}
        if scan.spacing_mm:
            resolution = {"resolution": (10.0 / scan.spacing_mm[1], 10.0 / scan.spacing_mm[0]),
                          "resolutionunit": "CENTIMETER"}
        tifffile.imwrite(path, image, **resolution)


def write_like(scan: Scan, array: np.ndarray, path: str, kind: str) -> None:
    """Writes a (D, H, W) mask (``kind='mask'``, 0/1) or float map in the input's format,
    atomically (replacing ``path`` if it exists: callers check with ``plan_outputs``)."""
    _write_atomic(path, lambda tmp: _write_format(scan, array, tmp, kind))


def predict_file(model: exported.ExportedModel, path: str, output: str, batch_size: int = 8,
                 uncertainty: bool = False, spacing_mm: float | None = None,
                 threshold: float | None = None, overwrite: bool = False) -> dict:
    """Segments one input and writes its mask, JSON and (optionally) uncertainty map into the
    folder ``output``; raises InputError for a bad input and OutputError (``plan_outputs``)
    for an output that exists (unless ``overwrite``)."""
    meta = model.metadata
    scan = read_scan(path, (meta["hu_min"], meta["hu_max"]), spacing_mm)
    outputs = plan_outputs([path], output, uncertainty, overwrite)[path]
    threshold = meta["threshold"] if threshold is None else threshold
    probability, spread = segment(model, scan.slices, batch_size, uncertainty,
                                  tta=meta.get("tta", False))
    mask = lung_mask(probability, threshold, meta.get("postprocess", False),
                     is_volume=scan.nifti is not None)
    os.makedirs(output, exist_ok=True)
    result = {"input": os.path.abspath(path), "shape": list(mask.shape[1:] if scan.nifti is None
                                                          else np.shape(scan.nifti.dataobj)),
              "threshold": threshold, "snapshot_steps": meta["snapshot_steps"],
              "variant": meta.get("variant", "ensemble"),
              **measure(mask, scan.spacing_mm, scan.nifti is not None), "mask": outputs.mask}
    write_like(scan, mask, outputs.mask, "mask")
    if uncertainty:
        result["uncertainty"] = outputs.uncertainty
        write_like(scan, spread, outputs.uncertainty, "uncertainty")
    files.write_atomic(outputs.report, json.dumps(result, indent=2))
    return result


def describe(result: dict) -> str:
    """The lungs' amount in a result: mL, mm² or pixels, whichever is known."""
    if "lung_volume_ml" in result:
        return f"{result['lung_volume_ml']:.1f} mL"
    if result["lung_area_mm2"] is not None:
        return f"{result['lung_area_mm2']:.1f} mm²"
    return f"{result['lung_pixels']} pixels"


def predict_all(model: exported.ExportedModel, paths: list, output: str,
                overwrite: bool = False, **options) -> int:
    """``predict_file`` for each of ``paths`` (``options``: its keyword arguments), a line
    each on stdout, after ``plan_outputs`` has checked every output of the call (raises its
    OutputError before any work); a bad input is reported on stderr and skipped. Returns how
    many failed."""
    plan_outputs(paths, output, options.get("uncertainty", False), overwrite)
    failed = 0
    for path in paths:
        try:
            result = predict_file(model, path, output, overwrite=overwrite, **options)
        except (InputError, OutputError) as e:  # OutputError: a file made since the check
            failed += 1
            print(f"error: {e}", file=sys.stderr)
            continue
        print(f"{path}: lungs {describe(result)} -> {result['mask']}")
    return failed
