"""Experiment tracking: MLflow (``tracker``, above training and serving: it logs the
exported model) and TensorBoard event files (``tensorboard``)."""
