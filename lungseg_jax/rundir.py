"""A training run's directory: its recorded config, its metrics file, atomic writes.

    WORKDIR/config.json      the config the run was started with
    WORKDIR/metrics.jsonl    one JSON record per epoch
    WORKDIR/checkpoints/     orbax checkpoints (see checkpointing.py)
"""

import json
import os

import ml_collections


def config_to_dict(config) -> dict:
    return json.loads(config.to_json_best_effort())


# Config sections that do not change what is trained: a resume may change them.
RESUMABLE_SECTIONS = ("tracking",)


def prepare_workdir(workdir: str, config, write: bool) -> None:
    """Refuses a workdir of a different run (every process checks, so none waits on a
    refused chief); with ``write``, creates the workdir and records the config."""
    path = os.path.join(workdir, "config.json")
    new = config_to_dict(config)
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        diff = diff_configs(*({k: v for k, v in c.items() if k not in RESUMABLE_SECTIONS}
                              for c in (old, new)))
        if diff:
            raise ValueError(f"{workdir!r} holds a run with a different config ({diff}); "
                             "re-run with its original config to resume, or use a new --workdir "
                             "(or delete this one) to start fresh")
    if write:
        os.makedirs(workdir, exist_ok=True)
        write_atomic(path, json.dumps(new, indent=2, sort_keys=True) + "\n")


def diff_configs(old: dict, new: dict, prefix: str = "") -> str:
    keys = sorted(set(old) | set(new))
    parts = []
    for k in keys:
        a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            sub = diff_configs(a, b, f"{prefix}{k}.")
            parts += [sub] if sub else []
        elif a != b:
            parts.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return "; ".join(parts)


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a lungseg_jax workdir?")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def truncate_metrics(path: str, last_step: int) -> None:
    """Drops records past ``last_step`` (written after the checkpoint a resume starts from)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= last_step]
    if len(kept) < len(lines):
        write_atomic(path, "".join(kept))


def append_metrics(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
