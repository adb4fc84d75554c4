"""Evaluation of a workdir on a labelled folder (``evaluator``) and its report (``report``)."""
