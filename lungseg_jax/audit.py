"""Entry point: rank a dataset's masks by how wrong they look, for a person to check.

    python -m lungseg_jax.audit --workdir CROSSVAL_DIR --output DIR [--top 10]

``CROSSVAL_DIR`` comes from ``lungseg_jax.crossval``: every slice of its data (the known
label errors included) is predicted by the fold that did not train on it, and ranked by
its mask's disagreement with that prediction and by model-free anatomical checks
(``evaluation/audit.py``). Prints the ranked names, most suspicious first, and writes
``DIR/audit.csv`` and overlays of the top ones; confirm each by eye before listing it in
an errata file (docs/crossval.md).
"""

from absl import flags

from lungseg_jax.core import cli
from lungseg_jax.evaluation import audit

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Cross-validation folder (python -m lungseg_jax.crossval).")
flags.DEFINE_string("output", None, "Folder for audit.csv and the overlays.")
flags.DEFINE_integer("top", 10, "Overlays of this many most suspicious slices.", lower_bound=0)
cli.define_scoring_flags("Probability threshold of the predictions.")
flags.mark_flags_as_required(["workdir", "output"])


def main(argv):
    cli.start(argv)
    rows = audit.audit(FLAGS.workdir, FLAGS.output, FLAGS.threshold, FLAGS.top,
                       FLAGS.batch_size)
    print(f"{'rank':>4}  {'suspicion':>9}  {'OOF IoU':>7}  name (flags){'':12}")
    for row in rows[:max(FLAGS.top, 1)]:
        known = "  [known label error]" if row["known_error"] else ""
        print(f"{row['rank']:>4}  {row['suspicion']:>9.3f}  {row['oof_iou']:>7.3f}  "
              f"{row['name']} {' '.join(row['flags'])}{known}")
    print(f"all {len(rows)} slices: {FLAGS.output}/audit.csv")


def run():
    """The ``lungseg-audit`` console command."""
    cli.run(main)


if __name__ == "__main__":
    run()
