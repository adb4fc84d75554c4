"""The train and evaluate commands as a user runs them, tracked with MLflow: the progress bar
on a terminal below whole log lines, the closing summary (checked against metrics.jsonl), a
re-run that logs no second model, and evaluate logging to the training run."""

import csv
import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time
import types

import pytest

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from conftest import REPO, TINY_FLAGS  # noqa: E402
from lungseg_jax.data import slices as folders  # noqa: E402
from lungseg_jax.data.phantoms import synthetic_slices  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_terminal(args: list, env: dict, timeout: float = 600):
    """Runs ``args`` with stderr on a pseudo-terminal (200 columns) and stdout on a pipe, as
    in an interactive shell with stdout redirected; returns (status, stdout, stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []

    def drain():  # a full terminal buffer would block the command
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command has closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    stdout, _ = proc.communicate(timeout=timeout)
    reader.join(timeout=30)
    os.close(master)
    return proc.returncode, stdout.decode(), b"".join(chunks).decode("utf-8", "replace")


def screen_lines(text: str) -> list:
    """What a terminal shows, line by line: colours and cursor moves removed, a line split
    where the cursor returned to its start (each redraw of the bar is a line of its own)."""
    return [line for line in re.split(r"[\r\n]", ANSI.sub("", text)) if line.strip()]


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    root = tmp_path_factory.mktemp("commands")
    workdir, test_dir = str(root / "run"), str(root / "test")
    folders.write_folder(test_dir, synthetic_slices(3, 48, seed=7))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "COLUMNS")}
    train = [sys.executable, "-m", "lungseg_jax.train", "--config", "default",
             "--workdir", workdir, *TINY_FLAGS, "--config.tracking.mlflow=True"]
    started = time.monotonic()
    first = run_on_terminal(train, env)
    seconds = time.monotonic() - started
    assert first[0] == 0, first[2][-3000:]
    again = run_on_terminal(train, env)
    assert again[0] == 0, again[2][-3000:]
    output = str(root / "eval" / "test.json")

    def evaluate_command(output, *flags):
        run = subprocess.run(
            [sys.executable, "-m", "lungseg_jax.evaluate", "--workdir", workdir, "--data_dir",
             test_dir, "--output", output, "--noselect_on_validation", *flags],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        return run

    evaluate = evaluate_command(output, "--spacing_mm", "0.7")
    unlogged = evaluate_command(str(root / "unlogged" / "held_out.json"), "--nomlflow")
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    with open(os.path.join(workdir, "mlflow_run_id")) as f:
        run_id = f.read().strip()
    return types.SimpleNamespace(workdir=workdir, first=first, seconds=seconds, again=again,
                                 evaluate=evaluate, unlogged=unlogged, output=output,
                                 records=records,
                                 run_id=run_id,
                                 client=MlflowClient(f"sqlite:///{workdir}/mlflow.db"))


def expected_summary(workdir: str, records: list, run_id: str) -> list:
    """The summary's lines after its first, from metrics.jsonl, computed here."""
    best = max(range(len(records)), key=lambda i: (records[i]["val_pooled_iou"], -i))
    lines = []
    for label, r in (("best", records[best]), ("final", records[-1])):
        lines.append(f"  {label} validation pooled IoU".ljust(30)
                     + f"{r['val_pooled_iou']:.4f} (epoch {r['epoch']}, step {r['step']})")
    return lines + [
        "  checkpoints".ljust(30) + os.path.join(workdir, "checkpoints"),
        "  TensorBoard".ljust(30) + os.path.join(workdir, "tensorboard"),
        "  MLflow run".ljust(30) + f"{run_id} (store sqlite:///{workdir}/mlflow.db)"]


def test_train_ends_with_a_summary_of_metrics_jsonl(commands):
    records = commands.records
    assert [r["epoch"] for r in records] == [1, 2]
    for status, stdout, _ in (commands.first, commands.again):
        first_line, *rest = stdout.splitlines()
        assert rest == expected_summary(commands.workdir, records, commands.run_id)
        wall = re.fullmatch(r"Run summary \(2 epochs recorded; wall time (\d+):(\d\d):(\d\d) "
                            r"for this command\):", first_line)
        hours, minutes, seconds = (int(g) for g in wall.groups())
        assert 0 < 3600 * hours + 60 * minutes + seconds <= commands.seconds + 1
    assert commands.first[1].count("Run summary") == 1


def test_progress_bar_on_a_terminal_keeps_log_lines_whole(commands):
    lines = screen_lines(commands.first[2])
    bars = [line for line in lines if re.match(r"step \d+/8 ", line)]
    assert bars and bars[-1].startswith("step 8/8 ")
    # Each epoch's log line is whole, on a line of its own: the bar never runs into it.
    for record in commands.records:
        epoch_lines = [line for line in lines
                       if f"] epoch {record['epoch']}/2 step {record['step']}: " in line]
        assert len(epoch_lines) == 1, epoch_lines
        assert re.fullmatch(rf"I\d{{4}} [\d:.]+ +\d+ loop\.py:\d+\] epoch {record['epoch']}/2 "
                            rf"step {record['step']}: train_loss {record['train_loss']:.4f}  "
                            r"val_loss .* img/s", epoch_lines[0]), epoch_lines[0]
    # No third-party chatter: MLflow's store set-up and model-logging warnings stay out.
    for text in (commands.first[2], commands.again[2]):
        assert "mlflow.store" not in text and "Warning" not in text, text[-3000:]


def test_a_finished_run_re_run_logs_no_second_model(commands):
    assert "Training already finished (step 8 of 8)" in commands.again[2]
    client = commands.client
    run = client.get_run(commands.run_id)
    assert run.info.status == "FINISHED"
    models = client.search_logged_models([run.info.experiment_id],
                                         filter_string=f"source_run_id = '{commands.run_id}'")
    assert [m.name for m in models] == ["model"]


def test_evaluate_logs_to_the_training_run_with_hd95_in_mm(commands):
    with open(commands.output) as f:
        result = json.load(f)
    client, run_id = commands.client, commands.run_id
    metrics = client.get_run(run_id).data.metrics
    # Named by the output's stem: test.json's numbers are eval/test/...
    assert metrics["eval/test/ensemble/pooled_iou"] == pytest.approx(
        result["ensemble"]["pooled_iou"])
    assert metrics["eval/test/final/mean_dice"] == pytest.approx(result["final"]["mean_dice"])
    assert metrics["eval/test/num_images"] == 3.0
    folder = os.path.dirname(commands.output)
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/test"]
    logged = {os.path.basename(a.path) for a in client.list_artifacts(run_id, "eval/test")}
    assert logged == set(os.listdir(folder))
    assert {"test.json", "test.csv", "test.md", "test_curves.png"} <= logged
    # The pixels carry no spacing; --spacing_mm 0.7 gives each HD95 in mm.
    with open(os.path.join(folder, "test.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3
    for row in rows:
        assert float(row["hd95_mm"]) == pytest.approx(0.7 * float(row["hd95"]), rel=1e-6)
    md = open(os.path.join(folder, "test.md")).read()
    assert "HD95 in mm (3 of 3 images of known spacing)" in md
    assert f"Evaluation logged to MLflow run {run_id}" in commands.evaluate.stderr


def test_evaluate_with_nomlflow_logs_nothing(commands):
    """--nomlflow: the evaluation's files are written, and nothing of it is logged."""
    folder = os.path.join(os.path.dirname(commands.workdir), "unlogged")
    assert {"held_out.json", "held_out.csv", "held_out.md"} <= set(os.listdir(folder))
    client, run_id = commands.client, commands.run_id
    logged = [name for name in client.get_run(run_id).data.metrics if name.startswith("eval/")]
    assert logged and all(name.startswith("eval/test/") for name in logged)
    assert [a.path for a in client.list_artifacts(run_id, "eval")] == ["eval/test"]
    assert "MLflow" not in commands.unlogged.stderr


def test_the_console_fits_on_a_screen_and_names_the_config_by_its_changes(commands):
    log_lines = [line for line in screen_lines(commands.first[2])
                 if not re.match(r"step \d+/8 ", line)]  # the bar's redraws aside
    assert len(log_lines) <= 24, "\n".join(log_lines)
    config_line, = [line for line in log_lines if "] Config: " in line]
    # TINY_FLAGS and the tracking switch, as differences from the default config.
    assert ("model.features: [8, 16, 32, 64] -> [4, 8]" in config_line
            and "tracking.mlflow: False -> True" in config_line
            and config_line.endswith("/run/config.json)")), config_line
