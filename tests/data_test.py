"""Data: phantoms, the folder reader (real data and broken folders), preprocessing, splits."""

import os

import numpy as np
import pytest

from conftest import NO_REAL_DATA, REAL_DATA, good_pair, write_pair
from lungseg_jax.data import preprocess, splits
from lungseg_jax.data import slices as folders
from lungseg_jax.data.phantoms import synthetic_slices


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
    slices = folders.read_folder(REAL_DATA)
    assert len(slices) == 240
    assert all(im.shape == (512, 512) and im.dtype == np.int16 for im in slices.images)
    assert all(set(np.unique(m)) == {0, 1} for m in slices.masks)
    assert slices.names == sorted(slices.names)


def test_reads_masks_encoded_0_255_and_0_1(tmp_path):
    write_pair(tmp_path, "a", *good_pair(value=255))
    write_pair(tmp_path, "b", *good_pair(value=1))
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
    image, mask = good_pair()
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
    assert counts == {"train": 8, "test": 2}
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
