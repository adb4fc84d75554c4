"""Entry point: ``python -m lungseg_jax.train --config configs/NAME.py --workdir DIR``.

Kept short on purpose: flags and platform set-up only; the loop lives in
``trainer.py`` where it can be imported and tested. Re-running the same command
on the same workdir resumes from its latest checkpoint.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from lungseg_jax import runtime, trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runtime.setup_jax()
    runtime.setup_logging()
    logging.info("Config:\n%s", FLAGS.config)
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
