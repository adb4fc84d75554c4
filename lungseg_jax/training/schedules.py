"""Learning-rate schedules (optax) and the steps at which snapshots are taken.

Training is split into ``schedule.num_cycles`` cycles of exactly equal length; a snapshot
is kept at the end of each. With ``schedule.name='snapshot'`` the LR is cosine-annealed
from ``learning_rate`` to 0 within every cycle and restarted at the next (snapshot
ensembles, Huang et al. 2017), updated every step.
"""

import optax

SCHEDULES = ("constant", "cosine", "snapshot")


def cycle_length(total_steps: int, num_cycles: int) -> int:
    """Steps per cycle; ValueError, naming cycle counts that work, unless ``num_cycles``
    divides ``total_steps`` (a shorter last cycle would end at a high learning rate, or
    lose its snapshot)."""
    if num_cycles > total_steps:
        raise ValueError(f"config.schedule.num_cycles={num_cycles} exceeds the run's "
                         f"{total_steps} train steps")
    if total_steps % num_cycles:
        works = [m for m in range(1, total_steps + 1) if total_steps % m == 0]
        nearest = sorted(works, key=lambda m: (abs(m - num_cycles), m))[:3]
        raise ValueError(f"config.schedule.num_cycles={num_cycles} does not divide the run's "
                         f"{total_steps} train steps into equal cycles; counts that do: "
                         f"{', '.join(map(str, sorted(nearest)))} (or change num_epochs)")
    return total_steps // num_cycles


def snapshot_steps(total_steps: int, num_cycles: int) -> list:
    """The step after which each cycle ends: the snapshot steps (the last is the final step)."""
    length = cycle_length(total_steps, num_cycles)
    return [k * length for k in range(1, num_cycles + 1)]


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
