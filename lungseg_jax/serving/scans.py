"""The inputs of predict, read as axial slices in radiological display, and results written
back in each input's own format and geometry (docs/ct_inputs.md).

- 2-D slices: TIFF and NPY (Hounsfield values), PNG (8/16-bit grey, colour made grey, taken
  as already windowed: 0 = hu_min, white = hu_max). A slice is taken to be shown as the
  training slices are, in radiological display: the patient's right on the image's left,
  anterior at the top.
- NIfTI volumes (``.nii``, ``.nii.gz``; nibabel, ``pip install -e ".[nifti]"``): brought to
  the closest canonical orientation (RAS+: array axes increasing toward the patient's
  Right, Anterior and Superior; ``nibabel.orientations.io_orientation``), then cut along S
  into axial slices shown in radiological display (``Geometry.to_slices``); results go
  back through the inverse transform, with the input's own header and affine.
- DICOM (pydicom and nibabel, ``pip install -e ".[dicom]"``): a folder holding one axial
  series of ``.dcm`` files, or one ``.dcm`` file. Rescale slope and intercept give Hounsfield
  units; slices are sorted by their position (ImagePositionPatient) along the slice normal
  (from ImageOrientationPatient); results are NIfTI files (``.nii.gz``) whose affine is
  built from the DICOM geometry (``dicom_affine``).
- A folder of slices or volumes stands for its files (``expand_inputs``).

A bad input raises InputError with one line naming the file (or folder) and the value.
"""

import contextlib
import dataclasses
import os
from typing import NamedTuple

import cv2
import numpy as np
import tifffile

from lungseg_jax.core import files
from lungseg_jax.data.preprocess import window
from lungseg_jax.data.slices import as_slice, tiff_page_spacing_mm

SLICE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
VOLUME_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIX = ".dcm"
SUFFIXES = SLICE_SUFFIXES + VOLUME_SUFFIXES + (DICOM_SUFFIX,)
DICOM_OUTPUT_SUFFIX = ".nii.gz"
# DICOM geometry tolerances: direction cosines that agree, and slice gaps that are even.
COSINE_TOLERANCE = 1e-4
GAP_TOLERANCE = (0.01, 0.01)  # relative, mm: a gap may differ from the median by the larger
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AXIS_NAMES = ("right-left", "anterior-posterior", "superior-inferior")


class InputError(ValueError):
    """A bad input; the message names the file and what is wrong."""


class Input(NamedTuple):
    """One input of a call: a file, or a folder holding a DICOM series. ``kind``: 'slice',
    'volume', 'dicom' or None (unsupported; reading it raises ``error``'s kind of message);
    ``error``: an InputError already known (a folder with nothing to predict)."""

    path: str
    kind: str | None
    error: InputError | None = None


def split_name(path: str) -> tuple:
    """(stem, suffix), with ``.nii.gz`` as one suffix; the suffix lower-cased. A folder's
    stem is its whole name, its suffix ''."""
    if os.path.isdir(path):
        return os.path.basename(os.path.normpath(path)), ""
    base = os.path.basename(path)
    if base.lower().endswith(".nii.gz"):
        return base[:-7], ".nii.gz"
    stem, suffix = os.path.splitext(base)
    return stem, suffix.lower()


def kind_of(path: str) -> str | None:
    """'slice', 'volume' or 'dicom' by the suffix of a file's name (None: unsupported)."""
    suffix = split_name(path)[1]
    if suffix in SLICE_SUFFIXES:
        return "slice"
    if suffix in VOLUME_SUFFIXES:
        return "volume"
    return "dicom" if suffix == DICOM_SUFFIX else None


def output_suffix(path: str, kind: str | None = None) -> str:
    """The suffix of an input's mask: its own, or ``.nii.gz`` for DICOM."""
    kind = kind or kind_of(path)
    return DICOM_OUTPUT_SUFFIX if kind == "dicom" else split_name(path)[1]


def _folder_files(folder: str) -> list:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if not n.startswith(".") and os.path.isfile(os.path.join(folder, n)))


def expand_inputs(paths: list) -> list:
    """Each of ``paths`` as Inputs, in order: a file as itself (kind by its suffix); a
    folder holding ``.dcm`` files as one DICOM series; a folder of slices or volumes as its
    files of those formats, sorted (its other files and subfolders are left out). A folder
    with both, or with neither, is one Input with its ``error``."""
    inputs = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.isdir(path):
            inputs.append(Input(path, kind_of(path)))
            continue
        try:
            found = [(f, kind_of(f)) for f in _folder_files(path)]
        except OSError as e:
            inputs.append(Input(path, None, InputError(f"{path}: cannot list the folder: {e}")))
            continue
        dicom = [f for f, kind in found if kind == "dicom"]
        others = [(f, kind) for f, kind in found if kind in ("slice", "volume")]
        if dicom and others:
            error = InputError(f"{path}: holds both DICOM (.dcm) files and other inputs "
                               f"({os.path.basename(others[0][0])}, ...): give the series "
                               "and the other files as separate folders")
            inputs.append(Input(path, None, error))
        elif dicom:
            inputs.append(Input(path, "dicom"))
        elif others:
            inputs.extend(Input(f, kind) for f, kind in others)
        else:
            inputs.append(Input(path, None, InputError(
                f"{path}: a folder with nothing to predict: no {', '.join(SUFFIXES)} files "
                "(subfolders are not searched)")))
    return inputs


def _import(module: str, path: str, extra: str):
    """The optional ``module``, or an InputError naming ``path`` and the extra to install."""
    try:
        return __import__(module)
    except ImportError as e:  # reported like any bad input; the other inputs go on
        raise InputError(f"{path}: reading it needs {module}: "
                         f'pip install -e ".[{extra}]"') from e


@contextlib.contextmanager
def _reading(path: str):
    """Turns the exception of a reader of ``path`` into an InputError naming the file."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:  # the readers raise many types for broken files
        raise InputError(f"{path}: cannot read: {e}") from e


def _nonempty(array: np.ndarray, path: str, kind: str) -> np.ndarray:
    if array.size == 0:
        raise InputError(f"{path}: empty {kind}, shape {array.shape}")
    return array


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


def _slice_2d(array: np.ndarray, path: str) -> np.ndarray:
    try:
        return _nonempty(as_slice(array, path), path, "slice")
    except ValueError as e:
        raise InputError(str(e)) from e


def _volume_array(values: np.ndarray, path: str) -> np.ndarray:
    """A non-empty, finite 3-D array; InputError naming ``path`` (and the first non-finite
    voxel's index in the file's array) otherwise."""
    # Squeeze only trailing singleton axes (e.g. a 4-D file with one time point).
    while values.ndim > 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {values.shape}")
    _nonempty(values, path, "volume")
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0]
        raise InputError(f"{path}: non-finite voxel value {values[tuple(bad)]} at array "
                         f"index {tuple(int(i) for i in bad)}")
    return values


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
    nibabel = _import("nibabel", path, "nifti")
    with _reading(path):
        image = nibabel.load(path)
        values = np.asarray(image.dataobj, np.float32)
        affine = np.asarray(image.affine, float)
    values = _volume_array(values, path)
    geometry = Geometry(affine, values.shape, image.header, type(image))
    warnings, unknown = _orientation_doubts(path, image.header, geometry)
    return Scan(window(geometry.to_slices(values), *hu_window), suffix, geometry.spacing_mm,
                True, geometry, unknown, warnings)


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


def _dicom_datasets(path: str, pydicom) -> tuple:
    """(file names, datasets) of the ``.dcm`` files of folder ``path`` (or file ``path``):
    one series."""
    names = ([f for f in _folder_files(path) if kind_of(f) == "dicom"] if os.path.isdir(path)
             else [path])
    datasets = []
    for name in names:
        with _reading(name):
            datasets.append(pydicom.dcmread(name))
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


def _dicom_slice(path: str, name: str, ds, first: tuple) -> tuple:
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
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise InputError(f"{name}: a multi-frame image ({ds.NumberOfFrames} frames); expected "
                         "one slice per file")
    with _reading(name):
        pixels = _slice_2d(ds.pixel_array, name)
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


def _read_dicom(path: str, hu_window: tuple) -> Scan:
    """One axial series (a folder of ``.dcm`` files, or one file) as a Scan whose geometry
    is ``dicom_affine``'s; one slice is measured as a slice (mm²), several as a volume."""
    pydicom = _import("pydicom", path, "dicom")
    _import("nibabel", path, "dicom")  # the masks are written as NIfTI
    names, datasets = _dicom_datasets(path, pydicom)
    if not names:
        raise InputError(f"{path}: no .dcm files")
    orientation = _floats(datasets[0], "ImageOrientationPatient", 6, names[0])
    spacing = _floats(datasets[0], "PixelSpacing", 2, names[0])
    normal = _axial_normal(path, orientation)
    images, positions = zip(*[_dicom_slice(path, name, ds, (names[0], orientation, spacing))
                              for name, ds in zip(names, datasets)])
    for name, image in zip(names, images):
        if image.shape != images[0].shape:
            raise InputError(f"{path}: slices of several sizes ({os.path.basename(name)} is "
                             f"{image.shape}, {os.path.basename(names[0])} {images[0].shape})")
    order = _slice_order(path, names, positions, normal)
    if len(order) > 1:  # from one slice's position to the next (with a gantry tilt's shear)
        step = (positions[order[-1]] - positions[order[0]]) / (len(order) - 1)
    else:  # one slice: its thickness, for the NIfTI header only
        ds = datasets[0]
        step = normal * float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    # The NIfTI array (column, row, slice): voxel (i, j, k) is pixel (j, i) of slice k.
    values = _volume_array(np.stack([images[i] for i in order], axis=-1).transpose(1, 0, 2),
                           path)
    geometry = Geometry(dicom_affine(positions[order[0]], orientation, spacing, step),
                        values.shape)
    modality = str(datasets[0].get("Modality", "CT"))
    warnings = [] if modality == "CT" else [
        f"{path}: Modality is {modality!r}, not CT: its values may not be Hounsfield units"]
    is_volume = len(order) > 1
    return Scan(window(geometry.to_slices(values), *hu_window), DICOM_OUTPUT_SUFFIX,
                geometry.spacing_mm if is_volume else geometry.spacing_mm[:2], is_volume,
                geometry, warnings=warnings)


def read_scan(path: str, hu_window: tuple, spacing_mm: float | None = None) -> Scan:
    """Reads one input (a file, or a folder holding a DICOM series); raises InputError for
    an unreadable, unsupported, empty, mis-shaped or non-finite input. ``spacing_mm``: the
    pixel spacing of 2-D slices that do not record it."""
    path = os.fspath(path)
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
        raise InputError(f"{path}: no such file")
    if kind == "volume":
        return _read_nifti(path, suffix, hu_window)
    if kind == "dicom":
        return _read_dicom(path, hu_window)
    given = (spacing_mm, spacing_mm) if spacing_mm else None
    if suffix == ".png":
        return Scan(_read_png(path), suffix, given)
    if suffix == ".npy":
        with _reading(path):
            image, spacing = np.load(path, allow_pickle=False), None
    else:
        with _reading(path), tifffile.TiffFile(path) as tif:
            image, spacing = tif.asarray(), tiff_page_spacing_mm(tif.pages[0])
    return Scan(window(_slice_2d(image, path), *hu_window)[None], suffix, spacing or given)


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
