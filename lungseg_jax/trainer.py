"""The training loop: small functions, and ``train_and_evaluate`` that reads top to bottom.

Design:
* The whole (small) training set lives on the device, replicated over the mesh.
  Each train step draws its batch from a per-epoch permutation that is a pure
  function of (seed, epoch), augments it, and shards it over the ``data`` axis,
  so no host pipeline stands between steps and a resumed run sees the same batches.
* Data parallelism is ``jit`` over a 1-D ``Mesh``: the batch on ``P('data')``,
  the train state replicated on ``P()``; BatchNorm statistics are global over
  the batch, so any device count gives the same numbers.
* The host calls a jitted loop of up to ``config.steps_per_call`` steps at a time, cut
  short where it has work to do (evaluation, checkpoints): the same steps, fewer calls.
* Everything random derives from ``config.seed`` and the step, so a checkpoint's
  step is all the state a resume needs besides the arrays.
"""

import signal
import threading
import time
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from orbax.checkpoint import multihost as ocp_multihost

from lungseg_jax import (augment, checkpointing, data, metrics, models, progress, rundir,
                         schedules)
from lungseg_jax.validation import check_config, check_mesh

ADAM_EPS = 1e-7  # Keras' Adam epsilon, as in the study
MEASUREMENTS = ("loss", "grad_norm", "learning_rate")  # a train step's, per step


class TrainState(train_state.TrainState):
    batch_stats: Any
    # Running (loss, gradient norm) sums of the current epoch: checkpointed, so an
    # epoch's record is the same whether or not the run was interrupted inside it.
    epoch_sums: jax.Array


class Preempted(Exception):
    """Training stopped on SIGTERM (or a multi-host preemption notice) after a checkpoint."""

    EXIT_STATUS = 143  # 128 + SIGTERM, what schedulers expect of a terminated job


@flax.struct.dataclass
class DeviceData:
    """Preprocessed images (N, H, W, C) and masks (N, H, W, 1), resident on the device."""

    images: jax.Array
    masks: jax.Array


# ----------------------------------------------------------------------------- set-up

# XLA:CPU's memory-optimising instruction scheduler, for train steps of at least
# 256x256x4 pixels per device: at 512x512, batch 4, the step's scratch space shrank
# from 2521 to 1340 MB (conv U-Net) and from 3847 to 3435 MB (inception U-Net), at the
# same speed within noise at 256; at 128 it costs 4-8% (inception 0.921x, conv U-Net
# 0.964x, in-process A/Bs, Zen 4, BENCHMARKS.md eighth session).
CPU_MEMORY_SCHEDULER = {"xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
MEMORY_SCHEDULER_MIN_PIXELS = 256 * 256 * 4
# LLVM's optimisation level for the kernels XLA:CPU generates (its fusions), 1 instead
# of XLA's default: the inception U-Net's cold compile at 128 took 3-6 s (15-25%) less,
# the step as fast within noise (its time goes to the convolution and matrix-product
# libraries, BENCHMARKS.md).
CPU_CODEGEN = {"xla_backend_optimization_level": 1}
# XLA:CPU's libraries for the train step's library calls: this jaxlib's default list
# (matrix products, convolutions and reductions to YNNPACK, from a dump of its compile
# options) without the convolutions, which then run in XLA's Eigen kernels. YNNPACK ran
# most of the conv U-Net's convolutions on one core of two (32->64 channels at 128x128,
# batch 4: 23.9 ms, one core or two; Eigen 13.4 ms), and XLA waits for each before the
# next; the conv U-Net's step ran 1.07-1.10x (256) and 1.00-1.03x (128) faster. Not for
# models whose convolutions run side by side (``models.has_parallel_branches``): the
# inception U-Net's step ran 0.96x (256) and 0.99x (128) with it (in-process A/Bs, Zen 4,
# BENCHMARKS.md tenth session).
CPU_EIGEN_CONVOLUTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                          "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def compiler_options(config, mesh: Mesh) -> dict | None:
    """XLA options for the train step on the CPU: ``CPU_CODEGEN``, ``CPU_MEMORY_SCHEDULER``
    for large batches (pixels per device) and ``CPU_EIGEN_CONVOLUTIONS`` for models
    without parallel branches; XLA's defaults on other platforms."""
    if mesh.devices.flat[0].platform != "cpu":
        return None
    options = dict(CPU_CODEGEN)
    pixels = config.data.image_size ** 2 * config.batch_size // mesh.size
    if pixels >= MEMORY_SCHEDULER_MIN_PIXELS:
        options.update(CPU_MEMORY_SCHEDULER)
    if not models.has_parallel_branches(config.model):
        options.update(CPU_EIGEN_CONVOLUTIONS)
    return options


def create_mesh(devices=None) -> Mesh:
    """A 1-D data-parallel mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def rng_streams(seed: int):
    """Independent keys for (parameter init, epoch order, augmentation)."""
    return jax.random.split(jax.random.key(seed), 3)


def create_optimizer(config, total_steps: int):
    learning_rate_fn = schedules.create_learning_rate_fn(config.schedule, config.learning_rate,
                                                         total_steps)
    return optax.adam(learning_rate_fn, eps=ADAM_EPS), learning_rate_fn


def create_train_state(config, model, tx, mesh: Mesh) -> TrainState:
    """Initialised train state, replicated over the mesh (init is jitted: fast compile)."""
    init_key = rng_streams(config.seed)[0]
    size, channels = config.data.image_size, config.data.channels

    def init():
        variables = model.init(init_key, jnp.zeros((1, size, size, channels)), train=False)
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


def put_replicated(array, mesh: Mesh) -> jax.Array:
    return jax.device_put(array, replicated(mesh))


# ----------------------------------------------------------------------------- steps


def draw_batch(train_data: DeviceData, step, *, seed: int, batch_size: int,
               steps_per_epoch: int):
    """The batch of ``step``: a slice of the permutation of epoch ``step // steps_per_epoch``."""
    order_key = rng_streams(seed)[1]
    num_images = train_data.images.shape[0]
    epoch, index = step // steps_per_epoch, step % steps_per_epoch
    order = jax.random.permutation(jax.random.fold_in(order_key, epoch), num_images)
    picked = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
    return train_data.images[picked], train_data.masks[picked]


def train_step_fn(config, mesh: Mesh, steps_per_epoch: int, learning_rate_fn):
    """One train step ``(state, train_data) -> (state, measurements)``, not jitted.

    Draws and augments its own batch (see ``draw_batch``).
    """
    loss_fn = metrics.LOSSES[config.loss]
    aug_key = rng_streams(config.seed)[2]

    def train_step(state: TrainState, train_data: DeviceData):
        images, masks = draw_batch(train_data, state.step, seed=config.seed,
                                   batch_size=config.batch_size, steps_per_epoch=steps_per_epoch)
        images = jax.lax.with_sharding_constraint(images, batch_sharded(mesh))
        masks = jax.lax.with_sharding_constraint(masks, batch_sharded(mesh))
        images, masks = augment.augment(jax.random.fold_in(aug_key, state.step), images, masks,
                                        config.augment)

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


def make_train_steps(config, mesh: Mesh, steps_per_epoch: int, learning_rate_fn):
    """The jitted ``(state, train_data, num_steps) -> (state, measurements)``: ``num_steps``
    train steps (1 to ``config.steps_per_call``, no more: the measurements have no room)
    in one call, a loop on the device.

    Each measurement (``MEASUREMENTS``) is an array of ``config.steps_per_call`` values,
    one per step, of which the first ``num_steps`` are filled. The state is donated. One
    compiled program serves every ``num_steps``: the loop's trip count is an argument. On
    the CPU several steps per call are faster than one (XLA maps a call's scratch space
    afresh, so each call's first touch of it faults in zeroed pages; BENCHMARKS.md).
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


def steps_to_next_stop(step: int, total_steps: int, steps_per_epoch: int,
                       checkpoint_every: int, snapshot_steps) -> int:
    """Steps from ``step`` to the next one after which the host has work: an epoch's end
    (evaluation), a checkpoint, a snapshot or the run's end."""
    later = [s for s in snapshot_steps if s > step]
    return min(steps_per_epoch - step % steps_per_epoch, checkpoint_every - step % checkpoint_every,
               total_steps - step, *(s - step for s in later))


def make_eval_step(config, mesh: Mesh):
    """Jitted ``(state, images, masks) -> (per-image loss, per-image pixel counts)``."""
    loss_fn = metrics.LOSSES[config.loss]

    def eval_step(state: TrainState, images, masks):
        images = jax.lax.with_sharding_constraint(images, batch_sharded(mesh))
        logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                                images, train=False)
        losses = jax.vmap(lambda lo, m: loss_fn(lo[None], m[None]))(logits, masks)
        return losses, metrics.pixel_counts(logits[..., 0] > 0, masks[..., 0] > 0.5)

    return jax.jit(eval_step, out_shardings=(replicated(mesh), replicated(mesh)))


def evaluate_arrays(eval_step, state, images: np.ndarray, masks: np.ndarray, batch_size: int,
                    mesh: Mesh) -> dict:
    """Loss, pooled IoU, mean IoU and mean Dice of ``state`` on a preprocessed set."""
    n = len(images)
    pad = -n % batch_size
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    masks = np.concatenate([masks, np.zeros((pad, *masks.shape[1:]), masks.dtype)])
    losses, counts = [], []
    for start in range(0, n + pad, batch_size):
        batch = [put_replicated(a[start:start + batch_size], mesh) for a in (images, masks)]
        loss, count = eval_step(state, *batch)
        losses.append(loss)
        counts.append(count)
    losses, counts = jax.device_get((losses, counts))
    losses, counts = np.concatenate(losses)[:n], np.concatenate(counts)[:n]
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


def check_finite(history: list, first_step: int) -> None:
    """Raises FloatingPointError naming the first step whose loss or gradient is not finite
    (``history``: ``Measured`` calls in order, the first starting after ``first_step``)."""
    step = first_step
    for num_steps, values in jax.device_get(history):
        for loss, grad_norm in zip(values["loss"][:num_steps], values["grad_norm"][:num_steps]):
            step += 1
            if not (np.isfinite(loss) and np.isfinite(grad_norm)):
                raise FloatingPointError(
                    f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {step}; "
                    f"the last finite checkpoint is kept as the latest")


# ----------------------------------------------------------------------------- main loop


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None,
                       on_epoch_end=None):
    """Trains (or resumes) the configured model in ``workdir``; returns the final state.

    ``on_epoch_end(record)``, if given, is called on the chief with each epoch's record.
    """
    check_config(config)
    mesh = create_mesh(devices)
    check_mesh(config, mesh.size)
    is_chief = jax.process_index() == 0

    # Input: validated and preprocessed before anything is written to the workdir.
    train_images, train_masks, val_images, val_masks = data.load_train_val(config.data)
    steps_per_epoch = len(train_images) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"config.batch_size={config.batch_size} exceeds the "
                         f"{len(train_images)} training images")
    total_steps = config.num_epochs * steps_per_epoch
    snapshot_steps = schedules.snapshot_steps(total_steps, config.schedule.num_cycles)
    checkpoint_every = config.checkpoint.every_steps or steps_per_epoch
    logging.info("%d training / %d validation images at %dx%d; %d steps (%d epochs x %d); "
                 "snapshots at steps %s; mesh %s", len(train_images), len(val_images),
                 config.data.image_size, config.data.image_size, total_steps, config.num_epochs,
                 steps_per_epoch, snapshot_steps, dict(mesh.shape))
    rundir.prepare_workdir(workdir, config, write=is_chief)
    metrics_path = epath.Path(workdir) / "metrics.jsonl"

    # Model, optimizer, state: restored from the latest checkpoint when there is one.
    model = models.create_model(config.model)
    tx, learning_rate_fn = create_optimizer(config, total_steps)
    manager = checkpointing.create_manager(workdir, snapshot_steps,
                                           config.checkpoint.keep_latest)
    latest = manager.latest_step()
    if latest is None:
        state = create_train_state(config, model, tx, mesh)
    else:
        state = checkpointing.restore(manager, latest,
                                      abstract_train_state(config, model, tx, mesh))
        logging.info("Resumed from the checkpoint at step %d.", latest)
        if is_chief:
            rundir.truncate_metrics(metrics_path, latest)
    start = int(state.step)
    if start >= total_steps:
        logging.info("Training already finished (step %d of %d) in %s.", start, total_steps,
                     workdir)
        manager.close()
        return state

    # Data on the device; compiled steps.
    train_data = put_replicated(DeviceData(train_images, train_masks), mesh)
    train_steps = make_train_steps(config, mesh, steps_per_epoch, learning_rate_fn)
    eval_step = make_eval_step(config, mesh)

    bar = progress.Progress(total_steps, start, config.batch_size, enabled=None if is_chief
                            else False)
    history, epoch_start_time = [], time.monotonic()
    try:
        with PreemptionGuard() as preemption:
            done = start
            while done < total_steps:
                num_steps = min(config.steps_per_call, steps_to_next_stop(
                    done, total_steps, steps_per_epoch, checkpoint_every, snapshot_steps))
                state, measurements = train_steps(state, train_data, np.int32(num_steps))
                history.append(Measured(num_steps, measurements))
                done += num_steps
                if bar.due():
                    bar.draw(done, history[-1].last("loss"))
                at_epoch_end = done % steps_per_epoch == 0
                should_save = (done % checkpoint_every == 0 or done in snapshot_steps
                               or done == total_steps)
                stop = preemption.reached(range(done - num_steps + 1, done + 1))
                if at_epoch_end or should_save or stop:
                    check_finite(history, first_step=done - steps_in(history))
                if at_epoch_end:
                    record = epoch_record(state, history, steps_per_epoch, epoch_start_time,
                                          config)
                    record.update({f"val_{k}": v for k, v in evaluate_arrays(
                        eval_step, state, val_images, val_masks, config.eval_batch_size,
                        mesh).items()})
                    history, epoch_start_time = [], time.monotonic()
                    if is_chief:
                        rundir.append_metrics(metrics_path, record)
                        if on_epoch_end is not None:
                            on_epoch_end(record)
                        logging.info(format_record(record, config.num_epochs))
                if should_save or stop:
                    checkpointing.save(manager, state)
                if stop:
                    raise Preempted(f"stopped at step {done} on SIGTERM; checkpoint saved in "
                                    f"{checkpointing.checkpoint_dir(workdir)}; re-run to resume")
    finally:  # also on errors: let a save in flight complete, it is the last good state
        bar.close()
        manager.wait_until_finished()
        manager.close()
    logging.info("Training finished at step %d; checkpoints in %s.", total_steps,
                 checkpointing.checkpoint_dir(workdir))
    return state


def epoch_record(state: TrainState, history: list, steps_per_epoch: int, start_time: float,
                 config) -> dict:
    """The epoch's metrics; the means come from the state's (checkpointed) epoch sums."""
    step = int(state.step)
    loss_sum, grad_norm_sum = jax.device_get(state.epoch_sums)
    seconds = time.monotonic() - start_time
    return {"step": step, "epoch": step // steps_per_epoch,
            "train_loss": float(loss_sum / steps_per_epoch),
            "grad_norm": float(grad_norm_sum / steps_per_epoch),
            "learning_rate": history[-1].last("learning_rate"),
            "images_per_sec": steps_in(history) * config.batch_size / seconds,
            "epoch_seconds": seconds}


def format_record(record: dict, num_epochs: int) -> str:
    return (f"epoch {record['epoch']}/{num_epochs} step {record['step']}: "
            f"train_loss {record['train_loss']:.4f}  val_loss {record['val_loss']:.4f}  "
            f"val_iou {record['val_pooled_iou']:.4f}  val_dice {record['val_mean_dice']:.4f}  "
            f"lr {record['learning_rate']:.2e}  {record['images_per_sec']:.1f} img/s")


class Restored(NamedTuple):
    config: ml_collections.ConfigDict
    model: models.UNet
    variables: dict  # step -> {'params', 'batch_stats'}
    snapshot_steps: list
    final_step: int


def restore_variables(workdir: str, steps=None) -> Restored:
    """Model variables of a workdir's checkpoints, for evaluation and export.

    ``steps`` defaults to the snapshots and the latest (final) checkpoint.
    Variables live on the first local device.
    """
    config = rundir.load_config(workdir)
    model = models.create_model(config.model)
    mesh = create_mesh(jax.local_devices()[:1])
    manager = checkpointing.create_manager(workdir, read_only=True)
    latest = manager.latest_step()
    if latest is None:
        raise FileNotFoundError(f"no checkpoints in {checkpointing.checkpoint_dir(workdir)}")
    snapshot_steps = checkpointing.saved_snapshot_steps(manager)
    if steps is None:
        steps = sorted(set(snapshot_steps) | {latest})
    tx, _ = create_optimizer(config, total_steps=1)
    abstract = abstract_train_state(config, model, tx, mesh)
    abstract_variables = {"params": abstract.params, "batch_stats": abstract.batch_stats}
    restored = {step: checkpointing.restore(manager, step, abstract_variables, partial=True)
                for step in steps}
    manager.close()
    return Restored(config, model, restored, snapshot_steps, latest)

