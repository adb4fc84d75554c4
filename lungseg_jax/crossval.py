"""Entry point: k-fold cross-validation, folds grouped by patient, and the fold ensemble.

    python -m lungseg_jax.crossval --config cpu_fast --workdir runs/cv \
        --config.data.source=folder --config.data.path=SPLIT/train --folds 5

trains fold i of k in ``WORKDIR/fold_i`` (validating on the i-th group of patients: the
part of each slice's name that ``--config.data.cv.group_pattern`` matches, ``ID_nnnn``),
then scores every slice out of fold: ``WORKDIR/crossval.csv`` (per slice) and
``WORKDIR/crossval_summary.json`` (pooled over all slices, and per fold), and prints the
table. Re-running the command resumes: finished folds are skipped. The folds' models are
the fold ensemble: ``evaluate --workdir WORKDIR``, ``export --workdir WORKDIR`` and
``predict --workdir WORKDIR`` take it like a run's snapshots. See docs/crossval.md.
"""

import contextlib

import jax
from absl import flags
from ml_collections import config_flags

from lungseg_jax.core import cli
from lungseg_jax.core.files import is_local
from lungseg_jax.evaluation import crossval
from lungseg_jax.rundir import folds
from lungseg_jax.tracking.tensorboard import TensorBoardWriter
from lungseg_jax.training.crossval import train_folds
from lungseg_jax.training.preemption import exiting_when_preempted

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config of every fold: a file, or the name of a shipped one "
    f"({', '.join(cli.shipped_config_names())}); fields as for lungseg-train.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Folder of the cross-validation (a workdir per fold).")
flags.DEFINE_integer("folds", 5, "Number of folds (sets config.data.cv.folds).", lower_bound=2)
cli.define_scoring_flags("Probability threshold of the out-of-fold scores.")
flags.mark_flags_as_required(["config", "workdir"])
cli.define_cluster_flags()


def main(argv):
    cli.start(argv, cluster=True)
    config = FLAGS.config
    with config.unlocked():
        config.data.cv.folds = FLAGS.folds
    is_chief = jax.process_index() == 0

    @contextlib.contextmanager
    def callbacks_of(fold):  # each fold's TensorBoard events in its own workdir
        with TensorBoardWriter(str(folds.fold_workdir(FLAGS.workdir, fold)),
                               enabled=is_chief and is_local(FLAGS.workdir)) as board:
            yield board.log_epoch, board.log_steps

    with exiting_when_preempted():
        train_folds(config, FLAGS.workdir, is_chief=is_chief, callbacks_of=callbacks_of)
    if is_chief:
        summary = crossval.cross_validate(FLAGS.workdir, FLAGS.threshold, FLAGS.batch_size)
        print(crossval.format_summary(summary))


def run():
    """The ``lungseg-crossval`` console command."""
    cli.run(main)


if __name__ == "__main__":
    run()
