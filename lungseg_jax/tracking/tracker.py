"""MLflow tracking of a training run, turned on by ``config.tracking.mlflow``.

Logs the flattened config as params, each step's measurements (``step/loss``,
``step/learning_rate``, ``step/grad_norm``) and each epoch's record (``metrics.jsonl``)
as metrics at their step, and at the end ``config.json``, ``metrics.jsonl``, the
evaluation (when one was run) and the exported snapshot ensemble as an MLflow
pyfunc model (once: a finished run re-run does not log it again). The tracking URI is
``$MLFLOW_TRACKING_URI`` or a sqlite file in the workdir, so no server is needed; a
``gs://`` workdir needs ``$MLFLOW_TRACKING_URI`` (refused before training otherwise).
The run id is kept in ``WORKDIR/mlflow_run_id``: a resumed training continues the same
MLflow run, and ``log_evaluation`` (the evaluate command) logs to it. Only process 0 logs.
"""

import json
import logging as py_logging
import numbers
import os
import pathlib
import re
import shutil
import tempfile
import time

import jax
import numpy as np
from absl import logging
from etils import epath

from lungseg_jax.core.files import is_local

RUN_ID_FILE = "mlflow_run_id"
EXPORT_DIR = "export"
MODEL_NAME = "model"
STEP_PREFIX = "step"  # per-step metrics: step/loss, step/learning_rate, step/grad_norm
EVAL_PREFIX = "eval"  # the evaluate command's metrics and report files
INSTALL_HINT = 'pip install -e ".[mlflow]"'
BAD_NAME_CHARS = re.compile(r"[^\w\-. :/]")  # what MLflow refuses in metric names


def import_mlflow():
    """The mlflow module, or an ImportError that says how to install it."""
    try:
        import mlflow
    except ImportError as e:
        raise ImportError(f"config.tracking.mlflow=True needs MLflow, which is not installed: "
                          f"{INSTALL_HINT}") from e
    if logging.get_verbosity() < 1:  # its INFO (the store's set-up) stays out of the console
        py_logging.getLogger("mlflow").setLevel(py_logging.WARNING)
    return mlflow


def workdir_uri(workdir: str) -> str:
    """``sqlite:///<abs workdir>/mlflow.db``: the workdir's own store."""
    return f"sqlite:///{os.path.join(os.path.abspath(workdir), 'mlflow.db')}"


def tracking_uri(workdir: str) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the workdir's own store (a local workdir's only:
    sqlite cannot live in an object store such as ``gs://``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if not is_local(workdir):
        raise ValueError(f"config.tracking.mlflow=True with --workdir={workdir}: MLflow's "
                         "default store is a sqlite file in the workdir, which must then be "
                         "local; set MLFLOW_TRACKING_URI to a local sqlite file "
                         "(sqlite:////abs/path/mlflow.db) or an MLflow server (http://HOST:5000)")
    return workdir_uri(workdir)


def flatten_config(tree: dict, prefix: str = "") -> dict:
    """``{'model': {'name': 'x'}}`` -> ``{'model.name': 'x'}`` (lists kept as JSON)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
    return flat


def evaluation_metrics(result: dict, prefix: str = "test") -> dict:
    """Numeric leaves of an evaluation result as ``test/ensemble/pooled_iou``-style metrics.

    List items are named by their ``step`` (``test/snapshots/4/mean_dice``) or index;
    characters MLflow refuses in names (``final+tta``) become ``_``.
    """
    flat = {}
    for key, value in result.items():
        name = f"{prefix}/{BAD_NAME_CHARS.sub('_', str(key))}"
        if isinstance(value, dict):
            flat.update(evaluation_metrics(value, name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    flat.update(evaluation_metrics(
                        {k: v for k, v in item.items() if k != "step"},
                        f"{name}/{item.get('step', i)}"))
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


class Tracker:
    """Logs one training run to MLflow; inert unless ``config.tracking.mlflow`` on process 0.

    Use as a context manager: the MLflow run starts at the first log call (nothing is
    written before training has checked its config) and ends on exit, marked FAILED or
    KILLED when an exception (or ``sys.exit``) leaves the block.
    """

    def __init__(self, config, workdir: str):
        self.config, self.workdir = config, workdir
        # Resolved on every process, so a workdir without a store fails everywhere at once.
        self.uri = tracking_uri(workdir) if config.tracking.mlflow else None
        self.enabled = bool(config.tracking.mlflow) and jax.process_index() == 0
        self.mlflow = import_mlflow() if self.enabled else None
        self.run_id = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.run_id is not None:
            status = ("FINISHED" if exc_type is None else
                      "KILLED" if issubclass(exc_type, (SystemExit, KeyboardInterrupt))
                      else "FAILED")
            self.mlflow.end_run(status)
            self.run_id = None

    def _start(self) -> None:
        """Starts or resumes the workdir's MLflow run (``$MLFLOW_RUN_ID`` under ``mlflow run``)."""
        if self.run_id is not None:
            return
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.uri)
        path = epath.Path(self.workdir) / RUN_ID_FILE
        stored = path.read_text().strip() if path.exists() else None
        run_id = stored or os.environ.get("MLFLOW_RUN_ID")
        if run_id is None:
            self._set_experiment(self.config.tracking.experiment)
        self.run_id = mlflow.start_run(run_id=run_id).info.run_id
        if stored is None:
            mlflow.log_params(flatten_config(json.loads(self.config.to_json_best_effort())))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.run_id + "\n")

    def _set_experiment(self, name: str) -> None:
        """Activates experiment ``name``; one created in the workdir's own store keeps its
        artifacts in ``WORKDIR/mlartifacts`` (mlflow's default is ``./mlruns`` of the cwd)."""
        mlflow = self.mlflow
        own_store = mlflow.get_tracking_uri() == workdir_uri(self.workdir)
        if own_store and mlflow.get_experiment_by_name(name) is None:
            location = pathlib.Path(self.workdir, "mlartifacts").absolute().as_uri()
            mlflow.create_experiment(name, artifact_location=location)
        mlflow.set_experiment(name)

    def log_steps(self, first_step: int, values: dict) -> None:
        """``values``: ``{name: array}`` of consecutive steps, the first ``first_step + 1``,
        logged as ``step/<name>`` at each step (as the TensorBoard events)."""
        if not self.enabled:
            return
        self._start()
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        metrics = [Metric(f"{STEP_PREFIX}/{name}", float(value), timestamp, first_step + 1 + i)
                   for name, series in values.items()
                   for i, value in enumerate(np.asarray(series))]
        self.mlflow.tracking.MlflowClient().log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, record: dict) -> None:
        """One ``metrics.jsonl`` record as metrics at its ``step``."""
        if not self.enabled:
            return
        self._start()
        self.mlflow.log_metrics({k: float(v) for k, v in record.items() if k != "step"},
                                step=int(record["step"]))

    def finish(self, evaluation: dict | None = None) -> None:
        """Logs the artifacts, the evaluation (if any) and the exported ensemble as a model."""
        if not self.enabled:
            return
        from lungseg_jax.serving import export, mlflow_model  # heavy; only at the end

        self._start()
        for name in ("config.json", "metrics.jsonl"):
            path = epath.Path(self.workdir) / name
            if path.exists():
                self.mlflow.log_text(path.read_text(), name)
        if evaluation is not None:
            self.mlflow.log_metrics(evaluation_metrics(evaluation))
            self.mlflow.log_dict(evaluation, "evaluation.json")
        if self.logged_models():
            logging.info("MLflow run %s already has its model; not logged again.", self.run_id)
            return
        export_dir = epath.Path(self.workdir) / EXPORT_DIR
        export.export_workdir(self.workdir, export_dir, overwrite=True)
        mlflow_model.log_model(os.fspath(export_dir), MODEL_NAME)  # mlflow downloads gs://

    def logged_models(self) -> list:
        """The models named ``MODEL_NAME`` logged by this run."""
        experiment_id = self.mlflow.get_run(self.run_id).info.experiment_id
        return self.mlflow.search_logged_models(
            experiment_ids=[experiment_id], output_format="list",
            filter_string=f"source_run_id = '{self.run_id}' AND name = '{MODEL_NAME}'")


def tracked_run_id(workdir: str) -> str | None:
    """The MLflow run id a tracked training recorded in ``workdir`` (None: not tracked)."""
    path = epath.Path(workdir) / RUN_ID_FILE
    if not path.exists():
        return None
    return path.read_text().strip() or None


def log_evaluation(workdir: str, result: dict, files: list) -> str | None:
    """Logs an evaluation of ``workdir``'s weights to its training run's MLflow run, when
    that run was tracked: the numbers of ``result`` as ``eval/...`` metrics and ``files``
    (the JSON and the report) as artifacts in ``eval/``. Returns the run id, or None when
    nothing was logged (not tracked; or a warning says why not)."""
    run_id = tracked_run_id(workdir)
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
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    client = mlflow.tracking.MlflowClient(uri)
    try:
        client.get_run(run_id)
    except MlflowException:
        logging.warning("The evaluation is not logged: MLflow run %s is not in %s; set "
                        "MLFLOW_TRACKING_URI to the store the training logged to", run_id, uri)
        return None
    timestamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(name, value, timestamp, 0) for name, value in
                                      evaluation_metrics(result, EVAL_PREFIX).items()])
    with tempfile.TemporaryDirectory() as local:
        for file in files:
            path = epath.Path(file)
            if not is_local(os.fspath(file)):  # an object store's file: through a local copy
                copy = os.path.join(local, path.name)
                with path.open("rb") as src, open(copy, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                file = copy
            client.log_artifact(run_id, os.fspath(file), EVAL_PREFIX)
    logging.info("Evaluation logged to MLflow run %s (%s).", run_id, uri)
    return run_id
