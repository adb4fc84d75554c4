"""rundir: which config changes a resume accepts."""

import json

import pytest

from lungseg_jax.rundir import records


def test_resume_accepts_only_keys_that_do_not_change_training(tiny_config, tmp_path):
    workdir = str(tmp_path)
    records.prepare_workdir(workdir, tiny_config, write=True)
    recorded = tmp_path / "config.json"
    older = json.loads(recorded.read_text())
    del older["steps_per_call"]  # a workdir written before the key existed
    recorded.write_text(json.dumps(older))
    tiny_config.steps_per_call = 3
    tiny_config.tracking.mlflow = not tiny_config.tracking.mlflow
    records.prepare_workdir(workdir, tiny_config, write=False)
    tiny_config.batch_size = 8
    with pytest.raises(ValueError, match="batch_size: 4 -> 8"):
        records.prepare_workdir(workdir, tiny_config, write=False)
