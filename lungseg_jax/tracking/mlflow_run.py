"""Where a workdir's MLflow run lives, shared by training's ``tracker`` and evaluate's
``evaluation_log``: the store (``$MLFLOW_TRACKING_URI``, else a sqlite file in the
workdir), the run id kept in ``WORKDIR/mlflow_run_id``, and evaluation numbers as MLflow
metric names."""

import logging as py_logging
import numbers
import os
import re

from absl import logging
from etils import epath

from lungseg_jax.core.files import is_local

RUN_ID_FILE = "mlflow_run_id"
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


def read_run_id(workdir: str) -> str | None:
    """The MLflow run id a tracked training recorded in ``workdir`` (None: not tracked, or
    an empty file)."""
    path = epath.Path(workdir) / RUN_ID_FILE
    if not path.exists():
        return None
    return path.read_text().strip() or None


def write_run_id(workdir: str, run_id: str) -> None:
    path = epath.Path(workdir) / RUN_ID_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")


def metric_name_part(text: str) -> str:
    """``text`` with the characters MLflow refuses in metric names (``final+tta``) as ``_``."""
    return BAD_NAME_CHARS.sub("_", str(text))


def evaluation_metrics(result: dict, prefix: str = "test") -> dict:
    """Numeric leaves of an evaluation result as ``test/ensemble/pooled_iou``-style metrics.

    List items are named by their ``step`` (``test/snapshots/4/mean_dice``) or index;
    characters MLflow refuses in names (``final+tta``) become ``_``.
    """
    flat = {}
    for key, value in result.items():
        name = f"{prefix}/{metric_name_part(key)}"
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
