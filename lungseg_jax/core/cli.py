"""What every command-line entry point shares: its start-up, its common flags, and how it
reports a user's error."""

import functools
import os
import sys

from absl import app, flags, logging

from lungseg_jax.core import distributed, runtime

# What a user's input causes (a bad config value, data file, path or flag value); the
# messages name the file, field or value, so a traceback would only bury them.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, FloatingPointError)
THRESHOLD_RULE = "--threshold must be a probability strictly between 0 and 1"
SHIPPED_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs")
HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull")

# The define_* helpers below declare flags on behalf of the command calling them: disclaiming
# this module makes absl attribute them to that command, so its --help lists them.
flags.disclaim_key_flags()


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


def define_threshold_flag(threshold_help: str) -> None:
    """``--threshold``: 0.5 by default, refused unless strictly between 0 and 1."""
    flags.DEFINE_float("threshold", 0.5, threshold_help)
    flags.register_validator("threshold", is_probability_threshold, message=THRESHOLD_RULE)


def define_scoring_flags(threshold_help: str) -> None:
    """``--threshold`` and ``--batch_size``, for the commands that score predictions against
    masks."""
    define_threshold_flag(threshold_help)
    flags.DEFINE_integer("batch_size", 8, "Images per prediction batch.", lower_bound=1)


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


def run(main, argv=None) -> None:
    """``absl.app.run(main)`` for a command: ``--config NAME`` may name a shipped config
    (``shipped_config``); ``--help`` exits 0; a ``USER_ERRORS`` error prints one line,
    ``error: <message>``, on stderr and exits with status 1; other errors keep their
    traceback, and ``--verbosity=1`` shows it for every error."""
    argv = list(sys.argv if argv is None else argv)
    show_help_of(sys.modules[main.__module__], argv[0])
    try:
        argv = with_config_paths(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    try:
        app.run(_user_errors_in_one_line(main), argv=argv)
    except SystemExit as stop:
        if stop.code == 1 and any(arg in HELP_FLAGS for arg in argv[1:]):
            sys.exit(0)  # absl exits 1 after printing the help asked for
        raise


def show_help_of(module, program: str) -> None:
    """Makes ``--help`` of a console script (whose ``__main__`` is a generated wrapper)
    show the command module's docstring and flags, as ``python -m`` does."""
    main_module = sys.modules["__main__"]
    if main_module is module:
        return
    main_module.__doc__ = main_module.__doc__ or module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
        flags.FLAGS.register_key_flag_for_module(program, flag)


def shipped_config(name: str) -> str:
    """The path of the config ``name`` shipped in ``lungseg_jax/configs``."""
    return os.path.join(SHIPPED_CONFIGS, f"{name}.py")


def shipped_config_names() -> list:
    return sorted(f[:-3] for f in os.listdir(SHIPPED_CONFIGS)
                  if f.endswith(".py") and not f.startswith("_"))


def with_config_paths(argv: list) -> list:
    """``argv`` with a ``--config`` value that is no file but a shipped config's name
    (``--config incp_unet_snapshot``) replaced by that config's path, so the commands work
    from any folder; ValueError naming the value when it is neither."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = config_path(out[i + 1])
        elif arg.startswith("--config="):
            out[i] = "--config=" + config_path(arg.split("=", 1)[1])
    return out


def config_path(value: str) -> str:
    path, colon, rest = value.partition(":")  # ml_collections' "file:argument" form
    if os.path.exists(path):
        return value
    if os.path.exists(shipped_config(path)):
        return shipped_config(path) + colon + rest
    raise ValueError(f"--config={value}: no such file, and no shipped config of that name "
                     f"(shipped: {', '.join(shipped_config_names())})")


def describe_fields(config, prefix: str = "") -> str:
    """One line per field of ``config``: ``--config.FIELD=VALUE`` with its default value."""
    lines = []
    for key, value in config.items():
        if hasattr(value, "items"):
            lines.append(describe_fields(value, f"{prefix}{key}."))
        else:
            lines.append(f"  --config.{prefix}{key}={value!r}")
    return "\n".join(lines)


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
