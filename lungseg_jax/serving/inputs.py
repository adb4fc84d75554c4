"""The inputs of predict: their kinds by name, folders expanded into inputs, and the checks
every reader shares (docs/ct_inputs.md). A bad input raises InputError with one line naming
the file (or folder) and the value.

- 2-D slices: ``.tif``, ``.tiff``, ``.npy``, ``.png``; volumes: ``.nii``, ``.nii.gz``;
  DICOM: a ``.dcm`` file, or a folder holding one series of them.
- A folder of slices or volumes stands for its files (``expand_inputs``).
"""

import contextlib
import os
from typing import NamedTuple

import numpy as np

from lungseg_jax.data.slices import as_slice

SLICE_SUFFIXES = (".tif", ".tiff", ".png", ".npy")
VOLUME_SUFFIXES = (".nii", ".nii.gz")
DICOM_SUFFIX = ".dcm"
SUFFIXES = SLICE_SUFFIXES + VOLUME_SUFFIXES + (DICOM_SUFFIX,)
DICOM_OUTPUT_SUFFIX = ".nii.gz"


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


def folder_files(folder: str) -> list:
    """The files of ``folder`` (not its subfolders), hidden ones left out, sorted."""
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
            found = [(f, kind_of(f)) for f in folder_files(path)]
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


def import_extra(module: str, path: str, extra: str):
    """The optional ``module``, or an InputError naming ``path`` and the extra to install."""
    try:
        return __import__(module)
    except ImportError as e:  # reported like any bad input; the other inputs go on
        raise InputError(f"{path}: reading it needs {module}: "
                         f'pip install -e ".[{extra}]"') from e


@contextlib.contextmanager
def reading(path: str):
    """Turns the exception of a reader of ``path`` into an InputError naming the file."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:  # the readers raise many types for broken files
        raise InputError(f"{path}: cannot read: {e}") from e


def nonempty(array: np.ndarray, path: str, kind: str) -> np.ndarray:
    if array.size == 0:
        raise InputError(f"{path}: empty {kind}, shape {array.shape}")
    return array


def slice_2d(array: np.ndarray, path: str) -> np.ndarray:
    """A non-empty 2-D slice (``data.slices.as_slice``); InputError naming ``path``."""
    try:
        return nonempty(as_slice(array, path), path, "slice")
    except ValueError as e:
        raise InputError(str(e)) from e


def volume_array(values: np.ndarray, path: str) -> np.ndarray:
    """A non-empty, finite 3-D array; InputError naming ``path`` (and the first non-finite
    voxel's index in the file's array) otherwise."""
    # Squeeze only trailing singleton axes (e.g. a 4-D file with one time point).
    while values.ndim > 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {values.shape}")
    nonempty(values, path, "volume")
    if not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0]
        raise InputError(f"{path}: non-finite voxel value {values[tuple(bad)]} at array "
                         f"index {tuple(int(i) for i in bad)}")
    return values
