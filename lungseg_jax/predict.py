"""Entry point: segment the lungs in CT slices, volumes and DICOM series with an exported
model (or a workdir).

    python -m lungseg_jax.predict --model EXPORT_DIR --output OUT [--uncertainty] INPUT...
    python -m lungseg_jax.predict --workdir WORKDIR --output OUT --label_sides INPUT...

INPUT: a 2-D slice (.tif, .tiff, .npy: Hounsfield values; .png: already windowed), a NIfTI
volume (.nii, .nii.gz), a DICOM series (a folder of .dcm files of one axial series) or one
.dcm file, or a folder of slices or volumes (its files). Each input NAME writes
OUT/NAME_mask.EXT (a DICOM input: NAME_mask.nii.gz), OUT/NAME.json and, with --uncertainty,
OUT/NAME_uncertainty.EXT. Volumes are reoriented to RAS+ and cut into axial slices in
radiological display; results go back in the input's own orientation (docs/ct_inputs.md;
serving/predict.py, serving/scans.py, serving/dicom.py). A call whose outputs would collide
or replace an existing file (without --overwrite) is refused before any work; a bad input is
reported and skipped. The exit status is 1 if the call was refused or any input failed.
"""

import os
import sys
import tempfile

from absl import app, flags

from lungseg_jax.core import cli
from lungseg_jax.serving import exported, predict

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Export directory (python -m lungseg_jax.export).")
flags.DEFINE_string("workdir", None, "Training workdir, exported on the fly (all snapshots).")
flags.DEFINE_string("output", None, "Output folder for masks and JSON reports.")
flags.DEFINE_bool("uncertainty", False, "Also write the snapshots' probability std map.")
flags.DEFINE_bool("label_sides", False,
                  "Label the mask 1 = the patient's right lung, 2 = the left lung (volumes "
                  "from their orientation; 2-D slices taken as radiological display: image "
                  "left = patient right), and report each side's amount.")
flags.DEFINE_integer("batch_size", 8, "Slices per model call.", lower_bound=1)
flags.DEFINE_float("threshold", None, "Probability threshold (default: the export's).")
flags.DEFINE_float("spacing_mm", None, "Pixel spacing of 2-D inputs that do not record it.")
flags.DEFINE_bool("overwrite", False, "Replace outputs that exist already (else refused).")
flags.mark_flags_as_required(["output"])
flags.register_validator("threshold", lambda t: t is None or cli.is_probability_threshold(t),
                         message=cli.THRESHOLD_RULE)
flags.register_validator("spacing_mm", lambda s: s is None or s > 0,
                         message="--spacing_mm must be a positive pixel spacing")
flags.register_multi_flags_validator(
    ["model", "workdir"], lambda f: (f["model"] is None) != (f["workdir"] is None),
    message="give exactly one of --model and --workdir")


def main(argv):
    inputs = argv[1:]
    if not inputs:
        raise app.UsageError("no inputs: give one or more slice, volume or DICOM files or "
                             "folders")
    cli.start(argv, positional_args=True)
    try:  # planned once, before the model is loaded (or a workdir exported)
        plan = predict.plan_outputs(inputs, FLAGS.output, FLAGS.uncertainty, FLAGS.overwrite)
    except predict.OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = FLAGS.model
        if FLAGS.workdir:
            from lungseg_jax.serving import export  # flax and orbax, only for a workdir
            model_dir = os.path.join(tmp, "export")
            export.export_workdir(FLAGS.workdir, model_dir, platforms=("cpu",))
        outcomes = predict.predict_all(
            exported.ExportedModel(model_dir), inputs, FLAGS.output, FLAGS.overwrite, plan,
            batch_size=FLAGS.batch_size, uncertainty=FLAGS.uncertainty,
            spacing_mm=FLAGS.spacing_mm, threshold=FLAGS.threshold,
            label_sides=FLAGS.label_sides)
        failed, total = print_outcomes(outcomes)
    if failed:
        print(f"{failed} of {total} inputs failed", file=sys.stderr)  # folders by their files
        sys.exit(1)


def print_outcomes(outcomes) -> tuple:
    """Prints each outcome as it comes (a line on stdout per segmented input, its warnings
    and each failure on stderr); returns (failed, total)."""
    failed = total = 0
    for outcome in outcomes:
        total += 1
        if outcome.error is not None:
            failed += 1
            print(f"error: {outcome.error}", file=sys.stderr)
            continue
        result = outcome.result
        for warning in result.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{outcome.path}: lungs {predict.describe(result)} -> {result['mask']}")
    return failed, total


def run():
    """The ``lungseg-predict`` console command."""
    cli.run(main)


if __name__ == "__main__":
    run()
