"""Checks of everything a user supplies, before anything runs, with errors naming the fault.

* ``check_config``/``check_mesh``: config values (errors name the field and value).
  Unknown keys are caught earlier: the entry points lock the config, so an
  override like ``--config.modle.name=x`` is refused by ml_collections.
* ``check_slice``: one image/mask pair of a dataset folder (errors name the file);
  ``data.read_folder`` applies it to every pair and checks the folder as a whole.
  Slices of different sizes are accepted: each is resized to ``data.image_size``.
* ``is_probability_threshold``: the CLIs' ``--threshold`` (an absl flag validator).
"""

import functools
import math

import numpy as np

from lungseg_jax import metrics, models, schedules

DATA_SOURCES = ("synthetic", "folder", "tfds")
DTYPES = ("float32", "bfloat16", "float16")


THRESHOLD_RULE = "--threshold must be a probability strictly between 0 and 1"


def is_probability_threshold(value: float) -> bool:
    """Whether ``value`` can split probabilities into lung and not: 0 < value < 1."""
    return 0 < value < 1


def _fail(field: str, value, expected: str):
    raise ValueError(f"config.{field}={value!r} is invalid: {expected}")


def check_config(config) -> None:
    """Raises ValueError naming the first invalid field of a training config."""
    if config.model.name not in models.MODELS:
        _fail("model.name", config.model.name, f"expected one of {sorted(models.MODELS)}")
    features = tuple(config.model.features)
    if not features or any(int(f) < 1 for f in features):
        _fail("model.features", features, "expected positive channel counts")
    if config.model.dtype not in DTYPES:
        _fail("model.dtype", config.model.dtype, f"expected one of {DTYPES}")
    if config.data.source not in DATA_SOURCES:
        _fail("data.source", config.data.source, f"expected one of {DATA_SOURCES}")
    if config.data.source in ("folder", "tfds") and not config.data.path:
        _fail("data.path", config.data.path, f"data.source={config.data.source!r} needs a path")
    divisor = 2 ** len(features)
    if config.data.image_size < divisor or config.data.image_size % divisor:
        _fail("data.image_size", config.data.image_size,
              f"must be a positive multiple of {divisor} (2 ** number of U-Net levels)")
    if config.data.channels not in (1, 3):
        _fail("data.channels", config.data.channels, "expected 1 or 3")
    for field in ("data.hu_min", "data.hu_max", "learning_rate"):
        value = functools.reduce(getattr, field.split("."), config)
        if not math.isfinite(value):
            _fail(field, value, "expected a finite number")
    if not config.data.hu_min < config.data.hu_max:
        _fail("data.hu_max", config.data.hu_max, f"must exceed data.hu_min={config.data.hu_min}")
    if not 0.0 < config.data.val_fraction < 1.0:
        _fail("data.val_fraction", config.data.val_fraction, "expected a fraction in (0, 1)")
    if config.data.source == "synthetic" and config.data.synthetic.num_images < 2:
        _fail("data.synthetic.num_images", config.data.synthetic.num_images, "expected >= 2")
    if not 0.0 <= config.model.bn_momentum < 1.0:
        _fail("model.bn_momentum", config.model.bn_momentum, "expected a value in [0, 1)")
    every = config.checkpoint.every_steps
    if not isinstance(every, int) or every < 0:
        _fail("checkpoint.every_steps", every, "expected an integer >= 0 (0: every epoch's end)")
    for field in ("seed", "data.split_seed", "data.synthetic.seed"):
        value = functools.reduce(getattr, field.split("."), config)
        if not isinstance(value, int) or value < 0:
            _fail(field, value, "expected a non-negative integer")
    for field in ("num_epochs", "batch_size", "eval_batch_size", "steps_per_call",
                  "schedule.num_cycles", "checkpoint.keep_latest", "data.synthetic.size"):
        value = functools.reduce(getattr, field.split("."), config)
        if not isinstance(value, int) or value < 1:
            _fail(field, value, "expected a positive integer")
    if not config.learning_rate > 0:
        _fail("learning_rate", config.learning_rate, "expected > 0")
    if config.schedule.name not in schedules.SCHEDULES:
        _fail("schedule.name", config.schedule.name, f"expected one of {schedules.SCHEDULES}")
    if config.loss not in metrics.LOSSES:
        _fail("loss", config.loss, f"expected one of {sorted(metrics.LOSSES)}")
    if not 0.0 <= config.augment.shift < 0.5 or not 0.0 <= config.augment.zoom < 1.0:
        _fail("augment", (config.augment.shift, config.augment.zoom),
              "expected 0 <= shift < 0.5 and 0 <= zoom < 1")


def check_mesh(config, num_devices: int) -> None:
    """Batch sizes must split evenly over the data-parallel devices."""
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % num_devices:
            _fail(field, config[field], f"must be divisible by the {num_devices} devices")


def check_slice(image_path: str, image: np.ndarray, mask_path: str, mask: np.ndarray) -> None:
    """Raises ValueError naming the file if a 2-D image/mask pair is unusable.

    The mask must have the image's shape and be binary (0/1 or 0/255); both must be finite.
    """
    if image.shape != mask.shape:
        raise ValueError(f"{mask_path}: mask shape {mask.shape} != image shape {image.shape} "
                         f"of {image_path}")
    for path, array in ((image_path, image), (mask_path, mask)):
        if np.issubdtype(array.dtype, np.number) and not np.all(np.isfinite(array)):
            bad = np.argwhere(~np.isfinite(array))[0]
            raise ValueError(f"{path}: non-finite pixel value {array[tuple(bad)]} at "
                             f"(row, column) {tuple(int(i) for i in bad)}")
    values = np.unique(mask)
    if len(values) > 2 or (len(values) == 2 and values[0] != 0):
        raise ValueError(f"{mask_path}: mask is not binary (values {values[:6]}); "
                         "expected 0/1 or 0/255")
