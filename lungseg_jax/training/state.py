"""The train state: model variables, Adam's state, and the epoch's running sums."""

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from lungseg_jax.model.unet import init_variables
from lungseg_jax.training import schedules
from lungseg_jax.training.mesh import replicated

ADAM_EPS = 1e-7  # Keras' Adam epsilon, as in the study


class TrainState(train_state.TrainState):
    batch_stats: Any
    # Running (loss, gradient norm) sums of the current epoch: checkpointed, so an
    # epoch's record is the same whether or not the run was interrupted inside it.
    epoch_sums: jax.Array


def rng_streams(seed: int):
    """Independent keys for (parameter init, epoch order, augmentation)."""
    return jax.random.split(jax.random.key(seed), 3)


def create_optimizer(config, total_steps: int):
    """Adam with the configured schedule: ``(optax transformation, learning_rate_fn)``."""
    learning_rate_fn = schedules.create_learning_rate_fn(config.schedule, config.learning_rate,
                                                         total_steps)
    return optax.adam(learning_rate_fn, eps=ADAM_EPS), learning_rate_fn


def create_train_state(config, model, tx, mesh: Mesh) -> TrainState:
    """Initialised train state, replicated over the mesh (init is jitted: fast compile)."""
    init_key = rng_streams(config.seed)[0]
    size, channels = config.data.image_size, config.data.channels

    def init():
        variables = init_variables(model, init_key, size, channels)
        return TrainState.create(apply_fn=model.apply, params=variables["params"],
                                 batch_stats=variables["batch_stats"], tx=tx,
                                 epoch_sums=jnp.zeros(2))

    return jax.jit(init, out_shardings=replicated(mesh))()


def abstract_train_state(config, model, tx, mesh: Mesh):
    """Shapes, dtypes and shardings of the train state, for restoring a checkpoint."""
    abstract = jax.eval_shape(lambda: create_train_state(config, model, tx, mesh))
    sharding = replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                        abstract)
