"""Serving: what applies a trained model, never importing training. ``inference`` (shared
with evaluation; no flax, optax or orbax), ``export`` (``jax.export`` artifacts of a
workdir), ``exported`` (their loader), ``predict`` (slices and volumes, read by ``inputs``,
``scans`` and ``dicom``) and ``mlflow_model`` (the MLflow pyfunc)."""
