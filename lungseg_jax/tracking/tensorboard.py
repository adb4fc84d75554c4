"""TensorBoard event files of a training run, in ``WORKDIR/tensorboard`` (tensorboardX, no
TensorFlow): each step's loss, gradient norm and learning rate, and each epoch's record.

    tensorboard --logdir WORKDIR    # pip install tensorboard (the viewer only)
"""

import os

import numpy as np
import tensorboardX

SUBDIR = "tensorboard"


class TensorBoardWriter:
    """Writes one run's scalars; inert when not ``enabled`` (processes other than 0)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.folder = os.path.join(os.fspath(workdir), SUBDIR) if enabled else None
        self._writer = None

    @property
    def writer(self):
        """The event file writer, made at the first log: a run refused before training
        leaves no folder behind."""
        if self._writer is None and self.folder is not None:
            self._writer = tensorboardX.SummaryWriter(self.folder)
        return self._writer

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._writer is not None:
            self._writer.close()

    def log_steps(self, first_step: int, values: dict) -> None:
        """``values``: ``{name: array}`` of consecutive steps, the first ``first_step + 1``
        (a train step's measurements, logged at the step count after it, as the epochs')."""
        if self.writer is None:
            return
        for name, series in values.items():
            for offset, value in enumerate(np.asarray(series)):
                self.writer.add_scalar(f"step/{name}", float(value), first_step + 1 + offset)

    def log_epoch(self, record: dict) -> None:
        """One ``metrics.jsonl`` record at its ``step``."""
        if self.writer is None:
            return
        for name, value in record.items():
            if name != "step":
                self.writer.add_scalar(f"epoch/{name}", float(value), int(record["step"]))
        self.writer.flush()
