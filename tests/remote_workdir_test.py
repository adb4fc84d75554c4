"""A gs:// workdir end to end, on a fake bucket: every workdir file must go through etils.epath.

The fake bucket (``etils.epath.testing.mock_epath``) keeps ``gs://bucket/KEY`` in
``tmp_path/store/bucket/KEY`` and has an object store's limits: no append, no rename. Orbax
takes its GCS code paths (a ``commit_success.txt`` per checkpoint instead of a rename); only
its TensorStore driver (``gcs`` -> ``file`` in the same folder) and its bucket look-up (no
hierarchical namespace) are patched. Code that used ``os`` or ``open`` on a gs:// path would
write ``gs:/bucket/...`` under the current directory instead: the fixture checks that it
stays empty.
"""

import io
import json
import os

import numpy as np
import pytest
from etils.epath import testing as epath_testing
from orbax.checkpoint._src.path import gcs_utils

from lungseg_jax.core.files import write_atomic
from lungseg_jax.data import slices as folders
from lungseg_jax.data.phantoms import synthetic_slices
from lungseg_jax.evaluation import evaluator
from lungseg_jax.rundir import records
from lungseg_jax.serving import export, exported
from lungseg_jax.tracking import mlflow_run, tracker
from lungseg_jax.training.loop import train_and_evaluate

URI = "gs://"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """Serves ``gs://bucket/...`` from ``tmp_path/store/bucket/...``; yields that folder."""
    store, cwd = tmp_path / "store", tmp_path / "cwd"
    store.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def is_remote(path):
        return os.fspath(path).startswith(URI)

    def local(path):
        return str(store / os.fspath(path)[len(URI):]) if is_remote(path) else path

    def remote(path):  # a local path the fake returns, as the gs:// path it stands for
        inside = os.path.relpath(path, store)
        return path if inside.startswith("..") else URI + inside

    def on_local(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def open_(fn, path, mode):
        if is_remote(path) and "a" in mode:
            raise io.UnsupportedOperation(f"{path}: an object store cannot append")
        return fn(local(path), mode)

    def rename(fn, path, dst):
        if is_remote(path) or is_remote(dst):
            raise OSError(f"{path} -> {dst}: an object store has no atomic rename")
        return fn(path, dst)

    def copy(fn, path, dst, **kwargs):
        return fn(local(path), local(dst), **kwargs)

    def glob(fn, pattern):
        return [remote(p) for p in fn(local(pattern))] if is_remote(pattern) else fn(pattern)

    def walk(fn, top, **kwargs):
        for root, dirs, files in fn(local(top), **kwargs):
            yield (remote(root) if is_remote(top) else root), dirs, files

    monkeypatch.setattr(gcs_utils, "get_kvstore_for_gcs",
                        lambda path: {"driver": "file", "path": local(path)})
    monkeypatch.setattr(gcs_utils, "is_hierarchical_namespace_enabled", lambda path: False)
    with epath_testing.mock_epath(
            open=open_, rename=rename, replace=rename, copy=copy, glob=glob, walk=walk,
            exists=on_local, isdir=on_local, listdir=on_local, makedirs=on_local,
            mkdir=on_local, remove=on_local, rmtree=on_local, stat=on_local):
        yield store / "bucket"
    assert os.listdir(cwd) == [], "a gs:// path was written with local file calls"


def test_run_files_in_a_bucket(bucket, tiny_config):
    workdir = "gs://bucket/run"
    with pytest.raises(FileNotFoundError, match="gs://bucket/run/config.json not found"):
        records.load_config(workdir)
    records.prepare_workdir(workdir, tiny_config, write=True)
    assert json.loads((bucket / "run" / "config.json").read_text())["batch_size"] == 4
    assert records.load_config(workdir).model.features == [4, 8]
    records.prepare_workdir(workdir, tiny_config, write=False)  # same config: a resume
    tiny_config.learning_rate = 0.5
    with pytest.raises(ValueError, match="learning_rate: 0.001 -> 0.5"):
        records.prepare_workdir(workdir, tiny_config, write=False)

    metrics = f"{workdir}/metrics.jsonl"
    records.truncate_metrics(metrics, 4)  # no file yet: nothing to do
    for step in (4, 8, 12):
        records.append_metrics(metrics, {"step": step})
    records.truncate_metrics(metrics, 8)
    assert (bucket / "run" / "metrics.jsonl").read_text() == '{"step": 4}\n{"step": 8}\n'
    write_atomic(metrics, "replaced\n")
    assert (bucket / "run" / "metrics.jsonl").read_text() == "replaced\n"
    assert sorted(os.listdir(bucket / "run")) == ["config.json", "metrics.jsonl"]


def test_local_writes_stay_renamed_and_appended(tmp_path, monkeypatch):
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append(b), real_replace(a, b)))
    path = tmp_path / "metrics.jsonl"
    write_atomic(path, '{"step": 4}\n')
    records.append_metrics(str(path), {"step": 8})
    assert renames == [path] and os.listdir(tmp_path) == ["metrics.jsonl"]
    assert path.read_text() == '{"step": 4}\n{"step": 8}\n'


def test_training_resume_evaluation_and_export_in_a_bucket(bucket, tiny_config, tmp_path,
                                                           crash_after_first_checkpoint):
    workdir = "gs://bucket/run"
    with pytest.raises(KeyboardInterrupt):  # killed after the checkpoint at step 4
        train_and_evaluate(tiny_config, workdir)
    crash_after_first_checkpoint()  # saves work again
    assert int(train_and_evaluate(tiny_config, workdir).step) == 8  # resumed
    run = bucket / "run"
    records = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records] == [4, 8]
    for step in ("4", "8"):  # orbax's GCS commit marker, not a rename
        assert (run / "checkpoints" / step / "commit_success.txt").exists()

    test_dir = str(tmp_path / "test")
    folders.write_folder(test_dir, synthetic_slices(3, 48, seed=7))
    result = evaluator.evaluate_workdir(workdir, test_dir, report_prefix=f"{workdir}/eval")
    assert [s["step"] for s in result["snapshots"]] == [4, 8]
    report = [name for name in os.listdir(run) if name.startswith("eval")]
    assert {"eval.csv", "eval.md", "eval_curves.png"} <= set(report)
    assert len([name for name in report if name.endswith(".png")]) == 4  # 3 overlays, curves
    assert (run / "eval_curves.png").read_bytes().startswith(b"\x89PNG")

    export.export_workdir(workdir, f"{workdir}/export", platforms=("cpu",))
    model = exported.ExportedModel(str(run / "export"))
    assert model.metadata["snapshot_steps"] == [4, 8]
    assert model.ensemble(np.zeros((2, 32, 32, 1), np.float32)).shape == (2, 32, 32)


def test_tracking_with_a_bucket_workdir_needs_a_tracking_uri(tiny_config, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tiny_config.tracking.mlflow = True
    with pytest.raises(ValueError, match="--workdir=gs://bucket/run: .*set MLFLOW_TRACKING_URI"):
        tracker.Tracker(tiny_config, "gs://bucket/run")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/mlflow.db")
    assert mlflow_run.tracking_uri("gs://bucket/run") == "sqlite:////tmp/mlflow.db"
