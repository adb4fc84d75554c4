"""Splits: the training run's validation split, cross-validation folds grouped by patient,
and a held-out test folder of links."""

import os
import re

import numpy as np

from lungseg_jax.data.errata import BUILTIN, describe, leave_out, load_errata
from lungseg_jax.data.slices import IMAGE_DIR, MASK_DIR, paired_tiff_names


def split_indices(n: int, val_fraction: float, seed: int):
    """Deterministic (train, validation) index arrays; validation gets round(n * fraction)."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def group_of(name: str, pattern: str) -> str:
    """The group (patient) of a slice: the first group of ``pattern`` matched at the start of
    ``name`` (``^(ID_\\d+)`` gives ``ID_0079`` for ``ID_0079_Z_0072``); a name it does not
    match is a group of its own."""
    match = re.match(pattern, name)
    if not match:
        return name
    return (match.group(1) if match.groups() else None) or match.group(0) or name


def assign_folds(names, folds: int, pattern: str, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each of ``names``: whole groups (``group_of``) per fold, so no
    patient is on both sides of a fold. Groups are shuffled by ``seed`` and dealt, largest
    first, to the fold with the fewest slices so far, which balances the folds' sizes.
    Depends only on the set of names (not their order). ValueError when there are fewer
    groups than folds."""
    names = list(names)
    groups = {}
    for name in sorted(names):
        groups.setdefault(group_of(name, pattern), []).append(name)
    if folds < 2:
        raise ValueError(f"{folds} folds: cross-validation needs at least 2")
    if len(groups) < folds:
        raise ValueError(f"{folds} folds need at least {folds} groups of slices; the data has "
                         f"{len(groups)} (group pattern {pattern!r})")
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    shuffled = [keys[i] for i in order]
    sizes, fold_of = np.zeros(folds, int), {}
    for key in sorted(shuffled, key=lambda k: -len(groups[k])):  # stable: ties keep the shuffle
        fold = int(np.argmin(sizes))
        sizes[fold] += len(groups[key])
        fold_of.update((name, fold) for name in groups[key])
    return np.array([fold_of[name] for name in names], int)


def split_folder(source: str, output: str, test_fraction: float, seed: int,
                 errata: str | None = BUILTIN) -> dict:
    """Splits a dataset folder into ``output/train`` and ``output/test`` of symbolic links.

    Deterministic in ``seed``; nothing is copied. The slices of the ``errata`` file (the
    dataset's known label errors, ``data.errata``; None: none) are left out of both.
    Returns {'train': n, 'test': n, 'left_out': [names], 'left_out_why': one line}. Refuses a ``test_fraction``
    outside (0, 1), a split that leaves either part empty, and an ``output`` that already
    holds a split (another split's links would mix in).
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction}: expected a fraction between 0 and 1")
    images, masks = paired_tiff_names(source)
    known = load_errata(errata)
    names, left_out = leave_out(sorted(images), known)
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
    return {"train": len(train_idx), "test": len(test_idx), "left_out": left_out,
            "left_out_why": describe(left_out, known)}
