"""DICOM inputs of predict (pydicom, ``pip install -e ".[dicom]"``): a folder holding one
axial series of ``.dcm`` files, or one ``.dcm`` file, read as a Hounsfield volume and the
RAS+ affine built from its geometry (docs/ct_inputs.md, "DICOM rules").

Every file must hold one frame (checked before any other attribute is read); rescale slope
and intercept give Hounsfield units; slices are sorted by their position
(ImagePositionPatient) along the slice normal (from ImageOrientationPatient). A series that
cannot be placed raises InputError with one line naming the folder or file and the value.
"""

import os
from typing import NamedTuple

import numpy as np

from lungseg_jax.serving.inputs import (InputError, folder_files, import_extra, kind_of,
                                        reading, slice_2d, volume_array)

# Tolerances: direction cosines that agree, and slice gaps that are even.
COSINE_TOLERANCE = 1e-4
GAP_TOLERANCE = (0.01, 0.01)  # relative, mm: a gap may differ from the median by the larger
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AXIS_NAMES = ("right-left", "anterior-posterior", "superior-inferior")


class Series(NamedTuple):
    """One series as read: ``values`` (column, row, slice) in Hounsfield units, slices in
    position order; ``affine`` (``dicom_affine``) maps them to RAS+ millimetres."""

    values: np.ndarray
    affine: np.ndarray
    warnings: list

    @property
    def num_slices(self) -> int:
        return self.values.shape[-1]


def _floats(ds, keyword: str, count: int, path: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        values = np.array([float(v) for v in value], float)
    except (TypeError, ValueError):
        values = np.array([])
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise InputError(f"{path}: {keyword} is {value!r}; expected {count} numbers to place "
                         "the slice")
    return values


def _number(ds, keyword: str, default: float, path: str) -> float:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not np.isfinite(number):
        raise InputError(f"{path}: {keyword} is {value!r}; expected a number")
    return number


def dicom_affine(position: np.ndarray, orientation: np.ndarray, pixel_spacing: np.ndarray,
                 step: np.ndarray) -> np.ndarray:
    """The RAS+ affine of a series' array (column, row, slice), from the DICOM geometry (LPS
    millimetres): voxel (i, j, k) lies at ``position`` (ImagePositionPatient of the first
    slice) + i * column spacing * the row direction (ImageOrientationPatient[:3]) + j * row
    spacing * the column direction (ImageOrientationPatient[3:]) + k * ``step`` (from one
    slice's position to the next), flipped from LPS to RAS."""
    lps = np.eye(4)
    lps[:3, 0] = orientation[:3] * pixel_spacing[1]
    lps[:3, 1] = orientation[3:] * pixel_spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = position
    return LPS_TO_RAS @ lps


def _one_frame(ds, name: str) -> None:
    """InputError for a multi-frame file (enhanced CT keeps its geometry per frame, not in
    the attributes read here), before any of those is read."""
    frames = _number(ds, "NumberOfFrames", 1.0, name)
    if frames > 1:
        raise InputError(f"{name}: a multi-frame image ({int(frames)} frames); expected one "
                         "slice per file")


def _datasets(path: str, pydicom) -> tuple:
    """(file names, datasets) of the ``.dcm`` files of folder ``path`` (or file ``path``):
    one series of single-frame files."""
    names = ([f for f in folder_files(path) if kind_of(f) == "dicom"] if os.path.isdir(path)
             else [path])
    datasets = []
    for name in names:
        with reading(name):
            ds = pydicom.dcmread(name)
        _one_frame(ds, name)
        datasets.append(ds)
    series = sorted({str(ds.get("SeriesInstanceUID", "")) for ds in datasets})
    if len(series) > 1:
        raise InputError(f"{path}: holds {len(series)} series (SeriesInstanceUID "
                         f"{', '.join(series)}): give one series per folder")
    return names, datasets


def _axial_normal(path: str, orientation: np.ndarray) -> np.ndarray:
    """The slice normal (row direction x column direction); InputError unless closest to
    the superior-inferior axis."""
    normal = np.cross(orientation[:3], orientation[3:])
    closest = int(np.argmax(np.abs(normal)))
    if closest != 2:
        raise InputError(f"{path}: not an axial series: its slice normal "
                         f"{tuple(round(float(v), 3) + 0.0 for v in normal)} (from "
                         "ImageOrientationPatient "
                         f"{tuple(float(v) + 0.0 for v in orientation)}) is closest to the "
                         f"{AXIS_NAMES[closest]} axis; only axial series are supported")
    return normal


def _slice(path: str, name: str, ds, first: tuple) -> tuple:
    """(Hounsfield slice, ImagePositionPatient) of one file of series ``path``; ``first``:
    the first file's (name, ImageOrientationPatient, PixelSpacing), which every file shares."""
    first_name, orientation, spacing = first
    differs = f"of {os.path.basename(name)} differs from {os.path.basename(first_name)}'s"
    if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, name), orientation,
                       atol=COSINE_TOLERANCE):
        raise InputError(f"{path}: slices of several orientations (ImageOrientationPatient "
                         f"{differs})")
    if not np.allclose(_floats(ds, "PixelSpacing", 2, name), spacing):
        raise InputError(f"{path}: slices of several pixel spacings (PixelSpacing {differs})")
    position = _floats(ds, "ImagePositionPatient", 3, name)
    with reading(name):
        pixels = slice_2d(ds.pixel_array, name)
    slope = _number(ds, "RescaleSlope", 1.0, name)
    if slope == 0:
        raise InputError(f"{name}: RescaleSlope is 0")
    intercept = _number(ds, "RescaleIntercept", 0.0, name)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept), position


def _slice_order(path: str, names: list, positions: list, normal: np.ndarray) -> np.ndarray:
    """The slices' order along ``normal``; InputError for two at one position or uneven gaps."""
    along = np.array([p @ normal for p in positions])
    order = np.argsort(along, kind="stable")
    along, gaps = along[order], np.diff(along[order])
    if np.any(gaps < GAP_TOLERANCE[1]):
        i = int(np.flatnonzero(gaps < GAP_TOLERANCE[1])[0])
        raise InputError(f"{path}: two slices at one position ({along[i]:.3f} mm along the "
                         f"slice normal): {os.path.basename(names[order[i]])} and "
                         f"{os.path.basename(names[order[i + 1]])} (several acquisitions?)")
    if len(gaps):
        median = float(np.median(gaps))
        if np.any(np.abs(gaps - median) > max(GAP_TOLERANCE[0] * median, GAP_TOLERANCE[1])):
            raise InputError(f"{path}: uneven slice positions: gaps from {gaps.min():.3f} to "
                             f"{gaps.max():.3f} mm along the slice normal (a missing slice?)")
    return order


def read_series(path: str) -> Series:
    """One axial series (a folder of ``.dcm`` files, or one file). A one-slice series' third
    axis is its thickness (SpacingBetweenSlices, else SliceThickness, else 1 mm), for the
    NIfTI header only."""
    pydicom = import_extra("pydicom", path, "dicom")
    import_extra("nibabel", path, "dicom")  # the masks are written as NIfTI
    names, datasets = _datasets(path, pydicom)
    if not names:
        raise InputError(f"{path}: no .dcm files")
    orientation = _floats(datasets[0], "ImageOrientationPatient", 6, names[0])
    spacing = _floats(datasets[0], "PixelSpacing", 2, names[0])
    normal = _axial_normal(path, orientation)
    images, positions = zip(*[_slice(path, name, ds, (names[0], orientation, spacing))
                              for name, ds in zip(names, datasets)])
    for name, image in zip(names, images):
        if image.shape != images[0].shape:
            raise InputError(f"{path}: slices of several sizes ({os.path.basename(name)} is "
                             f"{image.shape}, {os.path.basename(names[0])} {images[0].shape})")
    order = _slice_order(path, names, positions, normal)
    if len(order) > 1:  # from one slice's position to the next (with a gantry tilt's shear)
        step = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    else:
        ds = datasets[0]
        step = normal * float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    # The NIfTI array (column, row, slice): voxel (i, j, k) is pixel (j, i) of slice k.
    values = volume_array(np.stack([images[i] for i in order], axis=-1).transpose(1, 0, 2),
                          path)
    modality = str(datasets[0].get("Modality", "CT"))
    warnings = [] if modality == "CT" else [
        f"{path}: Modality is {modality!r}, not CT: its values may not be Hounsfield units"]
    return Series(values, dicom_affine(positions[order[0]], orientation, spacing, step),
                  warnings)
