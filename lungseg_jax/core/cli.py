"""What every command-line entry point shares: its start-up, its common flags, and how it
reports a user's error."""

import functools
import sys

from absl import app, flags, logging

from lungseg_jax.core import distributed, runtime

# What a user's input causes (a bad config value, data file, path or flag value); the
# messages name the file, field or value, so a traceback would only bury them.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError)
THRESHOLD_RULE = "--threshold must be a probability strictly between 0 and 1"


def is_probability_threshold(value: float) -> bool:
    """Whether ``value`` can split probabilities into lung and not: 0 < value < 1."""
    return 0 < value < 1


def define_cluster_flags() -> None:
    """The flags of ``core.distributed`` (for commands that may run on several hosts)."""
    flags.DEFINE_string("coordinator_address", None,
                        "host:port of process 0's coordinator, reachable from every process.")
    flags.DEFINE_integer("num_processes", None, "Number of processes (1: no cluster).")
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")
    flags.DEFINE_bool("multihost", False, "Join a cluster that JAX detects itself (Cloud TPU "
                      "VM slices, Slurm, Open MPI).")


def start(argv, *, positional_args: bool = False, cluster: bool = False,
          cache_dir: str | None = None) -> None:
    """A command's start-up, before anything else touches JAX: refuses positional
    arguments (unless ``positional_args``), restarts once with huge pages
    (``runtime.reexec_with_huge_pages``), joins the cluster that ``define_cluster_flags``'
    flags describe (``cluster``), and sets up JAX (compilation cache ``cache_dir``, see
    ``runtime.setup_jax``) and logging."""
    if len(argv) > 1 and not positional_args:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runtime.reexec_with_huge_pages()
    if cluster:
        f = flags.FLAGS
        distributed.initialize(f.coordinator_address, f.num_processes, f.process_id,
                               f.multihost)
    runtime.setup_jax(cache_dir)
    runtime.setup_logging()


def run(main) -> None:
    """``absl.app.run(main)``, where a ``USER_ERRORS`` error prints one line, ``error:
    <message>``, on stderr and exits with status 1; other errors keep their traceback, and
    ``--verbosity=1`` shows it for every error."""
    app.run(_user_errors_in_one_line(main))


def _user_errors_in_one_line(main):
    @functools.wraps(main)
    def main_reporting_user_errors(argv):
        try:
            return main(argv)
        except USER_ERRORS as error:
            if logging.level_debug():
                raise
            print("error: " + " ".join(str(error).splitlines()), file=sys.stderr)
            sys.exit(1)

    return main_reporting_user_errors
