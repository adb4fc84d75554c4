"""The inputs of predict read as axial slices in radiological display, and results written
back in each input's own format and geometry (docs/ct_inputs.md). Names, folders and the
checks every reader shares: ``serving.inputs``; DICOM series: ``serving.dicom``.

- 2-D slices: TIFF and NPY (Hounsfield values), PNG (8/16-bit grey, colour made grey, taken
  as already windowed: 0 = hu_min, white = hu_max). A slice is taken to be shown as the
  training slices are, in radiological display: the patient's right on the image's left,
  anterior at the top.
- NIfTI volumes (``.nii``, ``.nii.gz``; nibabel, ``pip install -e ".[nifti]"``): brought to
  the closest canonical orientation (RAS+: array axes increasing toward the patient's
  Right, Anterior and Superior; ``nibabel.orientations.io_orientation``), then cut along S
  into axial slices shown in radiological display (``Geometry.to_slices``); results go
  back through the inverse transform, with the input's own header and affine.
- DICOM (``serving.dicom``): results are NIfTI files (``.nii.gz``) whose affine is built
  from the DICOM geometry (``dicom.dicom_affine``).

A bad input raises InputError with one line naming the file (or folder) and the value.
"""

import dataclasses
import os

import cv2
import numpy as np
import tifffile

from lungseg_jax.core import files
from lungseg_jax.data.preprocess import window
from lungseg_jax.data.slices import tiff_page_spacing_mm
from lungseg_jax.serving import dicom
from lungseg_jax.serving.inputs import (DICOM_OUTPUT_SUFFIX, SUFFIXES, InputError,
                                        expand_inputs, import_extra, kind_of, reading,
                                        slice_2d, split_name, volume_array)


@dataclasses.dataclass
class Geometry:
    """Where a volume's voxels lie, and how its array maps to axial slices and back.

    ``affine`` maps the array's voxel indices to RAS+ millimetres (NIfTI world: x toward
    the patient's Right, y Anterior, z Superior). ``to_slices`` reorients the array to the
    closest canonical orientation (RAS+) and shows each axial slice as the training slices
    are, in radiological display: rows run anterior to posterior, columns the patient's
    right to left. ``to_file`` is its inverse. ``header`` (with ``image_class``) is the
    input's nibabel header, written back with the results; None for DICOM, whose results get
    a new header with ``affine`` as qform and sform (code 1, scanner).
    """

    affine: np.ndarray
    shape: tuple
    header: object = None
    image_class: type | None = None

    def __post_init__(self):
        from nibabel import orientations
        self._orientations = orientations
        self.ornt = orientations.io_orientation(self.affine)  # array axis -> (RAS axis, flip)
        self._back = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), self.ornt)

    @property
    def axcodes(self) -> str:
        """The array axes' directions, e.g. 'LPS' (each axis increases toward its letter)."""
        return "".join(self._orientations.ornt2axcodes(self.ornt))

    @property
    def slice_axis(self) -> int:
        """The array axis that becomes the slices' axis (the closest to superior-inferior)."""
        return int(np.flatnonzero(self.ornt[:, 0] == 2)[0])

    def _by_ras(self, values) -> tuple:
        """``values`` of the array axes, in RAS axis order."""
        order = np.argsort(self.ornt[:, 0])
        return tuple(values[i] for i in order)

    @property
    def canonical_shape(self) -> tuple:
        """(R, A, S) voxel counts."""
        return self._by_ras(self.shape)

    @property
    def spacing_mm(self) -> tuple:
        """(row, column, slice) spacing of the axial slices: the A, R and S voxel sizes."""
        r, a, s = self._by_ras([float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(0))])
        return (a, r, s)

    @property
    def voxel_mm3(self) -> float:
        """A voxel's volume: |det| of the affine's 3x3 part."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def to_slices(self, values: np.ndarray) -> np.ndarray:
        """The array (``shape``) as axial slices (S, A->P rows, R->L columns), inferior first."""
        canonical = self._orientations.apply_orientation(values, self.ornt)  # (R, A, S) axes
        return np.transpose(canonical, (2, 1, 0))[:, ::-1, ::-1]

    def to_file(self, slices: np.ndarray) -> np.ndarray:
        """Slices (``to_slices``'s layout) back in the array's own order and shape."""
        canonical = np.transpose(slices[:, ::-1, ::-1], (2, 1, 0))
        return np.ascontiguousarray(self._orientations.apply_orientation(canonical, self._back))


@dataclasses.dataclass
class Scan:
    """Windowed slices (D, H, W) in [0, 1], in radiological display, and what is needed to
    measure and write results back."""

    slices: np.ndarray
    suffix: str  # of the outputs
    spacing_mm: tuple | None  # (row, column[, slice]) spacing
    is_volume: bool = False  # measured in mL and post-processed in 3-D
    geometry: Geometry | None = None  # results written as NIfTI through it
    sides_unknown: str | None = None  # why the patient's sides cannot be told
    warnings: list = dataclasses.field(default_factory=list)

    @property
    def shape(self) -> tuple:
        """The shape of the arrays written: the file's own."""
        return tuple(self.geometry.shape if self.geometry else self.slices.shape[1:])


def slice_spacing_mm(recorded: tuple | None, spacing_mm: float | None) -> tuple | None:
    """A 2-D slice's (row, column) pixel spacing in mm: the one its file records, else
    ``(spacing_mm, spacing_mm)`` (given for slices that record none), else None."""
    return recorded or ((spacing_mm, spacing_mm) if spacing_mm else None)


def _read_png(path: str) -> np.ndarray:
    """An already windowed PNG (grey, or colour made grey) as (1, H, W) in [0, 1]."""
    with reading(path):
        image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InputError(f"{path}: cannot read as PNG")
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY if image.shape[-1] == 4
                             else cv2.COLOR_BGR2GRAY)
    image = slice_2d(image, path)
    return (image / np.iinfo(image.dtype).max).astype(np.float32)[None]


def _orientation_doubts(path: str, header, geometry: Geometry) -> tuple:
    """(warnings, why the sides are unknown or None) for a NIfTI whose orientation looks
    unrecorded or whose slices look non-axial."""
    warnings, unknown = [], None
    axis = geometry.slice_axis
    slicing = (f"slicing along array axis {axis} ({geometry.axcodes[axis]}) as axial; check the "
               "mask's orientation")
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        unknown = "its header records no orientation (qform_code and sform_code are 0)"
        warnings.append(f"{path}: {unknown}: taking nibabel's default, array axes "
                        f"{geometry.axcodes}, and {slicing}")
    elif np.allclose(geometry.affine, np.eye(4)):
        unknown = ("its affine is the identity (1 mm voxels at the origin, as an array saved "
                   "without its geometry has)")
        warnings.append(f"{path}: {unknown}: taking its array axes as RAS and {slicing}")
    n_r, n_a, n_s = geometry.canonical_shape
    if n_r != n_a and n_s == max(n_r, n_a):
        warnings.append(f"{path}: axial slices along array axis {axis} "
                        f"({geometry.axcodes[axis]}) would be {n_a} x {n_r} voxels while that "
                        f"axis has {n_s}: the volume looks stacked along another axis; check "
                        "its affine")
    return warnings, unknown


def _read_nifti(path: str, suffix: str, hu_window: tuple) -> Scan:
    nibabel = import_extra("nibabel", path, "nifti")
    with reading(path):
        image = nibabel.load(path)
        values = np.asarray(image.dataobj, np.float32)
        affine = np.asarray(image.affine, float)
    values = volume_array(values, path)
    geometry = Geometry(affine, values.shape, image.header, type(image))
    warnings, unknown = _orientation_doubts(path, image.header, geometry)
    return Scan(window(geometry.to_slices(values), *hu_window), suffix, geometry.spacing_mm,
                True, geometry, unknown, warnings)


def _read_dicom(path: str, hu_window: tuple) -> Scan:
    """One axial series (``dicom.read_series``) as a Scan; one slice is measured as a slice
    (mm²), several as a volume."""
    series = dicom.read_series(path)
    geometry = Geometry(series.affine, series.values.shape)
    is_volume = series.num_slices > 1
    return Scan(window(geometry.to_slices(series.values), *hu_window), DICOM_OUTPUT_SUFFIX,
                geometry.spacing_mm if is_volume else geometry.spacing_mm[:2], is_volume,
                geometry, warnings=series.warnings)


def read_scan(path: str, hu_window: tuple, spacing_mm: float | None = None) -> Scan:
    """Reads one input (a file, or a folder holding a DICOM series); raises InputError for
    a missing, unreadable, unsupported, empty, mis-shaped or non-finite input.
    ``spacing_mm``: the pixel spacing of 2-D slices that do not record it."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        expanded = expand_inputs([path])
        if expanded[0].error is not None:
            raise expanded[0].error
        if expanded[0].kind != "dicom":
            raise InputError(f"{path}: a folder of {len(expanded)} inputs, not a DICOM series: "
                             "read its files")
        return _read_dicom(path, hu_window)
    _, suffix = split_name(path)
    kind = kind_of(path)
    if kind is None:
        raise InputError(f"{path}: unsupported format {suffix or '(no suffix)'!r}; expected "
                         f"one of {', '.join(SUFFIXES)} or a folder")
    if not os.path.isfile(path):
        raise InputError(f"{path}: not a regular file")
    if kind == "volume":
        return _read_nifti(path, suffix, hu_window)
    if kind == "dicom":
        return _read_dicom(path, hu_window)
    if suffix == ".png":
        return Scan(_read_png(path), suffix, slice_spacing_mm(None, spacing_mm))
    if suffix == ".npy":
        with reading(path):
            image, recorded = np.load(path, allow_pickle=False), None
    else:
        with reading(path), tifffile.TiffFile(path) as tif:
            image, recorded = tif.asarray(), tiff_page_spacing_mm(tif.pages[0])
    return Scan(window(slice_2d(image, path), *hu_window)[None], suffix,
                slice_spacing_mm(recorded, spacing_mm))


def _write_nifti(geometry: Geometry, values: np.ndarray, path: str) -> None:
    import nibabel
    if geometry.header is not None:  # the input's own header: its qform, sform and codes
        header = geometry.header.copy()
        header.set_data_dtype(values.dtype)
        image = geometry.image_class(values, None, header)
    else:
        image = nibabel.Nifti1Image(values, geometry.affine)
        image.set_qform(geometry.affine, code=1)
        image.set_sform(geometry.affine, code=1)
        image.header.set_xyzt_units("mm")
    image.header.set_slope_inter(1.0, 0.0)
    image.header["cal_min"] = image.header["cal_max"] = 0  # the input's display range
    nibabel.save(image, path)


def _write_format(scan: Scan, array: np.ndarray, path: str, kind: str) -> None:
    if kind == "mask":
        array = array.astype(np.uint8)  # 0/1
    elif kind == "labels":
        array = array.astype(np.uint8)  # 0/1/2, kept as they are in every format
    else:
        array = array.astype(np.float32)
    if scan.geometry is not None:
        _write_nifti(scan.geometry, scan.geometry.to_file(array), path)
        return
    image = array[0]
    if scan.suffix == ".npy":
        np.save(path, image)
    elif scan.suffix == ".png":
        scale = {"mask": 255, "labels": 1, "uncertainty": 2 * 255}[kind]
        if not cv2.imwrite(path, np.clip(np.rint(image * scale), 0, 255).astype(np.uint8)):
            raise OSError(f"{path}: OpenCV could not write the PNG")  # it returns, not raises
    else:
        if kind == "mask":
            image = image * np.uint8(255)
        resolution = {}
        if scan.spacing_mm:
            resolution = {"resolution": (10.0 / scan.spacing_mm[1], 10.0 / scan.spacing_mm[0]),
                          "resolutionunit": "CENTIMETER"}
        tifffile.imwrite(path, image, **resolution)


def write_like(scan: Scan, array: np.ndarray, path: str, kind: str,
               replace: bool = True) -> None:
    """Writes (D, H, W) results in the input's format and geometry, atomically: ``kind``
    'mask' (0/1; TIFF and PNG 0/255), 'labels' (0/1/2 in every format) or 'uncertainty'
    (float; PNG scaled by 2 * 255). Raises FileExistsError when ``path`` exists and not
    ``replace``."""
    files.write_file_atomic(path, lambda tmp: _write_format(scan, array, tmp, kind),
                            replace=replace, suffix=split_name(path)[1])
