"""The evaluate command's MLflow logging: an evaluation of a workdir's weights, logged to
the MLflow run its training was tracked in (``WORKDIR/mlflow_run_id``), in the store that
training used (``$MLFLOW_TRACKING_URI``, else ``WORKDIR/mlflow.db``).

An evaluation written to ``.../NAME.json`` logs its numbers as ``eval/NAME/...`` metrics
and its files (the JSON and the report) as artifacts in ``eval/NAME/``, so evaluations of
one run under different names (``test.json``, ``test_tta.json``) are kept side by side.
Logging never fails the command: the evaluation's files are written before it, and any
reason it cannot log is one warning.
"""

import os
import shutil
import tempfile
import time

from absl import logging
from etils import epath

from lungseg_jax.core.files import is_local
from lungseg_jax.tracking.mlflow_run import (evaluation_metrics, import_mlflow,
                                             metric_name_part, read_run_id, tracking_uri,
                                             workdir_uri)

EVAL_PREFIX = "eval"  # the evaluate command's metrics and report files


def evaluation_name(output: str) -> str:
    """``eval/NAME`` for an evaluation written to ``.../NAME.json``: its metrics' prefix and
    its artifacts' folder."""
    stem = os.path.splitext(os.path.basename(os.fspath(output)))[0]
    return f"{EVAL_PREFIX}/{metric_name_part(stem)}"


def log_evaluation(workdir: str, result: dict, output: str, report_files=()) -> str | None:
    """Logs an evaluation of ``workdir``'s weights, written to ``output`` (its JSON) with
    ``report_files``, to the training's MLflow run when that run was tracked: the numbers of
    ``result`` as ``eval/NAME/...`` metrics (``evaluation_name``) and the files as artifacts
    in ``eval/NAME/``. Returns the run id, or None when nothing was logged: not tracked
    (silently), or a warning says why (MLflow not installed, the store or the run missing,
    the store failing while logging)."""
    run_id = read_run_id(workdir)
    if run_id is None:
        return None
    try:
        mlflow = import_mlflow()
        uri = tracking_uri(workdir)
    except (ImportError, ValueError) as e:
        logging.warning("The evaluation is not logged to MLflow run %s: %s", run_id, e)
        return None
    if uri == workdir_uri(workdir) and not os.path.exists(uri[len("sqlite:///"):]):
        logging.warning("The evaluation is not logged to MLflow run %s: %s does not exist; "
                        "set MLFLOW_TRACKING_URI to the store the training logged to",
                        run_id, uri)
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        client = mlflow.tracking.MlflowClient(uri)
        client.get_run(run_id)
        _log(client, run_id, result, evaluation_name(output), [output, *report_files])
    except MlflowException as e:
        if e.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            logging.warning("The evaluation is not logged: MLflow run %s is not in %s; set "
                            "MLFLOW_TRACKING_URI to the store the training logged to",
                            run_id, uri)
        else:  # a locked sqlite file, a server down
            logging.warning("The evaluation is not (fully) logged to MLflow run %s in %s: %s",
                            run_id, uri, e)
        return None
    except OSError as e:  # an artifact that cannot be read or stored
        logging.warning("The evaluation is not (fully) logged to MLflow run %s in %s: %s",
                        run_id, uri, e)
        return None
    logging.info("Evaluation logged to MLflow run %s (%s).", run_id, uri)
    return run_id


def _log(client, run_id: str, result: dict, name: str, files: list) -> None:
    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(metric, value, timestamp, 0) for metric, value in
                                      evaluation_metrics(result, name).items()])
    with tempfile.TemporaryDirectory() as local:
        for file in files:
            path = epath.Path(file)
            if not is_local(os.fspath(file)):  # an object store's file: through a local copy
                copy = os.path.join(local, path.name)
                with path.open("rb") as src, open(copy, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                file = copy
            client.log_artifact(run_id, os.fspath(file), name)
