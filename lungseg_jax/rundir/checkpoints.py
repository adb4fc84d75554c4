"""Checkpoints through orbax: the latest few for resume, every snapshot kept forever.

``WORKDIR/checkpoints/<step>/`` holds the whole train state (params, BatchNorm
statistics, optimizer state, step). Orbax writes each checkpoint to a temporary
directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoints intact. On ``gs://`` (no rename there) orbax marks a complete
checkpoint with a ``commit_success.txt`` file instead. A checkpoint damaged later (a
file cut short or corrupted on disk) is moved to ``WORKDIR/checkpoints_damaged/<step>``
by ``restore_latest_intact``, and the run resumes from the one before.
"""

import contextlib
import sys

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from orbax.checkpoint import checkpoint_managers

from lungseg_jax.core.files import absolute, is_local


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


def planned_snapshot_steps(manager: ocp.CheckpointManager) -> list:
    """The run's snapshot steps (the last is its final step), as recorded when it began."""
    return sorted(manager.metadata().custom_metadata.get("snapshot_steps", []))


def saved_snapshot_steps(manager: ocp.CheckpointManager) -> list:
    """The snapshot steps that have been saved so far, ascending."""
    return sorted(set(planned_snapshot_steps(manager)) & set(manager.all_steps()))


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


def restore_latest_intact(manager: ocp.CheckpointManager, abstract_state):
    """``(step, state)`` of the newest checkpoint that reads back, laid out like
    ``abstract_state``; the manager must hold at least one checkpoint.

    A newer one that fails to read although it records the arrays ``abstract_state`` asks
    for is damaged: it is moved aside (``set_aside``), never deleted. A failure on a
    checkpoint of other arrays (another config) is raised as it is.
    """
    damaged = []
    with without_closed_loop_noise():
        while (step := manager.latest_step()) is not None:
            try:
                return step, restore(manager, step, abstract_state)
            except Exception as error:  # damage shows as JSON, tensorstore or OS errors alike
                if not records_layout(manager, step, abstract_state):
                    raise
                damaged.append(set_aside(manager, step, error))
    raise ValueError(f"no intact checkpoint left in {manager.directory}: every one was "
                     f"damaged (moved to {', '.join(map(str, damaged))})")


@contextlib.contextmanager
def without_closed_loop_noise():
    """Silences "Event loop is closed", which reads still in flight when a restore fails
    raise as they finish (on orbax's finished event loop): a traceback each, burying the
    one line that names the damage."""
    previous = sys.unraisablehook

    def hook(unraisable):
        error = unraisable.exc_value
        if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def records_layout(manager: ocp.CheckpointManager, step: int, abstract_state) -> bool:
    """Whether checkpoint ``step`` records the arrays (shapes, dtypes) of ``abstract_state``,
    or cannot tell (its metadata is unreadable too)."""
    try:
        recorded = manager.item_metadata(step)
    except Exception:  # unreadable metadata is damage, whatever its error
        return True
    return layout(recorded) == layout(abstract_state)


def layout(tree) -> list:
    """The shapes and dtypes of ``tree``'s arrays, sorted."""
    return sorted((tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(tree))


def set_aside(manager: ocp.CheckpointManager, step: int, error: Exception) -> epath.Path:
    """Moves the damaged checkpoint ``step`` to ``WORKDIR/checkpoints_damaged/`` and makes
    ``manager`` forget it; returns where it went. Several processes, or an object store
    (no rename), leave that to the user: the error says what to move."""
    source = manager.directory / str(step)  # orbax's default step names
    reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:400]}"
    if jax.process_count() > 1 or not is_local(source):
        raise ValueError(f"checkpoint {step} is damaged ({reason}); move {source} out of "
                         f"{manager.directory} and re-run to resume from the one before"
                         ) from error
    target = free_path(manager.directory.parent / "checkpoints_damaged" / str(step))
    target.parent.mkdir(exist_ok=True)
    source.rename(target)
    logging.warning("Checkpoint %d is damaged (%s); moved it to %s.", step, reason, target)
    manager.reload()  # the manager caches its step list
    return target


def free_path(path: epath.Path) -> epath.Path:
    """``path``, or ``path.1``, ``path.2``... the first that does not exist."""
    candidate, number = path, 0
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}.{number}")
    return candidate
