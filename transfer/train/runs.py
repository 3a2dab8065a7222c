"""The per-run training state of a packed model: created, installed and advanced here.

A packed model (:mod:`backbones.layers`) trains K runs at once; its layers read, at every step,
each run's seed, step counter and whether it is active (:class:`backbones.layers.RunInfo`).
That state is the trainer's: this module creates it (:meth:`RunState.create`) and installs it
into every packed layer of a model, with the layer's stream id (:func:`install_run_state`); the
engine advances the counters and sets the active mask in place.

Why the split: the layers need only to read three tensors, and the backbone stage sits below the
training stage (it cannot import it), so the layers declare what they read (``RunInfo``) and the
training stage, which decides seeds, steps and which runs train, owns the object.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from backbones.layers import RunModule


def stream_id(name: str) -> int:
    """A stable 31-bit constant for a name (a layer's path in its model)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


@dataclass
class RunState:
    """What the engine tells a packed model about its K runs at every step (it meets
    :class:`backbones.layers.RunInfo`).

    ``seed`` (K,) int64: per-run seeds for dropout masks; ``counter`` (K,) int64: per-run step
    counters; ``active`` (K,) bool: which runs this step trains (the others keep their
    BatchNorm statistics and counters). Tensors live on the model's device; the engine updates
    them in place, so a captured CUDA graph sees the new values.
    """

    seed: Tensor
    counter: Tensor
    active: Tensor

    @classmethod
    def create(cls, seeds: list[int], device: torch.device | str = "cpu") -> RunState:
        """Run k gets ``seeds[k]``, a zero step counter, and is active."""
        k = len(seeds)
        return cls(torch.tensor(seeds, dtype=torch.int64, device=device),
                   torch.zeros(k, dtype=torch.int64, device=device),
                   torch.ones(k, dtype=torch.bool, device=device))


def install_run_state(module: nn.Module, state: RunState | None) -> None:
    """Give every packed layer of ``module`` the run state (and its stream id by path); None
    takes it away (the layers then draw from torch's generator, as outside training)."""
    for name, child in module.named_modules():
        if isinstance(child, RunModule):
            child.run_state = state
            child.stream = stream_id(name)
