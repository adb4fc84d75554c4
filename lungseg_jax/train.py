"""Entry point: ``python -m lungseg_jax.train --config configs/NAME.py --workdir DIR``.

Kept short on purpose: flags and start-up only; the loop lives in
``training/loop.py`` where it can be imported and tested. Re-running the same command
on the same workdir resumes from its latest checkpoint.

Exit status: 0 when training finished (or had already finished), 143 when it
stopped on SIGTERM after saving a checkpoint (re-run the command to resume),
1 on an error (bad config or data, non-finite loss: the message names it).
"""

import json
import os
import time

import jax
from absl import flags, logging
from etils import epath
from ml_collections import config_flags

from lungseg_jax.configs import default as default_config
from lungseg_jax.core import cli
from lungseg_jax.core.files import is_local, write_atomic
from lungseg_jax.rundir import records
from lungseg_jax.tracking.tensorboard import TensorBoardWriter
from lungseg_jax.tracking.mlflow_run import workdir_uri
from lungseg_jax.tracking.tracker import Tracker
from lungseg_jax.training.config_checks import check_config
from lungseg_jax.training.loop import run_summary, train_and_evaluate
from lungseg_jax.training.preemption import exiting_when_preempted

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config: a file, or the name of a shipped one "
    f"({', '.join(cli.shipped_config_names())}). Any field can be overridden, e.g. "
    "--config.num_epochs=3; the default config's fields:\n"
    + cli.describe_fields(default_config.get_config()), lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.DEFINE_string("eval_data_dir", "", "After training, evaluate on this folder (2d_images/, "
                    "2d_masks/): WORKDIR/evaluation.json, and logged when tracking.")
flags.mark_flags_as_required(["config", "workdir"])
cli.define_cluster_flags()


def main(argv):
    started = time.monotonic()
    cli.start(argv, cluster=True)
    check_config(FLAGS.config)  # a bad value is refused in one line, before the config's log
    logging.info("Config: %s (every field: %s/config.json)", records.diff_configs(
        *map(records.config_to_dict, (default_config.get_config(), FLAGS.config)))
        or "the default", FLAGS.workdir)
    board_enabled = jax.process_index() == 0 and is_local(FLAGS.workdir)
    with Tracker(FLAGS.config, FLAGS.workdir) as tracker, \
            TensorBoardWriter(FLAGS.workdir, enabled=board_enabled) as board:

        def on_epoch_end(record):
            tracker.log_epoch(record)
            board.log_epoch(record)

        def on_steps(first_step, values):
            tracker.log_steps(first_step, values)
            board.log_steps(first_step, values)

        with exiting_when_preempted():
            train_and_evaluate(FLAGS.config, FLAGS.workdir, on_epoch_end=on_epoch_end,
                               on_steps=on_steps)
        tracker.finish(evaluate_test_set(FLAGS.workdir, FLAGS.eval_data_dir))
        if jax.process_index() == 0:
            print(run_summary(FLAGS.workdir, time.monotonic() - started,
                              summary_places(board, tracker)), flush=True)


def summary_places(board: TensorBoardWriter, tracker: Tracker) -> list:
    """The (label, location) pairs of the run summary: TensorBoard's folder, the MLflow run."""
    places = [] if board.folder is None else [("TensorBoard", os.path.abspath(board.folder))]
    if tracker.run_id is not None:
        store = tracker.uri if tracker.uri == workdir_uri(FLAGS.workdir) else \
            "$MLFLOW_TRACKING_URI"
        places.append(("MLflow run", f"{tracker.run_id} (store {store})"))
    return places


def evaluate_test_set(workdir: str, data_dir: str) -> dict | None:
    """The evaluation on ``data_dir`` (process 0), also written to WORKDIR/evaluation.json."""
    if not data_dir or jax.process_index() != 0:
        return None
    from lungseg_jax.evaluation import evaluator  # only needed here

    result = evaluator.evaluate_workdir(workdir, data_dir,
                                        report_prefix=epath.Path(workdir) / "evaluation")
    write_atomic(epath.Path(workdir) / "evaluation.json", json.dumps(result, indent=2) + "\n")
    print(evaluator.format_table(result))
    return result


def run():
    """The ``lungseg-train`` console command."""
    cli.run(main)


if __name__ == "__main__":
    run()
