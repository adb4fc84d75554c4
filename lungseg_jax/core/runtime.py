"""Process-wide set-up shared by the entry points, the benchmark and the tests: JAX's
compilation cache and RNG, the garbage collector, glibc's malloc, quiet logging."""

import gc
import logging
import os
import sys

import jax
from absl import logging as absl_logging

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "lungseg_jax", "jax_cache")
# Python's collector: first-generation threshold (CPython's default: 700 allocations).
GC_THRESHOLDS = (50_000, 50, 100)


HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
HUGE_PAGES_OPT_OUT = "LUNGSEG_JAX_HUGE_PAGES"  # "0": never re-execute
THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_huge_pages_mode(path: str = THP_MODE_FILE) -> str | None:
    """The kernel's transparent huge page mode ("always", "madvise", "never"), or None."""
    try:
        with open(path) as f:
            modes = f.read().split()
    except OSError:
        return None
    chosen = [m[1:-1] for m in modes if m.startswith("[") and m.endswith("]")]
    return chosen[0] if chosen else None


def glibc_version() -> tuple[int, ...] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (AttributeError, ValueError, OSError):
        return None
    return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else None


def huge_pages_environment(environ, thp_mode: str | None,
                           libc_version: tuple[int, ...] | None) -> dict | None:
    """``environ`` with glibc's malloc told to back its large blocks with transparent
    huge pages, or None when there is nothing to change: already set, opted out
    (``$LUNGSEG_JAX_HUGE_PAGES=0``), no such tunable (glibc before 2.35, or not glibc)
    or no huge pages to ask for (kernel mode ``never`` or unknown)."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if (environ.get(HUGE_PAGES_OPT_OUT) == "0" or "glibc.malloc.hugetlb" in tunables
            or libc_version is None or libc_version < (2, 35)
            or thp_mode not in ("always", "madvise")):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGE_PAGES_TUNABLE]))}


def _started_as_entry_point() -> bool:
    """Whether this process was started as ``python -m lungseg_jax.<module>``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec is not None and spec.name.startswith("lungseg_jax.")


def reexec_with_huge_pages() -> None:
    """Restarts this command once with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``.

    For the command-line entry points, before anything else. XLA's CPU runtime
    allocates each execution's temporary buffers as one large block and frees it at the
    end; glibc serves such a block with a fresh ``mmap``, so every step faults its whole
    scratch space back in, 4 KiB at a time (docs/performance.md#malloc-on-huge-pages). glibc reads
    the tunable only at start-up, hence the restart: same interpreter, arguments and
    environment, plus the tunable.
    Does nothing where ``huge_pages_environment`` finds nothing to change, or in a
    process not started as ``python -m lungseg_jax.<module>`` (a test, a notebook).
    """
    environ = huge_pages_environment(os.environ, transparent_huge_pages_mode(), glibc_version())
    if environ is None or not _started_as_entry_point():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def setup_jax(cache_dir: str | None = None) -> None:
    """Persistent compilation cache and fast-compiling RNG.

    * The cache (``$LUNGSEG_JAX_CACHE`` or ~/.cache/lungseg_jax/jax_cache; ``""`` turns
      it off): a re-run loads the train step instead of compiling it.
    * ``jax_threefry_partitionable=False``: on CPU each distinct random shape otherwise
      compiles for seconds (see STACK-NOTES); all random numbers here come from it.
    * Python's garbage collector: the objects alive now are frozen (never scanned again)
      and collections start every ``GC_THRESHOLDS[0]`` allocations, so tracing and
      lowering a train step pays for few collections (docs/performance.md#garbage-collector-thresholds).
    """
    if cache_dir is None:
        cache_dir = os.environ.get("LUNGSEG_JAX_CACHE", DEFAULT_CACHE_DIR)
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_threefry_partitionable", False)
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


OWN_CODE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep  # the package


def _own_info_or_warning(record: logging.LogRecord) -> bool:
    """Whether a log record is shown: warnings and errors always, information only from
    this package unless ``--verbosity=1`` (or more) asks for everyone's."""
    return (record.levelno >= logging.WARNING or record.pathname.startswith(OWN_CODE)
            or absl_logging.get_verbosity() >= 1)


def setup_logging() -> None:
    """Keeps other libraries' INFO chatter (JAX's backend probes, orbax's per-save lines)
    out of a command's log; their warnings stay, and ``--verbosity=1`` brings it all back."""
    absl_logging.get_absl_handler().addFilter(_own_info_or_warning)
