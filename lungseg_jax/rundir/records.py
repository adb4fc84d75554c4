"""A run's records: the config it was started with and its per-epoch metrics."""

import copy
import json
import os

import ml_collections
from absl import logging
from etils import epath

from lungseg_jax.core.files import is_local, write_atomic


def config_to_dict(config) -> dict:
    return json.loads(config.to_json_best_effort())


# Config fields that do not change what is trained (``model.ops``: float rounding only):
# a resume may change them (a workdir written before one of them existed resumes too).
RESUMABLE_KEYS = ("tracking", "steps_per_call", "model.ops", "data.sanity_checks")
# Fields added after workdirs were first written, with what a run recorded before them did
# (``load_config`` fills them in, so the code reads every field directly).
ADDED_FIELDS = {"model.ops": "fast", "data.errata": "none", "data.sanity_checks": True,
                "data.soft_masks": False, "data.cv.folds": 0,
                "data.cv.fold": 0, "data.cv.group_pattern": r"^(ID_\d+)"}


def with_added_fields(tree: dict) -> dict:
    """``tree`` (a config as a dict) with each ``ADDED_FIELDS`` field it lacks set to what a
    run did before the field existed."""
    tree = copy.deepcopy(tree)
    for key, value in ADDED_FIELDS.items():
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node.setdefault(leaf, value)
    return tree


def without_resumable(tree: dict) -> dict:
    """``tree`` (a config as a dict) without the ``RESUMABLE_KEYS`` fields."""
    tree = copy.deepcopy(tree)
    for key in RESUMABLE_KEYS:
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.get(parent, {})
        node.pop(leaf, None)
    return tree


def prepare_workdir(workdir: epath.PathLike, config, write: bool) -> None:
    """Refuses a workdir of a different run (every process checks, so none waits on a
    refused chief); with ``write``, creates the workdir and records the config."""
    require_folder(workdir)
    path = epath.Path(workdir) / "config.json"
    new = config_to_dict(config)
    if path.exists():
        old = json.loads(path.read_text())
        diff = diff_configs(*(without_resumable(with_added_fields(c)) for c in (old, new)))
        if diff:
            raise ValueError(f"{workdir!r} holds a run with a different config ({diff}); "
                             "re-run with its original config to resume, or use a new --workdir "
                             "(or delete this one) to start fresh")
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(new, indent=2, sort_keys=True) + "\n")


def require_folder(workdir: epath.PathLike) -> None:
    """Refuses a workdir path that is an existing file, in one line (not mkdir's errno 17)."""
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--workdir {workdir} is a file, not a folder")


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


def load_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (``ADDED_FIELDS`` it lacks filled in)."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a lungseg_jax workdir?")
    return ml_collections.ConfigDict(with_added_fields(json.loads(path.read_text())))


def truncate_metrics(path: epath.PathLike, last_step: int, first_step: int = 1) -> None:
    """Keeps the records up to ``last_step`` (the checkpoint a resume starts from), one per
    step in step order, so a resumed run neither repeats nor reorders them. A missing file
    is a warning unless ``last_step`` is before ``first_step``, the step of a run's first
    record."""
    path = epath.Path(path)
    if not path.exists():
        if last_step >= first_step:
            logging.warning("%s is missing: the metrics history before step %d is gone; the "
                            "run resumes from its checkpoint and records from there.", path,
                            last_step)
        return
    text = path.read_text()
    kept = "".join(json.dumps(record) + "\n"
                   for step, record in parse_metrics(path, text).items() if step <= last_step)
    if kept != text:
        write_atomic(path, kept)


def parse_metrics(path: epath.PathLike, text: str) -> dict:
    """The records of ``text`` (the file ``path``) by step, in step order; a step recorded
    twice keeps its last record. A torn last line (a crash mid-write) is dropped with a
    warning; any other line that is not a record is an error naming the file and line."""
    lines = text.splitlines()
    last = max((n for n, line in enumerate(lines, 1) if line.strip()), default=0)
    by_step = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number < last:
                raise ValueError(f"{path} line {number} is not JSON ({error})") from None
            logging.warning("%s line %d is cut short (a crash mid-write?); left out.", path,
                            number)
            continue
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise ValueError(f"{path} line {number} is not a metrics record (no integer "
                             f"'step'): {line[:80]}")
        by_step[record["step"]] = record
    return dict(sorted(by_step.items()))


def append_metrics(path: epath.PathLike, record: dict) -> None:
    """Appends one record: in place (synced) locally; an object store cannot append, so
    there the whole (small) file is rewritten in one upload."""
    line = json.dumps(record) + "\n"
    if not is_local(path):
        path = epath.Path(path)
        write_atomic(path, (path.read_text() if path.exists() else "") + line)
        return
    with open(path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def read_metrics(workdir: epath.PathLike) -> list:
    """Per-epoch records of ``WORKDIR/metrics.jsonl`` in step order ([] when the file is
    missing; a torn last line skipped, see ``parse_metrics``)."""
    path = epath.Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    return list(parse_metrics(path, path.read_text()).values())
