"""Export of a workdir's snapshots and their ensemble as serialized ``jax.export`` artifacts.

Writes ``snapshot_<step>.jax`` per chosen snapshot, ``ensemble.jax`` (mean of their
probabilities), ``metadata.json`` and a copy of the training ``config.json``.
Load them with ``serving.exported.ExportedModel`` (jax and numpy only). The workdir
and the export directory may be ``etils.epath`` URIs such as ``gs://bucket/run``.
"""

import functools
import hashlib
import json

import jax
import jax.numpy as jnp
from etils import epath

from lungseg_jax.core.files import write_atomic
from lungseg_jax.model.unet import probability_fn
from lungseg_jax.rundir.trained import Trained, restore_trained
from lungseg_jax.serving import exported

PLATFORMS = ("cpu", "cuda")


def choose_snapshots(trained: Trained, spec: str) -> list:
    """``'all'`` or ``'last:m'``: the last m snapshots of ``trained`` (of a fold ensemble,
    each fold's last m)."""
    kind, _, count = spec.partition(":")
    if spec != "all" and (kind != "last" or not count.isdigit() or int(count) < 1):
        raise ValueError(f"--snapshots={spec!r}: expected 'all' or 'last:m' with m >= 1")
    try:
        return trained.last_snapshots(0 if spec == "all" else int(count))
    except ValueError as e:
        raise ValueError(f"--snapshots={spec!r}: {e}") from None


def _serialize(fn, input_shape: tuple, platforms) -> bytearray:
    batch = jax.export.symbolic_shape("batch")[0]
    spec = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    return jax.export.export(jax.jit(fn), platforms=platforms)(spec).serialize()


def write_export(output: epath.PathLike, members: dict, input_shape: tuple, metadata: dict,
                 platforms=PLATFORMS) -> dict:
    """Serializes each ``members[step]`` (inputs -> probabilities) and their mean.

    Writes ``output/metadata.json``: ``metadata`` plus the format, input shape,
    snapshot steps and file names. Returns the written metadata.
    """
    output = epath.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    steps = list(members)
    files = {"ensemble": "ensemble.jax",
             "snapshots": {str(s): f"snapshot_{s}.jax" for s in steps}}

    def ensemble(images):
        return jnp.mean(jnp.stack([members[s](images) for s in steps]), axis=0)

    for name, fn in [(files["snapshots"][str(s)], members[s]) for s in steps] + \
            [(files["ensemble"], ensemble)]:
        (output / name).write_bytes(_serialize(fn, input_shape, platforms))
    metadata = {"format": exported.FORMAT, **metadata, "input_size": input_shape[0],
                "channels": input_shape[2], "snapshot_steps": steps,
                "platforms": list(platforms), "jax_version": jax.__version__, "files": files}
    write_atomic(output / exported.METADATA, json.dumps(metadata, indent=2) + "\n")
    return metadata


def check_output(output: epath.PathLike, overwrite: bool) -> None:
    """Raises FileExistsError if ``output`` is a file, or (unless ``overwrite``) a folder
    that is not empty: an export is never written over without being asked."""
    output = epath.Path(output)
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output}: a file, not an export folder")
    if not overwrite and output.exists() and any(output.iterdir()):
        raise FileExistsError(f"{output}: not empty; export to a new folder, or replace "
                              "its export (--overwrite)")


def export_workdir(workdir: epath.PathLike, output: epath.PathLike, snapshots: str = "all",
                   threshold: float = 0.5, platforms=PLATFORMS, *,
                   overwrite: bool = False, variant: dict | None = None) -> dict:
    """Exports the chosen snapshots of ``workdir`` (a run, or a cross-validation folder's
    fold ensemble) to ``output``; returns the metadata.

    ``variant`` (an evaluation's ``chosen``: members, TTA, post-processing, threshold)
    replaces ``snapshots`` and ``threshold``, and ``predict`` applies all of it. Refuses an
    ``output`` that holds files, before any work, unless ``overwrite``.
    """
    check_output(output, overwrite)
    trained = restore_trained(workdir)
    if variant is None:
        steps = choose_snapshots(trained, snapshots)
        variant = {"name": "ensemble", "members": steps, "tta": False, "postprocess": False,
                   "threshold": threshold}
    steps = variant["members"]
    missing = sorted(set(steps) - set(trained.variables))
    if missing:
        raise ValueError(f"the variant's member steps {missing} are not checkpoints of "
                         f"{workdir} (it has {sorted(trained.variables)})")
    config, predict = trained.config, probability_fn(trained.model)

    config_bytes = (epath.Path(workdir) / "config.json").read_bytes()
    digest = hashlib.sha256(config_bytes).hexdigest()
    metadata = write_export(
        output, {s: functools.partial(predict, trained.variables[s]) for s in steps},
        (config.data.image_size, config.data.image_size, config.data.channels),
        {"model": config.model.name, "hu_min": config.data.hu_min, "hu_max": config.data.hu_max,
         "threshold": variant["threshold"], "tta": variant["tta"],
         "postprocess": variant["postprocess"], "variant": variant["name"],
         "final_members": trained.finals, "config_sha256": digest},
        platforms)
    (epath.Path(output) / "config.json").write_bytes(config_bytes)
    return metadata


def chosen_in(evaluation_json: str) -> dict:
    """The variant an evaluation JSON chose (its ``chosen``); ValueError naming the file."""
    try:
        with open(evaluation_json) as f:
            return json.load(f)["chosen"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{evaluation_json}: not an evaluation JSON with a chosen variant "
                         f"(python -m lungseg_jax.evaluate writes one): {e}") from e
