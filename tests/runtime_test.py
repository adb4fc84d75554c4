"""runtime: freed memory kept for reuse (no page faults on every execution's buffers)."""

import subprocess
import sys

import pytest

from lungseg_jax import runtime

# What XLA's CPU runtime does on every step: a worker thread allocates a large block
# (its scratch buffers), writes it, frees it. Prints the page faults per round.
FAULTS_PER_ROUND = """
import ctypes, resource, sys, threading
from lungseg_jax import runtime
if sys.argv[1] == "keep":
    assert runtime.keep_freed_memory()
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


def faults_per_round(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_ROUND, mode], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[-1])


def test_freed_memory_is_reused_without_page_faults():
    if not runtime.keep_freed_memory():
        pytest.skip("no glibc mallopt here (not Linux with glibc)")
    few = (256 << 20) // 4096 // 100  # 1% of the block's 4 KiB pages
    if faults_per_round("default") < few:
        pytest.skip("freed blocks are not faulted in afresh here even by default")
    assert faults_per_round("keep") < few
