"""Multi-process start-up: ``jax.distributed.initialize`` when several processes are asked for.

Call ``initialize()`` before anything else touches JAX (``core.cli.start`` does, for
``train``'s flags). It joins a cluster when

* ``--num_processes`` > 1 (with ``--process_id`` and ``--coordinator_address``), or
  ``--coordinator_address`` alone (JAX detects the rest where it can);
* ``--multihost``: JAX auto-detects everything (Cloud TPU VM slices, GKE, Slurm, Open MPI);
  ``launch.sh`` passes it on every TPU VM worker (harmless on a one-worker slice);
* the environment says so: ``JAX_COORDINATOR_ADDRESS``, a multi-task Slurm step
  (``SLURM_NTASKS`` > 1), an Open MPI job (``OMPI_COMM_WORLD_SIZE`` > 1) or a multi-host
  ``TPU_WORKER_HOSTNAMES``;

and otherwise does nothing (one process holding all local devices). Afterwards
``jax.devices()`` lists every process's devices; the trainer's mesh spans them all.
"""

import os

import jax
from absl import logging


def cluster_in_environment(environ=os.environ) -> bool:
    """True where the environment describes a multi-process job JAX can join."""
    return bool(environ.get("JAX_COORDINATOR_ADDRESS")
                or int(environ.get("SLURM_NTASKS", "1") or 1) > 1
                or int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
                or "," in environ.get("TPU_WORKER_HOSTNAMES", ""))


def wanted(coordinator_address=None, num_processes=None, multihost=False,
           environ=os.environ) -> bool:
    """Whether these settings ask for ``jax.distributed.initialize``."""
    if num_processes is not None:
        if num_processes < 1:
            raise ValueError(f"--num_processes={num_processes} is invalid: expected >= 1")
        return num_processes > 1
    return bool(coordinator_address) or multihost or cluster_in_environment(environ)


def initialize(coordinator_address=None, num_processes=None, process_id=None,
               multihost=False) -> bool:
    """Joins the cluster when asked for (see the module docstring); True if it did."""
    if not wanted(coordinator_address, num_processes, multihost):
        return False
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    logging.info("Process %d of %d; %d local / %d global devices.", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    return True
