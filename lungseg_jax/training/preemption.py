"""Preemption: SIGTERM (or a multi-host preemption notice) stops training after a checkpoint."""

import contextlib
import signal
import sys
import threading

import jax
from absl import logging
from orbax.checkpoint import multihost as ocp_multihost


class Preempted(Exception):
    """Training stopped on SIGTERM (or a multi-host preemption notice) after a checkpoint."""

    EXIT_STATUS = 143  # 128 + SIGTERM, what schedulers expect of a terminated job


@contextlib.contextmanager
def exiting_when_preempted():
    """For the commands: a Preempted stop becomes its warning and exit status 143."""
    try:
        yield
    except Preempted as stop:
        logging.warning("%s", stop)
        sys.exit(Preempted.EXIT_STATUS)


class PreemptionGuard:
    """Turns SIGTERM into a clean stop between calls of the train steps.

    One process: a SIGTERM handler sets a flag. Several processes: JAX's preemption
    service (``jax.distributed``), read through orbax, picks the step after the furthest
    one any process has reported (orbax's saves report theirs too) and answers true for
    exactly that step, so ``reached`` reports every step of a call, not only its last:
    all processes then stop after the same call.
    """

    def __init__(self):
        self.received = False
        self.previous = None

    def __enter__(self):
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint after the steps in flight.")
        self.received = True

    def reached(self, steps: range) -> bool:
        """Whether to stop after the call that ran ``steps``."""
        if jax.process_count() > 1:
            return any([ocp_multihost.reached_preemption(step) for step in steps])
        return self.received
