"""launch.sh: syntax, help, argument errors and the gcloud commands of a dry run."""

import shlex
import subprocess

from conftest import REPO

LAUNCH = f"{REPO}/launch.sh"


def launch(*args):
    return subprocess.run(["bash", LAUNCH, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_syntax():
    assert subprocess.run(["bash", "-n", LAUNCH], timeout=60).returncode == 0


def test_help_documents_the_usage():
    result = launch("--help")
    assert result.returncode == 0
    for text in ("--tpu NAME", "--zone ZONE", "--config CONFIG", "--workdir WORKDIR",
                 "--dry-run", "gs://", "jax[tpu]", "--worker=all", "143"):
        assert text in result.stdout, text


def test_missing_or_unknown_arguments_are_refused():
    missing = launch("--tpu", "t", "--config", "configs/default.py", "--workdir", "w")
    assert missing.returncode == 2 and "--zone is required" in missing.stderr
    unknown = launch("--tpu", "t", "--zone", "z", "--bogus")
    assert unknown.returncode == 2 and "unknown argument '--bogus'" in unknown.stderr
    no_config = launch("--tpu", "t", "--zone", "z", "--config", "configs/nope.py", "--workdir", "w")
    assert no_config.returncode == 2 and "configs/nope.py: no such file" in no_config.stderr


def test_dry_run_prints_sync_install_and_train_on_every_worker():
    result = launch("--tpu", "lungs-v4-16", "--zone", "us-central2-b", "--project", "proj",
                    "--config", "configs/default.py", "--workdir", "gs://bucket/runs/a b",
                    "--dry-run", "--", "--config.num_epochs=30")
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines()]
    assert [c[:2] for c in commands] == [["git", "-C"]] + [["gcloud", "compute"]] * 4
    gcloud = ["gcloud", "compute", "tpus", "tpu-vm"]
    where = ["--zone", "us-central2-b", "--worker=all", "--project", "proj"]
    archive = commands[0][-2]
    assert commands[1] == [*gcloud, "scp", archive, "lungs-v4-16:lungseg_jax.tar.gz", *where]
    remote = []
    for command in commands[2:]:
        assert command[:-2] == [*gcloud, "ssh", "lungs-v4-16", *where]
        assert command[-2] == "--command"
        remote.append(shlex.split(command[-1]))
    assert "tar" in remote[0]
    assert remote[1][-3:] == ["-e", ".[gcs]", "jax[tpu]>=0.10.2,<0.12"]  # gs:// needs gcsfs
    assert remote[2] == ["cd", "~/lungseg_jax", "&&", ".venv/bin/python", "-m",
                         "lungseg_jax.train", "--config", "configs/default.py", "--workdir",
                         "gs://bucket/runs/a b", "--multihost", "--config.num_epochs=30"]


def test_dry_run_installs_no_gcs_extra_for_a_mounted_workdir():
    result = launch("--tpu", "t", "--zone", "z", "--config", "configs/default.py",
                    "--workdir", "/mnt/shared/run", "--dry-run", "--skip-sync")
    assert result.returncode == 0, result.stderr
    install = shlex.split(shlex.split(result.stdout.splitlines()[0])[-1])
    assert install[-3:] == ["-e", ".", "jax[tpu]>=0.10.2,<0.12"]
