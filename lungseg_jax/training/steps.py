"""The jitted steps: a loop of train steps that draw and augment their own batches on the
device, and the evaluation step.

The whole (small) training set lives on the device, replicated over the mesh. Each train
step draws its batch from a per-epoch permutation that is a pure function of (seed,
epoch), augments it, and shards it over the ``data`` axis, so no host pipeline stands
between steps and a resumed run sees the same batches.
"""

from typing import NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from lungseg_jax.core import metrics
from lungseg_jax.core.batches import padded_batches
from lungseg_jax.data import augment
from lungseg_jax.model.unet import create_model
from lungseg_jax.ops import policy
from lungseg_jax.training.losses import LOSSES
from lungseg_jax.training.mesh import batch_sharded, put_replicated, replicated
from lungseg_jax.training.state import TrainState, rng_streams

MEASUREMENTS = ("loss", "grad_norm", "learning_rate")  # a train step's, per step


@flax.struct.dataclass
class DeviceData:
    """Preprocessed images (N, H, W, C) and masks (N, H, W, 1), resident on the device."""

    images: jax.Array
    masks: jax.Array


def draw_batch(train_data: DeviceData, step, *, seed: int, batch_size: int,
               steps_per_epoch: int):
    """The batch of ``step``: a slice of the permutation of epoch ``step // steps_per_epoch``."""
    order_key = rng_streams(seed)[1]
    num_images = train_data.images.shape[0]
    epoch, index = step // steps_per_epoch, step % steps_per_epoch
    order = jax.random.permutation(jax.random.fold_in(order_key, epoch), num_images)
    picked = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
    return train_data.images[picked], train_data.masks[picked]


def augmented_batch(train_data: DeviceData, step, config, mesh: Mesh, steps_per_epoch: int,
                    aug_key):
    """The (images, masks) a train step trains on at ``step``: drawn (``draw_batch``),
    sharded over the mesh's ``data`` axis, and augmented (``aug_key``: the augmentation's
    stream of ``rng_streams``, made outside the traced step so that it is a constant)."""
    images, masks = draw_batch(train_data, step, seed=config.seed, batch_size=config.batch_size,
                               steps_per_epoch=steps_per_epoch)
    images = jax.lax.with_sharding_constraint(images, batch_sharded(mesh))
    masks = jax.lax.with_sharding_constraint(masks, batch_sharded(mesh))
    return augment.augment(jax.random.fold_in(aug_key, step), images, masks, config.augment,
                           config.data.soft_masks)


def train_step_fn(config, mesh: Mesh, steps_per_epoch: int, learning_rate_fn):
    """One train step ``(state, train_data) -> (state, measurements)``, not jitted."""
    loss_fn = LOSSES[config.loss]
    aug_key = rng_streams(config.seed)[2]

    def train_step(state: TrainState, train_data: DeviceData):
        images, masks = augmented_batch(train_data, state.step, config, mesh, steps_per_epoch,
                                        aug_key)

        def compute_loss(params):
            logits, updates = state.apply_fn(
                {"params": params, "batch_stats": state.batch_stats}, images, train=True,
                mutable=["batch_stats"])
            return loss_fn(logits, masks), updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
        grad_norm = optax.tree.norm(grads)
        first_of_epoch = state.step % steps_per_epoch == 0
        epoch_sums = jnp.where(first_of_epoch, 0.0, state.epoch_sums) + jnp.stack([loss, grad_norm])
        new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats,
                                          epoch_sums=epoch_sums)
        learning_rate = learning_rate_fn(state.step)
        measurements = dict(zip(MEASUREMENTS, (loss, grad_norm, learning_rate)))
        return new_state, measurements

    return train_step


def compiler_options(config, mesh: Mesh) -> dict | None:
    """The fast op set's XLA options for the train step (``policy``); none for the
    reference set, which is meant to be plain."""
    if config.model.ops != "fast":
        return None
    pixels_per_device = config.data.image_size ** 2 * config.batch_size // mesh.size
    return policy.train_step_compiler_options(mesh.devices.flat[0].platform, pixels_per_device,
                                              create_model(config.model).has_parallel_branches)


def make_train_steps(config, mesh: Mesh, steps_per_epoch: int, learning_rate_fn):
    """The jitted ``(state, train_data, num_steps) -> (state, measurements)``: ``num_steps``
    train steps (1 to ``config.steps_per_call``, no more: the measurements have no room)
    in one call, a loop on the device.

    Each measurement (``MEASUREMENTS``) is an array of ``config.steps_per_call`` values,
    one per step, of which the first ``num_steps`` are filled. The state is donated. One
    compiled program serves every ``num_steps``: the loop's trip count is an argument.
    Several steps per call are faster on the CPU (docs/performance.md#several-steps-per-call).
    """
    train_step = train_step_fn(config, mesh, steps_per_epoch, learning_rate_fn)
    capacity = config.steps_per_call

    def train_steps(state: TrainState, train_data: DeviceData, num_steps):
        def one_step(i, carry):
            state, measured = carry
            state, measurements = train_step(state, train_data)
            return state, {k: measured[k].at[i].set(v) for k, v in measurements.items()}

        measured = {k: jnp.zeros(capacity, jnp.float32) for k in MEASUREMENTS}
        return jax.lax.fori_loop(0, num_steps, one_step, (state, measured))

    return jax.jit(train_steps, donate_argnums=0, compiler_options=compiler_options(config, mesh),
                   out_shardings=(replicated(mesh), replicated(mesh)))


def make_eval_step(config, mesh: Mesh):
    """Jitted ``(state, images, masks) -> (per-image loss, per-image pixel counts)``."""
    loss_fn = LOSSES[config.loss]

    def eval_step(state: TrainState, images, masks):
        images = jax.lax.with_sharding_constraint(images, batch_sharded(mesh))
        logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                images, train=False)
        losses = jax.vmap(lambda lo, m: loss_fn(lo[None], m[None]))(logits, masks)
        # Truth as the binary targets are made (lung fraction >= 0.5), soft targets too.
        return losses, metrics.pixel_counts(logits[..., 0] > 0, masks[..., 0] >= 0.5)

    return jax.jit(eval_step, out_shardings=(replicated(mesh), replicated(mesh)))


def evaluate_arrays(eval_step, state, images: np.ndarray, masks: np.ndarray, batch_size: int,
                    mesh: Mesh) -> dict:
    """Loss, pooled IoU, mean IoU and mean Dice of ``state`` on a preprocessed set."""
    outputs = [eval_step(state, *(put_replicated(a, mesh) for a in batch))
               for batch in padded_batches(batch_size, images, masks)]
    losses, counts = (np.concatenate(parts)[:len(images)]
                      for parts in zip(*jax.device_get(outputs)))
    return {"loss": float(losses.mean()), **metrics.summarize(counts)}


class Measured(NamedTuple):
    """One call of the train steps: how many steps it ran, and their measurements."""

    num_steps: int
    values: dict  # name -> array of config.steps_per_call, the first num_steps filled

    def last(self, name: str) -> float:
        """The call's last step's value of measurement ``name``, on the host."""
        return float(jax.device_get(self.values[name])[self.num_steps - 1])


def steps_in(history: list) -> int:
    """Train steps run by the ``Measured`` calls of ``history``."""
    return sum(m.num_steps for m in history)


def per_step(history: list) -> dict:
    """``{name: array}``: each measurement of the ``Measured`` calls of ``history``, one value
    per step in order, on the host."""
    calls = jax.device_get(history)
    return {name: np.concatenate([np.asarray(values[name])[:num_steps]
                                  for num_steps, values in calls])
            for name in calls[0].values}


def check_finite(values: dict, first_step: int) -> None:
    """Raises FloatingPointError naming the first step whose loss or gradient is not finite
    (``values``: ``per_step`` measurements, the first of the step after ``first_step``)."""
    finite = np.isfinite(values["loss"]) & np.isfinite(values["grad_norm"])
    if not finite.all():
        i = int(np.argmin(finite))
        raise FloatingPointError(
            f"non-finite loss ({values['loss'][i]}) or gradient norm ({values['grad_norm'][i]})"
            f" at step {first_step + i + 1}; the last finite checkpoint is kept as the latest")
