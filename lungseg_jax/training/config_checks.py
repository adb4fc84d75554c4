"""Checks of a training config before anything runs, with errors naming the field and value.

Unknown keys are caught earlier: the entry points lock the config, so an override like
``--config.modle.name=x`` is refused by ml_collections.
"""

import functools
import math
import os
import re

from lungseg_jax.data.sources import SOURCES
from lungseg_jax.model.unet import MODELS, OP_SETS
from lungseg_jax.training import schedules
from lungseg_jax.training.losses import LOSSES

DTYPES = ("float32", "bfloat16", "float16")


def _fail(field: str, value, expected: str):
    raise ValueError(f"config.{field}={value!r} is invalid: {expected}")


def check_config(config) -> None:
    """Raises ValueError naming the first invalid field of a training config."""
    if config.model.name not in MODELS:
        _fail("model.name", config.model.name, f"expected one of {sorted(MODELS)}")
    if config.model.ops not in OP_SETS:
        _fail("model.ops", config.model.ops, f"expected one of {OP_SETS}")
    features = tuple(config.model.features)
    if not features or any(int(f) < 1 for f in features):
        _fail("model.features", features, "expected positive channel counts")
    if config.model.dtype not in DTYPES:
        _fail("model.dtype", config.model.dtype, f"expected one of {DTYPES}")
    if config.data.source not in SOURCES:
        _fail("data.source", config.data.source, f"expected one of {SOURCES}")
    errata = config.data.errata
    if errata not in ("builtin", "none", "") and not os.path.isfile(errata):
        _fail("data.errata", errata, "expected 'builtin', 'none' or an errata JSON file")
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
    cv = config.data.cv
    if not isinstance(cv.folds, int) or cv.folds < 0 or cv.folds == 1:
        _fail("data.cv.folds", cv.folds, "expected 0 (no cross-validation) or at least 2")
    if cv.folds and not (isinstance(cv.fold, int) and 0 <= cv.fold < cv.folds):
        _fail("data.cv.fold", cv.fold, f"expected a fold in [0, {cv.folds})")
    try:
        groups = re.compile(cv.group_pattern).groups
    except re.error as e:
        _fail("data.cv.group_pattern", cv.group_pattern, f"not a regular expression ({e})")
    if groups > 1:
        _fail("data.cv.group_pattern", cv.group_pattern,
              "expected at most one group (the patient's part of a slice name)")
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
    if config.loss not in LOSSES:
        _fail("loss", config.loss, f"expected one of {sorted(LOSSES)}")
    if not 0.0 <= config.augment.shift < 0.5 or not 0.0 <= config.augment.zoom < 1.0:
        _fail("augment", (config.augment.shift, config.augment.zoom),
              "expected 0 <= shift < 0.5 and 0 <= zoom < 1")


def check_mesh(config, num_devices: int) -> None:
    """Batch sizes must split evenly over the data-parallel devices."""
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % num_devices:
            _fail(field, config[field], f"must be divisible by the {num_devices} devices")
