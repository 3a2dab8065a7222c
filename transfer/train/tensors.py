"""Training data on the device: a domain's features, labels and per-run index sets.

:class:`DomainTensors` holds one domain (source or target) for the K runs of a pack: the raw
features stay resident on the device and batches are gathered by index and standardised per run
(:class:`Standardizer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from transfer.train.strategies import Batch


@dataclass
class Standardizer:
    """Per-feature mean/std over (segments, time) of a training set; applied per batch."""

    mean: Tensor  # (1, F, 1)
    std: Tensor
    enabled: bool = True

    @classmethod
    def fit(cls, x: Tensor, idx: Tensor | None, enabled: bool = True) -> Standardizer:
        """Mean and std (floored at 1e-5) per feature of ``x[idx]`` (all of ``x`` when
        ``idx`` is None) over segments and time; ``enabled = False``: the identity.
        Shape: x (N, F, T) -> mean, std (1, F, 1)."""
        f = x.shape[1]
        if not enabled:
            return cls(x.new_zeros(1, f, 1), x.new_ones(1, f, 1), enabled=False)
        sub = x if idx is None else x[idx]
        mean = sub.mean(dim=(0, 2), keepdim=True)
        std = sub.std(dim=(0, 2), keepdim=True).clamp_min(1e-5)
        return cls(mean, std)

    def __call__(self, x: Tensor) -> Tensor:
        """``(x - mean) / std``, or ``x`` unchanged when disabled. Shape: (..., F, T) -> same."""
        return (x - self.mean) / self.std if self.enabled else x

    def to_dict(self) -> dict[str, Tensor]:
        """``mean`` and ``std`` on the CPU, for a checkpoint."""
        return {"mean": self.mean.cpu(), "std": self.std.cpu()}


@dataclass
class DomainTensors:
    """One domain on the device for K runs: raw features, labels, and per run a
    standardizer and index sets. Single values (one run, or the same for every run) are
    accepted where lists are expected.

    Shapes: x (N, F, T); y (N,); ``train``/``val``: K index tensors.
    """

    x: Tensor
    y: Tensor
    norm: Standardizer | list[Standardizer]
    train: Tensor | list[Tensor]
    val: Tensor | list[Tensor | None] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.train, Tensor):
            self.train = [self.train]
        k = len(self.train)
        if not isinstance(self.val, list):
            self.val = [self.val] * k
        if isinstance(self.norm, Standardizer):
            self.norm = [self.norm] * k
        self._mean = torch.stack([n.mean for n in self.norm])  # (K, 1, F, 1)
        self._std = torch.stack([n.std for n in self.norm])
        self._enabled = any(n.enabled for n in self.norm)

    @property
    def runs(self) -> int:
        """K, the number of runs this domain serves."""
        return len(self.train)

    def for_runs(self, k: int) -> DomainTensors:
        """The same domain for ``k`` runs (one run's sets repeated)."""
        if self.runs == k:
            return self
        if self.runs != 1:
            raise ValueError(f"a domain of {self.runs} runs cannot serve {k}")
        return DomainTensors(self.x, self.y, self.norm * k, self.train * k, self.val * k)

    def select(self, runs: list[int]) -> DomainTensors:
        """The same domain for the runs ``runs`` only (a pack without its finished runs)."""
        return DomainTensors(self.x, self.y, [self.norm[k] for k in runs],
                             [self.train[k] for k in runs], [self.val[k] for k in runs])

    def gather(self, idx: Tensor) -> Batch:
        """idx (K, B) -> Batch(x (K, B, F, T) standardised per run, y (K, B))."""
        x = self.x[idx]
        if self._enabled:
            x = (x - self._mean) / self._std
        return Batch(x, self.y[idx])


