"""The configured data source (``config.data``), loaded and split for training."""

from absl import logging

from lungseg_jax.data import errata, phantoms
from lungseg_jax.data.slices import Slices, read_folder
from lungseg_jax.data.splits import split_indices


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
    """``read_folder`` with ``data_config``'s Hounsfield window and ``sanity_checks`` switch
    (absent from the configs of runs recorded before it: on)."""
    return read_folder(path, hu_window=(data_config.hu_min, data_config.hu_max),
                       sanity_checks=data_config.get("sanity_checks", True))


def train_val_slices(data_config) -> tuple[Slices, Slices]:
    """The source's (training, validation) slices, without the known label errors of
    ``config.data.errata`` (a run recorded before that field existed: none), split by
    ``config.data.val_fraction`` and ``split_seed``: the same split every time."""
    known = errata.load_errata(errata.errata_file(data_config.get("errata", "none")))
    slices, left_out = errata.without_errata(load_slices(data_config), known)
    logging.info("Training data: %s", errata.describe(left_out, known))
    train_idx, val_idx = split_indices(len(slices), data_config.val_fraction,
                                       data_config.split_seed)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"{len(slices)} slices with config.data.val_fraction="
                         f"{data_config.val_fraction} leave an empty train or validation set")
    return slices.subset(train_idx), slices.subset(val_idx)

