"""Entry point: evaluate a workdir's final weights, snapshots and ensemble on a folder.

    python -m lungseg_jax.evaluate --workdir DIR --data_dir FOLDER --output FILE.json \
        [--threshold 0.5]

Writes ``{"num_images", "final", "snapshots": [{"step", ...}], "ensemble"}`` with
pooled IoU, mean IoU and mean Dice each, and prints a table.
"""

import json
import os

from absl import app, flags

from lungseg_jax import evaluation, runtime

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (config.json and checkpoints/).")
flags.DEFINE_string("data_dir", None, "Folder with 2d_images/ and 2d_masks/.")
flags.DEFINE_string("output", None, "Where to write the metrics JSON.")
flags.DEFINE_float("threshold", 0.5, "Probability threshold for a lung pixel.")
flags.DEFINE_integer("batch_size", 8, "Images per prediction batch.")
flags.mark_flags_as_required(["workdir", "data_dir", "output"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runtime.setup_jax()
    runtime.setup_logging()
    result = evaluation.evaluate_workdir(FLAGS.workdir, FLAGS.data_dir, FLAGS.threshold,
                                         FLAGS.batch_size)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    with open(FLAGS.output, "w") as f:
        json.dump(result, f, indent=2)
    print(evaluation.format_table(result))


if __name__ == "__main__":
    app.run(main)
