"""Test set-up: two forced CPU devices (data-parallel paths), fast-compiling JAX, tiny configs."""

import json
import os

import numpy as np
import tifffile

# Must happen before JAX initialises its backends.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=2").strip()

import pytest  # noqa: E402

from lungseg_jax.core import runtime  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_DATA = os.path.join(REPO, "..", "shared", "data", "finding-lungs-in-ct-data")
NO_REAL_DATA = ("the real dataset is not at ../shared/data/finding-lungs-in-ct-data "
                "(only present on the project's development machines)")

runtime.setup_jax()

TIMING_FIELDS = ("images_per_sec", "epoch_seconds")
# ``tiny_config`` as command-line overrides of configs/default.py, for tests that start
# the entry points.
TINY_FLAGS = ["--config.model.features=(4,8)", "--config.data.image_size=32",
              "--config.data.synthetic.num_images=20", "--config.data.synthetic.size=64",
              "--config.data.val_fraction=0.2", "--config.num_epochs=2",
              "--config.batch_size=4", "--config.eval_batch_size=4",
              "--config.schedule.num_cycles=2"]


def good_pair(size=16, value=255):
    """A valid (int16 image, uint8 mask with lung pixels ``value``) slice pair."""
    image = np.full((size, size), -800, np.int16)
    mask = np.zeros((size, size), np.uint8)
    mask[4:10, 4:10] = value
    return image, mask


def write_pair(root, name, image, mask):
    """``root/2d_images/name.tif`` and ``root/2d_masks/name.tif`` (skipping a None array)."""
    for sub, array in (("2d_images", image), ("2d_masks", mask)):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
        if array is not None:
            tifffile.imwrite(os.path.join(root, sub, name + ".tif"), array)


def deterministic_metrics(workdir):
    """A run's ``metrics.jsonl`` records without the timing fields (which vary run to run)."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS}
                for line in f]


@pytest.fixture
def tiny_config():
    """The default config shrunk so a whole run compiles and trains in seconds."""
    from lungseg_jax.configs import default

    config = default.get_config()
    config.model.features = (4, 8)
    config.data.image_size = 32
    config.data.synthetic.num_images = 20
    config.data.synthetic.size = 64
    config.data.val_fraction = 0.2
    config.num_epochs = 2
    config.batch_size = 4
    config.eval_batch_size = 4
    config.schedule.num_cycles = 2
    return config


@pytest.fixture
def crash_after_first_checkpoint(monkeypatch):
    """Makes checkpoint saves raise KeyboardInterrupt (a simulated kill) once written;
    calling the returned function restores normal saving."""
    from lungseg_jax.rundir import checkpoints as checkpointing

    real_save = checkpointing.save

    def save_then_crash(manager, state):
        real_save(manager, state)
        manager.wait_until_finished()
        raise KeyboardInterrupt("simulated kill after a checkpoint")

    monkeypatch.setattr(checkpointing, "save", save_then_crash)
    return lambda: monkeypatch.setattr(checkpointing, "save", real_save)
