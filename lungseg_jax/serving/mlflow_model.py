"""The exported snapshot ensemble as an MLflow pyfunc model (``mlflow models predict``).

Input: Hounsfield slices, one ``(H, W)`` or a stack ``(N, H, W)`` of any size
(JSON ``{"inputs": [...]}``). Output: lung masks (uint8 0/1) of the same shape.
The signature names the output only: MLflow's tensor specs fix the number of dimensions,
and the model takes two or three (it checks them itself).
"""

import os
import tempfile
import warnings

import jax
import mlflow
import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from lungseg_jax.data.preprocess import window
from lungseg_jax.serving import exported, predict
from lungseg_jax.serving.inference import lung_mask

ARTIFACT = "export"
SIGNATURE = ModelSignature(inputs=None,
                           outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]))
# The model is logged as code (MLflow's "models from code"), not pickled: loading it runs
# this file, which imports the class from the installed package.
MODEL_CODE = ("import mlflow\n"
              "from lungseg_jax.serving.mlflow_model import LungSegModel\n"
              "mlflow.models.set_model(LungSegModel())\n")


class LungSegModel(mlflow.pyfunc.PythonModel):
    """Windows, resizes and segments HU slices with the exported ensemble."""

    def load_context(self, context):
        self.model = exported.ExportedModel(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: np.ndarray, params=None):
        slices = np.asarray(model_input, np.float32)
        if slices.ndim not in (2, 3):
            raise ValueError(f"expected HU slices (H, W) or (N, H, W), got shape {slices.shape}")
        meta = self.model.metadata
        windowed = window(slices.reshape(-1, *slices.shape[-2:]), meta["hu_min"],
                          meta["hu_max"])
        probability, _ = predict.segment(self.model, windowed, show_progress=False,
                                         tta=meta.get("tta", False))
        mask = lung_mask(probability, meta["threshold"], meta.get("postprocess", False))
        return mask.astype(np.uint8).reshape(slices.shape)


def log_model(export_dir: str, name: str = "model"):
    """Logs ``export_dir`` as a pyfunc model in the active MLflow run; returns its ModelInfo.

    The model class is imported from ``lungseg_jax`` when loaded: serve it where the
    package is installed (``pip install -e ".[mlflow]"``).
    """
    requirements = [f"jax=={jax.__version__}", "flatbuffers", "numpy", "opencv-python-headless",
                    "scipy", "tifffile", "imagecodecs", f"mlflow-skinny=={mlflow.__version__}",
                    "pandas"]
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        # An input example would be run through the model at logging time, to no purpose.
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        code = os.path.join(folder, "lungseg_model.py")
        with open(code, "w") as f:
            f.write(MODEL_CODE)
        return mlflow.pyfunc.log_model(name=name, python_model=code,
                                       artifacts={ARTIFACT: export_dir}, signature=SIGNATURE,
                                       pip_requirements=requirements)
