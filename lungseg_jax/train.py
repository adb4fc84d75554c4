"""Entry point: ``python -m lungseg_jax.train --config configs/NAME.py --workdir DIR``.

Kept short on purpose: flags and platform set-up only; the loop lives in
``trainer.py`` where it can be imported and tested. Re-running the same command
on the same workdir resumes from its latest checkpoint.

Exit status: 0 when training finished (or had already finished), 143 when it
stopped on SIGTERM after saving a checkpoint (re-run the command to resume),
1 on an error (bad config or data, non-finite loss: the message names it).
"""

import json
import sys

import jax
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from lungseg_jax import distributed, rundir, runtime, tracking, trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.DEFINE_string("eval_data_dir", "", "After training, evaluate on this folder (2d_images/, "
                    "2d_masks/): WORKDIR/evaluation.json, and logged when tracking.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runtime.reexec_with_huge_pages()
    distributed.initialize_from_flags()  # before any other JAX use
    runtime.setup_jax()
    runtime.setup_logging()
    logging.info("Config:\n%s", FLAGS.config)
    with tracking.Tracker(FLAGS.config, FLAGS.workdir) as tracker:  # MLflow, if configured
        try:
            trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir,
                                       on_epoch_end=tracker.log_epoch)
        except trainer.Preempted as stop:
            logging.warning("%s", stop)
            sys.exit(trainer.Preempted.EXIT_STATUS)
        tracker.finish(evaluate_test_set(FLAGS.workdir, FLAGS.eval_data_dir))


def evaluate_test_set(workdir: str, data_dir: str) -> dict | None:
    """The evaluation on ``data_dir`` (process 0), also written to WORKDIR/evaluation.json."""
    if not data_dir or jax.process_index() != 0:
        return None
    from lungseg_jax import evaluation  # only needed here

    result = evaluation.evaluate_workdir(workdir, data_dir,
                                         report_prefix=epath.Path(workdir) / "evaluation")
    rundir.write_atomic(epath.Path(workdir) / "evaluation.json",
                        json.dumps(result, indent=2) + "\n")
    print(evaluation.format_table(result))
    return result


if __name__ == "__main__":
    app.run(main)
