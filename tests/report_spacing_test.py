"""HD95 in millimetres in the evaluation report: hand-made masks of known distances, the pixel
spacing read from TIFF resolution tags or given, and the CSV and markdown that show it."""

import csv
import os

import numpy as np
import pytest
import tifffile
from etils import epath

from lungseg_jax.evaluation import report
from lungseg_jax.serving import scans


def square_and_shifted(rows: int, columns: int):
    square = np.zeros((20, 20), bool)
    square[5:15, 5:15] = True
    return square, np.roll(square, (rows, columns), axis=(0, 1))


def pixel_and(row: int, column: int):
    first, second = np.zeros((9, 9), bool), np.zeros((9, 9), bool)
    first[4, 2] = second[row, column] = True
    return first, second


def test_hd95_in_mm_of_masks_a_known_distance_apart():
    # Two 10x10 squares 3 pixels apart: HD95 3 pixels, 2.1 mm at 0.7 mm a pixel.
    square, shifted = square_and_shifted(0, 3)
    assert report.hd95(square, shifted) == pytest.approx(3.0)
    assert report.hd95(square, shifted, (0.7, 0.7)) == pytest.approx(2.1, rel=1e-12)
    assert report.hd95(*square_and_shifted(3, 0), (0.7, 0.7)) == pytest.approx(2.1, rel=1e-12)
    # One pixel each (each one's whole surface): the one distance, in mm along each axis at
    # that axis' spacing (rows 0.7 mm apart, columns 0.5 mm).
    assert report.hd95(*pixel_and(4, 6), (0.7, 0.5)) == pytest.approx(4 * 0.5, rel=1e-12)
    assert report.hd95(*pixel_and(7, 2), (0.7, 0.5)) == pytest.approx(3 * 0.7, rel=1e-12)
    # 3 rows and 4 columns apart: sqrt(2.1^2 + 2.0^2) = sqrt(8.41) = 2.9 mm.
    assert report.hd95(*pixel_and(7, 6), (0.7, 0.5)) == pytest.approx(2.9, rel=1e-12)
    empty = np.zeros_like(square)
    assert report.hd95(square, empty, (0.7, 0.7)) == float("inf")
    assert report.hd95(empty, empty, (0.7, 0.7)) == 0.0


def write_slice(folder, name: str, **tiff_tags):
    image = np.full((20, 20), -800, np.int16)
    for sub, array in (("2d_images", image), ("2d_masks", np.zeros((20, 20), np.uint8))):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
        tifffile.imwrite(os.path.join(folder, sub, name + ".tif"), array,
                         **(tiff_tags if sub == "2d_images" else {}))


def test_spacing_from_tiff_centimetres_else_the_given_one(tmp_path):
    folder = str(tmp_path)
    write_slice(folder, "cm", resolution=(20, 10), resolutionunit="CENTIMETER")  # x, y px/cm
    write_slice(folder, "inch", resolution=(72, 72), resolutionunit="INCH")  # a display default
    write_slice(folder, "none")
    names = ["cm", "inch", "none"]
    # 20 pixels a cm across (columns 0.5 mm apart), 10 down (rows 1 mm apart).
    assert report.slice_spacings(names, folder, 0.7) == [(1.0, 0.5), (0.7, 0.7), (0.7, 0.7)]
    assert report.slice_spacings(names, folder, None) == [(1.0, 0.5), None, None]
    assert report.slice_spacings(names, None, None) == [None, None, None]


def test_csv_and_markdown_give_hd95_in_mm_where_the_spacing_is_known(tmp_path):
    square, shifted = square_and_shifted(0, 3)
    far = np.zeros_like(square)
    far[5:15, 5:9] = True  # a 10x4 band in the left part of the square
    predictions, masks = [shifted, far, shifted], [square, square, square]
    counts = [np.array([1, 2, 3, 4])] * 3
    rows = report.per_image_rows(["a", "b", "c"], predictions, masks, counts,
                                 [(0.7, 0.7), (0.7, 0.7), None])
    report.write_csv(epath.Path(tmp_path / "r.csv"), rows)
    with open(tmp_path / "r.csv") as f:
        written = list(csv.DictReader(f))
    assert list(written[0]) == ["name", "iou", "dice", "hd95", "hd95_mm", "intersection",
                                "union", "predicted", "true"]
    assert float(written[0]["hd95"]) == pytest.approx(3.0)
    assert float(written[0]["hd95_mm"]) == pytest.approx(2.1, rel=1e-12)
    assert written[2]["hd95_mm"] == ""  # unknown spacing
    assert float(written[1]["hd95_mm"]) == pytest.approx(0.7 * float(written[1]["hd95"]),
                                                         rel=1e-6)
    text = report.hd95_summary(rows)
    assert "HD95 in pixels: median 3.00 px" in text
    hd_b = float(written[1]["hd95_mm"])
    assert (f"HD95 in mm (2 of 3 images of known spacing): median {(2.1 + hd_b) / 2:.2f} mm, "
            f"max {max(2.1, hd_b):.2f} mm.") in text
    unknown = report.hd95_summary([{**r, "hd95_mm": None} for r in rows])
    assert "HD95 in mm: unknown" in unknown and "--spacing_mm" in unknown


def test_hd95_in_pixels_is_hd95_at_unit_spacing():
    """One distance transform for both units: pixels are millimetres at 1 mm a pixel, to
    the last bit (diagonal distances included)."""
    rng = np.random.default_rng(3)
    for _ in range(5):
        a, b = rng.random((2, 24, 24)) < 0.3
        assert report.hd95(a, b) == report.hd95(a, b, (1.0, 1.0))
    assert report.hd95(*pixel_and(7, 6)) == 5.0  # 3 rows and 4 columns apart


def test_a_slice_spacing_is_the_recorded_one_else_the_given_one():
    assert scans.slice_spacing_mm((1.0, 0.5), 0.7) == (1.0, 0.5)
    assert scans.slice_spacing_mm(None, 0.7) == (0.7, 0.7)
    assert scans.slice_spacing_mm(None, None) is None
