"""Splits: the training run's validation split, and a held-out test folder of links."""

import os

import numpy as np

from lungseg_jax.data.errata import BUILTIN, leave_out, load_errata
from lungseg_jax.data.slices import IMAGE_DIR, MASK_DIR, paired_tiff_names


def split_indices(n: int, val_fraction: float, seed: int):
    """Deterministic (train, validation) index arrays; validation gets round(n * fraction)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_folder(source: str, output: str, test_fraction: float, seed: int,
                 errata: str | None = BUILTIN) -> dict:
    """Splits a dataset folder into ``output/train`` and ``output/test`` of symbolic links.

    Deterministic in ``seed``; nothing is copied. The slices of the ``errata`` file (the
    dataset's known label errors, ``data.errata``; None: none) are left out of both.
    Returns {'train': n, 'test': n, 'left_out': [names]}. Refuses a ``test_fraction``
    outside (0, 1), a split that leaves either part empty, and an ``output`` that already
    holds a split (another split's links would mix in).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction}: expected a fraction between 0 and 1")
    images, masks = paired_tiff_names(source)
    names, left_out = leave_out(sorted(images), load_errata(errata))
    train_idx, test_idx = split_indices(len(names), test_fraction, seed)
    if len(train_idx) == 0 or len(test_idx) == 0:
        raise ValueError(f"{len(names)} slices with test_fraction={test_fraction} leave an "
                         "empty train or test set")
    for part in ("train", "test"):
        if os.path.exists(os.path.join(output, part)):
            raise FileExistsError(f"{os.path.join(output, part)!r} exists: remove it or "
                                  "choose another output folder")
    for part, indices in (("train", train_idx), ("test", test_idx)):
        for sub, files in ((IMAGE_DIR, images), (MASK_DIR, masks)):
            os.makedirs(os.path.join(output, part, sub))
            for i in indices:
                target = os.path.abspath(files[names[i]])
                os.symlink(target, os.path.join(output, part, sub, os.path.basename(target)))
    return {"train": len(train_idx), "test": len(test_idx), "left_out": left_out}
