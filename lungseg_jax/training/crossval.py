"""Cross-validation training: k runs, fold i validating on the i-th group of patients.

The folder layout is ``rundir.folds``'. Each fold is an ordinary run in its own workdir,
so an interrupted cross-validation resumes where it stopped: finished folds are skipped,
the fold in progress resumes from its checkpoint.
"""

from absl import logging

from lungseg_jax.rundir import folds
from lungseg_jax.training.config_checks import check_config
from lungseg_jax.training.loop import train_and_evaluate


def train_folds(config, cv_dir: str, devices=None, is_chief: bool = True,
                callbacks_of=None) -> None:
    """Trains (or resumes) every fold of ``config.data.cv.folds`` in ``cv_dir``.

    ``callbacks_of(fold)``, if given, returns that fold's ``(on_epoch_end, on_steps)``
    (see ``train_and_evaluate``)."""
    check_config(config)
    if config.data.cv.folds < 2:
        raise ValueError(f"config.data.cv.folds={config.data.cv.folds}: cross-validation "
                         "needs at least 2 folds")
    folds.prepare(cv_dir, config, write=is_chief)
    for fold in range(config.data.cv.folds):
        logging.info("Fold %d of %d: %s", fold + 1, config.data.cv.folds,
                     folds.fold_workdir(cv_dir, fold))
        on_epoch_end, on_steps = callbacks_of(fold) if callbacks_of else (None, None)
        train_and_evaluate(folds.fold_config(config, fold), str(folds.fold_workdir(cv_dir, fold)),
                           devices, on_epoch_end=on_epoch_end, on_steps=on_steps)
