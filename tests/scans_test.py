"""Real CT geometry: NIfTI volumes in any orientation, DICOM series, folders of inputs, and
the lungs' sides, checked against masks made from known geometry.

The phantom is defined in world coordinates (RAS+ millimetres): a right lung and a left lung
of different extents, the left one missing from the lowest slice. Each file orientation
stores the same phantom; a voxel's expected value comes from its world position through the
file's affine alone, never through the code under test. The models are exports of known
functions, and the slices have the models' input size, so nothing is resized and the
expected masks are exact:

- ``below``: lung = darker than -600 HU;
- ``quadrant``: snapshot 1 marks the dark pixels of the displayed slice's top-left quadrant,
  snapshot 2 those of its top half; with threshold 0.75 the mask is the top-left quadrant
  (anterior, patient's right in radiological display) and the snapshots' spread is 0.5 on
  the top-right quadrant (anterior, patient's left): a mask or map in the wrong orientation
  lands on other voxels.
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tifffile

from conftest import REPO
from lungseg_jax.serving import export, exported, inference, predict, scans

nibabel = pytest.importorskip("nibabel", reason='NIfTI volumes need nibabel: '
                              'pip install -e ".[nifti]"')
try:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
except ImportError:  # the [dicom] extra; only the DICOM tests need it
    pydicom = None
needs_pydicom = pytest.mark.skipif(pydicom is None, reason='DICOM series need pydicom: '
                                   'pip install -e ".[dicom]"')

HU_WINDOW = (-1350.0, 150.0)
SIZE = 32
DARK, BODY = -850.0, 40.0
# The phantom's canonical grid: voxel counts and sizes along R, A, S, and where voxel 0 is.
COUNTS, SPACING, ORIGIN = (32, 32, 5), (0.7, 0.8, 2.5), (-120.0, 35.0, 60.0)
VOXEL_ML = 0.7 * 0.8 * 2.5 / 1000
AXIS_OF = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
# Axial files (RAS, LPS as DICOM converters write, LAS), a sagittal stack (PIL: slices along
# R-L), a coronal one (LSP: slices along A-P) and one with the slice axis first (SRA).
ORIENTATIONS = ["RAS", "LPS", "LAS", "PIL", "LSP", "SRA"]


def window(hu):
    return (hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0])


def dark(images):
    return jax.nn.sigmoid(200.0 * (window(-600.0) - images[..., 0]))


def quadrant_members():
    top = jnp.arange(SIZE)[:, None] < SIZE // 2
    left = jnp.arange(SIZE)[None, :] < SIZE // 2
    return {1: lambda images: dark(images) * (top & left), 2: lambda images: dark(images) * top}


def write_model(folder, members, threshold):
    export.write_export(str(folder), members, (SIZE, SIZE, 1),
                        {"hu_min": HU_WINDOW[0], "hu_max": HU_WINDOW[1], "threshold": threshold},
                        platforms=("cpu",))
    return exported.ExportedModel(str(folder))


@pytest.fixture(scope="module")
def below_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("below")
    write_model(folder, {1: dark, 2: dark}, 0.5)
    return folder


@pytest.fixture(scope="module")
def below(below_dir):
    return exported.ExportedModel(str(below_dir))


@pytest.fixture(scope="module")
def quadrant(tmp_path_factory):
    return write_model(tmp_path_factory.mktemp("quadrant"), quadrant_members(), 0.75)


# ---- the phantom, by world position ------------------------------------------------------

def canonical_index(world):
    """Voxel indices (a, b, c) along R, A, S of world points (..., 3) on the phantom's grid."""
    index = (world - np.array(ORIGIN)) / np.array(SPACING)
    assert np.allclose(index, np.rint(index), atol=1e-6)  # voxel centres onto voxel centres
    return np.rint(index).astype(int)


def right_lung(a, b, c):
    return (18 <= a) & (a <= 27) & (4 <= b) & (b <= 21)  # 10 x 18 x 5 = 900 voxels


def left_lung(a, b, c):
    return (3 <= a) & (a <= 14) & (8 <= b) & (b <= 29) & (c >= 1)  # 12 x 22 x 4 = 1056


def oriented_file(axcodes):
    """(HU array, affine, world coordinates of each voxel) of the phantom stored with array
    axes ``axcodes`` (each axis increasing toward its letter)."""
    affine = np.diag([0.0, 0.0, 0.0, 1.0])
    shape = []
    for k, letter in enumerate(axcodes):
        w, sign = AXIS_OF[letter]
        shape.append(COUNTS[w])
        affine[w, k] = sign * SPACING[w]
        affine[w, 3] = ORIGIN[w] + (0 if sign > 0 else SPACING[w] * (COUNTS[w] - 1))
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    a, b, c = np.moveaxis(canonical_index(world), -1, 0)
    hu = np.where(right_lung(a, b, c) | left_lung(a, b, c), DARK, BODY).astype(np.int16)
    return hu, affine, world


def save_nifti(path, hu, affine, qform_code=1):
    image = nibabel.Nifti1Image(hu, affine)
    image.set_qform(affine, code=qform_code)
    nibabel.save(image, path)
    return nibabel.load(path)


def expected_display():
    """The phantom's axial slices as the training slices show them: slice c (inferior
    first), row 0 the most anterior voxels, column 0 the patient's rightmost."""
    a, b, c = np.meshgrid(*[np.arange(n) for n in COUNTS], indexing="ij")
    hu = np.where(right_lung(a, b, c) | left_lung(a, b, c), DARK, BODY)
    rows, cols = np.meshgrid(np.arange(COUNTS[1]), np.arange(COUNTS[0]), indexing="ij")
    return np.stack([hu[COUNTS[0] - 1 - cols, COUNTS[1] - 1 - rows, k] for k in range(COUNTS[2])])


# ---- NIfTI orientation ----------------------------------------------------------------------

@pytest.mark.parametrize("axcodes", ORIENTATIONS)
def test_any_orientation_reads_as_the_same_axial_slices_in_radiological_display(
        tmp_path, axcodes):
    hu, affine, _ = oriented_file(axcodes)
    save_nifti(tmp_path / "ct.nii.gz", hu, affine)
    scan = scans.read_scan(str(tmp_path / "ct.nii.gz"), HU_WINDOW)
    np.testing.assert_allclose(scan.slices, window(expected_display()), atol=1e-6)
    assert scan.geometry.axcodes == axcodes and scan.warnings == []
    assert scan.spacing_mm == pytest.approx((0.8, 0.7, 2.5))  # rows A, columns R, slices S
    # The way back: any array in the slices' layout returns to the file's own order.
    noise = np.random.default_rng(0).normal(size=scan.slices.shape)
    back = scan.geometry.to_file(noise)
    assert back.shape == hu.shape
    np.testing.assert_array_equal(scan.geometry.to_slices(back), noise)


@pytest.mark.parametrize("axcodes", ORIENTATIONS)
def test_oriented_volumes_get_their_masks_in_their_own_order_affine_and_header(
        quadrant, tmp_path, axcodes):
    hu, affine, world = oriented_file(axcodes)
    source = save_nifti(tmp_path / "ct.nii.gz", hu, affine)
    result = predict.predict_file(quadrant, str(tmp_path / "ct.nii.gz"), str(tmp_path / "out"),
                                  uncertainty=True)
    a, b, c = np.moveaxis(canonical_index(world), -1, 0)
    lungs = right_lung(a, b, c) | left_lung(a, b, c)
    anterior, patient_right = b >= COUNTS[1] // 2, a >= COUNTS[0] // 2
    mask_file = nibabel.load(tmp_path / "out" / "ct_mask.nii.gz")
    mask = np.asarray(mask_file.dataobj)
    np.testing.assert_array_equal(mask, lungs & anterior & patient_right)
    spread = np.asarray(nibabel.load(tmp_path / "out" / "ct_uncertainty.nii.gz").dataobj)
    np.testing.assert_allclose(spread, 0.5 * (lungs & anterior & ~patient_right), atol=1e-6)
    for written in (mask_file, nibabel.load(tmp_path / "out" / "ct_uncertainty.nii.gz")):
        np.testing.assert_array_equal(written.affine, source.affine)
        for field in ("qform_code", "sform_code", "pixdim", "quatern_b", "quatern_c",
                      "quatern_d", "qoffset_x", "srow_x", "srow_y", "srow_z"):
            np.testing.assert_array_equal(written.header[field], source.header[field])
    assert mask_file.header.get_data_dtype() == np.uint8
    # The right lung's anterior part: 10 x 6 x 5 voxels of 0.7 x 0.8 x 2.5 mm.
    assert result["lung_voxels"] == 300
    assert result["lung_volume_ml"] == pytest.approx(0.42)
    assert result["voxel_size_mm"] == pytest.approx([0.8, 0.7, 2.5])
    assert result["shape"] == list(hu.shape) and result["orientation"] == axcodes


@pytest.mark.parametrize("axcodes", ["LPS", "PIL", "RAS"])
def test_sides_of_a_volume_follow_the_patients_orientation(below, tmp_path, axcodes):
    hu, affine, world = oriented_file(axcodes)
    save_nifti(tmp_path / "ct.nii", hu, affine)
    result = predict.predict_file(below, str(tmp_path / "ct.nii"), str(tmp_path / "out"),
                                  label_sides=True)
    a, b, c = np.moveaxis(canonical_index(world), -1, 0)
    labels = np.asarray(nibabel.load(tmp_path / "out" / "ct_mask.nii").dataobj)
    np.testing.assert_array_equal(labels, np.where(right_lung(a, b, c), 1,
                                                   np.where(left_lung(a, b, c), 2, 0)))
    # Hand-computed: 900 and 1056 voxels of 0.7 x 0.8 x 2.5 mm = 1.4 mm³.
    assert result["lung_volume_ml"] == pytest.approx(2.7384)
    assert result["sides"] == {"right": {"lung_voxels": 900, "lung_volume_ml": pytest.approx(1.26)},
                               "left": {"lung_voxels": 1056,
                                        "lung_volume_ml": pytest.approx(1.4784)}}
    assert "(right 1.3 mL, left 1.5 mL)" in predict.describe(result)


def stacked_slices():
    """Radiological-display slices (rows A->P, columns R->L) of the phantom, stacked as
    ``np.stack(slices, -1)`` does: (row, column, slice)."""
    return np.stack(list(expected_display()), axis=-1).astype(np.int16)


def test_a_volume_of_unknown_orientation_is_segmented_with_a_warning_and_no_sides(
        below, tmp_path):
    path = tmp_path / "stack.nii.gz"
    nibabel.save(nibabel.Nifti1Image(stacked_slices(), np.eye(4)), path)  # sform code 2
    scan = scans.read_scan(str(path), HU_WINDOW)
    assert scan.warnings == [
        f"{path}: its affine is the identity (1 mm voxels at the origin, as an array saved "
        "without its geometry has): taking its array axes as RAS and slicing along array "
        "axis 2 (S) as axial; check the mask's orientation"]
    result = predict.predict_file(below, str(path), str(tmp_path / "out"))
    assert result["warnings"] == scan.warnings
    with pytest.raises(predict.InputError) as error:
        predict.predict_file(below, str(path), str(tmp_path / "other"), label_sides=True)
    assert str(error.value).startswith(f"{path}: cannot tell the patient's right from left: "
                                       "its affine is the identity")
    uncoded = tmp_path / "uncoded.nii"
    nibabel.save(nibabel.Nifti1Image(stacked_slices(), None), uncoded)  # qform, sform codes 0
    scan = scans.read_scan(str(uncoded), HU_WINDOW)
    assert scan.warnings == [
        f"{uncoded}: its header records no orientation (qform_code and sform_code are 0): "
        "taking nibabel's default, array axes LAS, and slicing along array axis 2 (S) as "
        "axial; check the mask's orientation"]
    assert scan.sides_unknown.startswith("its header records no orientation")


def test_a_volume_stacked_along_another_axis_is_named_with_its_axis(tmp_path):
    path = tmp_path / "stack0.nii.gz"
    hu = np.moveaxis(stacked_slices(), -1, 0)  # np.stack(slices, 0): (slice, row, column)
    image = nibabel.Nifti1Image(hu, np.diag([2.5, 0.8, 0.7, 1.0]))
    image.set_qform(image.affine, code=1)
    nibabel.save(image, path)
    assert scans.read_scan(str(path), HU_WINDOW).warnings == [
        f"{path}: axial slices along array axis 2 (S) would be 32 x 5 voxels while that axis "
        "has 32: the volume looks stacked along another axis; check its affine"]


# ---- DICOM ------------------------------------------------------------------------------------

DICOM_SPACING = (0.8, 0.7)  # PixelSpacing: between rows, between columns
DICOM_GAP, DICOM_Z0 = 3.0, 30.0


def dicom_world_lungs(world_lps):
    """(right, left) lung masks of DICOM world points (..., 3), LPS millimetres: the patient's
    right is -x, anterior -y."""
    x, y, z = np.moveaxis(world_lps, -1, 0)
    right = (-10.05 < x) & (x < -2.95) & (-8.1 < y) & (y < 8.1)
    left = (0.95 < x) & (x < 8.05) & (-5.05 < y) & (y < 12.05) & (z > DICOM_Z0 + DICOM_GAP / 2)
    return right, left


def dicom_pixels_world(position, orientation, shape=(SIZE, SIZE)):
    """World LPS position (rows, columns, 3) of each pixel of a DICOM slice."""
    rows, cols = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    return (np.array(position) + cols[..., None] * DICOM_SPACING[1] * row_dir
            + rows[..., None] * DICOM_SPACING[0] * col_dir)


def write_dicom(path, hu, position, orientation, series="1.2.826.0.1.3680043.10.1",
                slope=0.25, intercept=-1024.0, thickness=2.0):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series, "1.2.3"
    ds.ImageOrientationPatient = list(orientation)
    ds.ImagePositionPatient = list(position)
    ds.PixelSpacing = list(DICOM_SPACING)
    ds.SliceThickness = thickness  # not the gap between positions (3 mm): never used for it
    # Stored values (HU + 1024) / 0.25: read without the slope, the lungs (-850 HU) would be
    # -328 HU and the body; without the intercept, both would be bright.
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.set_pixel_data(np.rint((hu - intercept) / slope).astype(np.uint16), "MONOCHROME2", 16)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


# Standard (row direction +x: columns toward the patient's left, rows toward posterior) and
# rotated by 180 degrees in plane (as a prone patient may be stored).
DICOM_ORIENTATIONS = {"standard": ((1, 0, 0, 0, 1, 0), (-12.0, -10.0)),
                      "rotated": ((-1, 0, 0, 0, -1, 0), (9.7, 14.8))}


def write_series(folder, orientation_name="standard", count=5, **options):
    """A series of ``count`` slices written in shuffled order under names that sort otherwise;
    returns [(file, its first pixel's position)] in position order."""
    orientation, (x0, y0) = DICOM_ORIENTATIONS[orientation_name]
    folder.mkdir(exist_ok=True)
    written = []
    for k, name in zip(range(count), ["c", "a", "e", "b", "d"][:count]):
        position = (x0, y0, DICOM_Z0 + DICOM_GAP * k)
        right, left = dicom_world_lungs(dicom_pixels_world(position, orientation))
        hu = np.where(right | left, DARK, BODY)
        write_dicom(folder / f"{name}.dcm", hu, position, orientation, **options)
        written.append((folder / f"{name}.dcm", position))
    return written


def voxels_of(image, world_lps):
    """Indices of the voxels of a NIfTI ``image`` at world LPS points (..., 3)."""
    ras = world_lps * np.array([-1.0, -1.0, 1.0])
    ijk = (ras - image.affine[:3, 3]) @ np.linalg.inv(image.affine[:3, :3]).T
    assert np.allclose(ijk, np.rint(ijk), atol=1e-4)  # pixel centres onto voxel centres
    return tuple(np.moveaxis(np.rint(ijk).astype(int), -1, 0))


@needs_pydicom
@pytest.mark.parametrize("orientation_name", sorted(DICOM_ORIENTATIONS))
def test_a_dicom_series_gives_a_nifti_mask_where_its_pixels_are(quadrant, tmp_path,
                                                                orientation_name):
    series = write_series(tmp_path / "series", orientation_name)
    orientation = DICOM_ORIENTATIONS[orientation_name][0]
    result = predict.predict_file(quadrant, str(tmp_path / "series"), str(tmp_path / "out"))
    image = nibabel.load(tmp_path / "out" / "series_mask.nii.gz")
    mask = np.asarray(image.dataobj)
    assert image.header["qform_code"] == image.header["sform_code"] == 1
    assert mask.shape == (SIZE, SIZE, 5) and result["shape"] == [SIZE, SIZE, 5]
    center_x = DICOM_ORIENTATIONS["standard"][1][0] + DICOM_SPACING[1] * (SIZE - 1) / 2
    center_y = DICOM_ORIENTATIONS["standard"][1][1] + DICOM_SPACING[0] * (SIZE - 1) / 2
    for path, position in series:
        world = dicom_pixels_world(position, orientation)
        right, left = dicom_world_lungs(world)
        anterior_right = (world[..., 0] < center_x) & (world[..., 1] < center_y)
        np.testing.assert_array_equal(mask[voxels_of(image, world)],
                                      (right | left) & anterior_right, err_msg=str(path))
    # Hand-computed: the right lung's anterior part is 10 columns x 13 rows x 5 slices of
    # 0.7 x 0.8 mm, 3 mm apart (the positions' gap, not SliceThickness).
    assert result["lung_voxels"] == 650
    assert result["lung_volume_ml"] == pytest.approx(650 * 0.7 * 0.8 * 3.0 / 1000)
    assert result["lung_volume_ml"] == pytest.approx(1.092)
    assert result["voxel_size_mm"] == pytest.approx([0.8, 0.7, 3.0])


@needs_pydicom
def test_dicom_sides_and_the_affine_built_from_its_geometry(below, tmp_path):
    write_series(tmp_path / "ct")
    result = predict.predict_file(below, str(tmp_path / "ct"), str(tmp_path / "out"),
                                  label_sides=True)
    image = nibabel.load(tmp_path / "out" / "ct_mask.nii.gz")
    # Columns go along +x LPS (-x RAS) by 0.7 mm, rows along +y LPS by 0.8 mm, slices +z by 3.
    np.testing.assert_allclose(image.affine, [[-0.7, 0, 0, 12.0], [0, -0.8, 0, 10.0],
                                              [0, 0, 3.0, 30.0], [0, 0, 0, 1]], atol=1e-9)
    labels = np.asarray(image.dataobj)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    # Right lung 10 columns x 20 rows x 5 slices, left 10 x 21 x 4, voxels of 1.68 mm³.
    assert result["sides"] == {
        "right": {"lung_voxels": 1000, "lung_volume_ml": pytest.approx(1.68)},
        "left": {"lung_voxels": 840, "lung_volume_ml": pytest.approx(1.4112)}}
    world = np.stack([dicom_pixels_world((-12.0, -10.0, DICOM_Z0 + DICOM_GAP * k),
                                         DICOM_ORIENTATIONS["standard"][0]) for k in range(5)])
    right, left = dicom_world_lungs(world)
    np.testing.assert_array_equal(labels[voxels_of(image, world)],
                                  np.where(right, 1, np.where(left, 2, 0)))


@needs_pydicom
def test_pydicoms_own_ct_slice(below, tmp_path):
    from pydicom.data import get_testdata_file
    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom's test file CT_small.dcm is not installed with pydicom")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    result = predict.predict_file(below, path, str(tmp_path))
    image = nibabel.load(tmp_path / "CT_small_mask.nii.gz")
    # Its tags: ImagePositionPatient (-158.135803, -179.035797, -75.699997), standard axial
    # orientation, PixelSpacing 0.661468, SliceThickness 5 (one slice: the NIfTI's third axis).
    np.testing.assert_allclose(image.affine, [[-0.661468, 0, 0, 158.135803],
                                              [0, -0.661468, 0, 179.035797],
                                              [0, 0, 5.0, -75.699997], [0, 0, 0, 1]], atol=1e-6)
    mask = np.asarray(image.dataobj)[:, :, 0].T.astype(bool)  # (column, row) -> (row, column)
    truth = hu < -600  # the air above the head: resizing to the model and back blurs edges
    assert (mask & truth).sum() / (mask | truth).sum() > 0.9
    assert result["lung_pixels"] == mask.sum() and "lung_volume_ml" not in result
    assert result["orientation"] == "LPS"  # a slice, yet from a file that records it
    assert result["lung_area_mm2"] == pytest.approx(mask.sum() * 0.661468 ** 2)


@needs_pydicom
def test_dicom_series_that_cannot_be_placed_are_refused_in_one_line(tmp_path):
    mixed = tmp_path / "mixed"
    write_series(mixed, count=2)
    write_dicom(mixed / "z.dcm", np.full((SIZE, SIZE), BODY), (-12.0, -10.0, 50.0),
                DICOM_ORIENTATIONS["standard"][0], series="1.2.826.0.1.3680043.10.2")
    coronal = tmp_path / "coronal"
    coronal.mkdir()
    for k in range(2):
        write_dicom(coronal / f"{k}.dcm", np.full((SIZE, SIZE), BODY), (0.0, 3.0 * k, 0.0),
                    (1, 0, 0, 0, 0, -1))
    twice = tmp_path / "twice"
    write_series(twice, count=3)
    write_dicom(twice / "x.dcm", np.full((SIZE, SIZE), BODY), (-12.0, -10.0, DICOM_Z0 + 3.0),
                DICOM_ORIENTATIONS["standard"][0])
    gap = tmp_path / "gap"
    write_series(gap, count=4)
    os.remove(gap / "e.dcm")  # the third slice of four
    expected = {
        mixed: f"{mixed}: holds 2 series (SeriesInstanceUID 1.2.826.0.1.3680043.10.1, "
               "1.2.826.0.1.3680043.10.2): give one series per folder",
        coronal: f"{coronal}: not an axial series: its slice normal (0.0, 1.0, 0.0) (from "
                 "ImageOrientationPatient (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)) is closest to the "
                 "anterior-posterior axis; only axial series are supported",
        twice: f"{twice}: two slices at one position (33.000 mm along the slice normal): "
               "a.dcm and x.dcm (several acquisitions?)",
        gap: f"{gap}: uneven slice positions: gaps from 3.000 to 6.000 mm along the slice "
             "normal (a missing slice?)"}
    for folder, message in expected.items():
        with pytest.raises(scans.InputError) as error:
            scans.read_scan(str(folder), HU_WINDOW)
        assert str(error.value) == message


@needs_pydicom
def test_a_multi_frame_file_is_refused_before_its_geometry_is_read(tmp_path):
    """Enhanced multi-frame CT keeps ImageOrientationPatient per frame, not at the top: the
    file is named as multi-frame, wherever it sorts in its folder and alone."""
    series = tmp_path / "series"
    write_series(series, count=2)
    enhanced = series / "z.dcm"
    write_dicom(enhanced, np.full((SIZE, SIZE), BODY), (-12.0, -10.0, 90.0),
                DICOM_ORIENTATIONS["standard"][0])
    ds = pydicom.dcmread(enhanced)
    del ds.ImageOrientationPatient, ds.ImagePositionPatient, ds.PixelSpacing
    ds.NumberOfFrames = 3
    ds.PixelData = ds.PixelData * 3
    ds.save_as(enhanced, enforce_file_format=True)
    for path in (series, enhanced):
        with pytest.raises(scans.InputError) as error:
            scans.read_scan(str(path), HU_WINDOW)
        assert str(error.value) == (f"{enhanced}: a multi-frame image (3 frames); expected "
                                    "one slice per file")


def test_a_missing_file_or_folder_is_named_as_missing(tmp_path):
    for name in ("dicom_typo", "scan.nii.gz", "notes.txt"):  # a folder, a file, any suffix
        with pytest.raises(scans.InputError) as error:
            scans.read_scan(str(tmp_path / name), HU_WINDOW)
        assert str(error.value) == f"{tmp_path / name}: no such file or folder"


@needs_pydicom
def test_dicom_without_pydicom_names_the_extra(tmp_path, monkeypatch):
    write_series(tmp_path / "ct", count=2)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if not installed
    with pytest.raises(scans.InputError) as error:
        scans.read_scan(str(tmp_path / "ct"), HU_WINDOW)
    assert str(error.value) == (f"{tmp_path / 'ct'}: reading it needs pydicom: "
                                'pip install -e ".[dicom]"')


# ---- folders ----------------------------------------------------------------------------------

def test_a_folder_of_slices_stands_for_its_files(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for name in ("b.npy", "a.tif", "c.png", "notes.txt"):
        (folder / name).write_bytes(b"")
    (folder / "sub").mkdir()
    plan = predict.plan_outputs([str(folder), "x.nii.gz"], str(tmp_path / "out"))
    assert list(plan) == [str(folder / "a.tif"), str(folder / "b.npy"), str(folder / "c.png"),
                          "x.nii.gz"]
    assert plan[str(folder / "c.png")] == predict.Outputs(str(tmp_path / "out" / "c_mask.png"),
                                                          str(tmp_path / "out" / "c.json"), None)
    # Its files collide like any others: folder/a.tif and a.npy both write a.json.
    with pytest.raises(predict.OutputError, match=r"slices/a\.tif and a\.npy would both write"):
        predict.plan_outputs([str(folder), "a.npy"], str(tmp_path / "out"))


@needs_pydicom
def test_a_dicom_folder_is_one_input_named_by_the_folder(tmp_path):
    write_series(tmp_path / "ct", count=2)
    plan = predict.plan_outputs([str(tmp_path / "ct"), "ct_small.dcm"], str(tmp_path / "out"),
                                uncertainty=True)
    out = tmp_path / "out"
    assert plan == {str(tmp_path / "ct"): predict.Outputs(str(out / "ct_mask.nii.gz"),
                                                          str(out / "ct.json"),
                                                          str(out / "ct_uncertainty.nii.gz")),
                    "ct_small.dcm": predict.Outputs(str(out / "ct_small_mask.nii.gz"),
                                                    str(out / "ct_small.json"),
                                                    str(out / "ct_small_uncertainty.nii.gz"))}
    with pytest.raises(predict.OutputError, match="would both write"):
        predict.plan_outputs([str(tmp_path / "ct"), "elsewhere/ct.nii.gz"], str(out))


def test_command_line_expands_folders_and_reports_the_bad_ones(tmp_path, below_dir):
    slices = tmp_path / "slices"
    slices.mkdir()
    image = np.full((40, 40), BODY, np.int16)
    image[10:30, 5:15] = DARK
    for name in ("a.npy", "b.npy"):
        np.save(slices / name, image)
    (slices / "notes.txt").write_text("not an input")
    mixed, empty = tmp_path / "mixed", tmp_path / "empty"
    mixed.mkdir()
    empty.mkdir()
    (mixed / "x.dcm").write_bytes(b"")
    np.save(mixed / "y.npy", image)
    (empty / "readme.txt").write_text("")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "lungseg_jax.predict",
                          f"--model={below_dir}", f"--output={out}", str(slices),
                          str(mixed), str(empty)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert sorted(os.listdir(out)) == ["a.json", "a_mask.npy", "b.json", "b_mask.npy"]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {mixed}: holds both DICOM (.dcm) files and other inputs (y.npy, ...): give "
        "the series and the other files as separate folders",
        f"error: {empty}: a folder with nothing to predict: no .tif, .tiff, .png, .npy, .nii, "
        ".nii.gz, .dcm files (subfolders are not searched)"]
    assert "2 of 4 inputs failed" in run.stderr


# ---- the lungs' sides -------------------------------------------------------------------------

def test_sides_of_two_lungs_of_unequal_size():
    mask = np.zeros((1, 40, 60), bool)
    mask[0, 5:35, 4:20] = True  # image left: the patient's right lung
    mask[0, 8:38, 24:58] = True  # the left lung, wider: its inner edge lies left of the
    # midline of the outer edges ((4 + 57) / 2 = 30.5), yet it is all one side
    labels = inference.label_sides(mask, is_volume=False)
    expected = np.zeros(mask.shape, np.uint8)
    expected[0, 5:35, 4:20] = 1
    expected[0, 8:38, 24:58] = 2
    np.testing.assert_array_equal(labels, expected)


def test_lungs_that_touch_are_cut_at_the_midline():
    mask = np.zeros((3, 20, 40), bool)
    mask[:, 4:16, 4:18] = True
    mask[:, 4:16, 22:36] = True
    mask[1, 9:11, 18:22] = True  # a bridge: one 26-connected component in 3-D
    labels = inference.label_sides(mask, is_volume=True)
    midline = (4 + 35) / 2  # 19.5
    columns = np.arange(40)[None, None, :]
    np.testing.assert_array_equal(labels, np.where(mask, np.where(columns < midline, 1, 2), 0))
    # A small island goes whole to the side of its centroid, even across the midline.
    mask = np.zeros((1, 20, 40), bool)
    mask[0, 2:18, 2:15] = mask[0, 2:18, 24:38] = True
    mask[0, 8:10, 16:21] = True  # columns 16..20: one fifth past the midline 19.5
    labels = inference.label_sides(mask, is_volume=False)
    assert set(np.unique(labels[0, 8:10, 16:21])) == {1}


def test_a_slice_with_sides_writes_labels_and_each_sides_area(below, tmp_path):
    image = np.full((SIZE, SIZE), BODY, np.int16)
    image[4:28, 2:12] = DARK  # image left: the patient's right (radiological display)
    image[6:30, 18:30] = DARK
    tifffile.imwrite(tmp_path / "s.tif", image, resolution=(10 / 0.5, 10 / 0.5),
                     resolutionunit="CENTIMETER")
    result = predict.predict_file(below, str(tmp_path / "s.tif"), str(tmp_path / "out"),
                                  label_sides=True)
    labels = tifffile.imread(tmp_path / "out" / "s_mask.tif")
    expected = np.zeros((SIZE, SIZE), np.uint8)
    expected[4:28, 2:12], expected[6:30, 18:30] = 1, 2
    np.testing.assert_array_equal(labels, expected)
    assert result["sides"] == {"right": {"lung_pixels": 240, "lung_area_mm2": pytest.approx(60.0)},
                               "left": {"lung_pixels": 288, "lung_area_mm2": pytest.approx(72.0)}}
    with open(tmp_path / "out" / "s.json") as f:
        assert json.load(f)["sides"]["left"]["lung_pixels"] == 288
