"""evaluate's MLflow logging (tracking.evaluation_log) against a real sqlite store and run:
evaluations kept apart by name, a store failing while logging, and every case where nothing
is logged, each with what the user is told."""

import logging
import os

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from lungseg_jax.tracking import evaluation_log, mlflow_run  # noqa: E402

RESULT = {"num_images": 3, "final": {"mean_iou": 0.5},
          "snapshots": [{"step": 4, "mean_dice": 0.25}], "variants": {"final+tta": {"x": 1}}}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "run"
    path.mkdir()
    return str(path)


@pytest.fixture
def tracked(workdir, tmp_path):
    """(workdir, client, run id): a run in the workdir's own store, as training leaves it."""
    client = MlflowClient(mlflow_run.workdir_uri(workdir))
    experiment = client.create_experiment("tiny", (tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    mlflow_run.write_run_id(workdir, run_id)
    return workdir, client, run_id


def evaluation_files(folder, name):
    """The JSON and a report file of an evaluation written as ``folder/name.json``."""
    os.makedirs(folder, exist_ok=True)
    output, report = os.path.join(folder, f"{name}.json"), os.path.join(folder, f"{name}.md")
    for path in (output, report):
        with open(path, "w") as f:
            f.write(name)
    return output, [report]


def warnings_of(caplog) -> list:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_evaluations_of_one_run_are_kept_apart_by_name(tracked, tmp_path, caplog):
    workdir, client, run_id = tracked
    for name, iou in (("test", 0.5), ("test_tta", 0.75)):
        output, report = evaluation_files(tmp_path / "eval", name)
        result = {**RESULT, "final": {"mean_iou": iou}}
        assert evaluation_log.log_evaluation(workdir, result, output, report) == run_id
    metrics = client.get_run(run_id).data.metrics
    assert metrics["eval/test/final/mean_iou"] == 0.5
    assert metrics["eval/test_tta/final/mean_iou"] == 0.75
    assert metrics["eval/test/snapshots/4/mean_dice"] == 0.25
    assert metrics["eval/test_tta/variants/final_tta/x"] == 1.0
    assert not any(name.startswith("eval/final") for name in metrics)
    for name in ("test", "test_tta"):
        assert sorted(a.path for a in client.list_artifacts(run_id, f"eval/{name}")) == [
            f"eval/{name}/{name}.json", f"eval/{name}/{name}.md"]
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("method, error", [
    ("log_batch", MlflowException("(sqlite3.OperationalError) database is locked")),
    ("log_artifact", OSError(28, "No space left on device"))])
def test_a_store_failing_while_logging_is_one_warning(tracked, tmp_path, caplog, monkeypatch,
                                                      method, error):
    workdir, client, run_id = tracked

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(MlflowClient, method, fail)
    output, report = evaluation_files(tmp_path / "eval", "test")
    assert evaluation_log.log_evaluation(workdir, RESULT, output, report) is None
    (warning,) = warnings_of(caplog)
    assert warning.startswith(f"The evaluation is not (fully) logged to MLflow run {run_id} in "
                              f"{mlflow_run.workdir_uri(workdir)}: ")
    assert str(error) in warning


def test_an_untracked_workdir_logs_nothing_and_says_nothing(workdir, tmp_path, caplog):
    output, report = evaluation_files(tmp_path / "eval", "test")
    assert evaluation_log.log_evaluation(workdir, RESULT, output, report) is None
    assert os.listdir(workdir) == [] and warnings_of(caplog) == []


def test_an_empty_run_id_file_is_not_tracked(workdir, tmp_path, caplog):
    open(os.path.join(workdir, mlflow_run.RUN_ID_FILE), "w").close()
    output, _ = evaluation_files(tmp_path / "eval", "test")
    assert evaluation_log.log_evaluation(workdir, RESULT, output) is None
    assert os.listdir(workdir) == [mlflow_run.RUN_ID_FILE] and warnings_of(caplog) == []


def test_a_missing_store_is_a_warning_and_not_created(workdir, tmp_path, caplog):
    mlflow_run.write_run_id(workdir, "0123abcd")
    output, _ = evaluation_files(tmp_path / "eval", "test")
    assert evaluation_log.log_evaluation(workdir, RESULT, output) is None
    assert warnings_of(caplog) == [
        f"The evaluation is not logged to MLflow run 0123abcd: "
        f"{mlflow_run.workdir_uri(workdir)} does not exist; set MLFLOW_TRACKING_URI to the "
        "store the training logged to"]
    assert os.listdir(workdir) == [mlflow_run.RUN_ID_FILE]


def test_a_run_not_in_the_store_is_a_warning(tracked, tmp_path, caplog):
    workdir, client, run_id = tracked
    mlflow_run.write_run_id(workdir, "0123abcd")
    output, _ = evaluation_files(tmp_path / "eval", "test")
    assert evaluation_log.log_evaluation(workdir, RESULT, output) is None
    assert warnings_of(caplog) == [
        f"The evaluation is not logged: MLflow run 0123abcd is not in "
        f"{mlflow_run.workdir_uri(workdir)}; set MLFLOW_TRACKING_URI to the store the "
        "training logged to"]
    assert client.get_run(run_id).data.metrics == {}


def test_mlflow_not_installed_is_a_warning(tracked, tmp_path, caplog, monkeypatch):
    workdir, client, run_id = tracked
    monkeypatch.setitem(__import__("sys").modules, "mlflow", None)
    output, _ = evaluation_files(tmp_path / "eval", "test")
    assert evaluation_log.log_evaluation(workdir, RESULT, output) is None
    (warning,) = warnings_of(caplog)
    assert warning.startswith(f"The evaluation is not logged to MLflow run {run_id}: ")
    assert 'pip install -e ".[mlflow]"' in warning


def test_an_evaluations_name_is_its_files_stem():
    assert evaluation_log.evaluation_name("runs/x/eval/test.json") == "eval/test"
    assert evaluation_log.evaluation_name("gs://b/run/held out+tta.json") == "eval/held out_tta"
