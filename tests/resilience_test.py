"""Preemption and divergence of real ``python -m lungseg_jax.train`` runs.

SIGKILL at random points then restarts, and SIGTERM then a restart, must finish
bit-identical to an uninterrupted run (a killed run's lock taken over, a terminated one's
released); a diverging run must stop naming the step and leave the last finite checkpoint
as the latest.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import REPO, TINY_FLAGS, deterministic_metrics
from lungseg_jax.rundir import checkpoints
from lungseg_jax.rundir.trained import restore_trained

# The conv U-Net: fewer arrays than the inception one, so a checkpoint every step stays cheap.
# Three epochs, so that the last kill (at checkpoint 8 at the latest) still finds the run
# mid-way: orbax finishes a checkpoint asynchronously, so when checkpoint N appears on disk
# the trainer may be steps past it (with 8 steps and a kill after checkpoint 6, a fast host
# sometimes finished the run first).
TINY = [*TINY_FLAGS, "--config.num_epochs=3", "--config.model.name=conv_unet",
        "--config.checkpoint.every_steps=1"]
TOTAL_STEPS = 12  # 3 epochs x 4 steps
TIMEOUT_S = 240


def train_command(workdir, *overrides):
    return [sys.executable, "-m", "lungseg_jax.train", "--config", "configs/default.py",
            f"--workdir={workdir}", *TINY, *overrides]


def run(workdir, *overrides):
    """A whole run to its end: (exit status, output)."""
    proc = subprocess.run(train_command(workdir, *overrides), cwd=REPO, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    return proc.returncode, proc.stdout + proc.stderr


def saved_steps(workdir) -> list:
    """Steps of the finished checkpoints (orbax renames a checkpoint into place when complete)."""
    directory = checkpoints.checkpoint_dir(str(workdir))
    if not os.path.isdir(directory):
        return []
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def interrupt(workdir, signum, after_step: int, extra_delay: float):
    """Starts a run and sends ``signum`` once checkpoint ``after_step`` exists (plus a delay).

    Returns (exit status, output, the latest finished checkpoint seen before the signal).
    """
    log = workdir.with_name(f"{workdir.name}.log")
    with open(log, "w") as out:
        proc = subprocess.Popen(train_command(workdir), cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while max(saved_steps(workdir), default=0) < after_step:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"run ended ({proc.poll()}) or stalled before checkpoint "
                            f"{after_step}:\n{log.read_text()[-3000:]}")
            time.sleep(0.02)
        time.sleep(extra_delay)
        seen = max(saved_steps(workdir))
        proc.send_signal(signum)
        proc.wait(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, log.read_text(), seen


def final_variables(workdir):
    restored = restore_trained(str(workdir))
    assert restored.finals == [TOTAL_STEPS]
    return jax.device_get(restored.variables[restored.finals[0]])


def assert_bit_identical(workdir, reference_dir):
    assert deterministic_metrics(workdir) == deterministic_metrics(reference_dir)
    jax.tree.map(np.testing.assert_array_equal, final_variables(workdir),
                 final_variables(reference_dir))


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    """An uninterrupted run."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    status, output = run(workdir)
    assert status == 0, output[-3000:]
    assert [r["step"] for r in deterministic_metrics(workdir)] == [4, 8, 12]
    return workdir


def test_sigkill_at_random_points_then_resume_is_bit_identical(reference_dir, tmp_path):
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    workdir = tmp_path / "killed"
    progress = 0
    for window in ((1, 2), (4, 5), (7, 8)):  # three kills, the last with 4 steps to go
        target = max(rng.randint(*window), progress + 1)
        status, output, seen = interrupt(workdir, signal.SIGKILL, target, rng.uniform(0, 0.2))
        assert "Training finished" not in output, f"seed {seed}: the kill came after the end"
        assert status == -signal.SIGKILL, f"seed {seed}: {output[-2000:]}"
        if progress:  # the run resumed from the newest checkpoint: no finished step lost
            assert f"Resumed from the checkpoint at step {progress}." in output, f"seed {seed}"
            assert "Taking over the stale lock" in output, f"seed {seed}"
        assert os.path.exists(workdir / "lock")  # a killed trainer cannot release it
        progress = max(saved_steps(workdir))
        assert progress >= seen, f"seed {seed}: checkpoint {seen} lost after SIGKILL"
    status, output = run(workdir)
    assert status == 0, f"seed {seed}: {output[-3000:]}"
    assert f"Resumed from the checkpoint at step {progress}." in output
    assert "Taking over the stale lock" in output and not os.path.exists(workdir / "lock")
    assert_bit_identical(workdir, reference_dir)


def test_sigterm_saves_exits_143_and_resumes_bit_identically(reference_dir, tmp_path):
    workdir = tmp_path / "terminated"
    status, output, seen = interrupt(workdir, signal.SIGTERM, 3, 0.0)
    assert status == 143, output[-3000:]
    stopped = max(saved_steps(workdir))
    assert seen <= stopped < TOTAL_STEPS
    assert f"stopped at step {stopped} on SIGTERM" in output
    assert not os.path.exists(workdir / "lock")  # released on the way out
    status, output = run(workdir)
    assert status == 0, output[-3000:]
    assert f"Resumed from the checkpoint at step {stopped}." in output
    assert_bit_identical(workdir, reference_dir)


def test_diverging_run_stops_naming_the_step_and_keeps_the_last_finite_checkpoint(tmp_path):
    workdir = tmp_path / "diverged"
    status, output = run(workdir, "--config.learning_rate=1e30",
                         "--config.schedule.name=constant")
    assert status == 1, output[-3000:]
    assert "error: non-finite loss" in output and "Traceback" not in output  # one line
    bad_step = int(output.split("error: non-finite")[-1].split(" at step ")[1].split(";")[0])
    assert 1 < bad_step <= TOTAL_STEPS
    assert saved_steps(workdir)[-1] == bad_step - 1
    restored = restore_trained(str(workdir))
    assert restored.finals == [bad_step - 1]
    for leaf in jax.tree.leaves(jax.device_get(restored.variables[bad_step - 1])):
        assert np.all(np.isfinite(leaf))


def test_second_trainer_on_a_held_workdir_exits_at_once_naming_the_holder(tmp_path):
    workdir = tmp_path / "held"
    workdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        (workdir / "lock").write_text(json.dumps(
            {"pid": holder.pid, "host": socket.gethostname(), "since": "2001-02-03T04:05:06"}))
        status, output = run(workdir)
    finally:
        holder.kill()
        holder.wait()
    assert status == 1, output[-3000:]
    assert output.rstrip().splitlines()[-1].endswith(
        f"{workdir} is in use by another trainer (pid {holder.pid} on {socket.gethostname()} "
        f"since 2001-02-03T04:05:06); if that process is gone, delete {workdir / 'lock'} and "
        "re-run")
    assert os.listdir(workdir) == ["lock"]
