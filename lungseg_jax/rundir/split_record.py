"""The exact slices a run trained and validated on: ``WORKDIR/split.json``.

Names with a content hash of each slice (image and mask), written when training starts.
Evaluation validates on exactly these slices and refuses a test folder that shares a
slice with them, by name (where names identify slices: not the synthetic phantoms'
generated ones) or by content, unless told to allow it.
"""

import hashlib
import json

import numpy as np
from etils import epath

from lungseg_jax.core.files import write_atomic
from lungseg_jax.data.slices import Slices

SPLIT_FILE = "split.json"


def slice_digest(image: np.ndarray, mask: np.ndarray) -> str:
    """sha256 of a slice's pixels (dtype and shape included) and its binary mask."""
    digest = hashlib.sha256()
    for array in (np.ascontiguousarray(image), np.ascontiguousarray(mask > 0)):
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def digests(slices: Slices) -> dict:
    """``{name: slice_digest}`` of ``slices``."""
    return {n: slice_digest(i, m) for n, i, m in zip(slices.names, slices.images, slices.masks)}


def split_of(train: Slices, validation: Slices) -> dict:
    """``{"train": digests, "validation": digests}``: what ``split.json`` records."""
    return {"train": digests(train), "validation": digests(validation)}


def check_or_record(workdir: epath.PathLike, split: dict, names_identify: bool = True,
                    write: bool = True) -> None:
    """Records a new run's ``split`` (``split_of``; with ``write``: the chief); a resumed
    run must train on the recorded slices: ValueError naming those that changed (other
    names or other pixels), on every process, so that none goes on alone."""
    recorded = load_split(workdir)
    if recorded is None:
        if write:
            write_atomic(epath.Path(workdir) / SPLIT_FILE,
                         json.dumps({**split, "names_identify": names_identify}, indent=1)
                         + "\n")
        return
    changed = sorted(name for part in ("train", "validation")
                     for name in recorded[part].keys() | split[part].keys()
                     if recorded[part].get(name) != split[part].get(name))
    if changed:
        raise ValueError(f"{workdir!r} recorded another data split than config.data gives now "
                         f"({len(changed)} slices differ: {changed[:5]}); resume with the "
                         f"data it was started on, or use a new --workdir")


def load_split(workdir: epath.PathLike) -> dict | None:
    """The recorded split (``{"train": {name: digest}, "validation": {...}}``), or None for
    a run recorded before splits were."""
    path = epath.Path(workdir) / SPLIT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def recorded_subset(slices: Slices, names: dict, where: str) -> Slices:
    """The slices of ``slices`` named in ``names`` (a ``{name: digest}`` record), checked
    against their digests; ValueError naming the slices missing or changed in ``where``."""
    index = {n: i for i, n in enumerate(slices.names)}
    missing = sorted(set(names) - set(index))
    if missing:
        raise ValueError(f"{len(missing)} recorded slices are not in {where}: {missing[:5]}")
    subset = slices.subset([index[n] for n in names])
    changed = [n for n, d in digests(subset).items() if d != names[n]]
    if changed:
        raise ValueError(f"{len(changed)} slices of {where} differ from those the run recorded "
                         f"(other pixels under the same name): {changed[:5]}")
    return subset


def overlap_of_run(workdir: epath.PathLike, slices: Slices) -> list:
    """``overlap`` with ``workdir``'s recorded split ([] for a run that recorded none)."""
    record = load_split(workdir)
    return [] if record is None else overlap(record, slices)


def overlap(record: dict, slices: Slices) -> list:
    """Names of ``slices`` that the run trained or validated on, by content, or by name where
    the record says names identify slices."""
    seen_names = (set(record["train"]) | set(record["validation"])
                  if record.get("names_identify", True) else set())
    seen_digests = set(record["train"].values()) | set(record["validation"].values())
    return [n for n, d in digests(slices).items() if n in seen_names or d in seen_digests]
