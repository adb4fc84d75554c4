"""TensorBoard event files of a run, read back from the files themselves."""

import glob
import json
import os
import struct
import subprocess
import sys

import ml_collections
import numpy as np

from conftest import REPO, TINY_FLAGS
from lungseg_jax.training import schedules
from tensorboardX.proto import event_pb2


def read_scalars(folder: str) -> dict:
    """``{tag: {step: value}}`` of every event file in ``folder``, parsed from the TFRecord
    framing (length, its CRC, the Event proto, its CRC) without TensorBoard."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
        data, i = open(path, "rb").read(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[i + 12:i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def test_train_writes_each_steps_loss_and_learning_rate_and_each_epoch(tmp_path):
    workdir = str(tmp_path / "run")
    run = subprocess.run([sys.executable, "-m", "lungseg_jax.train", "--config", "default",
                          "--workdir", workdir, *TINY_FLAGS, "--config.steps_per_call=3"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    # Other libraries' information stays out of the log (JAX's backend probe, orbax's saves).
    assert "libtpu" not in run.stderr and "orbax" not in run.stderr, run.stderr[-3000:]
    scalars = read_scalars(os.path.join(workdir, "tensorboard"))
    # 16 training phantoms, batch 4: 4 steps per epoch, 2 epochs, 2 snapshot cycles.
    assert sorted(scalars["step/loss"]) == list(range(1, 9))
    learning_rate = schedules.create_learning_rate_fn(
        ml_collections.ConfigDict({"name": "snapshot", "num_cycles": 2}), 1e-3, 8)
    np.testing.assert_allclose([scalars["step/learning_rate"][s] for s in range(1, 9)],
                               [float(learning_rate(s - 1)) for s in range(1, 9)], rtol=1e-6)
    # The restart between the cycles shows: step 4 ends cycle 1 near 0, step 5 starts at 1e-3.
    assert scalars["step/learning_rate"][5] == np.float32(1e-3)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    for record in records:
        for name in ("train_loss", "val_loss", "val_pooled_iou", "learning_rate"):
            np.testing.assert_allclose(scalars[f"epoch/{name}"][record["step"]], record[name],
                                       rtol=1e-6)
    # An epoch's train loss is the mean of its steps' losses.
    np.testing.assert_allclose(np.mean([scalars["step/loss"][s] for s in range(1, 5)]),
                               records[0]["train_loss"], rtol=1e-5)
