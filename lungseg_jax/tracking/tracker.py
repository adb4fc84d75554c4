"""MLflow tracking of a training run, turned on by ``config.tracking.mlflow``.

Logs the flattened config as params, each step's measurements (``step/loss``,
``step/learning_rate``, ``step/grad_norm``) and each epoch's record (``metrics.jsonl``)
as metrics at their step, and at the end ``config.json``, ``metrics.jsonl``, the
evaluation (when one was run) and the exported snapshot ensemble as an MLflow
pyfunc model (once: a finished run re-run does not log it again). The tracking URI is
``$MLFLOW_TRACKING_URI`` or a sqlite file in the workdir, so no server is needed; a
``gs://`` workdir needs ``$MLFLOW_TRACKING_URI`` (refused before training otherwise).
The run id is kept in ``WORKDIR/mlflow_run_id`` (``mlflow_run``): a resumed training
continues the same MLflow run, and the evaluate command logs to it (``evaluation_log``).
Only process 0 logs.
"""

import json
import os
import pathlib
import time

import jax
import numpy as np
from absl import logging
from etils import epath

from lungseg_jax.tracking.mlflow_run import (evaluation_metrics, import_mlflow, read_run_id,
                                             tracking_uri, workdir_uri, write_run_id)

EXPORT_DIR = "export"
MODEL_NAME = "model"
STEP_PREFIX = "step"  # per-step metrics: step/loss, step/learning_rate, step/grad_norm


def flatten_config(tree: dict, prefix: str = "") -> dict:
    """``{'model': {'name': 'x'}}`` -> ``{'model.name': 'x'}`` (lists kept as JSON)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, list) else value
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
        stored = read_run_id(self.workdir)
        run_id = stored or os.environ.get("MLFLOW_RUN_ID")
        if run_id is None:
            self._set_experiment(self.config.tracking.experiment)
        self.run_id = mlflow.start_run(run_id=run_id).info.run_id
        if stored is None:
            mlflow.log_params(flatten_config(json.loads(self.config.to_json_best_effort())))
            write_run_id(self.workdir, self.run_id)

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

