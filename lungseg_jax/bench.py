"""Entry point: benchmark the trainer's own jitted train steps (``perf/bench.py``).

    python -m lungseg_jax.bench --model incp_unet --image_size 128 --batch_size 4 \
        [--dtype float32] [--steps 20] [--profile_runs 5] \
        [--config configs/default.py --config.x=y]

Prints one JSON line per case and then a table. bench's own flags always set the
``perf.bench.FLAG_OWNED_FIELDS`` (model, dtype, image size, channels, batch size), their defaults
included, whatever the ``--config`` file says; ``--config.x=y`` sets any other field and
may not set those. The README says where the measured figures are and how to compare
with the PyTorch peer.
"""

import json
import os
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

from lungseg_jax.core import cli, runtime
from lungseg_jax.model.unet import MODELS
from lungseg_jax.perf import bench

DEFAULT_CONFIG = cli.shipped_config("default")
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Base training config: a file, "
                                "or the name of a shipped one.",
                                lock_config=True)
flags.DEFINE_enum("model", "incp_unet", sorted(MODELS), "Model to benchmark.")
flags.DEFINE_integer("image_size", 128, "Square image size.")
flags.DEFINE_integer("batch_size", 4, "Global batch size.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("channels", 3, "Input channels (3 as the peer benchmark).")
flags.DEFINE_integer("steps", 20, "Timed steps (rounded up to whole calls of "
                     "config.steps_per_call steps, at least MIN_TIMED_CALLS).", lower_bound=1)
flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation (rounded up to whole "
                     "calls).", lower_bound=0)
flags.DEFINE_integer("num_images", 32, "Resident training images to draw batches from "
                     "(at least --batch_size).", lower_bound=1)
flags.DEFINE_integer("profile_runs", 0, "Calls to profile per layer (CPU only; 0: none).",
                     lower_bound=0)
flags.DEFINE_integer("profile_depth", 1, "Module levels in a profiled layer's name "
                     "(1: ConvBlock_3; 2: ConvBlock_3/ConvBNAct_0).", lower_bound=1)


def bench_config():
    """``--config`` with the fields of ``bench.FLAG_OWNED_FIELDS`` set from bench's own
    flags."""
    config = FLAGS.config.copy_and_resolve_references()
    with config.unlocked():
        config.model.name = FLAGS.model
        config.model.dtype = FLAGS.dtype
        config.data.image_size = FLAGS.image_size
        config.data.channels = FLAGS.channels
        config.batch_size = FLAGS.batch_size
    return config


def main(argv):
    overrides = bench.owned_field_overrides(sys.argv)
    if overrides:
        arg, field = overrides[0]
        raise app.UsageError(f"{arg}: set by bench's own flags; use "
                             f"--{bench.FLAG_OWNED_FIELDS[field]}")
    runtime.reexec_with_huge_pages()  # before the temporary cache, which a restart would leak
    with tempfile.TemporaryDirectory() as cache_dir:
        cli.start(argv, cache_dir=cache_dir)  # empty cache: the first compile is a cold one
        results = bench.run_benchmark(bench_config(), FLAGS.steps, FLAGS.warmup,
                                      FLAGS.num_images, FLAGS.profile_runs, FLAGS.profile_depth)
    for result in results:
        print(json.dumps(result), flush=True)
    print(bench.format_table(results), flush=True)


def run():
    """The ``lungseg-bench`` console command."""
    cli.run(main)


if __name__ == "__main__":
    run()
