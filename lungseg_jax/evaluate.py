"""Entry point: evaluate a workdir's final weights, snapshots and ensemble on a folder.

    python -m lungseg_jax.evaluate --workdir DIR --data_dir FOLDER --output FILE.json \
        [--threshold 0.5] [--ensemble_last M] [--tta] [--postprocess] \
        [--noselect_on_validation] [--spacing_mm 0.7] [--nomlflow]

Writes ``{"num_images", "final", "snapshots": [{"step", ...}], "ensemble", "options",
"variants", "validation", "report_variant"}`` (pooled IoU, mean IoU and mean Dice each),
the report next to it (FILE.csv, FILE.md, FILE_*.png; see ``evaluation/report.py``), and
prints a table. When the training run was tracked with MLflow (``WORKDIR/mlflow_run_id``),
the numbers are logged to that run as ``eval/NAME/...`` metrics and the files as artifacts
in ``eval/NAME/``, NAME being FILE's name less .json (``tracking/evaluation_log.py``). See
docs/evaluation.md and docs/tracking_export_predict.md.
"""

import json
import os

from absl import flags

from lungseg_jax.core import cli
from lungseg_jax.core.files import prepare_file_path, write_atomic
from lungseg_jax.data import errata
from lungseg_jax.evaluation import evaluator
from lungseg_jax.tracking import evaluation_log

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (config.json and checkpoints/).")
flags.DEFINE_string("data_dir", None, "Folder with 2d_images/ and 2d_masks/.")
flags.DEFINE_string("output", None, "Where to write the metrics JSON (the report goes next "
                    "to it): a file path, not a folder; its folder is created.")
cli.define_scoring_flags("Probability threshold for a lung pixel.")
flags.DEFINE_integer("ensemble_last", 0, "Ensemble the last M snapshots (0: all).",
                     lower_bound=0)
flags.DEFINE_bool("tta", False, "Horizontal-flip test-time augmentation for final, snapshots "
                  "and ensemble (the 'variants' key holds both either way).")
flags.DEFINE_bool("postprocess", False, "Keep the two largest connected components (the "
                  "'variants' key holds both either way).")
flags.DEFINE_bool("select_on_validation", True, "Also score every variant on the training "
                  "run's validation split (needs its data, config.data) and report its winner.")
flags.DEFINE_string("errata", "builtin", "Known label errors to leave out: 'builtin' (the "
                    "dataset's shipped list), 'none', or a JSON file of your own.")
flags.DEFINE_bool("allow_overlap", False, "Evaluate even on slices the run trained or "
                  "validated on (refused by default, by name or content).")
flags.DEFINE_float("spacing_mm", None, "Pixel spacing in mm of the slices whose TIFF does not "
                   "record one (resolution in cm), for the report's HD95 in mm.")
flags.DEFINE_bool("mlflow", True, "Log the metrics and the report to the training run's MLflow "
                  "run when it was tracked (WORKDIR/mlflow_run_id), as eval/NAME/... for "
                  "--output .../NAME.json.")
flags.mark_flags_as_required(["workdir", "data_dir", "output"])
flags.register_validator("spacing_mm", lambda v: v is None or v > 0,
                         message="--spacing_mm must be a positive number of millimetres")


def main(argv):
    cli.start(argv)
    prepare_file_path(FLAGS.output)  # a bad --output fails now, not after the evaluation
    report_files = []
    result = evaluator.evaluate_workdir(
        FLAGS.workdir, FLAGS.data_dir, FLAGS.threshold, FLAGS.batch_size,
        ensemble_last=FLAGS.ensemble_last, tta=FLAGS.tta, postprocess=FLAGS.postprocess,
        select_on_validation=FLAGS.select_on_validation,
        report_prefix=os.path.splitext(FLAGS.output)[0],
        errata_file=errata.errata_file(FLAGS.errata), allow_overlap=FLAGS.allow_overlap,
        spacing_mm=FLAGS.spacing_mm, report_files=report_files)
    write_atomic(FLAGS.output, json.dumps(result, indent=2))
    print(evaluator.format_table(result))
    if FLAGS.mlflow:
        evaluation_log.log_evaluation(FLAGS.workdir, result, FLAGS.output, report_files)


def run():
    """The ``lungseg-evaluate`` console command."""
    cli.run(main)


if __name__ == "__main__":
    run()
