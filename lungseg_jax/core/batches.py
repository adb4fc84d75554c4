"""Fixed-size batches: one compiled shape serves every batch, the last one zero-padded."""

import jax
import numpy as np


def padded_batches(batch_size: int, *arrays: np.ndarray):
    """Yields tuples of ``batch_size`` rows of each of ``arrays`` (same length), the last
    tuple zero-padded to full size."""
    n = len(arrays[0])
    for start in range(0, n, batch_size):
        yield tuple(_padded(a[start:start + batch_size], batch_size) for a in arrays)


def _padded(batch: np.ndarray, size: int) -> np.ndarray:
    if len(batch) == size:
        return batch
    return np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])


def in_batches(fn, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` applied to ``inputs`` in batches of exactly ``batch_size``, the outputs
    concatenated (padding rows dropped)."""
    out = [fn(batch) for (batch,) in padded_batches(batch_size, inputs)]
    return np.concatenate(jax.device_get(out))[:len(inputs)]
