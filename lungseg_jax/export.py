"""Entry point: export a workdir's snapshots and their ensemble as ``jax.export`` artifacts.

    python -m lungseg_jax.export --workdir DIR --output EXPORT_DIR [--snapshots last:2] \
        [--overwrite]

See ``serving/export.py`` and docs/tracking_export_predict.md.
"""

from absl import flags

from lungseg_jax.core import cli
from lungseg_jax.serving import export

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Training workdir (config.json and checkpoints/).")
flags.DEFINE_string("output", None, "Export directory to write.")
flags.DEFINE_string("snapshots", "all", "Snapshots to export: 'all' or 'last:m'.")
cli.define_threshold_flag("Probability threshold recorded for a lung pixel.")
flags.DEFINE_bool("overwrite", False, "Write into an existing non-empty --output folder "
                  "(its files of the same names are replaced).")
flags.DEFINE_list("platforms", list(export.PLATFORMS), "Platforms the artifacts are lowered for.")
flags.DEFINE_string("variant_from", None, "An evaluation JSON (python -m lungseg_jax.evaluate): "
                    "export the variant it chose on validation (members, TTA, post-processing, "
                    "threshold) instead of --snapshots and --threshold.")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
    cli.start(argv)
    variant = export.chosen_in(FLAGS.variant_from) if FLAGS.variant_from else None
    metadata = export.export_workdir(FLAGS.workdir, FLAGS.output, FLAGS.snapshots,
                                     FLAGS.threshold, tuple(FLAGS.platforms),
                                     overwrite=FLAGS.overwrite, variant=variant)
    print(f"exported snapshots {metadata['snapshot_steps']} and their ensemble to {FLAGS.output}")


def run():
    """The ``lungseg-export`` console command."""
    cli.run(main)


if __name__ == "__main__":
    run()
