"""Cross-validation training: k runs, fold i validating on the i-th group of patients.

The folder layout is ``rundir.folds``'. Each fold is an ordinary run in its own workdir,
so an interrupted cross-validation resumes where it stopped: finished folds are skipped,
the fold in progress resumes from its checkpoint.
"""

import contextlib

from absl import logging

from lungseg_jax.rundir import folds
from lungseg_jax.training.config_checks import check_config
from lungseg_jax.training.loop import train_and_evaluate


def no_callbacks(fold: int):
    return contextlib.nullcontext((None, None))


def train_folds(config, cv_dir: str, devices=None, is_chief: bool = True,
                callbacks_of=no_callbacks) -> None:
    """Trains (or resumes) every fold of ``config.data.cv.folds`` in ``cv_dir``.

    ``callbacks_of(fold)``: a context manager giving that fold's ``(on_epoch_end,
    on_steps)`` (see ``train_and_evaluate``) for the time it trains."""
    check_config(config)
    if config.data.cv.folds < 2:
        raise ValueError(f"config.data.cv.folds={config.data.cv.folds}: cross-validation "
                         "needs at least 2 folds")
    if config.tracking.mlflow:
        raise ValueError("config.tracking.mlflow=True: crossval does not log to MLflow (each "
                         "fold's TensorBoard events are in its workdir); leave it False")
    folds.prepare(cv_dir, config, write=is_chief)
    for fold in range(config.data.cv.folds):
        workdir = str(folds.fold_workdir(cv_dir, fold))
        logging.info("Fold %d of %d: %s", fold + 1, config.data.cv.folds, workdir)
        with callbacks_of(fold) as (on_epoch_end, on_steps):
            train_and_evaluate(folds.fold_config(config, fold), workdir, devices,
                               on_epoch_end=on_epoch_end, on_steps=on_steps)
