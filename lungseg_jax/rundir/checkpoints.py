"""Checkpoints through orbax: the latest few for resume, every snapshot kept forever.

``WORKDIR/checkpoints/<step>/`` holds the whole train state (params, BatchNorm
statistics, optimizer state, step). Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoints intact. On ``gs://`` (no rename there) orbax marks a complete
checkpoint with a ``commit_success.txt`` file instead.
"""

import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from lungseg_jax.core.files import absolute


def checkpoint_dir(workdir: epath.PathLike) -> epath.Path:
    """``WORKDIR/checkpoints``, absolute as orbax needs it (URIs such as ``gs://`` as given)."""
    return absolute(workdir) / "checkpoints"


def create_manager(workdir: epath.PathLike, snapshot_steps=(), keep_latest: int = 2,
                   read_only: bool = False) -> ocp.CheckpointManager:
    """A manager that keeps the latest ``keep_latest`` checkpoints plus ``snapshot_steps``.

    The snapshot steps are recorded in the manager's root metadata for evaluation;
    ``read_only`` opens an existing directory without recording anything.
    """
    policy = checkpoint_managers.AnyPreservationPolicy([
        checkpoint_managers.LatestN(keep_latest),
        checkpoint_managers.CustomSteps(list(snapshot_steps)),
    ])
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=not read_only)
    metadata = None if read_only else {"snapshot_steps": list(snapshot_steps)}
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, metadata=metadata)


def saved_snapshot_steps(manager: ocp.CheckpointManager) -> list:
    """The snapshot steps that have been saved so far, ascending."""
    planned = manager.metadata().custom_metadata.get("snapshot_steps", [])
    return sorted(set(planned) & set(manager.all_steps()))


def save(manager: ocp.CheckpointManager, state) -> None:
    """Saves ``state`` at its own step (asynchronously; ``manager.wait_until_finished()``)."""
    manager.save(int(state.step), args=ocp.args.StandardSave(state))


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, partial: bool = False):
    """The state saved at ``step``, laid out (shapes, dtypes, shardings) like ``abstract_state``.

    ``partial`` restores only the top-level fields ``abstract_state`` (a dict) names,
    e.g. just the model variables of a train state.
    """
    if partial:
        return manager.restore(step, args=ocp.args.PyTreeRestore(
            abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(
                abstract_state), partial_restore=True))
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
