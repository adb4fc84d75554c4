"""A run's trained model: its config, model and variables restored from its checkpoints."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from lungseg_jax.model.unet import UNet, create_model
from lungseg_jax.rundir import checkpoints, records


class Trained(NamedTuple):
    config: ml_collections.ConfigDict
    model: UNet
    variables: dict  # step -> {'params', 'batch_stats'}
    snapshot_steps: list
    final_step: int

    @property
    def snapshots(self) -> list:
        """The snapshot steps; the final step if the run kept none."""
        return self.snapshot_steps or [self.final_step]


def abstract_variables(model: UNet, data_config, sharding) -> dict:
    """Shapes and dtypes of ``model``'s variables for ``config.data``'s inputs, placed by
    ``sharding``: what restoring them needs."""
    size, channels = data_config.image_size, data_config.channels
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                               jnp.zeros((1, size, size, channels)), train=False))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        dict(shapes))


def restore_trained(workdir: epath.PathLike, steps=None) -> Trained:
    """The model variables of ``workdir``'s checkpoints at ``steps`` (default: the
    snapshots and the latest, final, checkpoint), on the first local device."""
    config = records.load_config(workdir)
    model = create_model(config.model)
    manager = checkpoints.create_manager(workdir, read_only=True)
    latest = manager.latest_step()
    if latest is None:
        raise FileNotFoundError(f"no checkpoints in {checkpoints.checkpoint_dir(workdir)}")
    snapshot_steps = checkpoints.saved_snapshot_steps(manager)
    if steps is None:
        steps = sorted(set(snapshot_steps) | {latest})
    abstract = abstract_variables(model, config.data,
                                  jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))
    restored = {step: checkpoints.restore(manager, step, abstract, partial=True)
                for step in steps}
    manager.close()
    return Trained(config, model, restored, snapshot_steps, latest)
