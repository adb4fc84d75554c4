"""Experiment tracking: MLflow (``tracker``), above training and serving (it logs the
exported model)."""
