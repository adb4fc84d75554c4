"""Process-wide JAX set-up shared by the entry points, the benchmark and the tests."""

import logging
import os

import jax
from absl import logging as absl_logging

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "lungseg_jax", "jax_cache")


def setup_jax(cache_dir: str | None = None) -> None:
    """Persistent compilation cache and fast-compiling RNG.

    * The cache (``$LUNGSEG_JAX_CACHE`` or ~/.cache/lungseg_jax/jax_cache; ``""`` turns
      it off) makes a re-run's train-step compile take about a second instead of 10-20.
    * ``jax_threefry_partitionable=False``: on CPU each distinct random shape otherwise
      compiles for seconds (see STACK-NOTES); all random numbers here come from it.
    """
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
