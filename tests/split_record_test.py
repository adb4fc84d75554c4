"""Recorded splits: training records its slices; evaluation uses the record and refuses
test data that the run has seen."""

import json
import os
import shutil

import numpy as np
import pytest

from lungseg_jax.data import slices as folders
from lungseg_jax.data.phantoms import synthetic_slices
from lungseg_jax.data.sources import train_val_slices
from lungseg_jax.evaluation import evaluator
from lungseg_jax.rundir import split_record
from lungseg_jax.training.loop import train_and_evaluate


def test_digest_follows_the_pixels_not_the_name():
    image = np.arange(16, dtype=np.int16).reshape(4, 4)
    mask = (image > 7).astype(np.uint8)
    digest = split_record.slice_digest(image, mask)
    assert digest == split_record.slice_digest(image.copy(), mask * 255)  # 0/255 is 0/1
    changed = image.copy()
    changed[0, 0] += 1
    assert split_record.slice_digest(changed, mask) != digest
    assert split_record.slice_digest(image, 1 - mask) != digest
    assert split_record.slice_digest(image.astype(np.int32), mask) != digest


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A tiny run trained from a folder of 20 phantoms (16 train, 4 validation)."""
    from conftest import tiny_config as make  # fixture function, called directly
    root = tmp_path_factory.mktemp("folder_run")
    data = str(root / "data")
    folders.write_folder(data, synthetic_slices(20, 64, seed=3))
    config = make.__wrapped__()
    config.data.source, config.data.path = "folder", data
    workdir = str(root / "run")
    train_and_evaluate(config, workdir)
    return config, data, workdir


def test_training_records_its_exact_slices(folder_run):
    config, _, workdir = folder_run
    record = json.load(open(os.path.join(workdir, split_record.SPLIT_FILE)))
    train, validation = train_val_slices(config.data)
    assert record == {"train": split_record.digests(train),
                      "validation": split_record.digests(validation), "names_identify": True}
    assert len(record["train"]) == 16 and len(record["validation"]) == 4


def test_evaluation_refuses_slices_the_run_has_seen(folder_run, tmp_path):
    _, data, workdir = folder_run
    seen = folders.read_folder(data)
    test = str(tmp_path / "test")
    fresh = synthetic_slices(2, 48, seed=50)
    folders.write_folder(test, folders.Slices(
        ["fresh_a", "copy_of_phantom_0001", "fresh_b"],
        [fresh.images[0], seen.images[1], fresh.images[1]],
        [fresh.masks[0], seen.masks[1], fresh.masks[1]]))
    with pytest.raises(ValueError, match=r"shares 1 slices .*by name or content.*"
                                         r"copy_of_phantom_0001"):
        evaluator.evaluate_workdir(workdir, test, select_on_validation=False)
    by_name = str(tmp_path / "by_name")
    other = synthetic_slices(1, 48, seed=52)
    folders.write_folder(by_name, folders.Slices(["phantom_0005"], other.images, other.masks))
    with pytest.raises(ValueError, match=r"shares 1 slices .*phantom_0005"):
        evaluator.evaluate_workdir(workdir, by_name, select_on_validation=False)
    result = evaluator.evaluate_workdir(workdir, test, select_on_validation=False,
                                        allow_overlap=True)
    assert result["num_images"] == 3


def test_evaluation_validates_on_the_recorded_slices(folder_run, tmp_path):
    """Slices added to the training folder after the run would change a split drawn again
    (25 slices: 5 for validation); the record keeps the run's 4."""
    config, data, workdir = folder_run
    grown = str(tmp_path / "grown")
    shutil.copytree(data, grown)
    late = synthetic_slices(5, 64, seed=60)
    folders.write_folder(grown, folders.Slices([f"late_{i}" for i in range(5)], late.images,
                                               late.masks))
    moved = str(tmp_path / "run")
    shutil.copytree(workdir, moved)
    recorded = json.load(open(os.path.join(moved, "config.json")))
    recorded["data"]["path"] = grown
    with open(os.path.join(moved, "config.json"), "w") as f:
        json.dump(recorded, f)
    test = str(tmp_path / "test")
    fresh = synthetic_slices(3, 48, seed=70)
    folders.write_folder(test, folders.Slices([f"t{i}" for i in range(3)], fresh.images,
                                              fresh.masks))
    result = evaluator.evaluate_workdir(moved, test, select_on_validation=True)
    assert result["validation"]["num_images"] == 4


def test_generated_phantom_names_do_not_count_as_overlap(tiny_config, tmp_path):
    """The synthetic source's names are indices (phantom_0000 of every seed): there only
    the content counts; a resumed run must still see its recorded slices."""
    workdir = str(tmp_path / "run")
    train_and_evaluate(tiny_config, workdir)
    assert json.load(open(os.path.join(workdir, split_record.SPLIT_FILE)))["names_identify"] is False
    test = str(tmp_path / "test")
    folders.write_folder(test, synthetic_slices(3, 48, seed=77))  # phantom_0000.. again
    result = evaluator.evaluate_workdir(workdir, test, select_on_validation=False)
    assert result["num_images"] == 3
    tiny_config.data.synthetic.seed += 1  # other pixels under the recorded names
    tiny_config.num_epochs += 1
    with pytest.raises(ValueError, match=r"recorded another data split .*\(20 slices differ"):
        split_record.check_or_record(
            workdir, split_record.split_of(*train_val_slices(tiny_config.data)),
            names_identify=False)
