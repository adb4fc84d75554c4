"""The audit's model-free checks of a mask, against values counted by hand."""

import numpy as np
import pytest

from lungseg_jax.evaluation.audit import anatomy, body_mask

AIR, LUNG, TISSUE = -1000, -850, 40


def chest():
    """A 60x90 slice: the body (columns 10..69, rows 5..54; off the image's centre) around
    two lungs, air outside."""
    image = np.full((60, 90), AIR, np.int16)
    image[5:55, 10:70] = TISSUE
    image[15:45, 18:36] = LUNG  # patient's right lung (image left): 30 x 18 = 540 pixels
    image[15:45, 42:54] = LUNG  # left lung: 30 x 12 = 360 pixels
    return image


def test_the_body_is_the_tissue_with_its_lungs_filled_in():
    body = body_mask(chest())
    expected = np.zeros((60, 90), bool)
    expected[5:55, 10:70] = True
    np.testing.assert_array_equal(body, expected)


def lungs():
    mask = np.zeros((60, 90), bool)
    mask[15:45, 18:36] = mask[15:45, 42:54] = True
    return mask


def test_a_right_mask_passes_every_check():
    checks = anatomy(chest(), lungs())
    # The body's centre column is 40 (the image's is 45): 540 pixels left of it, 360 right.
    assert checks == {"smaller_side_share": pytest.approx(360 / 900), "outside_body_share": 0.0,
                      "components": 2, "flags": []}


def test_a_missing_lung_is_one_sided():
    mask = lungs()
    mask[:, :40] = False
    checks = anatomy(chest(), mask)
    assert checks["smaller_side_share"] == 0.0 and checks["flags"] == ["one_sided"]


def test_air_around_the_patient_labelled_lung_lies_outside_the_body():
    mask = lungs()
    mask[55:60, :80] = True  # 5 x 80 = 400 pixels of air below the body
    checks = anatomy(chest(), mask)
    assert checks["outside_body_share"] == pytest.approx(400 / 1300)
    # The strip is a third component besides the lungs.
    assert checks["components"] == 3 and checks["flags"] == ["outside_body", "fragmented"]


def test_specks_below_one_percent_do_not_count_as_components():
    mask = lungs()
    mask[25:28, 38:41] = True  # 9 pixels: 1% of 909 is 9.09, a speck
    assert anatomy(chest(), mask)["components"] == 2
    mask[47:51, 38:42] = True  # 16 more pixels, apart from the lungs and the speck
    checks = anatomy(chest(), mask)
    assert checks["components"] == 3 and checks["flags"] == ["fragmented"]


def test_an_empty_mask_is_flagged_empty_and_nothing_else():
    checks = anatomy(chest(), np.zeros((60, 90), bool))
    assert checks == {"smaller_side_share": 0.0, "outside_body_share": 0.0, "components": 0,
                      "flags": ["empty"]}


def test_without_a_body_in_view_the_outside_check_is_skipped():
    image = np.full((60, 90), AIR, np.int16)  # nothing above -500 HU
    checks = anatomy(image, lungs())
    assert "outside_body" not in checks["flags"] and checks["components"] == 2
