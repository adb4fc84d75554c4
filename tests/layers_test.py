"""The package's architecture: its layer contracts, and what importing a layer pulls in."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: each layer imports only those below it,
    serving never imports training, and applying an export needs no flax, optax or orbax."""
    lint_imports = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
    if lint_imports is None:
        pytest.fail("lint-imports not found: install the test extras (pip install -e '.[test]')")
    run = subprocess.run([lint_imports, "--no-cache"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 kept, 0 broken" in run.stdout


def test_inference_leaves_the_training_stack_out():
    run = run_python("import sys\n"
                     "import lungseg_jax.serving.inference, lungseg_jax.serving.exported\n"
                     "import lungseg_jax.serving.predict\n"
                     "print(sorted(m for m in ('flax', 'optax', 'orbax', 'orbax.checkpoint',\n"
                     "    'lungseg_jax.training', 'lungseg_jax.model') if m in sys.modules))\n")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[]"


def test_importing_the_model_reads_no_proc_file():
    """The host's CPU is probed when a trace first needs it, never at import."""
    run = run_python("import sys\n"
                     "opened = []\n"
                     "sys.addaudithook(lambda event, args: opened.append(str(args[0]))\n"
                     "                 if event == 'open' and str(args[0]).startswith('/proc')\n"
                     "                 else None)\n"
                     "import lungseg_jax.model.unet, lungseg_jax.ops.conv, lungseg_jax.ops.policy\n"
                     "import lungseg_jax.training.loop\n"
                     "print(opened)\n"
                     "lungseg_jax.ops.policy.host_cpu()\n"
                     "print(opened)\n")
    assert run.returncode == 0, run.stderr[-3000:]
    at_import, after_probe = run.stdout.strip().splitlines()
    assert at_import == "[]"
    assert "/proc/cpuinfo" in after_probe  # the hook does see the probe's read
