"""Slices of the dataset's folder layout: reading, writing and checking image/mask pairs.

Folder layout (Kaggle "Finding and Measuring Lungs in CT Data", 2D part)::

    DIR/2d_images/NAME.tif   int16 Hounsfield-like intensities
    DIR/2d_masks/NAME.tif    lung mask, 0/1 or 0/255 (binarised with > 0)

Data that looks wrong is refused when read, naming the file: images that are not
Hounsfield-like, two files of one slice, masks that are all lung or inverted.

Everything here is host-side numpy, run once per run; the training step reads the
preprocessed arrays from device memory.
"""

import dataclasses
import os

import numpy as np
import tifffile

IMAGE_DIR, MASK_DIR = "2d_images", "2d_masks"
TIFF_SUFFIXES = (".tif", ".tiff")
# configs/default.py's lung window (hu_min, hu_max), for callers without a config.
LUNG_WINDOW = (-1350.0, 150.0)
# An image is refused as nearly constant when the central 99% of its values, clipped to the
# window, span less than 4% of it (+-0.02 of one windowed value): the model would see one
# grey. The 240 real slices span at least 67% of the lung window.
NEAR_CONSTANT_SPREAD = 0.04
# A mask is refused when more than these fractions of its pixels, or of its border's pixels,
# are lung: lungs lie inside the body (the 240 real masks: at most 57%, and 0% of the border).
MAX_LUNG_FRACTION, MAX_LUNG_BORDER_FRACTION = 0.9, 0.5
SWITCH_HINT = "config.data.sanity_checks=False accepts it"


@dataclasses.dataclass(frozen=True)
class Slices:
    """Raw slices: names, Hounsfield images and binary masks (lists of 2-D arrays)."""

    names: list
    images: list
    masks: list

    def __len__(self):
        return len(self.names)

    def subset(self, indices) -> "Slices":
        return Slices([self.names[i] for i in indices], [self.images[i] for i in indices],
                      [self.masks[i] for i in indices])


# TIFF ResolutionUnit CENTIMETER; inch (2) is usually a display default, not a real spacing.
TIFF_UNIT_MM = {3: 10.0}


def tiff_page_spacing_mm(page) -> tuple | None:
    """(row, column) pixel spacing in mm of a tifffile page's resolution tags in
    centimetres, else None."""
    x, y, unit = (page.tags.get(n) for n in ("XResolution", "YResolution", "ResolutionUnit"))
    if x is None or y is None or unit is None:
        return None
    unit_mm = TIFF_UNIT_MM.get(int(unit.value))
    (xn, xd), (yn, yd) = x.value, y.value
    if unit_mm is None or not xn or not yn:
        return None
    return (unit_mm * yd / yn, unit_mm * xd / xn)


def tiff_spacing_mm(path: str) -> tuple | None:
    """``tiff_page_spacing_mm`` of the TIFF file ``path``'s first page."""
    with tifffile.TiffFile(path) as tif:
        return tiff_page_spacing_mm(tif.pages[0])


def as_slice(array: np.ndarray, path: str) -> np.ndarray:
    """``array`` squeezed to a 2-D slice of finite numbers; ValueError naming ``path``
    (and the first bad pixel) otherwise."""
    array = np.squeeze(array)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D slice, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{path}: expected numeric pixel values, got dtype {array.dtype}")
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        raise ValueError(f"{path}: non-finite pixel value {array[tuple(bad)]} at "
                         f"(row, column) {tuple(int(i) for i in bad)}")
    return array


def check_pair(image_path: str, image: np.ndarray, mask_path: str, mask: np.ndarray) -> None:
    """Raises ValueError naming the file if a mask does not fit its image: another shape,
    or values other than 0/1 or 0/255. Slices of different sizes are accepted: each is
    resized to ``config.data.image_size``."""
    if image.shape != mask.shape:
        raise ValueError(f"{mask_path}: mask shape {mask.shape} != image shape {image.shape} "
                         f"of {image_path}")
    values = np.unique(mask)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        raise ValueError(f"{mask_path}: mask is not binary (values {values[:6]}); "
                         "expected 0/1 or 0/255")


def check_hounsfield(path: str, image: np.ndarray, hu_window=LUNG_WINDOW) -> None:
    """Raises ValueError naming ``path`` if ``image`` does not look like Hounsfield units:
    unsigned 8-bit pixels (0-255, which the lung window maps to its top tenth), or values
    that the window ``(hu_min, hu_max)`` maps to nearly one value (``NEAR_CONSTANT_SPREAD``)."""
    if image.dtype == np.uint8:
        raise ValueError(f"{path}: unsigned 8-bit pixels (0-255) are not Hounsfield units; "
                         f"expected int16 HU as in the dataset's {IMAGE_DIR}/ ({SWITCH_HINT})")
    hu_min, hu_max = hu_window
    low, high = np.clip(np.percentile(image, (0.5, 99.5)), hu_min, hu_max)
    if high - low < NEAR_CONSTANT_SPREAD * (hu_max - hu_min):
        raise ValueError(f"{path}: nearly constant in the Hounsfield window [{hu_min:g}, "
                         f"{hu_max:g}] (99% of its values in [{low:g}, {high:g}]); expected "
                         f"Hounsfield units ({SWITCH_HINT})")


def check_mask_extent(path: str, mask: np.ndarray) -> None:
    """Raises ValueError naming ``path`` if the binary ``mask`` marks more lung than a lung
    mask can: more than ``MAX_LUNG_FRACTION`` of the image (all lung), or more than
    ``MAX_LUNG_BORDER_FRACTION`` of its border (inverted: lung 0, the rest 1)."""
    lung = mask > 0
    if lung.mean() > MAX_LUNG_FRACTION:
        raise ValueError(f"{path}: the mask marks {lung.mean():.1%} of the image as lung "
                         f"(at most {MAX_LUNG_FRACTION:.0%} expected): all lung, or inverted?")
    border = np.concatenate([lung[0], lung[-1], lung[1:-1, 0], lung[1:-1, -1]])
    if border.mean() > MAX_LUNG_BORDER_FRACTION:
        raise ValueError(f"{path}: {border.mean():.1%} of the mask's border is lung (at most "
                         f"{MAX_LUNG_BORDER_FRACTION:.0%} expected): inverted (lung 0, the "
                         "rest 1)?")


def _tiff_names(folder: str) -> dict:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"missing folder {folder!r} (expected DIR/{IMAGE_DIR} and "
                                f"DIR/{MASK_DIR} with matching .tif files)")
    names = {}
    for file in sorted(os.listdir(folder)):
        if not file.lower().endswith(TIFF_SUFFIXES):
            continue
        name, path = os.path.splitext(file)[0], os.path.join(folder, file)
        if name in names:  # X.tif and X.tiff: which one is the slice?
            raise ValueError(f"{names[name]} and {path}: two files for slice {name!r}; "
                             "keep one")
        names[name] = path
    return names


def _read_tiff(path: str) -> np.ndarray:
    try:
        array = tifffile.imread(path)
    except Exception as e:  # tifffile raises many types for broken files
        raise ValueError(f"cannot read {path}: {e}") from e
    return as_slice(array, path)


def paired_tiff_names(path: str) -> tuple[dict, dict]:
    """``({name: image file}, {name: mask file})`` of ``path``'s slices, the same names.

    Raises FileNotFoundError/ValueError naming the folder, or the files without a partner.
    """
    images = _tiff_names(os.path.join(path, IMAGE_DIR))
    masks = _tiff_names(os.path.join(path, MASK_DIR))
    if not images:
        raise ValueError(f"no .tif images in {os.path.join(path, IMAGE_DIR)!r}")
    for missing, have, where in ((set(images) - set(masks), "images", MASK_DIR),
                                 (set(masks) - set(images), "masks", IMAGE_DIR)):
        if missing:
            raise ValueError(f"{len(missing)} {have} in {path!r} have no partner in {where}/: "
                             f"{sorted(missing)[:5]}")
    return images, masks


def read_folder(path: str, *, hu_window=LUNG_WINDOW, sanity_checks: bool = True) -> Slices:
    """Reads and checks ``path/2d_images/*.tif`` with ``path/2d_masks/*.tif`` (same names).

    Every mask must look like a lung mask (``check_mask_extent``); with ``sanity_checks``,
    every image must look like Hounsfield units in ``hu_window`` (``check_hounsfield``).
    Raises FileNotFoundError/ValueError naming the folder, file or value at fault.
    """
    images, masks = paired_tiff_names(path)
    slices = Slices([], [], [])
    for name in sorted(images):
        image, mask = _read_tiff(images[name]), _read_tiff(masks[name])
        check_pair(images[name], image, masks[name], mask)
        if sanity_checks:
            check_hounsfield(images[name], image, hu_window)
        mask = (mask > 0).astype(np.uint8)
        check_mask_extent(masks[name], mask)
        slices.names.append(name)
        slices.images.append(image)
        slices.masks.append(mask)
    if not any(m.any() for m in slices.masks):
        raise ValueError(f"every mask in {os.path.join(path, MASK_DIR)!r} is empty")
    return slices


def write_folder(path: str, slices: Slices) -> None:
    """Writes ``slices`` in the dataset's folder layout (masks as 0/255 like Kaggle's)."""
    for sub in (IMAGE_DIR, MASK_DIR):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    for name, image, mask in zip(slices.names, slices.images, slices.masks):
        tifffile.imwrite(os.path.join(path, IMAGE_DIR, name + ".tif"), image)
        tifffile.imwrite(os.path.join(path, MASK_DIR, name + ".tif"),
                         (mask > 0).astype(np.uint8) * 255)
