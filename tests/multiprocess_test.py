"""Multi-process training: two processes (one CPU device each, over 127.0.0.1) vs one with two."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TINY_FLAGS, deterministic_metrics
from lungseg_jax.core import distributed
from lungseg_jax.data import preprocess, sources
from lungseg_jax.rundir import checkpoints
from lungseg_jax.rundir.trained import restore_trained

TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(num_devices: int) -> dict:
    """The environment of a CPU-only child process with ``num_devices`` devices."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env["JAX_PLATFORMS"] = "cpu"
    if num_devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
    return env


def train_command(workdir, *flags):
    return [sys.executable, "-m", "lungseg_jax.train", "--config", "configs/default.py",
            f"--workdir={workdir}", *TINY_FLAGS, *flags]


@contextlib.contextmanager
def started(commands, env, logs):
    """``commands`` running concurrently, each writing to its log; any still running on
    leaving (a failure, a timeout) are killed."""
    procs = []
    try:
        for command, log in zip(commands, logs):
            with open(log, "w") as out:
                procs.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                              stderr=subprocess.STDOUT))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_processes(commands, env, log_prefix):
    """Runs ``commands`` concurrently; returns their logs."""
    logs = [log_prefix.with_name(f"{log_prefix.name}{i}.log") for i in range(len(commands))]
    with started(commands, env, logs) as procs:
        for proc, log in zip(procs, logs):
            rc = proc.wait(timeout=TIMEOUT_S)
            assert rc == 0, f"{log.name} exited {rc}:\n{log.read_text()[-3000:]}"
    return [log.read_text() for log in logs]


def final_predictions(workdir):
    """Probabilities of the final weights on the run's own validation images."""
    restored = restore_trained(workdir)
    _, validation = sources.train_val_slices(restored.config.data)
    val_images, _ = preprocess.preprocess(validation, restored.config.data)
    logits = restored.model.apply(restored.variables[restored.finals[0]], val_images,
                                  train=False)
    return restored.finals[0], 1.0 / (1.0 + np.exp(-np.asarray(logits)))


def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
    multi, single = tmp_path / "two_processes", tmp_path / "one_process"
    address = f"127.0.0.1:{free_port()}"
    logs = run_processes(
        [train_command(multi, f"--coordinator_address={address}", "--num_processes=2",
                       f"--process_id={i}") for i in range(2)],
        cpu_env(1), tmp_path / "two_processes_")
    for i, log in enumerate(logs):
        assert f"Process {i} of 2; 1 local / 2 global devices." in log
        assert "mesh {'data': 2}" in log
    # Only process 0 logs epochs and writes the metrics file (once per epoch, not per process).
    assert "epoch 2/2" in logs[0] and "epoch 2/2" not in logs[1]
    run_processes([train_command(single)], cpu_env(2), tmp_path / "one_process_")

    a, b = deterministic_metrics(multi), deterministic_metrics(single)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [4, 8]
    for ra, rb in zip(a, b):
        for key in ("train_loss", "grad_norm", "learning_rate", "val_loss"):
            np.testing.assert_allclose(ra[key], rb[key], rtol=1e-5, err_msg=key)
        for key in ("val_pooled_iou", "val_mean_iou", "val_mean_dice"):
            np.testing.assert_allclose(ra[key], rb[key], atol=5e-3, err_msg=key)
    # Both processes saved through orbax: every checkpoint is complete and restorable.
    manager = checkpoints.create_manager(str(multi), read_only=True)
    assert checkpoints.saved_snapshot_steps(manager) == [4, 8]
    (step_a, probs_a), (step_b, probs_b) = final_predictions(multi), final_predictions(single)
    assert step_a == step_b == 8
    np.testing.assert_allclose(probs_a, probs_b, atol=1e-4)


def test_sigterm_stops_both_processes_after_the_same_call(tmp_path):
    """JAX's preemption service picks the step at which every process stops (one past the
    furthest any process reported) and answers true for that step only; with several
    steps per call the trainer reports each of them, so no process runs past it."""
    workdir, address = tmp_path / "run", f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    commands = [train_command(workdir, f"--coordinator_address={address}", "--num_processes=2",
                              f"--process_id={i}", "--config.num_epochs=1000",
                              "--config.steps_per_call=3") for i in range(2)]
    with started(commands, cpu_env(1), logs) as procs:
        deadline = time.monotonic() + TIMEOUT_S
        while "epoch 2/1000" not in logs[0].read_text():  # training, past an epoch's end
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
                logs[0].read_text()[-3000:]
            time.sleep(0.05)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        statuses = [proc.wait(timeout=TIMEOUT_S) for proc in procs]
    outputs = [log.read_text() for log in logs]
    assert statuses == [143, 143], outputs[0][-3000:] + outputs[1][-3000:]
    stopped = [int(re.search(r"stopped at step (\d+) on SIGTERM", out).group(1))
               for out in outputs]
    assert stopped[0] == stopped[1] >= 8
    manager = checkpoints.create_manager(str(workdir), read_only=True)
    assert manager.latest_step() == stopped[0]


def test_a_held_workdir_stops_every_process_at_once(tmp_path):
    """Process 0 finds the lock of a live trainer: it and process 1 (which never looks at the
    lock) both exit 1 in one line, rather than process 1 waiting for it in a collective."""
    workdir, address = tmp_path / "held", f"127.0.0.1:{free_port()}"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    try:
        (workdir / "lock").write_text(json.dumps(
            {"pid": holder.pid, "host": socket.gethostname(), "since": "2001-02-03T04:05:06"}))
        commands = [train_command(workdir, f"--coordinator_address={address}",
                                  "--num_processes=2", f"--process_id={i}") for i in range(2)]
        with started(commands, cpu_env(1), logs) as procs:
            statuses = [proc.wait(timeout=60) for proc in procs]
    finally:
        holder.kill()
        holder.wait()
    last_lines = [log.read_text().rstrip().splitlines()[-1] for log in logs]
    assert statuses == [1, 1], last_lines
    assert last_lines[0].startswith(f"error: {workdir} is in use by another trainer (pid "
                                    f"{holder.pid} on {socket.gethostname()} since ")
    assert last_lines[1] == (f"error: process 0 could not take the lock of {workdir} (its log "
                             "says why); this process stops too")
    assert os.listdir(workdir) == ["lock"]


@pytest.mark.parametrize("settings, environ, expected", [
    ({}, {}, False),
    ({"num_processes": 1}, {"SLURM_NTASKS": "4"}, False),
    ({"num_processes": 2}, {}, True),
    ({"coordinator_address": "10.0.0.2:1234"}, {}, True),
    ({"multihost": True}, {}, True),
    ({}, {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, True),
    ({}, {"SLURM_NTASKS": "1"}, False),
    ({}, {"SLURM_NTASKS": "2"}, True),
    ({}, {"OMPI_COMM_WORLD_SIZE": "8"}, True),
    ({}, {"TPU_WORKER_HOSTNAMES": "localhost"}, False),
    ({}, {"TPU_WORKER_HOSTNAMES": "t1-w-0,t1-w-1"}, True),
])
def test_distributed_initialize_only_when_several_processes_are_asked_for(settings, environ,
                                                                          expected):
    assert distributed.wanted(**settings, environ=environ) is expected


def test_invalid_process_count_is_named():
    with pytest.raises(ValueError, match="--num_processes=0"):
        distributed.wanted(num_processes=0, environ={})
