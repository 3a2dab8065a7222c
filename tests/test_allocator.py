"""The glibc allocator setting the engine applies on a CPU."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from transfer.common.allocator import retain_freed_memory
if sys.argv[1] == "1":
    assert retain_freed_memory() and retain_freed_memory()  # once, idempotent
n = 12 << 20  # 48 MiB of float32: above glibc's largest dynamic mmap threshold (32 MiB)
for _ in range(10):  # the heap grows over the first few (64-byte aligned requests do not
    # fit a freed block of the same size until neighbouring freed blocks coalesce)
    torch.empty(n).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.empty(n).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setting: bool) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(int(setting))], check=True,
                         capture_output=True, text=True, env={"OMP_NUM_THREADS": "1"})
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_large_blocks_are_reused_instead_of_faulted_in_again():
    """Without the setting every 48-MiB allocation maps fresh zero pages (12k page faults);
    with it the freed block is reused (a fresh process each, so the heap's history is known)."""
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018
    except AttributeError:
        pytest.skip("not glibc")
    assert _faults(False) > 5 * 10_000
    assert _faults(True) < 1_000
