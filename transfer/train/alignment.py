"""Shared domain-alignment pieces: gradient reversal, discriminator, projectors, and the MMD
(from :mod:`transfer.evaluate.distances`, which the diagnostics use too).

One of each, used by every strategy that needs it (dann, mmd_ae, ddg).
Every piece works on K packed runs at once (a leading run dimension, see
:mod:`backbones.layers`) and returns one value per run; nothing synchronises with the host, so
a training step that uses them can be captured in a CUDA graph.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from backbones.layers import RunBatchNorm, RunDropout, RunLinear, TemporalConv
from transfer.evaluate.distances import MultiKernelMMD


def grl_coefficient(progress: float | Tensor, gamma: float | Tensor = 10.0) -> float | Tensor:
    """Ganin & Lempitsky's schedule 2 / (1 + exp(-gamma p)) - 1, p = training progress in [0, 1].

    ``progress`` and ``gamma`` may be tensors ((K,) per run; kept on their device)."""
    if isinstance(progress, Tensor) or isinstance(gamma, Tensor):
        progress = torch.as_tensor(progress, dtype=torch.float32,
                                   device=gamma.device if isinstance(gamma, Tensor) else None)
        return 2.0 / (1.0 + torch.exp(-gamma * progress)) - 1.0
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, coeff: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(coeff)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        (coeff,) = ctx.saved_tensors
        return -coeff.to(grad.dtype) * grad, None


def reverse_gradient(x: Tensor, coeff: float | Tensor = 1.0) -> Tensor:
    """Identity forward; the gradient is multiplied by ``-coeff`` on the way back.

    ``coeff``: a number, or (K,) per run for packed inputs (K, ...)."""
    c = torch.as_tensor(coeff, dtype=torch.float32, device=x.device)
    if c.dim() == 1:
        c = c.view(-1, *([1] * (x.dim() - 1)))
    return _ReverseGrad.apply(x, c)


class GradientReversal(nn.Module):
    """Gradient reversal layer whose coefficient follows :func:`grl_coefficient`.

    Set ``progress`` (0..1, a float, a 0-d tensor or (K,) per run) before the forward pass;
    ``max_coeff`` scales the schedule. ``max_coeff`` and ``gamma`` may be (K,) tensors (one
    per packed run: a sweep's draws); they are buffers then, so they move with the module.
    """

    def __init__(self, max_coeff: float | Tensor = 1.0, gamma: float | Tensor = 10.0) -> None:
        super().__init__()
        for name, value in (("max_coeff", max_coeff), ("gamma", gamma)):
            if isinstance(value, Tensor):
                self.register_buffer(name, value.detach().clone(), persistent=False)
            else:
                setattr(self, name, value)
        self.progress: float | Tensor = 0.0

    @property
    def coeff(self) -> float | Tensor:
        return self.max_coeff * grl_coefficient(self.progress, self.gamma)

    def forward(self, x: Tensor) -> Tensor:
        return reverse_gradient(x, self.coeff)


class DomainDiscriminator(nn.Module):
    """MLP that tells source (1) from target (0), one per run. Shape: (K, B, D) -> (K, B)."""

    def __init__(self, in_dim: int, hidden: int = 64, dropout: float = 0.1, runs: int = 1
                 ) -> None:
        super().__init__()
        self.net = nn.Sequential(RunLinear(runs, in_dim, hidden), nn.ReLU(),
                                 RunDropout(runs, dropout, channels=False),
                                 RunLinear(runs, hidden, hidden), nn.ReLU(),
                                 RunLinear(runs, hidden, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(-1)


def adversarial_loss(disc: DomainDiscriminator, source: Tensor, target: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """Binary cross-entropy of the discriminator on both domains, and its accuracy, per run.

    Inputs: (K, N, D) and (K, M, D). Outputs: (K,) and (K,).
    Put a :class:`GradientReversal` in front of the features so that the features learn to
    confuse the discriminator while it learns to separate them.
    """
    logits = torch.cat([disc(source), disc(target)], 1).float()  # (K, N + M)
    labels = torch.cat([logits.new_ones(source.shape[:2]), logits.new_zeros(target.shape[:2])], 1)
    loss = nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    acc = ((logits > 0).float() == labels).float().mean(1).detach()
    return loss.mean(1), acc


class Projector(nn.Module):
    """Small conv encoder from general sequence features to an alignment space, per run.

    Inputs: seq (K, D, T, B), time-aligned (``GeneralFeatures.sequence``: for TIM-Net both
    directions in forward time, so the kernel mixes neighbouring moments, not t and T - 1 - t).
    Output: (K, B, out_dim), time-averaged.
    """

    def __init__(self, channels: int, out_dim: int = 64, runs: int = 1) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            TemporalConv(runs, channels, out_dim, 3, causal=False),
            RunBatchNorm(runs, runs * out_dim), nn.ReLU(),
            TemporalConv(runs, out_dim, out_dim, 3, causal=False))
        self.decoder = nn.Sequential(  # used only for autoencoder pretraining
            TemporalConv(runs, out_dim, out_dim, 3, causal=False), nn.ReLU(),
            TemporalConv(runs, out_dim, channels, 3, causal=False))

    def forward(self, seq: Tensor) -> Tensor:
        return self.encoder(seq).mean(2).transpose(1, 2)  # (K, B, out_dim)

    def reconstruction_loss(self, seq: Tensor) -> Tensor:
        """Mean squared reconstruction error per run: (K,)."""
        err = (self.decoder(self.encoder(seq)) - seq) ** 2
        return err.flatten(1).mean(1)


def alignment_loss(mmd: MultiKernelMMD, disc: DomainDiscriminator, grl: GradientReversal,
                   source: Tensor, target: Tensor, progress: float | Tensor,
                   mmd_weight: float | Tensor, adv_weight: float | Tensor
                   ) -> tuple[Tensor, dict[str, Tensor]]:
    """``mmd_weight`` * MMD + ``adv_weight`` * adversarial loss (behind ``grl``) between two
    batches of aligned features (K, N, D) and (K, M, D), per run, with the values to log. The
    weights are numbers or (K,) per run."""
    value = mmd(source, target)
    grl.progress = progress
    adv, acc = adversarial_loss(disc, grl(source), grl(target))
    total = mmd_weight * value + adv_weight * adv
    return total, {"mmd": value.detach(), "adv": adv.detach(), "disc_acc": acc}
