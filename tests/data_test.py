"""Data: phantoms, the folder reader (real data and broken folders), preprocessing, splits."""

import os

import numpy as np
import pytest

from conftest import NO_REAL_DATA, REAL_DATA, good_pair, write_pair
from lungseg_jax.data import preprocess, sources, splits
from lungseg_jax.data import slices as folders
from lungseg_jax.data.phantoms import synthetic_slices


def ct_pair(size=16, value=255):
    """``good_pair`` with air beside the body, so that the lung window maps the image to
    more than one grey (``read_folder`` refuses nearly constant images)."""
    image, mask = good_pair(size, value)
    image[:, size // 2:] = -1000
    return image, mask


def test_phantoms_are_deterministic_and_ct_like():
    a, b = synthetic_slices(3, 64, seed=5), synthetic_slices(3, 64, seed=5)
    c = synthetic_slices(3, 64, seed=6)
    for x, y in zip(a.images + a.masks, b.images + b.masks):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.images[0], c.images[0])
    image, mask = a.images[0], a.masks[0].astype(bool)
    assert image.dtype == np.int16 and set(np.unique(mask)) <= {0, 1}
    assert 0.02 < mask.mean() < 0.6
    assert np.median(image[mask]) < -600  # aerated lung
    body = image > -500  # tissue and bone: neither air nor lung
    assert np.median(image[~mask & body]) > -100 > -600 > np.median(image[mask])
    assert image[~mask].max() > 500  # the vertebra
    assert image[0, 0] < -900  # air outside the body


@pytest.mark.skipif(not os.path.isdir(REAL_DATA), reason=NO_REAL_DATA)
def test_reads_the_real_dataset_folder():
    slices = folders.read_folder(REAL_DATA)  # every slice passes every sanity check
    assert len(slices) == 240
    assert all(im.shape == (512, 512) and im.dtype == np.int16 for im in slices.images)
    assert all(set(np.unique(m)) == {0, 1} for m in slices.masks)
    assert slices.names == sorted(slices.names)


def test_reads_masks_encoded_0_255_and_0_1(tmp_path):
    write_pair(tmp_path, "a", *ct_pair(value=255))
    write_pair(tmp_path, "b", *ct_pair(value=1))
    slices = folders.read_folder(str(tmp_path))
    assert slices.names == ["a", "b"]
    np.testing.assert_array_equal(slices.masks[0], slices.masks[1])
    assert slices.masks[0].max() == 1


@pytest.mark.parametrize("breakage, message", [
    ("missing_mask", "no partner in 2d_masks"),
    ("missing_image", "no partner in 2d_images"),
    ("shape", "mask shape"),
    ("non_binary", "not binary"),
    ("unreadable", "cannot read"),
    ("volume", "expected a 2-D slice"),
    ("empty_masks", "every mask"),
    ("no_images", "no .tif images"),
])
def test_bad_folders_raise_errors_naming_the_fault(tmp_path, breakage, message):
    image, mask = ct_pair()
    write_pair(tmp_path, "ok", image, mask)
    bad = str(tmp_path / "2d_masks" / "bad.tif")
    if breakage == "missing_mask":
        write_pair(tmp_path, "bad", image, None)
    elif breakage == "missing_image":
        write_pair(tmp_path, "bad", None, mask)
    elif breakage == "shape":
        write_pair(tmp_path, "bad", image, mask[:8])
    elif breakage == "non_binary":
        write_pair(tmp_path, "bad", image, np.arange(256, dtype=np.uint8).reshape(16, 16))
    elif breakage == "unreadable":
        write_pair(tmp_path, "bad", image, mask)
        with open(bad, "wb") as f:
            f.write(b"not a tiff")
    elif breakage == "volume":
        write_pair(tmp_path, "bad", np.stack([image] * 2), np.stack([mask] * 2))
    elif breakage == "empty_masks":
        os.remove(tmp_path / "2d_masks" / "ok.tif")
        write_pair(tmp_path, "ok", image, np.zeros_like(mask))
    elif breakage == "no_images":
        for sub in ("2d_images", "2d_masks"):
            os.remove(tmp_path / sub / "ok.tif")
    with pytest.raises(ValueError, match=message) as error:
        folders.read_folder(str(tmp_path))
    if breakage in ("shape", "unreadable", "non_binary"):
        assert "bad.tif" in str(error.value)


def hounsfield_error(tmp_path, image, **read_options):
    """The message of ``read_folder``'s error for a folder of a good slice and ``bad.tif``
    holding ``image``; checks it names ``bad.tif``'s path first."""
    write_pair(tmp_path, "ok", *ct_pair())
    write_pair(tmp_path, "bad", image, ct_pair()[1])
    with pytest.raises(ValueError) as error:
        folders.read_folder(str(tmp_path), **read_options)
    assert str(error.value).startswith(f"{tmp_path / '2d_images' / 'bad.tif'}: ")
    return str(error.value)


def test_unsigned_8_bit_images_are_refused_naming_the_file(tmp_path):
    eight_bit = ((ct_pair()[0] + 1024) // 8).astype(np.uint8)  # -1000, -800 HU: 3, 28
    assert "unsigned 8-bit pixels (0-255) are not Hounsfield units" in hounsfield_error(
        tmp_path, eight_bit)


def halves(low, high, size=16):
    """An image of two equal halves: ``low`` and ``high`` HU."""
    image = np.full((size, size), low, np.int16)
    image[:, size // 2:] = high
    return image


@pytest.mark.parametrize("image, values", [
    (good_pair()[0], "[-800, -800]"),  # one value
    (ct_pair()[0].astype(np.float32) / 4000 + 0.5, "[0.25, 0.3]"),  # normalised: 0.9 windowed
    (halves(-800, -800 + 59), "[-800, -741]"),  # within +-0.02 of one windowed value
    (halves(-2000, -1500), "[-1350, -1350]"),  # all below the window
])
def test_images_the_window_maps_to_nearly_one_grey_are_refused(tmp_path, image, values):
    message = hounsfield_error(tmp_path, image)
    assert f"nearly constant in the Hounsfield window [-1350, 150] (99% of its values in " \
           f"{values})" in message


def test_images_of_two_greys_in_the_window_pass(tmp_path):
    write_pair(tmp_path, "a", halves(-800, -800 + 61), ct_pair()[1])  # 61 HU > 0.04 * 1500
    np.testing.assert_array_equal(folders.read_folder(str(tmp_path)).images[0],
                                  halves(-800, -739))


def test_sanity_checks_off_accept_such_images_and_the_window_is_the_configs(tmp_path,
                                                                             tiny_config):
    eight_bit, normalised = (ct_pair()[0] // 8 + 128).astype(np.uint8), ct_pair()[0] / 4000
    write_pair(tmp_path, "a", eight_bit, ct_pair()[1])
    write_pair(tmp_path, "b", normalised.astype(np.float32), ct_pair()[1])
    tiny_config.data.source, tiny_config.data.path = "folder", str(tmp_path)
    with pytest.raises(ValueError, match="a.tif: unsigned 8-bit"):
        sources.load_slices(tiny_config.data)
    tiny_config.data.sanity_checks = False
    slices = sources.load_slices(tiny_config.data)
    np.testing.assert_array_equal(slices.images[0], eight_bit)
    np.testing.assert_array_equal(slices.images[1], normalised.astype(np.float32))
    os.remove(tmp_path / "2d_images" / "a.tif")
    os.remove(tmp_path / "2d_masks" / "a.tif")
    # With checks on, a window that fits the normalised values accepts them.
    tiny_config.data.sanity_checks = True
    tiny_config.data.hu_min, tiny_config.data.hu_max = -0.5, 0.5
    assert sources.load_slices(tiny_config.data).names == ["b"]
    tiny_config.data.hu_min, tiny_config.data.hu_max = -1350.0, 150.0
    with pytest.raises(ValueError, match="b.tif: nearly constant"):
        sources.load_slices(tiny_config.data)


@pytest.mark.parametrize("sub", ["2d_images", "2d_masks"])
def test_two_files_of_one_slice_are_refused_naming_both(tmp_path, sub):
    write_pair(tmp_path, "x", *ct_pair())
    tif = tmp_path / sub / "x.tif"
    os.link(tif, tmp_path / sub / "x.tiff")
    with pytest.raises(ValueError) as error:
        folders.read_folder(str(tmp_path))
    assert str(error.value) == f"{tif} and {tif}f: two files for slice 'x'; keep one"


@pytest.mark.parametrize("mask, message", [
    (np.full((16, 16), 255, np.uint8),
     "the mask marks 100.0% of the image as lung (at most 90% expected): all lung, or inverted?"),
    (1 - ct_pair(value=1)[1],  # lung 0, the rest 1: 220 of 256 pixels, the whole border
     "100.0% of the mask's border is lung (at most 50% expected): inverted (lung 0, the rest "
     "1)?"),
])
def test_masks_that_are_all_lung_or_inverted_are_refused_naming_the_file(tmp_path, mask,
                                                                          message):
    write_pair(tmp_path, "ok", *ct_pair())
    write_pair(tmp_path, "bad", ct_pair()[0], mask)
    with pytest.raises(ValueError) as error:
        folders.read_folder(str(tmp_path))
    assert str(error.value) == f"{tmp_path / '2d_masks' / 'bad.tif'}: {message}"


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="2d_images"):
        folders.read_folder(str(tmp_path / "nowhere"))


def test_window_maps_hounsfield_range_to_unit_interval():
    hu = np.array([-2000, -1350, -600, 150, 3000], np.int16)
    np.testing.assert_allclose(preprocess.window(hu, -1350, 150), [0, 0, 0.5, 1, 1])


def test_preprocess_resizes_and_keeps_masks_binary(tiny_config):
    slices = synthetic_slices(3, 64, seed=0)
    tiny_config.data.channels = 3
    images, masks = preprocess.preprocess(slices, tiny_config.data)
    assert images.shape == (3, 32, 32, 3) and masks.shape == (3, 32, 32, 1)
    assert images.min() >= 0 and images.max() <= 1
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    assert set(np.unique(masks)) <= {0.0, 1.0}
    # Downsampled masks keep the lung fraction.
    np.testing.assert_allclose(masks.mean(), np.mean(slices.masks), atol=0.02)


def test_split_is_deterministic_disjoint_and_complete():
    train, val = splits.split_indices(50, 0.2, seed=3)
    train2, val2 = splits.split_indices(50, 0.2, seed=3)
    np.testing.assert_array_equal(train, train2)
    np.testing.assert_array_equal(val, val2)
    assert len(val) == 10 and not set(train) & set(val)
    assert sorted(set(train) | set(val)) == list(range(50))


def test_split_folder_links_a_disjoint_test_set(tmp_path):
    source = tmp_path / "source"
    folders.write_folder(str(source), synthetic_slices(10, 32, seed=0))
    counts = splits.split_folder(str(source), str(tmp_path / "split"), 0.2, seed=0)
    assert counts == {"train": 8, "test": 2, "left_out": [],
                      "left_out_why": "no slice left out as a known label error"}
    train = folders.read_folder(str(tmp_path / "split" / "train"))
    test = folders.read_folder(str(tmp_path / "split" / "test"))
    assert len(train) == 8 and len(test) == 2 and not set(train.names) & set(test.names)
    assert os.path.islink(tmp_path / "split" / "test" / "2d_images" / (test.names[0] + ".tif"))


def test_split_folder_refuses_an_existing_split_and_bad_fractions(tmp_path):
    source, split = tmp_path / "source", tmp_path / "split"
    folders.write_folder(str(source), synthetic_slices(10, 32, seed=0))
    splits.split_folder(str(source), str(split), 0.2, seed=0)
    with pytest.raises(FileExistsError, match="split/train"):  # another seed would mix in
        splits.split_folder(str(source), str(split), 0.2, seed=1)
    for fraction in (-0.1, 0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=f"test_fraction={fraction}"):
            splits.split_folder(str(source), str(tmp_path / "other"), fraction, seed=0)
    with pytest.raises(ValueError, match="empty train or test"):
        splits.split_folder(str(source), str(tmp_path / "other"), 0.01, seed=0)
    assert not (tmp_path / "other").exists()


def test_split_folder_refuses_unpaired_files(tmp_path):
    source = tmp_path / "source"
    folders.write_folder(str(source), synthetic_slices(4, 32, seed=0))
    os.remove(source / "2d_masks" / "phantom_0002.tif")
    with pytest.raises(ValueError, match="phantom_0002"):
        splits.split_folder(str(source), str(tmp_path / "split"), 0.25, seed=0)


def test_mask_targets_are_area_fractions_soft_or_thresholded():
    from lungseg_jax.data.preprocess import preprocess_masks

    mask = np.zeros((8, 8), np.uint8)
    mask[0:3, 0:4] = 255  # 2x2 blocks at 4x4: fractions 1, 1, 0.5, 0.5 in the top-left
    soft = preprocess_masks([mask], 4, soft=True)[0, ..., 0]
    expected = np.zeros((4, 4), np.float32)
    expected[0, :2], expected[1, :2] = 1.0, 0.5
    np.testing.assert_array_equal(soft, expected)
    np.testing.assert_array_equal(preprocess_masks([mask], 4)[0, ..., 0], expected >= 0.5)
