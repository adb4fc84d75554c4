"""rundir: which config changes a resume accepts; the metrics records a resume keeps."""

import json
import os
import re

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


def test_workdir_that_is_a_file_is_refused_by_every_process(tiny_config, tmp_path):
    path = tmp_path / "run"  # the chief also refuses it when taking the lock, see lock.hold
    path.write_text("not a folder")
    message = f"^--workdir {re.escape(str(path))} is a file, not a folder$"
    with pytest.raises(NotADirectoryError, match=message):
        records.prepare_workdir(str(path), tiny_config, write=False)


def write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_resume_keeps_one_record_per_step_in_step_order(tmp_path):
    path = tmp_path / "metrics.jsonl"  # as two trainers on one workdir left it
    write_lines(path, '{"step": 8, "v": 1}', '{"step": 4, "v": 2}', '{"step": 12, "v": 3}',
                '{"step": 8, "v": 4}', '{"step": 4, "v": 5}')
    records.truncate_metrics(path, 8)
    assert path.read_text() == '{"step": 4, "v": 5}\n{"step": 8, "v": 4}\n'
    before = os.stat(path)
    records.truncate_metrics(path, 8)  # nothing to change: the file is left as it is
    assert os.stat(path).st_mtime_ns == before.st_mtime_ns and os.listdir(tmp_path) == [
        "metrics.jsonl"]


def test_torn_last_line_is_left_out_with_a_warning(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    write_lines(path, '{"step": 4}', "", '{"step": 8, "los', "")
    assert records.read_metrics(tmp_path) == [{"step": 4}]
    assert f"{path} line 3 is cut short" in caplog.text
    assert path.read_text() == '{"step": 4}\n\n{"step": 8, "los\n\n'  # reading changes nothing
    records.truncate_metrics(path, 8)
    assert path.read_text() == '{"step": 4}\n'


@pytest.mark.parametrize("bad, why", [('{"step": 8, "los', "line 2 is not JSON"),
                                      ('{"epoch": 2}', "line 2 is not a metrics record"),
                                      ('[8]', "line 2 is not a metrics record")])
def test_bad_line_before_the_last_is_an_error_naming_file_and_line(tmp_path, bad, why):
    path = tmp_path / "metrics.jsonl"
    write_lines(path, '{"step": 4}', bad, '{"step": 12}')
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} {why}"):
        records.truncate_metrics(path, 12)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))} {why}"):
        records.read_metrics(tmp_path)


def test_missing_metrics_on_resume_says_the_history_is_gone(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    records.truncate_metrics(path, 3, first_step=4)  # before the first record: no loss
    assert caplog.text == ""
    records.truncate_metrics(path, 8, first_step=4)
    assert f"{path} is missing: the metrics history before step 8 is gone" in caplog.text
    assert os.listdir(tmp_path) == []
