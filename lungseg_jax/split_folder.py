"""Entry point: hold out a test set of a dataset folder, as symbolic links (nothing copied).

    python -m lungseg_jax.split_folder --source DATA --output SPLIT \
        [--test_fraction 0.1] [--seed 0]

makes SPLIT/train and SPLIT/test in the same layout; train on SPLIT/train
(which is split again into train/validation) and evaluate on SPLIT/test. An existing
SPLIT/train or SPLIT/test is refused (another split's links would mix in): remove it first.
"""

from absl import flags

from lungseg_jax.core import cli
from lungseg_jax.data import errata, splits

FLAGS = flags.FLAGS
flags.DEFINE_string("source", None, "Folder with 2d_images/ and 2d_masks/.")
flags.DEFINE_string("output", None, "Where to make train/ and test/.")
flags.DEFINE_float("test_fraction", 0.1, "Fraction of the slices held out for test.")
flags.DEFINE_integer("seed", 0, "Seed of the split.")
flags.DEFINE_string("errata", "builtin", "Known label errors to leave out of both parts: "
                    "'builtin' (the dataset's shipped list), 'none', or a JSON file of your own.")
flags.mark_flags_as_required(["source", "output"])
flags.register_validator("test_fraction", lambda f: 0 < f < 1,
                         message="--test_fraction must lie strictly between 0 and 1")


def main(argv):
    cli.start(argv)
    listed = errata.errata_file(FLAGS.errata)
    counts = splits.split_folder(FLAGS.source, FLAGS.output, FLAGS.test_fraction, FLAGS.seed,
                                 listed)
    print(f"{FLAGS.output}/train: {counts['train']} slices, {FLAGS.output}/test: "
          f"{counts['test']} slices; {counts['left_out_why']}")


def run():
    """The ``lungseg-split`` console command."""
    cli.run(main)


if __name__ == "__main__":
    run()
