"""Checkpoints and exports written before the package layout restore and predict identically.

The fixture (``tests/fixtures/main_59280a6``, see its README) was written by the flat
layout's code: a tiny inception U-Net workdir, its export, their predictions on three
phantoms, and both study models' parameter trees.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lungseg_jax.model.unet import MODELS, probability_fn
from lungseg_jax.rundir import records
from lungseg_jax.rundir.trained import restore_trained
from lungseg_jax.serving import exported
from lungseg_jax.training.loop import train_and_evaluate

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "main_59280a6")


@pytest.fixture
def old_workdir(tmp_path):
    path = tmp_path / "workdir"
    shutil.copytree(os.path.join(FIXTURE, "workdir"), path)
    return str(path)


@pytest.fixture(scope="module")
def expected():
    return np.load(os.path.join(FIXTURE, "expected.npz"))


@pytest.mark.parametrize("name", ["incp_unet", "conv_unet"])
def test_parameter_trees_are_the_recorded_ones(name):
    with open(os.path.join(FIXTURE, "param_trees.json")) as f:
        recorded = json.load(f)[name]
    model = MODELS[name]()
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 128, 128, 1)),
                                               train=False))
    assert {jax.tree_util.keystr(path): list(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)} == recorded


def test_old_checkpoint_restores_and_predicts_identically(old_workdir, expected):
    trained = restore_trained(old_workdir)
    assert trained.finals == [2] and trained.snapshots == [2]
    with open(os.path.join(old_workdir, "config.json")) as f:
        assert "ops" not in json.load(f)["model"]  # recorded before the op sets existed
    assert trained.config.model.ops == "fast"  # what such a run computed with
    probabilities = probability_fn(trained.model)(trained.variables[2], expected["images"])
    np.testing.assert_allclose(probabilities, expected["step_2"], rtol=0, atol=1e-6)


def test_old_export_loads_and_predicts_identically(expected):
    model = exported.ExportedModel(os.path.join(FIXTURE, "export"))
    assert model.metadata["snapshot_steps"] == [2]
    np.testing.assert_array_equal(model.ensemble(expected["images"]),
                                  expected["exported_ensemble"])


def test_old_workdir_is_accepted_by_the_trainer(old_workdir):
    """The recorded config lacks ``model.ops``: re-running the finished run with today's
    config (ops 'fast') is a resume, not a different run."""
    config = records.load_config(old_workdir)
    config.model.ops = "fast"
    state = train_and_evaluate(config, old_workdir, devices=jax.local_devices()[:1])
    assert int(state.step) == 2
    restored = restore_trained(old_workdir).variables[2]
    jax.tree.map(np.testing.assert_array_equal, restored["params"], jax.device_get(state.params))


def test_old_workdir_resumes_with_the_fields_added_since(old_workdir):
    """Today's configs have fields the old run did not record: model.ops and
    data.sanity_checks change nothing trained; data.errata must say what the old run did
    ('none'), and today's default ('builtin') is refused as another run."""
    config = records.load_config(old_workdir)
    config.model.ops, config.data.sanity_checks, config.data.errata = "reference", False, "none"
    records.prepare_workdir(old_workdir, config, write=False)
    config.data.errata = "builtin"
    with pytest.raises(ValueError, match=r"data.errata: 'none' -> 'builtin'"):
        records.prepare_workdir(old_workdir, config, write=False)
