"""Loader for exported models (``python -m lungseg_jax.export``): needs only jax and numpy.

An export directory holds ``metadata.json``, ``ensemble.jax`` and one
``snapshot_<step>.jax`` per snapshot: serialized ``jax.export`` artifacts
(StableHLO, weights included) mapping model inputs ``(batch, S, S, C)`` float32
in [0, 1] (Hounsfield values windowed to ``hu_min``..``hu_max`` of the metadata) to
lung probabilities ``(batch, S, S)``, for any batch size.
"""

import json
import os

import jax
import numpy as np

from lungseg_jax.core.batches import in_batches

METADATA = "metadata.json"
FORMAT = "lungseg_jax.export/1"


def _load_function(path: str):
    with open(path, "rb") as f:
        return jax.jit(jax.export.deserialize(bytearray(f.read())).call)


class ExportedModel:
    """The ensemble and snapshot functions of an export directory, with its metadata."""

    def __init__(self, export_dir: str):
        path = os.path.join(export_dir, METADATA)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} not found: is {export_dir!r} an export directory "
                                    "(python -m lungseg_jax.export)?")
        with open(path) as f:
            self.metadata = json.load(f)
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: unknown format {self.metadata.get('format')!r}, "
                             f"expected {FORMAT!r}")
        files = self.metadata["files"]
        self._ensemble = _load_function(os.path.join(export_dir, files["ensemble"]))
        self._snapshots = [_load_function(os.path.join(export_dir, files["snapshots"][str(s)]))
                           for s in self.metadata["snapshot_steps"]]

    @property
    def input_shape(self) -> tuple:
        """(S, S, C) of one model input."""
        m = self.metadata
        return (m["input_size"], m["input_size"], m["channels"])

    def _run(self, fn, inputs: np.ndarray, batch_size: int) -> np.ndarray:
        inputs = np.asarray(inputs, np.float32)
        if inputs.shape[1:] != self.input_shape:
            raise ValueError(f"inputs of shape {inputs.shape}: expected (N, "
                             f"{', '.join(map(str, self.input_shape))})")
        return in_batches(fn, inputs, batch_size)

    def ensemble(self, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Ensemble probabilities (N, S, S): the mean over the snapshots."""
        return self._run(self._ensemble, inputs, batch_size)

    def snapshots(self, inputs: np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Per-snapshot probabilities (M, N, S, S), in ``metadata['snapshot_steps']`` order."""
        return np.stack([self._run(fn, inputs, batch_size) for fn in self._snapshots])
