"""Performance measurement: the train-step benchmark (``bench``) and the per-layer CPU
profile (``op_profile``). Nothing in the library imports it."""
