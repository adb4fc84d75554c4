"""A cross-validation folder: ``DIR/crossval.json`` and one run's workdir per fold.

    DIR/config.json         the config every fold trains (``data.cv.fold`` aside)
    DIR/crossval.json       {"folds": k}: what makes DIR a cross-validation folder
    DIR/fold_<i>/           fold i's workdir (config, split, checkpoints, metrics)

Each fold is an ordinary, resumable run whose validation set is its fold (recorded in its
``split.json``); the folds' models together are the fold ensemble.
"""

import copy
import json

from etils import epath

from lungseg_jax.core.files import write_atomic
from lungseg_jax.rundir import records

RECORD = "crossval.json"


def fold_workdir(cv_dir: epath.PathLike, fold: int) -> epath.Path:
    return epath.Path(cv_dir) / f"fold_{fold}"


def load_record(cv_dir: epath.PathLike) -> dict:
    """``crossval.json`` of the cross-validation folder ``cv_dir``."""
    return json.loads((epath.Path(cv_dir) / RECORD).read_text())


def is_crossval(workdir: epath.PathLike) -> bool:
    return (epath.Path(workdir) / RECORD).exists()


def fold_config(config, fold: int):
    """``config`` (of the whole cross-validation) for training fold ``fold``."""
    config = copy.deepcopy(config)
    with config.unlocked():
        config.data.cv.fold = fold
    return config


def prepare(cv_dir: epath.PathLike, config, write: bool) -> None:
    """Refuses a folder of another cross-validation (another config or fold count) or a
    plain run's workdir; with ``write``, records ``crossval.json`` (first: a folder cut off
    between the two files is still a cross-validation) and the config."""
    path = epath.Path(cv_dir)
    if (path / "config.json").exists() and not is_crossval(path):
        raise ValueError(f"{cv_dir} is a training run's workdir, not a cross-validation "
                         "folder; use a new --workdir")
    records.require_folder(cv_dir)
    if write and not is_crossval(path):
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(path / RECORD, json.dumps({"folds": config.data.cv.folds}) + "\n")
    records.prepare_workdir(cv_dir, fold_config(config, 0), write)
