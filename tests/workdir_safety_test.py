"""One trainer per workdir, and a resume that survives a damaged checkpoint or metrics file.

A second trainer on a locked workdir is refused at once, naming the holder; a lock left by a
dead process is taken over. A damaged newest checkpoint is moved aside and the run resumes
from the one before, to the uninterrupted run's exact parameters.
"""

import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import deterministic_metrics
from lungseg_jax.model.unet import create_model
from lungseg_jax.rundir import checkpoints, lock
from lungseg_jax.training.loop import train_and_evaluate
from lungseg_jax.training.mesh import create_mesh
from lungseg_jax.training.state import abstract_train_state, create_optimizer

LAST_STEP = 8  # tiny_config: 2 epochs x 4 steps


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """An uninterrupted tiny run checkpointed every 2 steps: checkpoints 4 (a snapshot), 6
    and 8 are kept."""
    from conftest import tiny_config as make  # fixture function, called directly
    config = make.__wrapped__()
    config.checkpoint.every_steps = 2
    workdir = tmp_path_factory.mktemp("uninterrupted")
    state = train_and_evaluate(config, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6", "8", "metadata"]
    return config, workdir, jax.device_get(state.params)


@pytest.fixture
def sleeping_process():
    """A live process of this host (sleeping), stopped after the test."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    """The id of a process of this host that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(workdir, pid: int, host: str = None) -> str:
    """A lock file as a trainer with process id ``pid`` leaves it; returns its text."""
    os.makedirs(workdir, exist_ok=True)
    text = json.dumps({"pid": pid, "host": host or socket.gethostname(),
                       "since": "2001-02-03T04:05:06+00:00"})
    (workdir / "lock").write_text(text + "\n")
    return text


def test_trainer_on_a_workdir_held_by_a_live_process_is_refused(tiny_config, tmp_path,
                                                                sleeping_process):
    workdir = tmp_path / "run"
    text = write_lock(workdir, sleeping_process)
    with pytest.raises(lock.WorkdirLocked) as refused:
        train_and_evaluate(tiny_config, str(workdir))
    assert str(refused.value) == (
        f"{workdir} is in use by another trainer (pid {sleeping_process} on "
        f"{socket.gethostname()} since 2001-02-03T04:05:06+00:00); if that process is gone, "
        f"delete {workdir / 'lock'} and re-run")
    assert os.listdir(workdir) == ["lock"]  # nothing written, the lock left to its holder
    assert (workdir / "lock").read_text() == text + "\n"


def test_lock_of_another_host_counts_as_alive(tmp_path):
    write_lock(tmp_path, dead_pid(), host="another-host")
    with pytest.raises(lock.WorkdirLocked, match="pid .* on another-host since"):
        with lock.hold(str(tmp_path)):
            pass


def test_second_trainer_mid_run_is_refused_and_the_first_records_in_order(tiny_config,
                                                                          tmp_path):
    workdir = str(tmp_path)
    refusals = []

    def start_second_trainer(record):
        with pytest.raises(lock.WorkdirLocked, match=f"pid {os.getpid()} on ") as refused:
            train_and_evaluate(tiny_config, workdir)
        refusals.append((record["step"], str(refused.value)))

    train_and_evaluate(tiny_config, workdir, on_epoch_end=start_second_trainer)
    assert [step for step, _ in refusals] == [4, 8]
    assert [r["step"] for r in deterministic_metrics(workdir)] == [4, 8]
    assert "lock" not in os.listdir(workdir)  # released at the end


def test_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid)
    with lock.hold(str(tmp_path)):
        held = json.loads((tmp_path / "lock").read_text())
        assert (held["pid"], held["host"]) == (os.getpid(), socket.gethostname())
    assert f"pid {pid} on {socket.gethostname()} (since 2001-02-03T04:05:06+00:00) is no " \
           "longer running" in caplog.text
    assert os.listdir(tmp_path) == []


def test_lock_is_released_on_errors(tiny_config, tmp_path, crash_after_first_checkpoint):
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(tiny_config, str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["checkpoints", "config.json", "metrics.jsonl",
                                           "split.json"]


def test_object_store_workdir_is_not_locked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with lock.hold("gs://bucket/run"):
        assert os.listdir(tmp_path) == []


def test_workdir_that_is_a_file_is_refused_in_one_line(tiny_config, tmp_path):
    path = tmp_path / "run"
    path.write_text("not a folder")
    message = f"^--workdir {re.escape(str(path))} is a file, not a folder$"
    with pytest.raises(NotADirectoryError, match=message):
        train_and_evaluate(tiny_config, str(path))
    assert path.read_text() == "not a folder"


def copy_run(finished_run, tmp_path):
    """A copy of the finished run's workdir, to damage."""
    config, reference_dir, _ = finished_run
    workdir = tmp_path / "run"
    shutil.copytree(reference_dir, workdir)
    return workdir


def truncate_data_file(step_dir):
    """Cuts a checkpoint's array data file to half its size: the one of the database that
    orbax merges the processes' writes into (the processes' own files are not all read)."""
    [data_file] = (step_dir / "default" / "d").iterdir()
    os.truncate(data_file, os.path.getsize(data_file) // 2)


def truncate_metadata(step_dir):
    os.truncate(step_dir / "default" / "_METADATA", 100)


# Also no "Event loop is closed" traceback from the reads in flight when a restore fails.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [truncate_data_file, truncate_metadata])
def test_damaged_newest_checkpoint_is_moved_aside_and_resume_matches(finished_run, tmp_path,
                                                                    caplog, damage):
    config, reference_dir, reference_params = finished_run
    workdir = copy_run(finished_run, tmp_path)
    damage(workdir / "checkpoints" / "8")
    damaged_files = sorted(p.relative_to(workdir / "checkpoints" / "8")
                           for p in (workdir / "checkpoints" / "8").rglob("*"))
    caplog.set_level("INFO")
    state = train_and_evaluate(config, str(workdir))
    assert "Checkpoint 8 is damaged (" in caplog.text
    assert f"moved it to {workdir / 'checkpoints_damaged' / '8'}." in caplog.text
    assert "Resumed from the checkpoint at step 6." in caplog.text
    moved = workdir / "checkpoints_damaged" / "8"
    assert sorted(p.relative_to(moved) for p in moved.rglob("*")) == damaged_files
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6", "8", "metadata"]
    assert deterministic_metrics(workdir) == deterministic_metrics(reference_dir)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
                 reference_params)


def test_no_intact_checkpoint_is_one_error_naming_the_folder(finished_run, tmp_path):
    config, _, _ = finished_run
    workdir = copy_run(finished_run, tmp_path)
    for step in ("4", "6", "8"):
        truncate_metadata(workdir / "checkpoints" / step)
    folder = re.escape(str(workdir / "checkpoints"))
    with pytest.raises(ValueError, match=f"^no intact checkpoint left in {folder}: every "
                       "one was damaged"):
        train_and_evaluate(config, str(workdir))
    assert sorted(os.listdir(workdir / "checkpoints_damaged")) == ["4", "6", "8"]


def test_checkpoint_of_other_arrays_is_not_taken_for_damage(finished_run, tmp_path):
    config, _, _ = finished_run
    workdir = copy_run(finished_run, tmp_path)
    other = config.copy_and_resolve_references()
    other.model.features = (4, 16)
    mesh = create_mesh()
    tx, _ = create_optimizer(other, LAST_STEP)
    manager = checkpoints.create_manager(str(workdir), read_only=True)
    abstract = abstract_train_state(other, create_model(other.model), tx, mesh)
    with pytest.raises(ValueError, match="not compatible with the stored shape"):
        checkpoints.restore_latest_intact(manager, abstract)
    assert not os.path.exists(workdir / "checkpoints_damaged")
    assert manager.all_steps() == [4, 6, 8]


def test_torn_last_metrics_line_is_dropped_and_resume_works(finished_run, tmp_path, caplog):
    config, reference_dir, _ = finished_run
    workdir = copy_run(finished_run, tmp_path)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 12, "epoch": 3, "train_lo')  # a crash mid-write
    state = train_and_evaluate(config, str(workdir))
    assert int(state.step) == LAST_STEP
    assert f"{workdir / 'metrics.jsonl'} line 3 is cut short" in caplog.text
    assert (workdir / "metrics.jsonl").read_text() == \
        (reference_dir / "metrics.jsonl").read_text()
