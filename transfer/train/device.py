"""Where and in what precision training runs: the device, bf16 autocast, host arrays to the device.

bf16 autocast (fp32 master weights) is used on CUDA and on CPUs with native bf16 (AVX512-BF16 or
AMX), where bf16 convolutions and matmuls run faster than fp32; elsewhere a recipe's ``amp``
changes nothing. :func:`precision` says which was used, for the results folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA where available, else the CPU; ``cuda`` without one is a UserError."""
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from transfer import UserError

            raise UserError("device = 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions and matmuls run faster than fp32 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_enabled(device: torch.device, amp: bool) -> bool:
    """bf16 autocast (fp32 master weights) on CUDA, and on CPUs with native bf16."""
    return amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()))


def autocast(device: torch.device, amp: bool, cache: bool = True):
    """The bf16 ``torch.autocast`` context for ``device``, enabled where :func:`amp_enabled`
    says so; ``cache``: autocast's weight-cast cache (``cache_enabled``)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=amp_enabled(device, amp), cache_enabled=cache)




def precision(device: torch.device, amp: bool) -> str:
    """The precision a run uses: ``bf16 autocast`` or ``fp32``."""
    return "bf16 autocast" if amp_enabled(device, amp) else "fp32"


def to_device(x: np.ndarray, device: torch.device) -> Tensor:
    """A NumPy array as a tensor on ``device`` (read-only arrays are copied)."""
    return torch.from_numpy(np.require(x, requirements=["C", "W"])).to(device)  # copies read-only
