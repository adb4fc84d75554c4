"""Training: the loop (``loop.train_and_evaluate``), its jitted steps, state, schedules,
losses, mesh, preemption, and the config checks."""
