"""runtime: glibc's malloc on transparent huge pages for the entry points; JAX and
Python's collector set up."""

import gc
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import REPO
from lungseg_jax.core import runtime
from lungseg_jax.model.unet import MODELS
from lungseg_jax.ops import policy


def skip_without_huge_pages():
    mode, libc = runtime.transparent_huge_pages_mode(), runtime.glibc_version()
    if runtime.huge_pages_environment({}, mode, libc) is None:
        pytest.skip(f"no huge pages to ask for here (kernel mode {mode}, C library {libc})")


def test_transparent_huge_pages_mode_is_the_bracketed_choice(tmp_path):
    path = tmp_path / "enabled"
    path.write_text("always [madvise] never\n")
    assert runtime.transparent_huge_pages_mode(str(path)) == "madvise"
    path.write_text("[always] madvise never\n")
    assert runtime.transparent_huge_pages_mode(str(path)) == "always"
    assert runtime.transparent_huge_pages_mode(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("flags, avx512", [
    ("fpu sse avx2 fma avx512f avx512bw", True),
    ("fpu sse avx2 fma", False),
    ("fpu sse avx2 avx512_vnni", False),  # only AVX-512 Foundation counts
])
def test_host_cpu_reads_the_first_processor(tmp_path, flags, avx512):
    cpuinfo = tmp_path / "cpuinfo"
    first = (f"processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: Some CPU\n"
             f"flags\t\t: {flags}\n")
    cpuinfo.write_text(first + "\n" + first.replace("Some CPU", "Another CPU") + "\n")
    assert policy.host_cpu(str(cpuinfo)) == {"name": "Some CPU", "family": "25",
                                               "model": "17", "avx512": avx512}
    assert policy.host_cpu(str(tmp_path / "missing")) == {}


def test_huge_pages_environment_adds_the_tunable_only_where_it_helps():
    env = {"PATH": "/bin"}
    added = runtime.huge_pages_environment(env, "madvise", (2, 36))
    assert added == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    assert env == {"PATH": "/bin"}  # the caller's mapping is not changed
    kept = runtime.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
                                          "always", (2, 35))
    assert kept["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    # Nothing to change: already set (e.g. after the restart), opted out, glibc too old
    # or absent, kernel without huge pages to ask for.
    assert runtime.huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
                                          "madvise", (2, 36)) is None
    assert runtime.huge_pages_environment({"LUNGSEG_JAX_HUGE_PAGES": "0"}, "madvise",
                                          (2, 36)) is None
    assert runtime.huge_pages_environment({}, "madvise", (2, 34)) is None
    assert runtime.huge_pages_environment({}, "madvise", None) is None
    assert runtime.huge_pages_environment({}, "never", (2, 36)) is None
    assert runtime.huge_pages_environment({}, None, (2, 36)) is None


# Prints GLIBC_TUNABLES, calls reexec_with_huge_pages, prints "after". With
# argv[1] == "entry" it poses as ``python -m lungseg_jax.<module>``.
REEXEC = """
import importlib.machinery, os, sys
if sys.argv[1] == "entry":
    sys.modules["__main__"].__spec__ = importlib.machinery.ModuleSpec("lungseg_jax.x", None)
from lungseg_jax.core import runtime
print("start", os.environ.get("GLIBC_TUNABLES"), flush=True)
runtime.reexec_with_huge_pages()
print("after", flush=True)
"""


def run_reexec(mode: str) -> list[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", runtime.HUGE_PAGES_OPT_OUT)}
    return subprocess.run([sys.executable, "-c", REEXEC, mode], cwd=REPO, env=env, check=True,
                          capture_output=True, text=True, timeout=120).stdout.splitlines()


def test_entry_point_restarts_once_with_the_tunable():
    skip_without_huge_pages()
    assert run_reexec("entry") == ["start None", "start glibc.malloc.hugetlb=1", "after"]
    assert run_reexec("library") == ["start None", "after"]  # tests, notebooks: untouched


# What XLA's CPU runtime does on every step: a worker thread allocates a large block
# (its scratch buffers), writes it, frees it. Prints the page faults per round.
FAULTS_PER_ROUND = """
import ctypes, resource, threading
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 << 20

def round_trip():
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)

def in_a_thread():
    thread = threading.Thread(target=round_trip)
    thread.start()
    thread.join()

in_a_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    in_a_thread()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def faults_per_round(tunables: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return float(out.split()[-1])


def test_the_tunable_cuts_the_page_faults_of_a_large_block():
    skip_without_huge_pages()
    pages = (256 << 20) // 4096
    default = faults_per_round("")
    if default < pages / 2:
        pytest.skip("freed blocks are not faulted in afresh here even by default")
    assert faults_per_round(runtime.HUGE_PAGES_TUNABLE) < pages / 100


def test_setup_keeps_the_collector_out_of_tracing():
    def collections_while_tracing():
        counted = []
        callback = lambda phase, info: counted.append(phase)  # noqa: E731
        model = MODELS["incp_unet"](features=(4, 8))
        x = jnp.zeros((1, 16, 16, 1))
        gc.callbacks.append(callback)
        try:
            jax.make_jaxpr(lambda x: model.init_with_output(jax.random.key(0), x, train=True))(x)
        finally:
            gc.callbacks.remove(callback)
        return counted.count("start")

    defaults = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)  # CPython's defaults
        assert collections_while_tracing() > 10
        runtime.setup_jax("")
        assert gc.get_threshold() == runtime.GC_THRESHOLDS
        assert collections_while_tracing() <= 2
    finally:
        gc.set_threshold(*defaults)


def test_logs_show_other_libraries_information_only_when_verbose():
    import logging

    from absl import logging as absl_logging

    def shown(level, path):
        record = logging.LogRecord("x", level, path, 1, "message", None, None)
        return runtime._own_info_or_warning(record)

    # A venv inside a checkout folder named lungseg_jax (launch.sh's) is not the package.
    jax_probe = "/home/u/lungseg_jax/.venv/lib/site-packages/jax/_src/xla_bridge.py"
    ours = runtime.OWN_CODE + "training/loop.py"
    absl_logger = absl_logging.get_absl_logger()
    before = absl_logger.level  # NOTSET as a rule: restored as it was, not as WARNING
    try:
        absl_logging.set_verbosity(absl_logging.INFO)
        assert shown(logging.INFO, ours) and shown(logging.WARNING, jax_probe)
        assert not shown(logging.INFO, jax_probe)
        assert not shown(logging.INFO, "/venv/site-packages/orbax/checkpoint/manager.py")
        absl_logging.set_verbosity(absl_logging.DEBUG)  # --verbosity=1
        assert shown(logging.INFO, jax_probe)
    finally:
        absl_logger.setLevel(before)
