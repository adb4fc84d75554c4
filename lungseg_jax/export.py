"""Export a workdir's snapshots and their ensemble as serialized ``jax.export`` artifacts.

    python -m lungseg_jax.export --workdir DIR --output EXPORT_DIR [--snapshots last:2]

Writes ``snapshot_<step>.jax`` per chosen snapshot, ``ensemble.jax`` (mean of their
probabilities), ``metadata.json`` and a copy of the training ``config.json``.
Load them with ``lungseg_jax.exported.ExportedModel`` (jax and numpy only). The workdir
and the export directory may be ``etils.epath`` URIs such as ``gs://bucket/run``.
"""

import functools
import hashlib
import json

import jax
import jax.numpy as jnp
from absl import app, flags
from etils import epath

from lungseg_jax import evaluation, exported, rundir, runtime, trainer, validation

PLATFORMS = ("cpu", "cuda")


def choose_snapshots(snapshot_steps: list, spec: str) -> list:
    """``'all'`` or ``'last:m'`` (the last m snapshots) of ``snapshot_steps``."""
    if spec == "all":
        return list(snapshot_steps)
    kind, _, count = spec.partition(":")
    if kind != "last" or not count.isdigit() or int(count) < 1:
        raise ValueError(f"--snapshots={spec!r}: expected 'all' or 'last:m' with m >= 1")
    if int(count) > len(snapshot_steps):
        raise ValueError(f"--snapshots={spec!r}: the workdir has only {len(snapshot_steps)} "
                         f"snapshots ({snapshot_steps})")
    return list(snapshot_steps)[-int(count):]


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
    rundir.write_atomic(output / exported.METADATA, json.dumps(metadata, indent=2) + "\n")
    return metadata


def export_workdir(workdir: epath.PathLike, output: epath.PathLike, snapshots: str = "all",
                   threshold: float = 0.5, platforms=PLATFORMS) -> dict:
    """Exports the chosen snapshots of ``workdir`` to ``output``; returns the metadata."""
    restored = trainer.restore_variables(workdir)
    steps = choose_snapshots(evaluation.snapshot_steps(restored), snapshots)
    config, predict = restored.config, evaluation.make_predict_fn(restored.model)

    config_bytes = (epath.Path(workdir) / "config.json").read_bytes()
    digest = hashlib.sha256(config_bytes).hexdigest()
    metadata = write_export(
        output, {s: functools.partial(predict, restored.variables[s]) for s in steps},
        (config.data.image_size, config.data.image_size, config.data.channels),
        {"model": config.model.name, "hu_min": config.data.hu_min, "hu_max": config.data.hu_max,
         "threshold": threshold, "final_step": restored.final_step, "config_sha256": digest},
        platforms)
    (epath.Path(output) / "config.json").write_bytes(config_bytes)
    return metadata


def define_flags():
    """The CLI's flags (defined only when run as a program: train.py imports this module)."""
    flags.DEFINE_string("workdir", None, "Training workdir (config.json and checkpoints/).")
    flags.DEFINE_string("output", None, "Export directory to write.")
    flags.DEFINE_string("snapshots", "all", "Snapshots to export: 'all' or 'last:m'.")
    flags.DEFINE_float("threshold", 0.5, "Probability threshold recorded for a lung pixel.")
    flags.DEFINE_list("platforms", list(PLATFORMS), "Platforms the artifacts are lowered for.")
    flags.mark_flags_as_required(["workdir", "output"])
    flags.register_validator("threshold", validation.is_probability_threshold,
                             message=validation.THRESHOLD_RULE)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    runtime.reexec_with_huge_pages()
    runtime.setup_jax()
    f = flags.FLAGS
    metadata = export_workdir(f.workdir, f.output, f.snapshots, f.threshold, tuple(f.platforms))
    print(f"exported snapshots {metadata['snapshot_steps']} and their ensemble to {f.output}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
