"""Shared domain-alignment pieces: gradient reversal, MMD, discriminator, projectors.

One of each, used by every strategy that needs it (dann, mmd_ae, ddg) and by the diagnostics.
"""

from __future__ import annotations

import math

import torch
from geomloss import SamplesLoss
from torch import Tensor, nn


def grl_coefficient(progress: float, gamma: float = 10.0) -> float:
    """Ganin & Lempitsky's schedule 2 / (1 + exp(-gamma p)) - 1, p = training progress in [0, 1]."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coeff: float) -> Tensor:  # noqa: ANN001
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        return -ctx.coeff * grad, None


def reverse_gradient(x: Tensor, coeff: float = 1.0) -> Tensor:
    """Identity forward; the gradient is multiplied by ``-coeff`` on the way back."""
    return _ReverseGrad.apply(x, coeff)


class GradientReversal(nn.Module):
    """Gradient reversal layer whose coefficient follows :func:`grl_coefficient`.

    Set ``progress`` (0..1) before the forward pass; ``max_coeff`` scales the schedule.
    """

    def __init__(self, max_coeff: float = 1.0, gamma: float = 10.0) -> None:
        super().__init__()
        self.max_coeff, self.gamma, self.progress = max_coeff, gamma, 0.0

    @property
    def coeff(self) -> float:
        return self.max_coeff * grl_coefficient(self.progress, self.gamma)

    def forward(self, x: Tensor) -> Tensor:
        return reverse_gradient(x, self.coeff)


class MultiKernelMMD(nn.Module):
    """Squared MMD with a sum of Gaussian kernels, computed by geomloss.

    The bandwidths are ``kernels`` powers of ``ratio`` centred on the mean pairwise distance of
    the pooled samples (detached), which makes the loss scale-free. geomloss' ``"gaussian"``
    loss with blur s is half the squared MMD under k(x, y) = exp(-|x - y|^2 / (2 s^2)); memory is
    O(n m), never O((n + m)^2 d).

    Inputs: x (N, D), y (M, D). Output: a scalar.
    """

    def __init__(self, kernels: int = 5, ratio: float = 2.0) -> None:
        super().__init__()
        self.kernels, self.ratio = kernels, ratio

    def bandwidths(self, x: Tensor, y: Tensor) -> list[float]:
        with torch.no_grad():
            z = torch.cat([x, y]).float()
            n = z.shape[0]
            mean_dist = torch.cdist(z, z).sum() / max(n * (n - 1), 1)
            centre = max(float(mean_dist), 1e-6)
        half = self.kernels // 2
        return [centre * self.ratio ** (i - half) for i in range(self.kernels)]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        x, y = x.float(), y.float()
        total = x.new_zeros(())
        with torch.autocast(device_type=x.device.type, enabled=False):  # kernels in fp32
            for blur in self.bandwidths(x, y):
                loss = SamplesLoss("gaussian", blur=blur, backend="tensorized")
                total = total + 2.0 * loss(x, y)
        return total


def mmd_reference(x: Tensor, y: Tensor, bandwidths: list[float]) -> Tensor:
    """The same squared MMD by the direct (biased) kernel formula; for tests."""

    def k(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * s * s)) for s in bandwidths)

    return k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()


class DomainDiscriminator(nn.Module):
    """MLP that tells source (1) from target (0). Shape: (B, D) -> (B,) logits."""

    def __init__(self, in_dim: int, hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(-1)


def adversarial_loss(disc: DomainDiscriminator, source: Tensor, target: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """Binary cross-entropy of the discriminator on both domains, and its accuracy.

    Put a :class:`GradientReversal` in front of the features so that the features learn to
    confuse the discriminator while it learns to separate them.
    """
    logits = torch.cat([disc(source), disc(target)])
    labels = torch.cat([torch.ones(source.shape[0], device=logits.device),
                        torch.zeros(target.shape[0], device=logits.device)])
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
    acc = ((logits > 0).float() == labels).float().mean().detach()
    return loss, acc


class Projector(nn.Module):
    """Small conv encoder from general sequence features to an alignment space.

    Inputs: seq (B, 2, C, T) from ``forward_general``. Output: (B, out_dim), time-averaged.
    """

    def __init__(self, channels: int, out_dim: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv1d(2 * channels, out_dim, 3, padding=1), nn.BatchNorm1d(out_dim), nn.ReLU(),
            nn.Conv1d(out_dim, out_dim, 3, padding=1))
        self.decoder = nn.Sequential(  # used only for autoencoder pretraining
            nn.Conv1d(out_dim, out_dim, 3, padding=1), nn.ReLU(),
            nn.Conv1d(out_dim, 2 * channels, 3, padding=1))

    def encode_sequence(self, seq: Tensor) -> Tensor:
        return self.encoder(seq.flatten(1, 2))  # (B, out_dim, T)

    def forward(self, seq: Tensor) -> Tensor:
        return self.encode_sequence(seq).mean(-1)

    def reconstruction_loss(self, seq: Tensor) -> Tensor:
        flat = seq.flatten(1, 2)
        return nn.functional.mse_loss(self.decoder(self.encoder(flat)), flat)


def alignment_loss(mmd: MultiKernelMMD, disc: DomainDiscriminator, grl: GradientReversal,
                   source: Tensor, target: Tensor, progress: float, mmd_weight: float,
                   adv_weight: float) -> tuple[Tensor, dict[str, Tensor]]:
    """``mmd_weight`` * MMD + ``adv_weight`` * adversarial loss (behind ``grl``) between two
    batches of aligned features, with the values to log."""
    value = mmd(source, target)
    grl.progress = progress
    adv, acc = adversarial_loss(disc, grl(source), grl(target))
    total = mmd_weight * value + adv_weight * adv
    return total, {"mmd": value.detach(), "adv": adv.detach(), "disc_acc": acc}
