"""The training loop: ``train_and_evaluate`` reads top to bottom, in small functions.

* The host calls a jitted loop of up to ``config.steps_per_call`` steps at a time
  (``steps.make_train_steps``), cut short where it has work to do (evaluation,
  checkpoints): the same steps, fewer calls.
* Data parallelism is ``jit`` over a 1-D ``Mesh`` (``mesh``): the batch on ``P('data')``,
  the train state replicated on ``P()``; BatchNorm statistics are global over the batch,
  so any device count gives the same numbers.
* Everything random derives from ``config.seed`` and the step, so a checkpoint's step is
  all the state a resume needs besides the arrays.
"""

import dataclasses
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from lungseg_jax.core import progress
from lungseg_jax.data.preprocess import preprocess
from lungseg_jax.data.sources import train_val_slices
from lungseg_jax.model.unet import create_model
from lungseg_jax.rundir import checkpoints, lock, records, split_record
from lungseg_jax.training import schedules
from lungseg_jax.training.config_checks import check_config, check_mesh
from lungseg_jax.training.mesh import create_mesh, put_replicated
from lungseg_jax.training.preemption import Preempted, PreemptionGuard
from lungseg_jax.training.state import (abstract_train_state, create_optimizer,
                                        create_train_state)
from lungseg_jax.training.steps import (DeviceData, Measured, check_finite, evaluate_arrays,
                                        make_eval_step, make_train_steps, per_step, steps_in)


@dataclasses.dataclass(frozen=True)
class Plan:
    """A run's data and step counts, fixed before anything is written."""

    split: dict  # names and digests of the slices (``split_record.split_of``)
    train_images: np.ndarray
    train_masks: np.ndarray
    val_images: np.ndarray
    val_masks: np.ndarray
    steps_per_epoch: int
    total_steps: int
    snapshot_steps: list
    checkpoint_every: int

    def is_save_step(self, step: int) -> bool:
        return (step % self.checkpoint_every == 0 or step in self.snapshot_steps
                or step == self.total_steps)

    def steps_to_next_stop(self, step: int) -> int:
        """Steps from ``step`` to the next one after which the host has work: an epoch's
        end (evaluation), a checkpoint, a snapshot or the run's end."""
        later = [s - step for s in self.snapshot_steps if s > step]
        return min(self.steps_per_epoch - step % self.steps_per_epoch,
                   self.checkpoint_every - step % self.checkpoint_every,
                   self.total_steps - step, *later)


def plan_run(config) -> Plan:
    """Loads and preprocesses the data, and derives the step counts from it."""
    train, validation = train_val_slices(config.data)
    (train_images, train_masks), (val_images, val_masks) = (
        preprocess(slices, config.data) for slices in (train, validation))
    steps_per_epoch = len(train_images) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"config.batch_size={config.batch_size} exceeds the "
                         f"{len(train_images)} training images")
    total_steps = config.num_epochs * steps_per_epoch
    return Plan(split_record.split_of(train, validation), train_images, train_masks,
                val_images, val_masks,
                steps_per_epoch, total_steps,
                schedules.snapshot_steps(total_steps, config.schedule.num_cycles),
                config.checkpoint.every_steps or steps_per_epoch)


def restore_or_create_state(config, workdir, plan: Plan, mesh, manager, tx, is_chief: bool):
    """The newest intact checkpoint's state (the metrics past it dropped), or a fresh one."""
    model = create_model(config.model)
    if manager.latest_step() is None:
        return create_train_state(config, model, tx, mesh)
    step, state = checkpoints.restore_latest_intact(
        manager, abstract_train_state(config, model, tx, mesh))
    logging.info("Resumed from the checkpoint at step %d.", step)
    if is_chief:
        records.truncate_metrics(epath.Path(workdir) / "metrics.jsonl", step,
                                 first_step=plan.steps_per_epoch)
    return state


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None,
                       on_epoch_end=None, on_steps=None):
    """Trains (or resumes) the configured model in ``workdir``; returns the final state.

    Called on the chief if given: ``on_epoch_end(record)`` with each epoch's record, and
    ``on_steps(first_step, values)`` with each step's measurements (``{name: array}``, the
    steps after ``first_step``) at each epoch's end and on preemption.
    """
    check_config(config)
    mesh = create_mesh(devices)
    check_mesh(config, mesh.size)
    is_chief = jax.process_index() == 0
    plan = plan_run(config)  # validated and preprocessed before anything is written
    logging.info("%d training / %d validation images at %dx%d; %d steps (%d epochs x %d); "
                 "snapshots at steps %s; mesh %s", len(plan.train_images),
                 len(plan.val_images), config.data.image_size, config.data.image_size,
                 plan.total_steps, config.num_epochs, plan.steps_per_epoch, plan.snapshot_steps,
                 dict(mesh.shape))
    with lock.hold_for_run(workdir):  # one trainer per workdir, the whole run long
        return train_in_workdir(config, workdir, plan, mesh, is_chief,
                                (on_epoch_end, on_steps) if is_chief else (None, None))


def train_in_workdir(config, workdir, plan: Plan, mesh, is_chief: bool, callbacks: tuple):
    """Checks and records the config and the data split, then resumes or starts the run
    and trains it to the end (``train_and_evaluate`` holds the workdir's lock around it)."""
    records.prepare_workdir(workdir, config, write=is_chief)
    split_record.check_or_record(workdir, plan.split, write=is_chief,
                                 names_identify=config.data.source != "synthetic")
    tx, learning_rate_fn = create_optimizer(config, plan.total_steps)
    manager = checkpoints.create_manager(workdir, plan.snapshot_steps,
                                         config.checkpoint.keep_latest)
    try:  # also on errors: let a save in flight complete, it is the last good state
        state = restore_or_create_state(config, workdir, plan, mesh, manager, tx, is_chief)
        if int(state.step) >= plan.total_steps:
            logging.info("Training already finished (step %d of %d) in %s.", int(state.step),
                         plan.total_steps, workdir)
            return state
        state = run_steps(config, workdir, plan, mesh, manager, state, learning_rate_fn,
                          is_chief, callbacks)
    finally:
        manager.wait_until_finished()
        manager.close()
    logging.info("Training finished at step %d; checkpoints in %s.", plan.total_steps,
                 checkpoints.checkpoint_dir(workdir))
    return state


def run_steps(config, workdir, plan: Plan, mesh, manager, state, learning_rate_fn,
              is_chief: bool, callbacks: tuple):
    """The loop proper: calls of the train steps, each epoch's evaluation and record,
    checkpoints, and a clean stop on preemption (``callbacks``: see ``train_and_evaluate``)."""
    on_epoch_end, on_steps = callbacks
    train_data = put_replicated(DeviceData(plan.train_images, plan.train_masks), mesh)
    train_steps = make_train_steps(config, mesh, plan.steps_per_epoch, learning_rate_fn)
    eval_step = make_eval_step(config, mesh)
    metrics_path = epath.Path(workdir) / "metrics.jsonl"
    done = int(state.step)
    bar = progress.Progress(plan.total_steps, done, config.batch_size,
                            enabled=None if is_chief else False)
    history, epoch_start_time = [], time.monotonic()
    try:
        with PreemptionGuard() as preemption:
            while done < plan.total_steps:
                num_steps = min(config.steps_per_call, plan.steps_to_next_stop(done))
                state, measurements = train_steps(state, train_data, np.int32(num_steps))
                history.append(Measured(num_steps, measurements))
                done += num_steps
                if bar.due(done):
                    bar.draw(done, history[-1].last("loss"))
                at_epoch_end = done % plan.steps_per_epoch == 0
                should_save = plan.is_save_step(done)
                stop = preemption.reached(range(done - num_steps + 1, done + 1))
                if at_epoch_end or should_save or stop:
                    first, values = done - steps_in(history), per_step(history)
                    check_finite(values, first)
                    if (at_epoch_end or stop) and on_steps is not None:
                        on_steps(first, values)
                if at_epoch_end:
                    record = epoch_record(state, history, plan.steps_per_epoch,
                                          epoch_start_time, config)
                    record.update({f"val_{k}": v for k, v in evaluate_arrays(
                        eval_step, state, plan.val_images, plan.val_masks,
                        config.eval_batch_size, mesh).items()})
                    history, epoch_start_time = [], time.monotonic()
                    if is_chief:
                        records.append_metrics(metrics_path, record)
                        if on_epoch_end is not None:
                            on_epoch_end(record)
                        logging.info(format_record(record, config.num_epochs))
                if should_save or stop:
                    checkpoints.save(manager, state)
                if stop:
                    raise Preempted(f"stopped at step {done} on SIGTERM; checkpoint saved in "
                                    f"{checkpoints.checkpoint_dir(workdir)}; re-run to resume")
    finally:
        bar.close()
    return state


def epoch_record(state, history: list, steps_per_epoch: int, start_time: float,
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


def run_summary(workdir, wall_seconds: float, places: list) -> str:
    """The few lines the train command ends with: the best validation pooled IoU (and its
    epoch) and the final one, from ``WORKDIR/metrics.jsonl``; the command's wall time; the
    checkpoints' folder, then ``places``: (label, location) pairs such as TensorBoard's."""
    records_ = records.read_metrics(workdir)
    lines = [f"Run summary ({len(records_)} epochs recorded; wall time "
             f"{progress.format_seconds(wall_seconds)} for this command):"]
    if records_:
        best = max(records_, key=lambda r: r["val_pooled_iou"])  # the first of equals
        for label, record in (("best", best), ("final", records_[-1])):
            lines.append(f"  {label + ' validation pooled IoU':<28}{record['val_pooled_iou']:.4f}"
                         f" (epoch {record['epoch']}, step {record['step']})")
    for label, location in [("checkpoints", checkpoints.checkpoint_dir(workdir)), *places]:
        lines.append(f"  {label:<28}{location}")
    return "\n".join(lines)


def format_record(record: dict, num_epochs: int) -> str:
    return (f"epoch {record['epoch']}/{num_epochs} step {record['step']}: "
            f"train_loss {record['train_loss']:.4f}  val_loss {record['val_loss']:.4f}  "
            f"val_iou {record['val_pooled_iou']:.4f}  val_dice {record['val_mean_dice']:.4f}  "
            f"lr {record['learning_rate']:.2e}  {record['images_per_sec']:.1f} img/s")
