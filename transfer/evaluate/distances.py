"""Distances between two samples of features: the multi-kernel MMD, per packed run.

Training aligns domains with it (:mod:`transfer.train.alignment`) and the diagnostics measure
the domain gap with it (:mod:`transfer.evaluate.diagnostics`). Nothing synchronises with the
host, so a training step that uses it can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
from geomloss import SamplesLoss
from torch import Tensor, nn


class MultiKernelMMD(nn.Module):
    """Squared MMD with a sum of Gaussian kernels, computed by geomloss, per run.

    The bandwidths are ``kernels`` powers of ``ratio`` centred on the mean pairwise distance of
    the pooled samples of each run (detached), which makes the loss scale-free. Since the
    Gaussian MMD with bandwidth s on (x, y) equals the one with bandwidth 1 on (x / s, y / s),
    each run's samples are divided by its centre and geomloss runs with fixed blurs on all runs
    at once (its batched "tensorized" backend). geomloss' ``"gaussian"`` loss with blur s is
    half the squared MMD under k(x, y) = exp(-|x - y|^2 / (2 s^2)); memory is O(n m) per run,
    never O((n + m)^2 d).

    Inputs: x (K, N, D), y (K, M, D) (or (N, D), (M, D)). Output: (K,) (or a scalar).
    """

    def __init__(self, kernels: int = 5, ratio: float = 2.0) -> None:
        super().__init__()
        self.kernels, self.ratio = kernels, ratio
        half = kernels // 2
        self.losses = [SamplesLoss("gaussian", blur=ratio ** (i - half), backend="tensorized")
                       for i in range(kernels)]

    @staticmethod
    def centre(x: Tensor, y: Tensor) -> Tensor:
        """Mean pairwise distance of the pooled samples, per run: (K,)."""
        with torch.no_grad():
            z = torch.cat([x, y], -2).float()
            n = z.shape[-2]
            return (torch.cdist(z, z).sum((-1, -2)) / max(n * (n - 1), 1)).clamp_min(1e-6)

    def bandwidths(self, x: Tensor, y: Tensor) -> Tensor:
        """(K, kernels): the bandwidths of every run."""
        half = self.kernels // 2
        powers = torch.tensor([self.ratio ** (i - half) for i in range(self.kernels)],
                              device=x.device)
        return self.centre(x, y).unsqueeze(-1) * powers

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """The squared MMD of each run's two samples, in fp32 even under autocast.

        Shape: x (K, N, D), y (K, M, D) -> (K,); x (N, D), y (M, D) -> a scalar.
        """
        single = x.dim() == 2
        if single:
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        with torch.autocast(device_type=x.device.type, enabled=False):  # kernels in fp32
            x, y = x.float(), y.float()
            scale = self.centre(x, y).view(-1, 1, 1)
            xs, ys = x / scale, y / scale
            total = sum(2.0 * loss(xs, ys) for loss in self.losses)  # (K,)
        return total[0] if single else total


def mmd_reference(x: Tensor, y: Tensor, bandwidths: list[float]) -> Tensor:
    """The same squared MMD by the direct (biased) kernel formula, one run; for tests."""

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * s * s)) for s in bandwidths)

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()
