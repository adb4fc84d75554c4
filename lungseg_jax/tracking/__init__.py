"""Experiment tracking: MLflow (``tracker``: the training run, above training and serving:
it logs the exported model; ``evaluation_log``: the evaluate command's numbers and report,
logged to that run; ``mlflow_run``: the store and run id they share) and TensorBoard event
files (``tensorboard``)."""
