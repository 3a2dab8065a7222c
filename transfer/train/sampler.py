"""Counter-based batches per run: a run draws the same batches alone or in a pack of any size.

A run's permutation of its training indices and its source draws are a hash of (its seed, a
stream, the epoch or phase counter) (:func:`backbones.layers.hash_uniform`), so they do not
depend on the other runs of its pack, the pack's size or the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from backbones.layers import hash_uniform
from transfer.train.tensors import DomainTensors

# Streams of the counter-based sampler (any distinct constants).
_PERM, _SOURCE, _PHASE = 0x5EED01, 0x5EED02, 0x5EED10


@dataclass
class Plan:
    """One epoch's (or phase's) batches for all runs: indices, activity and progress."""

    tgt: Tensor  # (S, K, B)
    src: Tensor | None  # (S, K, B)
    active: Tensor  # (S, K) bool
    progress: Tensor  # (S, K)


class Sampler:
    """Counter-based batches per run (a run's batches do not depend on its pack)."""

    def __init__(self, target: DomainTensors, source: DomainTensors | None, seeds: Tensor,
                 batch: int) -> None:
        self.target, self.source, self.seeds, self.batch = target, source, seeds, batch
        self.device = target.x.device

    def _uniform(self, k: int, stream: int, counter: int, n: int) -> Tensor:
        return hash_uniform(self.seeds[k:k + 1], stream, counter, n)[0]

    def _stack(self, rows: list[Tensor], steps: list[int], s_max: int) -> Tensor:
        """Per-run (steps_k, B) index rows -> (S, K, B), padded with the run's first batch."""
        b = self.batch
        out = torch.empty(s_max, len(rows), b, dtype=torch.long, device=self.device)
        for k, (r, n) in enumerate(zip(rows, steps, strict=True)):
            out[:n, k] = r
            if n < s_max:
                out[n:, k] = r[0] if n else 0
        return out

    def _activity(self, steps: list[int], s_max: int, alive: list[bool]) -> Tensor:
        s = torch.arange(s_max).unsqueeze(1)
        act = (s < torch.tensor(steps).unsqueeze(0)) & torch.tensor(alive).unsqueeze(0)
        return act.to(self.device)

    def epoch(self, epoch: int, epochs: int, alive: list[bool], with_source: bool) -> Plan:
        """One epoch's batches: per run a fresh permutation of its training indices cut into
        ``len(train) // batch`` full batches (the remainder is left out), and with
        ``with_source`` as many source batches drawn with replacement. A run is active on its
        own steps while ``alive``; ``progress`` runs from 0 at its first step of the first
        epoch to 1 at its last step of epoch ``epochs - 1``."""
        b, k_runs = self.batch, len(self.target.train)
        steps = [len(t) // b for t in self.target.train]
        s_max = max(steps)
        tgt_rows, src_rows = [], []
        for k, train in enumerate(self.target.train):
            order = torch.argsort(self._uniform(k, _PERM, epoch, len(train)))
            tgt_rows.append(train[order][:steps[k] * b].view(steps[k], b))
            if with_source and self.source is not None:
                src_rows.append(self._source_rows(k, _SOURCE, epoch, steps[k]))
        progress = torch.tensor([[(epoch * steps[k] + s) / max(steps[k] * epochs - 1, 1)
                                  for k in range(k_runs)] for s in range(s_max)],
                                dtype=torch.float32, device=self.device)
        return Plan(self._stack(tgt_rows, steps, s_max),
                     self._stack(src_rows, steps, s_max) if src_rows else None,
                     self._activity(steps, s_max, alive), progress)

    def _source_rows(self, k: int, stream: int, counter: int, n_steps: int) -> Tensor:
        train = self.source.train[k]
        u = self._uniform(k, stream, counter, n_steps * self.batch)
        pick = (u * len(train)).long().clamp_max(len(train) - 1)
        return train[pick].view(n_steps, self.batch)

    def phase(self, index: int, counter: int, steps: list[int], progress: float,
              alive: list[bool]) -> Plan:
        """Target and source draws (with replacement) for a phase of ``steps[k]`` steps."""
        b, s_max = self.batch, max(steps)
        tgt_rows, src_rows = [], []
        for k, train in enumerate(self.target.train):
            u = self._uniform(k, _PHASE + 2 * index, counter, steps[k] * b)
            pick = (u * len(train)).long().clamp_max(len(train) - 1)
            tgt_rows.append(train[pick].view(steps[k], b))
            if self.source is not None:
                src_rows.append(self._source_rows(k, _PHASE + 2 * index + 1, counter, steps[k]))
        prog = torch.full((s_max, len(steps)), progress, device=self.device)
        return Plan(self._stack(tgt_rows, steps, s_max),
                     self._stack(src_rows, steps, s_max) if src_rows else None,
                     self._activity(steps, s_max, alive), prog)


