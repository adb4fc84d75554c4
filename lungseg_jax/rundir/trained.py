"""A run's trained model: its config, model and variables restored from its checkpoints;
for a cross-validation folder (``rundir.folds``), every fold's, as one fold ensemble."""

from typing import NamedTuple

import jax
import ml_collections
from etils import epath

from lungseg_jax.model.unet import UNet, create_model, init_variables
from lungseg_jax.rundir import checkpoints, folds, records


def member_name(fold: int, step: int) -> str:
    """A fold ensemble's name for fold ``fold``'s checkpoint at ``step``."""
    return f"fold{fold}_step{step}"


class Trained(NamedTuple):
    config: ml_collections.ConfigDict
    model: UNet
    variables: dict  # member -> {'params', 'batch_stats'}; a member is a step, or for a
    #                  fold ensemble 'fold<i>_step<step>'
    snapshot_steps: list  # members that are snapshots
    finals: list  # members that are final weights (one per fold)
    workdir: str
    folds: list  # a cross-validation's runs (each a Trained); [] for one run
    unfinished: str  # '' for a finished run, else what is missing ("step 40 of 96")

    @property
    def snapshots(self) -> list:
        """The snapshot members; the final ones if the run kept none."""
        return self.snapshot_steps or self.finals

    def last_snapshots(self, count: int) -> list:
        """The last ``count`` snapshot members (0: all); of a fold ensemble, each fold's last
        ``count``. ValueError naming the counts when a run has fewer."""
        if self.folds:
            return [member_name(fold, step) for fold, run in enumerate(self.folds)
                    for step in run.last_snapshots(count)]
        if not 0 <= count <= len(self.snapshots):
            raise ValueError(f"the last {count} snapshots: {self.workdir} has only "
                             f"{len(self.snapshots)} snapshots {self.snapshots} (0 means all)")
        return list(self.snapshots[-count:] if count else self.snapshots)

    @property
    def runs(self) -> list:
        """The runs whose validation sets together hold each validated slice once."""
        return self.folds or [self]


def abstract_variables(model: UNet, data_config, sharding) -> dict:
    """Shapes and dtypes of ``model``'s variables for ``config.data``'s inputs, placed by
    ``sharding``: what restoring them needs."""
    size, channels = data_config.image_size, data_config.channels
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0), size, channels))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        dict(shapes))


def restore_trained(workdir: epath.PathLike, steps=None) -> Trained:
    """The model variables of ``workdir``'s checkpoints at ``steps`` (default: the
    snapshots and the latest, final, checkpoint), on the first local device; for a
    cross-validation folder, the fold ensemble of every fold's (``steps`` not allowed)."""
    if folds.is_crossval(workdir):
        if steps is not None:
            raise ValueError(f"{workdir} is a cross-validation folder: its members are "
                             "every fold's snapshots and final weights")
        return restore_fold_ensemble(workdir)
    config = records.load_config(workdir)
    model = create_model(config.model)
    manager = checkpoints.create_manager(workdir, read_only=True)
    latest = manager.latest_step()
    if latest is None:
        raise FileNotFoundError(f"no checkpoints in {checkpoints.checkpoint_dir(workdir)}")
    snapshot_steps = checkpoints.saved_snapshot_steps(manager)
    planned = checkpoints.planned_snapshot_steps(manager)
    unfinished = f"step {latest} of {planned[-1]}" if planned and latest < planned[-1] else ""
    if steps is None:
        steps = sorted(set(snapshot_steps) | {latest})
    abstract = abstract_variables(model, config.data,
                                  jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    restored = {step: checkpoints.restore(manager, step, abstract, partial=True)
                for step in steps}
    manager.close()
    return Trained(config, model, restored, snapshot_steps, [latest], str(workdir), [],
                   unfinished)


def restore_fold_ensemble(cv_dir: epath.PathLike) -> Trained:
    """Every fold's run of a cross-validation folder, with their members renamed
    ``fold<i>_step<step>`` into one Trained (the fold ensemble); FileNotFoundError naming
    the first fold that has not finished training."""
    runs = []
    for fold in range(folds.load_record(cv_dir)["folds"]):
        workdir = folds.fold_workdir(cv_dir, fold)
        run = (restore_trained(workdir) if checkpoints.checkpoint_dir(workdir).exists()
               else None)
        if run is None or run.unfinished:
            raise FileNotFoundError(f"{workdir} has not finished training ("
                                    f"{run.unfinished if run else 'not started'}): re-run "
                                    "crossval on its folder to train it")
        runs.append(run)
    variables, snapshots, finals = {}, [], []
    for fold, run in enumerate(runs):
        variables.update((member_name(fold, s), v) for s, v in run.variables.items())
        snapshots += [member_name(fold, s) for s in run.snapshot_steps]
        finals += [member_name(fold, s) for s in run.finals]
    return Trained(records.load_config(cv_dir), runs[0].model, variables, snapshots, finals,
                   str(cv_dir), runs, "")
