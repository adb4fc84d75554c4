"""The input boundary: config values, dataset files, and workdirs, checked before anything is written."""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, good_pair, write_pair
from data_test import ct_pair
from lungseg_jax.core import cli
from lungseg_jax.data import preprocess
from lungseg_jax.data import slices as folders
from lungseg_jax.training import config_checks

TINY = ["--config.model.name=conv_unet", "--config.model.features=(4,8)",
        "--config.data.image_size=32", "--config.data.synthetic.num_images=12",
        "--config.data.synthetic.size=32", "--config.data.val_fraction=0.34",
        "--config.num_epochs=1", "--config.eval_batch_size=4", "--config.schedule.num_cycles=1"]


def train_cli(workdir, *overrides):
    return subprocess.run([sys.executable, "-m", "lungseg_jax.train", "--config",
                           "configs/default.py", f"--workdir={workdir}", *TINY, *overrides],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("field, value, message", [
    ("learning_rate", float("inf"), "config.learning_rate=inf is invalid: expected a finite"),
    ("learning_rate", float("nan"), "config.learning_rate=nan"),
    ("learning_rate", 0.0, "config.learning_rate=0.0 is invalid: expected > 0"),
    ("data.hu_min", float("-inf"), "config.data.hu_min=-inf"),
    ("data.hu_max", -2000.0, "config.data.hu_max=-2000.0 is invalid: must exceed"),
    ("model.bn_momentum", 1.0, r"config.model.bn_momentum=1.0 is invalid: expected a value in \[0, 1\)"),
    ("seed", -1, "config.seed=-1 is invalid: expected a non-negative integer"),
    ("data.split_seed", -3, "config.data.split_seed=-3"),
    ("checkpoint.every_steps", -1, "config.checkpoint.every_steps=-1"),
    ("checkpoint.keep_latest", 0, "config.checkpoint.keep_latest=0"),
    ("steps_per_call", 0, "config.steps_per_call=0 is invalid: expected a positive integer"),
    ("data.synthetic.size", 0, "config.data.synthetic.size=0"),
    ("data.synthetic.num_images", 1, "config.data.synthetic.num_images=1"),
    ("num_epochs", -1, "config.num_epochs=-1 is invalid: expected a positive integer"),
    ("data.image_size", 30, "config.data.image_size=30 is invalid: must be a positive multiple of 4"),
    ("model.name", "resnet", "config.model.name='resnet'"),
    ("schedule.name", "step", "config.schedule.name='step'"),
    ("loss", "l2", "config.loss='l2'"),
    ("data.source", "s3", "config.data.source='s3'"),
    ("data.channels", 2, "config.data.channels=2"),
    ("data.val_fraction", 1.0, "config.data.val_fraction=1.0"),
    ("augment.shift", 0.5, "config.augment="),
])
def test_invalid_config_values_are_named(tiny_config, field, value, message):
    section, _, key = field.rpartition(".")
    parent = tiny_config
    for part in filter(None, section.split(".")):
        parent = parent[part]
    parent[key] = value
    with pytest.raises(ValueError, match=message):
        config_checks.check_config(tiny_config)


def test_valid_config_passes(tiny_config):
    config_checks.check_config(tiny_config)
    config_checks.check_mesh(tiny_config, 2)


def test_folder_source_needs_a_path(tiny_config):
    tiny_config.data.source = "folder"
    with pytest.raises(ValueError, match="config.data.path='' is invalid"):
        config_checks.check_config(tiny_config)


def test_image_size_must_divide_by_16_for_four_levels(tiny_config):
    tiny_config.model.features = (4, 8, 16, 32)
    tiny_config.data.image_size = 40
    with pytest.raises(ValueError, match="config.data.image_size=40 .*multiple of 16"):
        config_checks.check_config(tiny_config)


def test_batch_must_divide_over_the_devices(tiny_config):
    tiny_config.eval_batch_size = 6
    with pytest.raises(ValueError, match="config.eval_batch_size=6 .*divisible by the 4 devices"):
        config_checks.check_mesh(tiny_config, 4)


def check_slices(image_path, image, mask_path, mask):
    """What ``read_folder`` checks of each pair: both slices, then the pair."""
    folders.check_pair(image_path, folders.as_slice(image, image_path), mask_path,
                       folders.as_slice(mask, mask_path))


@pytest.mark.parametrize("breakage, blamed, message", [
    ("shape", "m.tif", r"mask shape \(8, 16\) != image shape \(16, 16\) of i.tif"),
    ("nan_image", "i.tif", r"non-finite pixel value nan at \(row, column\) \(2, 3\)"),
    ("inf_mask", "m.tif", "non-finite pixel value inf"),
    ("non_binary", "m.tif", "mask is not binary"),
    ("one_and_255", "m.tif", "mask is not binary"),
])
def test_bad_slice_pairs_name_the_file(breakage, blamed, message):
    image, mask = good_pair()
    if breakage == "shape":
        mask = mask[:8]
    elif breakage == "nan_image":
        image = image.astype(np.float32)
        image[2, 3] = np.nan
    elif breakage == "inf_mask":
        mask = mask.astype(np.float32)
        mask[0, 0] = np.inf
    elif breakage == "non_binary":
        mask[0, 0] = 7
    elif breakage == "one_and_255":
        mask[0, 0] = 1
    with pytest.raises(ValueError, match=message) as error:
        check_slices("i.tif", image, "m.tif", mask)
    assert str(error.value).startswith(blamed)


@pytest.mark.parametrize("mask_value", [1, 255])
def test_good_slice_pairs_pass(mask_value):
    image, mask = good_pair()
    check_slices("i.tif", image.astype(np.float32), "m.tif",
                 (mask > 0).astype(np.uint8) * mask_value)


def write_folder(root, pairs):
    for name, (image, mask) in pairs.items():
        write_pair(root, name, image, mask)


def test_folder_with_non_finite_pixels_names_the_file(tmp_path):
    image, mask = ct_pair()
    broken = image.astype(np.float32)
    broken[5, 5] = -np.inf
    write_folder(tmp_path, {"a": ct_pair(), "b": (broken, mask)})
    with pytest.raises(ValueError, match=r"2d_images/b.tif: non-finite pixel value -inf"):
        folders.read_folder(str(tmp_path))


def test_folder_with_nan_mask_names_the_file(tmp_path):
    image, mask = ct_pair()
    write_folder(tmp_path, {"a": ct_pair(), "b": (image, np.where(mask > 0, np.nan, 0.0))})
    with pytest.raises(ValueError, match=r"2d_masks/b.tif: non-finite pixel value nan"):
        folders.read_folder(str(tmp_path))


def test_slices_of_mixed_sizes_are_read_and_resized_alike(tmp_path, tiny_config):
    write_folder(tmp_path, {"a": ct_pair(16), "b": ct_pair(24), "c": ct_pair(32)})
    slices = folders.read_folder(str(tmp_path))
    assert [im.shape for im in slices.images] == [(16, 16), (24, 24), (32, 32)]
    images, masks = preprocess.preprocess(slices, tiny_config.data)
    assert images.shape == (3, 32, 32, 1) and masks.shape == (3, 32, 32, 1)


def test_cli_refuses_bad_values_before_creating_the_workdir(tmp_path):
    result = train_cli(tmp_path / "run", "--config.num_epochs=-2")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: config.num_epochs=-2 is invalid: expected a positive integer"]
    assert not os.path.exists(tmp_path / "run")


def test_cli_refuses_a_bad_data_folder_before_creating_the_workdir(tmp_path):
    image, mask = ct_pair()
    mask[0, 0] = 3
    write_folder(tmp_path / "data", {"a": ct_pair(), "b": (image, mask)})
    result = train_cli(tmp_path / "run", "--config.data.source=folder",
                       f"--config.data.path={tmp_path / 'data'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (  # after the config's log
        f"error: {tmp_path / 'data' / '2d_masks' / 'b.tif'}: mask is not binary (values "
        "[  0   3 255]); expected 0/1 or 0/255")
    assert not os.path.exists(tmp_path / "run")


def test_cli_never_overwrites_a_checkpoint_of_a_different_config(tmp_path):
    workdir = tmp_path / "run"
    first = train_cli(workdir)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = workdir / "checkpoints"
    before = {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")}
    config_before = (workdir / "config.json").read_text()
    second = train_cli(workdir, "--config.learning_rate=0.5", "--config.num_epochs=2")
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert second.stderr.splitlines()[-1].startswith(
        f"error: {str(workdir)!r} holds a run with a different config")
    assert "learning_rate: 0.001 -> 0.5" in second.stderr and "num_epochs: 1 -> 2" in second.stderr
    assert "use a new --workdir" in second.stderr
    assert {p: p.stat().st_mtime_ns for p in checkpoints.rglob("*")} == before
    assert (workdir / "config.json").read_text() == config_before
    assert json.loads(config_before)["learning_rate"] == 0.001


def test_a_probability_threshold_lies_strictly_between_0_and_1():
    assert cli.is_probability_threshold(0.5)
    assert cli.is_probability_threshold(1e-6)
    for value in (0.0, 1.0, -0.2, 1.5):
        assert not cli.is_probability_threshold(value)


def test_tiny_flags_set_what_the_tiny_config_fixture_sets(tiny_config):
    from lungseg_jax.configs import default
    from conftest import TINY_FLAGS
    config = default.get_config()
    for flag in TINY_FLAGS:
        path, value = flag[len("--config."):].split("=", 1)
        *parents, leaf = path.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = ast.literal_eval(value)
    assert config.to_dict() == tiny_config.to_dict()


@pytest.mark.parametrize("command", [
    ["lungseg_jax.evaluate", "--data_dir=d", "--output=o.json"],
    ["lungseg_jax.export", "--output=o"],
    ["lungseg_jax.split_folder", "--source=s", "--output=o", "--test_fraction=1"],
    ["lungseg_jax.bench", "--config.batch_size=8"],
])
def test_command_lines_refuse_bad_values_before_doing_anything(tmp_path, command):
    module, *flags = command
    if module in ("lungseg_jax.evaluate", "lungseg_jax.export"):
        flags += [f"--workdir={tmp_path}", "--threshold=0"]
    run = subprocess.run([sys.executable, "-m", module, *flags], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    want = {"lungseg_jax.split_folder": "--test_fraction must lie strictly between 0 and 1",
            "lungseg_jax.bench": "--config.batch_size=8: set by bench's own flags; use "
                                 "--batch_size"}.get(module, cli.THRESHOLD_RULE)
    assert run.returncode != 0 and want in run.stderr, run.stderr[-2000:]
    assert os.listdir(tmp_path) == []
