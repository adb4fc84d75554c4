"""MLflow tracking of a tiny run to a sqlite store, read back through the MLflow client."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from conftest import REPO  # noqa: E402
from lungseg_jax.data import preprocess  # noqa: E402
from lungseg_jax.data import slices as folders  # noqa: E402
from lungseg_jax.data.phantoms import synthetic_slices  # noqa: E402
from lungseg_jax.evaluation import evaluator  # noqa: E402
from lungseg_jax.serving import exported, predict  # noqa: E402
from lungseg_jax.tracking import mlflow_run  # noqa: E402
from lungseg_jax.tracking import tracker as tracking  # noqa: E402
from lungseg_jax.training.loop import train_and_evaluate  # noqa: E402


def tracked_config():
    from conftest import tiny_config as make  # fixture function, called directly
    config = make.__wrapped__()
    config.tracking.mlflow = True
    config.tracking.experiment = "tiny"
    return config


def train_tracked(config, workdir, test_dir=None, finish=True):
    """What ``lungseg_jax.train`` does with tracking on (``finish``: log artifacts and model)."""
    with tracking.Tracker(config, workdir) as tracker:
        train_and_evaluate(config, workdir, on_epoch_end=tracker.log_epoch,
                           on_steps=tracker.log_steps)
        if finish:
            tracker.finish(evaluator.evaluate_workdir(workdir, test_dir) if test_dir else None)


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:  # mlflow.set_tracking_uri sets the variable
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        workdir, test_dir = (str(tmp_path_factory.mktemp(n)) for n in ("run", "test"))
        folders.write_folder(test_dir, synthetic_slices(3, 48, seed=7))
        train_tracked(tracked_config(), workdir, test_dir)
        yield workdir, MlflowClient(mlflow_run.workdir_uri(workdir))


def the_run(workdir, client):
    with open(os.path.join(workdir, mlflow_run.RUN_ID_FILE)) as f:
        return client.get_run(f.read().strip())


def test_params_metrics_and_artifacts_are_logged(tracked_run, tmp_path):
    workdir, client = tracked_run
    assert os.path.exists(os.path.join(workdir, "mlflow.db"))
    assert os.path.isdir(os.path.join(workdir, "mlartifacts"))
    run = the_run(workdir, client)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    params = run.data.params
    assert params["model.features"] == "[4, 8]" and params["data.image_size"] == "32"
    assert params["tracking.mlflow"] == "True" and params["schedule.name"] == "snapshot"
    records = read_metrics(workdir)
    for key in ("train_loss", "val_loss", "val_pooled_iou", "learning_rate"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r[key]))
                                                        for r in records], key
    # The logged test metrics are the logged evaluation's.
    with open(client.download_artifacts(run.info.run_id, "evaluation.json", str(tmp_path))) as f:
        evaluation = json.load(f)
    assert run.data.metrics["test/ensemble/pooled_iou"] == pytest.approx(
        evaluation["ensemble"]["pooled_iou"])
    eighth = next(s for s in evaluation["snapshots"] if s["step"] == 8)
    assert run.data.metrics["test/snapshots/8/mean_dice"] == pytest.approx(eighth["mean_dice"])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "metrics.jsonl", "evaluation.json"} <= names
    with open(client.download_artifacts(run.info.run_id, "config.json")) as f:
        assert json.load(f)["model"]["features"] == [4, 8]


def test_each_steps_learning_rate_and_loss_are_logged(tracked_run):
    workdir, client = tracked_run
    run_id = the_run(workdir, client).info.run_id
    learning_rate = {m.step: m.value for m in
                     client.get_metric_history(run_id, "step/learning_rate")}
    # 8 steps in 2 cosine cycles of 4 from 1e-3 (optax's cosine decay, restarted at step 5);
    # a step's value is logged at the step count after it, as the epochs'.
    by_hand = {s: 1e-3 * 0.5 * (1 + math.cos(math.pi * ((s - 1) % 4) / 4)) for s in range(1, 9)}
    assert sorted(learning_rate) == list(range(1, 9))
    for step, value in by_hand.items():
        assert learning_rate[step] == pytest.approx(value, rel=1e-6), step
    assert learning_rate[5] == pytest.approx(1e-3, rel=1e-7)  # the restart shows
    loss = {m.step: m.value for m in client.get_metric_history(run_id, "step/loss")}
    assert sorted(loss) == list(range(1, 9))
    records = read_metrics(workdir)  # an epoch's train loss is the mean of its steps'
    assert np.mean([loss[s] for s in range(1, 5)]) == pytest.approx(records[0]["train_loss"],
                                                                    rel=1e-5)
    assert np.mean([loss[s] for s in range(5, 9)]) == pytest.approx(records[1]["train_loss"],
                                                                    rel=1e-5)


def test_logged_model_predicts_like_the_export(tracked_run):
    workdir, _ = tracked_run
    mlflow.set_tracking_uri(mlflow_run.workdir_uri(workdir))
    run_id = the_run(workdir, MlflowClient(mlflow_run.workdir_uri(workdir))).info.run_id
    models = mlflow.search_logged_models(filter_string=f"source_run_id = '{run_id}'",
                                         output_format="list")
    assert [m.name for m in models] == ["model"]
    model = mlflow.pyfunc.load_model(models[0].model_uri)
    slices = np.stack(synthetic_slices(2, 48, seed=9).images).astype(np.float32)
    masks = model.predict(slices)
    assert masks.shape == (2, 48, 48) and masks.dtype == np.uint8
    # One slice (H, W) gives its (H, W) mask, as in the stack; float64 HU are taken too.
    one = model.predict(slices[1].astype(np.float64))
    assert one.shape == (48, 48) and one.dtype == np.uint8
    np.testing.assert_array_equal(one, masks[1])
    export = exported.ExportedModel(os.path.join(workdir, tracking.EXPORT_DIR))
    inputs = preprocess.preprocess_images(list(slices), 32, (-1350.0, 150.0), 1)
    probability, _ = predict.segment(export, preprocess.window(slices, -1350.0, 150.0))
    np.testing.assert_array_equal(masks, probability > 0.5)
    assert export.ensemble(inputs).shape == (2, 32, 32)


def test_resumed_training_continues_the_same_run(tmp_path, monkeypatch,
                                                 crash_after_first_checkpoint):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'store.db'}")
    workdir = str(tmp_path / "run")
    config = tracked_config()
    with pytest.raises(KeyboardInterrupt):
        train_tracked(config, workdir, finish=False)
    client = MlflowClient(f"sqlite:///{tmp_path / 'store.db'}")
    assert the_run(workdir, client).info.status == "KILLED"
    crash_after_first_checkpoint()  # saves work again
    train_tracked(config, workdir, finish=False)
    run = the_run(workdir, client)
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment_by_name("tiny")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == \
        [run.info.run_id]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
    assert steps == [4, 8]
    assert not os.path.exists(os.path.join(workdir, "mlflow.db"))  # the URI from the env


def test_an_empty_run_id_file_starts_a_run_and_records_it(tmp_path, monkeypatch):
    """A workdir whose mlflow_run_id is empty (a crash while writing it) gets a new run,
    with its params, and the file records it: a resume continues that run."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / mlflow_run.RUN_ID_FILE).write_text("")
    config = tracked_config()
    with tracking.Tracker(config, str(workdir)) as tracker:
        tracker.log_epoch({"step": 4, "train_loss": 0.5})
    run_id = mlflow_run.read_run_id(str(workdir))
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.params["model.features"] == "[4, 8]" and run.data.metrics["train_loss"] == 0.5
    with tracking.Tracker(config, str(workdir)) as tracker:
        tracker.log_epoch({"step": 8, "train_loss": 0.25})
    assert tracker_runs(uri) == [run_id]


def tracker_runs(uri: str) -> list:
    client = MlflowClient(uri)
    return [r.info.run_id for r in client.search_runs(
        [client.get_experiment_by_name("tiny").experiment_id])]


def test_tracking_off_logs_nothing_and_needs_no_mlflow(tmp_path, monkeypatch):
    config = tracked_config()
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install -e "\.\[mlflow\]"'):
        tracking.Tracker(config, str(tmp_path))
    config.tracking.mlflow = False
    with tracking.Tracker(config, str(tmp_path)) as tracker:
        tracker.log_epoch({"step": 1, "train_loss": 0.5})
        tracker.finish()
    assert os.listdir(tmp_path) == []


def test_flatten_config_and_evaluation_metrics():
    assert tracking.flatten_config({"a": {"b": 1, "c": [1, 2]}, "d": "x"}) == \
        {"a.b": 1, "a.c": "[1, 2]", "d": "x"}
    result = {"num_images": 3, "final": {"mean_iou": 0.5}, "variants": {"final+tta": {"x": 1}},
              "snapshots": [{"step": 4, "mean_iou": 0.25}], "winner": "ensemble"}
    assert mlflow_run.evaluation_metrics(result) == {
        "test/num_images": 3.0, "test/final/mean_iou": 0.5, "test/variants/final_tta/x": 1.0,
        "test/snapshots/4/mean_iou": 0.25}


@pytest.mark.slow
def test_mlflow_run_and_models_predict(tmp_path):
    """`mlflow run .` on a tiny config, then `mlflow models predict` on its logged model."""
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    bin_dir = os.path.dirname(sys.executable)  # `python` in MLproject: this environment's
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    mlflow_cli = os.path.join(bin_dir, "mlflow")
    client = MlflowClient(uri)  # artifacts in tmp_path, not mlflow's default ./mlruns
    client.create_experiment("mlproject", artifact_location=(tmp_path / "artifacts").as_uri())
    overrides = ("--config.model.features=(4,8) --config.data.image_size=32 "
                 "--config.data.synthetic.num_images=12 --config.data.synthetic.size=32 "
                 "--config.num_epochs=1 --config.eval_batch_size=4 "
                 "--config.data.val_fraction=0.34 --config.schedule.num_cycles=1")
    run = subprocess.run([mlflow_cli, "run", ".", "--env-manager", "local",
                          "--experiment-name", "mlproject", "-P", "config=configs/default.py",
                          "-P", f"workdir={tmp_path / 'run'}", "-P", f"overrides={overrides}"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    (only,) = client.search_runs([client.get_experiment_by_name("mlproject").experiment_id])
    assert only.info.status == "FINISHED" and only.data.params["num_epochs"] == "1"
    assert [m.step for m in client.get_metric_history(only.info.run_id, "train_loss")] == [2]
    (input_path := tmp_path / "input.json").write_text(json.dumps(
        {"inputs": [np.full((40, 40), -850.0).tolist()]}))
    predict = subprocess.run([mlflow_cli, "models", "predict", "-m",
                              f"runs:/{only.info.run_id}/model", "-i", str(input_path), "-t",
                              "json", "--env-manager", "local"],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert predict.returncode == 0, predict.stderr[-3000:]
    assert np.asarray(json.loads(predict.stdout)["predictions"]).shape == (1, 40, 40)
