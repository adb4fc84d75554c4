"""The configured data source (``config.data``), loaded and split for training."""

import numpy as np
from absl import logging

from lungseg_jax.data import errata, phantoms
from lungseg_jax.data.slices import Slices, read_folder
from lungseg_jax.data.splits import assign_folds, split_indices


SOURCES = ("synthetic", "folder", "tfds")


def load_slices(data_config) -> Slices:
    """All slices of the configured source (``synthetic``, ``folder`` or ``tfds``)."""
    if data_config.source == "synthetic":
        return phantoms.synthetic_slices(data_config.synthetic.num_images,
                                         data_config.synthetic.size, data_config.synthetic.seed)
    if data_config.source == "folder":
        return read_configured_folder(data_config.path, data_config)
    if data_config.source == "tfds":
        from lungseg_jax.data import tfds_lungs  # optional dependency
        return tfds_lungs.load_slices(data_config.path, data_config.tfds_data_dir)
    raise ValueError(f"unknown config.data.source {data_config.source!r}; "
                     f"expected one of {SOURCES}")


def read_configured_folder(path: str, data_config) -> Slices:
    """``read_folder`` with ``data_config``'s Hounsfield window and ``sanity_checks`` switch."""
    return read_folder(path, hu_window=(data_config.hu_min, data_config.hu_max),
                       sanity_checks=data_config.sanity_checks)


def train_val_slices(data_config) -> tuple[Slices, Slices]:
    """The source's (training, validation) slices, without the known label errors of
    ``config.data.errata``: with ``config.data.cv.folds`` = k > 0, fold ``cv.fold`` of k
    (``splits.assign_folds`` over all the source's names, so a listed slice keeps its fold
    and leaves no gap) is the validation set; else ``val_fraction`` and ``split_seed`` split
    the rest. The same split every time."""
    known = errata.load_errata(errata.errata_file(data_config.errata))
    everything = load_slices(data_config)
    cv = data_config.cv
    if cv.folds:
        fold_of = assign_folds(everything.names, cv.folds, cv.group_pattern,
                               data_config.split_seed)
        is_val = fold_of == cv.fold
        train, validation = (errata.without_errata(
            everything.subset(np.flatnonzero(part)), known)[0] for part in (~is_val, is_val))
    else:
        slices = errata.without_errata(everything, known)[0]
        train_idx, val_idx = split_indices(len(slices), data_config.val_fraction,
                                           data_config.split_seed)
        train, validation = slices.subset(train_idx), slices.subset(val_idx)
    left_out = errata.leave_out(everything.names, known)[1]
    logging.info("Training data: %s", errata.describe(left_out, known))
    if len(train) == 0 or len(validation) == 0:
        split = (f"config.data.cv.fold={cv.fold} of {cv.folds}" if cv.folds else
                 f"config.data.val_fraction={data_config.val_fraction}")
        raise ValueError(f"{len(everything)} slices with {split} leave an empty train or "
                         f"validation set (known label errors left out: {len(left_out)})")
    return train, validation
