"""One training step run eagerly, or captured once as a CUDA graph and replayed.

A captured graph replays the kernels of its capture on the same tensors: everything the step
reads must live in tensors that the loop updates in place (batch indices, the active mask,
progress, the learning-rate factor), and nothing in it may synchronise with the host. Logged
values are summed on the device (:class:`Accumulator`) and read once per epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class Accumulator:
    """Per-run sums of logged values on the device, over the active steps; read once per
    epoch. Its tensors persist (zeroed in place) so a captured step keeps writing to them."""

    def __init__(self, runs: int, device: torch.device) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.runs, self.device = runs, device

    def add(self, logs: dict[str, Tensor], active: Tensor, prefix: str = "") -> None:
        """Add one step's values (each (K,) or K elements) under ``prefix + key``, counting
        only the runs where ``active`` ((K,) bool) is set. Stays on the device."""
        for key, value in logs.items():
            key = prefix + key
            if key not in self.sums:
                self.sums[key] = torch.zeros(self.runs, device=self.device)
                self.counts[key] = torch.zeros(self.runs, device=self.device)
            v = value.detach().float().reshape(self.runs)
            self.sums[key].add_(torch.where(active, v, 0.0))
            self.counts[key].add_(active.float())

    def reset(self) -> None:
        """Zero every sum and count in place (the tensors stay, for a captured step)."""
        for t in (*self.sums.values(), *self.counts.values()):
            t.zero_()


class StepRunner:
    """Runs one training step function, eagerly or as a replayed CUDA graph.

    With ``capture``, the first ``warmup`` calls run eagerly on a side stream (as PyTorch's
    whole-network capture recipe asks), the next one is captured and every call from then on
    replays the graph. A capture that fails falls back to eager execution with a warning.
    """

    def __init__(self, fn: Callable[[], None], device: torch.device, capture: bool,
                 warmup: int = 3) -> None:
        self.fn, self.device, self.warmup = fn, device, warmup
        self.capture = capture  # the caller decides (on CUDA; a test stands in on the CPU)
        self.graph: Any = None
        self.calls = 0

    def __call__(self) -> None:
        """Run the step once: eagerly, as a warm-up, by capturing and replaying the graph, or
        by replaying it."""
        if not self.capture:
            self.fn()
            return
        if self.graph is not None:
            self.graph.replay()
            return
        if self.calls < self.warmup:
            self.calls += 1
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self.fn()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            return
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.fn()
        except Exception as err:  # noqa: BLE001 - any capture problem: run eagerly instead
            torch.cuda.synchronize(self.device)
            warnings.warn(f"CUDA graph capture failed ({type(err).__name__}: {err}); training "
                          "this pack eagerly", stacklevel=2)
            self.capture = False
            self.fn()
            return
        self.graph = graph
        graph.replay()


