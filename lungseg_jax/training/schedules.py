"""Learning-rate schedules (optax) and the steps at which snapshots are taken.

Training is split into ``schedule.num_cycles`` equal cycles of ``cycle_length``
steps; a snapshot is kept at the end of each. With ``schedule.name='snapshot'``
the LR is cosine-annealed from ``learning_rate`` to 0 within every cycle and
restarted at the next (snapshot ensembles, Huang et al. 2017), updated every step.
"""

import math

import optax

SCHEDULES = ("constant", "cosine", "snapshot")


def cycle_length(total_steps: int, num_cycles: int) -> int:
    return math.ceil(total_steps / num_cycles)


def snapshot_steps(total_steps: int, num_cycles: int) -> list:
    """The step after which each cycle ends: the snapshot steps (the last is the final step)."""
    length = cycle_length(total_steps, num_cycles)
    return sorted({min(k * length, total_steps) for k in range(1, num_cycles + 1)})


def create_learning_rate_fn(schedule_config, learning_rate: float, total_steps: int):
    """optax schedule named by ``schedule_config.name``."""
    name = schedule_config.name
    if name == "constant":
        return optax.constant_schedule(learning_rate)
    if name == "cosine":
        return optax.cosine_decay_schedule(learning_rate, total_steps)
    if name == "snapshot":
        length = cycle_length(total_steps, schedule_config.num_cycles)
        cycles = [optax.cosine_decay_schedule(learning_rate, length)] * schedule_config.num_cycles
        return optax.join_schedules(cycles, [k * length for k in
                                             range(1, schedule_config.num_cycles)])
    raise ValueError(f"unknown config.schedule.name {name!r}; expected one of {SCHEDULES}")
