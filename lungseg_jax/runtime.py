"""Process-wide JAX set-up shared by the entry points, the benchmark and the tests."""

import ctypes
import logging
import os
import sys

import jax
from absl import logging as absl_logging

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "lungseg_jax", "jax_cache")


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
NEVER_TRIM = 2**31 - 1


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    XLA's CPU runtime allocates each execution's temporary buffers as one block (the
    inception U-Net's step at 128x128: 255 MB) from a worker thread and frees it at the
    end. glibc serves blocks that large from worker threads with a fresh ``mmap`` and
    ``munmap``s them on free, so every step page-faults its whole scratch space back in,
    zero-filled by the kernel: 62,000 faults and 230 ms of system time per 450 ms step
    (BENCHMARKS.md). One arena, no ``mmap`` and no trimming make every step reuse the
    same pages. The process then keeps its peak memory until it exits. Call it before
    JAX starts its threads. Returns whether it applied (glibc's mallopt accepted all
    three; elsewhere nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    return all(mallopt(param, value) == 1 for param, value in
               ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM)))


def setup_jax(cache_dir: str | None = None) -> None:
    """Persistent compilation cache, fast-compiling RNG, and freed memory kept for reuse.

    * The cache (``$LUNGSEG_JAX_CACHE`` or ~/.cache/lungseg_jax/jax_cache; ``""`` turns
      it off) makes a re-run's train-step compile take about a second instead of 10-20.
    * ``jax_threefry_partitionable=False``: on CPU each distinct random shape otherwise
      compiles for seconds (see STACK-NOTES); all random numbers here come from it.
    * ``keep_freed_memory``: no page faults on every step's scratch space.
    """
    keep_freed_memory()
    if cache_dir is None:
        cache_dir = os.environ.get("LUNGSEG_JAX_CACHE", DEFAULT_CACHE_DIR)
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_threefry_partitionable", False)


def _not_orbax_info(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


def setup_logging() -> None:
    """Keeps orbax's per-save INFO chatter out of the training log (its warnings stay)."""
    absl_logging.get_absl_handler().addFilter(_not_orbax_info)
