"""The TFDS builder (no TensorFlow): exact round trip, stale-build guard, training from it."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets", reason="the 'tfds' extra is not installed")

from conftest import NO_REAL_DATA, REAL_DATA  # noqa: E402
from lungseg_jax.data import slices as folders  # noqa: E402
from lungseg_jax.data import preprocess, sources, tfds_lungs  # noqa: E402
from lungseg_jax.data.phantoms import synthetic_slices  # noqa: E402
from lungseg_jax.training.loop import train_and_evaluate  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """20 phantoms in the Kaggle layout, with the extreme int16 values in one slice."""
    slices = synthetic_slices(20, 64, seed=11)
    slices.images[3][0, :2] = (-32768, 32767)
    path = str(tmp_path_factory.mktemp("kaggle"))
    folders.write_folder(path, slices)
    return path


def test_builder_round_trips_the_folder_exactly(folder, tmp_path):
    expected = folders.read_folder(folder)
    got = tfds_lungs.load_slices(folder, str(tmp_path))
    assert os.listdir(tmp_path / tfds_lungs.NAME / "1.0.0")  # built as array_record there
    assert any(f.endswith("array_record-00000-of-00001")
               for f in os.listdir(tmp_path / tfds_lungs.NAME / "1.0.0"))
    assert got.names == expected.names
    for image, want in zip(got.images, expected.images):
        assert image.dtype == np.int16
        np.testing.assert_array_equal(image, want)
    for mask, want in zip(got.masks, expected.masks):
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, want)
    assert got.images[3][0, 0] == -32768 and got.images[3][0, 1] == 32767
    # A second call reads the existing build.
    assert tfds_lungs.load_slices(folder, str(tmp_path)).names == expected.names


def test_build_of_another_folder_is_refused(folder, tmp_path):
    tfds_lungs.load_slices(folder, str(tmp_path))
    other = str(tmp_path / "other")
    folders.write_folder(other, synthetic_slices(2, 32, seed=1).subset([1]))
    with pytest.raises(ValueError, match="holds other slices than"):
        tfds_lungs.load_slices(other, str(tmp_path))


def preprocessed_split(data_config) -> list:
    """What training sees: train images and masks, then validation images and masks."""
    return [a for part in sources.train_val_slices(data_config)
            for a in preprocess.preprocess(part, data_config)]


def test_training_from_tfds_matches_the_folder_source(folder, tmp_path, tiny_config):
    tiny_config.data.source = "tfds"
    tiny_config.data.path = folder
    tiny_config.data.tfds_data_dir = str(tmp_path / "tfds")
    tiny_config.num_epochs = 1
    from_tfds = preprocessed_split(tiny_config.data)
    folder_config = tiny_config.data.copy_and_resolve_references()
    folder_config.source = "folder"
    for a, b in zip(from_tfds, preprocessed_split(folder_config), strict=True):
        np.testing.assert_array_equal(a, b)
    state = train_and_evaluate(tiny_config, str(tmp_path / "run"))
    assert int(state.step) == 4  # 16 training slices, batch 4, 1 epoch
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        record = json.loads(f.readline())
    assert np.isfinite(record["train_loss"]) and 0.0 <= record["val_pooled_iou"] <= 1.0


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(REAL_DATA), reason=NO_REAL_DATA)
def test_real_dataset_round_trips(tmp_path):
    expected = folders.read_folder(REAL_DATA)
    got = tfds_lungs.load_slices(REAL_DATA, str(tmp_path))
    assert got.names == expected.names and len(got) == 240
    for a, b in zip(got.images + got.masks, expected.images + expected.masks):
        np.testing.assert_array_equal(a, b)
