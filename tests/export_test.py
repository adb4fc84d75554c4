"""Export of a tiny trained workdir: loaded artifacts predict what the in-process model does."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from lungseg_jax.data import preprocess
from lungseg_jax.data.phantoms import synthetic_slices
from lungseg_jax.model.unet import probability_fn
from lungseg_jax.rundir.trained import Trained, restore_trained
from lungseg_jax.serving import export, exported
from lungseg_jax.training.loop import train_and_evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import tiny_config as make  # fixture function, called directly
    workdir = str(tmp_path_factory.mktemp("trained"))
    train_and_evaluate(make.__wrapped__(), workdir)
    output = str(tmp_path_factory.mktemp("export"))
    return workdir, output, export.export_workdir(workdir, output, platforms=("cpu",))


def test_loaded_artifacts_predict_like_the_model(trained):
    workdir, output, metadata = trained
    restored = restore_trained(workdir)
    slices = synthetic_slices(6, 48, seed=5)
    images = preprocess.preprocess_images(slices.images, 32, (-1350.0, 150.0), 1)
    predict_fn = probability_fn(restored.model)
    reference = np.stack([predict_fn(restored.variables[s], images) for s in (4, 8)])
    model = exported.ExportedModel(output)
    members, ensemble = model.snapshots(images, 4), model.ensemble(images, 4)
    # XLA folds the exported weights as constants: probabilities agree to a float32 ulp.
    np.testing.assert_allclose(members, reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ensemble, reference.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(members > 0.5, reference > 0.5)
    assert model.ensemble(images[:3], 8).shape == (3, 32, 32)  # symbolic batch dimension


def test_metadata_records_preprocessing_and_provenance(trained):
    workdir, output, metadata = trained
    with open(os.path.join(output, "metadata.json")) as f:
        assert json.load(f) == metadata
    assert metadata["snapshot_steps"] == [4, 8] and metadata["final_members"] == [8]
    assert (metadata["input_size"], metadata["channels"]) == (32, 1)
    assert (metadata["hu_min"], metadata["hu_max"], metadata["threshold"]) == (-1350.0, 150.0,
                                                                                0.5)
    import hashlib
    with open(os.path.join(workdir, "config.json"), "rb") as f:
        assert metadata["config_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert sorted(os.listdir(output)) == ["config.json", "ensemble.jax", "metadata.json",
                                          "snapshot_4.jax", "snapshot_8.jax"]


def test_loader_needs_neither_flax_nor_the_model_code(trained):
    _, output, _ = trained
    code = ("import sys\n"
            "for name in ('flax', 'optax', 'orbax', 'lungseg_jax.model', 'lungseg_jax.training'):\n"
            "    sys.modules[name] = None  # any import of them now fails\n"
            "import numpy as np\n"
            "from lungseg_jax.serving import exported\n"
            f"m = exported.ExportedModel({output!r})\n"
            "print(m.ensemble(np.full((2, 32, 32, 1), 0.3, np.float32)).shape)\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "(2, 32, 32)"


def test_command_line_exports_the_last_snapshots(trained, tmp_path):
    workdir, _, _ = trained
    run = subprocess.run([sys.executable, "-m", "lungseg_jax.export", f"--workdir={workdir}",
                          f"--output={tmp_path}", "--snapshots=last:1", "--platforms=cpu"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert exported.ExportedModel(str(tmp_path)).metadata["snapshot_steps"] == [8]


@pytest.mark.parametrize("spec, expected", [("all", [4, 8]), ("last:1", [8]),
                                            ("last:2", [4, 8])])
def test_choose_snapshots(spec, expected):
    assert export.choose_snapshots(run_with_snapshots([4, 8]), spec) == expected


@pytest.mark.parametrize("spec, message", [("last:3", "only 2 snapshots"),
                                           ("first:1", "expected 'all' or 'last:m'"),
                                           ("last:0", "expected 'all' or 'last:m'")])
def test_choose_snapshots_rejects_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        export.choose_snapshots(run_with_snapshots([4, 8]), spec)


def run_with_snapshots(steps, folds=()):
    """A Trained with these snapshot steps (and these fold runs) and no variables."""
    return Trained(None, None, {}, list(steps), [steps[-1]], "run", list(folds), "")


def test_the_last_snapshots_of_a_fold_ensemble_are_each_folds_last():
    ensemble = run_with_snapshots(["fold0_step4"],
                                  [run_with_snapshots([4, 8]), run_with_snapshots([3, 6])])
    assert export.choose_snapshots(ensemble, "last:1") == ["fold0_step8", "fold1_step6"]
    assert export.choose_snapshots(ensemble, "all") == ["fold0_step4", "fold0_step8",
                                                         "fold1_step3", "fold1_step6"]
