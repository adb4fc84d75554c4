"""Commands refuse a user's error in one line, and check their outputs before any work."""

import os
import subprocess
import sys

import pytest

from conftest import REPO
from lungseg_jax.core import cli
from lungseg_jax.core.files import prepare_file_path, write_atomic
from lungseg_jax.data import slices as folders
from lungseg_jax.data.phantoms import synthetic_slices
from lungseg_jax.serving import export


def command(module, *flags):
    return subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def error_line(run) -> str:
    """The message of the one line ``error: <message>`` a refused command printed, checked
    to be all of its stderr (no traceback) with exit status 1."""
    assert run.returncode == 1, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-3000:]
    return lines[0][len("error: "):]


RAISING_MAIN = """
from lungseg_jax.core import cli

def main(argv):
    raise {error}

cli.run(main)
"""


def run_raising(error: str, *flags):
    """A command whose main raises ``error`` (Python source), run through ``cli.run``."""
    return subprocess.run([sys.executable, "-c", RAISING_MAIN.format(error=error), *flags],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("error, message", [
    ("ValueError('config.x=3 is invalid')", "config.x=3 is invalid"),
    ("FileNotFoundError('missing folder d')", "missing folder d"),
    ("FileExistsError('o exists')", "o exists"),
    ("NotADirectoryError('w is a file')", "w is a file"),
    ("IsADirectoryError('o.json is a folder')", "o.json is a folder"),
    ("ValueError('two\\nlines')", "two lines"),
])
def test_user_errors_print_one_line(error, message):
    assert error_line(run_raising(error)) == message


def test_other_errors_and_verbose_runs_keep_the_traceback():
    bug = run_raising("RuntimeError('a bug')")
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and bug.stderr.rstrip().endswith("RuntimeError: a bug")
    verbose = run_raising("ValueError('config.x=3 is invalid')", "--verbosity=1")
    assert verbose.returncode == 1 and "error:" not in verbose.stderr
    assert "Traceback" in verbose.stderr
    assert verbose.stderr.rstrip().endswith("ValueError: config.x=3 is invalid")


def test_split_folder_refuses_an_existing_split_in_one_line(tmp_path):
    source, split = tmp_path / "source", tmp_path / "split"
    folders.write_folder(str(source), synthetic_slices(4, 32, seed=0))
    os.makedirs(split / "train")
    run = command("lungseg_jax.split_folder", f"--source={source}", f"--output={split}",
                  "--test_fraction=0.25")
    assert error_line(run) == (f"{str(split / 'train')!r} exists: remove it or choose another "
                               "output folder")
    assert os.listdir(split) == ["train"] and os.listdir(split / "train") == []


def test_train_refuses_a_bad_config_value_in_one_line(tmp_path):
    run = command("lungseg_jax.train", "--config=configs/default.py",
                  f"--workdir={tmp_path / 'run'}", "--config.batch_size=0")
    assert error_line(run) == "config.batch_size=0 is invalid: expected a positive integer"
    assert os.listdir(tmp_path) == []


def test_evaluate_refuses_a_folder_as_output_before_any_work(tmp_path):
    output = tmp_path / "out.json"
    output.mkdir()
    # The workdir does not exist either: the output's refusal shows it was checked first.
    run = command("lungseg_jax.evaluate", f"--workdir={tmp_path / 'missing'}",
                  f"--data_dir={tmp_path / 'data'}", f"--output={output}")
    assert error_line(run) == (f"{output} is a folder; expected a file path such as "
                               f"{output / 'result.json'}")
    assert os.listdir(tmp_path) == ["out.json"] and os.listdir(output) == []


def test_evaluate_names_a_missing_workdir_in_one_line(tmp_path):
    run = command("lungseg_jax.evaluate", f"--workdir={tmp_path / 'missing'}",
                  f"--data_dir={tmp_path / 'data'}", f"--output={tmp_path / 'o' / 'o.json'}")
    assert str(tmp_path / "missing") in error_line(run)


def test_export_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    output = tmp_path / "export"
    output.mkdir()
    (output / "keep.txt").write_text("kept")
    flags = [f"--workdir={tmp_path / 'missing'}", f"--output={output}", "--platforms=cpu"]
    refused = command("lungseg_jax.export", *flags)
    assert error_line(refused) == (f"{output}: not empty; export to a new folder, or replace "
                                   "its export (--overwrite)")
    # --overwrite passes the check; the missing workdir is refused next.
    overwriting = command("lungseg_jax.export", *flags, "--overwrite")
    assert str(tmp_path / "missing") in error_line(overwriting)
    assert os.listdir(output) == ["keep.txt"] and (output / "keep.txt").read_text() == "kept"


def test_export_output_may_be_new_or_an_empty_folder_but_not_a_file(tmp_path):
    export.check_output(tmp_path / "new", overwrite=False)
    export.check_output(tmp_path, overwrite=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(FileExistsError, match=f"^{tmp_path / 'file'}: a file, not an export"):
        export.check_output(tmp_path / "file", overwrite=True)


def test_a_file_path_is_prepared_or_refused(tmp_path):
    prepare_file_path(tmp_path / "a" / "b" / "o.json")
    assert os.path.isdir(tmp_path / "a" / "b") and os.listdir(tmp_path / "a" / "b") == []
    with pytest.raises(IsADirectoryError, match=f"^{tmp_path / 'a'} is a folder"):
        prepare_file_path(tmp_path / "a")
    (tmp_path / "file").write_text("")
    with pytest.raises((FileExistsError, NotADirectoryError), match="file"):
        prepare_file_path(tmp_path / "file" / "o.json")


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path / "folder", "text")
    (tmp_path / "o.json").write_text("old")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(tmp_path / "o.json", "new")
    assert sorted(os.listdir(tmp_path)) == ["folder", "o.json"]
    assert (tmp_path / "o.json").read_text() == "old"


def test_a_shipped_config_is_found_by_name_from_any_folder(tmp_path):
    shipped = cli.shipped_config("incp_unet_snapshot")
    assert os.path.isfile(shipped) and shipped.endswith("lungseg_jax/configs/incp_unet_snapshot.py")
    assert cli.with_config_paths(["prog", "--config", "default", "--config.seed=1"]) == [
        "prog", "--config", cli.shipped_config("default"), "--config.seed=1"]
    assert cli.with_config_paths(["prog", "--config=cpu_fast:x"]) == [
        "prog", f"--config={cli.shipped_config('cpu_fast')}:x"]
    own = tmp_path / "mine.py"
    own.write_text("")
    assert cli.with_config_paths(["prog", f"--config={own}"]) == ["prog", f"--config={own}"]
    with pytest.raises(ValueError, match=r"--config=nosuch: no such file, and no shipped "
                                         r"config of that name \(shipped: conv_unet, cpu_fast, "
                                         r"default, incp_unet, incp_unet_snapshot\)"):
        cli.with_config_paths(["prog", "--config", "nosuch"])


def console_script(name):
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: install the package (pip install -e '.[test]')")
    return path


@pytest.mark.parametrize("script, flag", [("lungseg-train", "--workdir"),
                                          ("lungseg-evaluate", "--data_dir"),
                                          ("lungseg-export", "--snapshots"),
                                          ("lungseg-predict", "--overwrite"),
                                          ("lungseg-split", "--test_fraction"),
                                          ("lungseg-bench", "--profile_runs"),
                                          ("lungseg-crossval", "--folds"),
                                          ("lungseg-audit", "--top")])
def test_console_commands_help_from_any_folder_and_exit_0(tmp_path, script, flag):
    run = subprocess.run([console_script(script), "--help"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert flag in run.stdout and "Entry point" in run.stdout


@pytest.mark.parametrize("module, flags", [
    ("evaluate", ("--threshold", "--batch_size")), ("crossval", ("--threshold", "--batch_size")),
    ("audit", ("--threshold", "--batch_size")), ("train", ("--coordinator_address",))])
def test_help_lists_the_flags_defined_by_shared_helpers(module, flags):
    """``core.cli``'s define_* helpers define flags for their caller: ``python -m`` --help
    (which lists the main module's own flags) shows them."""
    run = subprocess.run([sys.executable, "-m", f"lungseg_jax.{module}", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    for flag in flags:
        assert f"  {flag}:" in run.stdout, flag


def test_train_help_lists_the_config_fields(tmp_path):
    run = subprocess.run([console_script("lungseg-train"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    for field in ("--config.model.name='incp_unet'", "--config.data.image_size=64",
                  "--config.schedule.num_cycles=2", "incp_unet_snapshot"):
        assert field in run.stdout, field


def test_commands_refuse_in_one_line_outside_the_repository(tmp_path):
    run = subprocess.run([console_script("lungseg-split"), "--source", str(tmp_path / "none"),
                          "--output", str(tmp_path / "split")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert error_line(run).startswith("missing folder")
    run = subprocess.run([console_script("lungseg-train"), "--config", "default",
                          "--workdir", str(tmp_path / "run"), "--config.batch_size=0"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert error_line(run) == "config.batch_size=0 is invalid: expected a positive integer"
