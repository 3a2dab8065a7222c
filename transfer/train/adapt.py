"""Test-time adaptation: a trained model adapts to unlabelled test audio before it predicts.

- **AdaBN** (Li et al. 2016): every BatchNorm layer's statistics are recomputed on the test
  audio, so the features are normalised as the test site's recordings need (a channel shift
  moves the activations' means and variances; the learned weights stay).
- **TENT** (Wang et al. 2021): AdaBN, then the BatchNorm scales and shifts (nothing else) are
  trained for a few steps to minimise the entropy of the model's predictions on the test
  audio (BatchNorm in training mode, normalising each batch by its own statistics, as in
  TENT); the statistics are then recomputed once more for the adapted weights.

Both see the test audio only, never its labels. :func:`adapt_predict` adapts one copy of a
model per set of test segments: the whole test fold (a new site) or each test speaker alone
(the classic speaker normalisation for emotion). The caller refuses per-speaker adaptation
where the label belongs to the subject: a speaker's statistics would then carry the label.

The model is one run's target backbone as an ordinary (K = 1) module
(:func:`transfer.train.packs.unpack_model`); it is never changed (a copy adapts).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from backbones.layers import RunBatchNorm
from transfer import UserError

ADAPT = ("none", "adabn", "tent")


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` (packed and torch's own)."""
    return [m for m in model.modules()
            if isinstance(m, (RunBatchNorm, nn.modules.batchnorm._BatchNorm))]


def _forward_chunks(model: nn.Module, x: Tensor, batch: int) -> Tensor:
    return torch.cat([model(chunk) for chunk in x.split(batch)])  # (N, classes)


@torch.no_grad()
def adabn(model: nn.Module, x: Tensor, batch: int = 64) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are those of ``x``.

    The running statistics restart and every batch of ``x`` (in order) adds its statistics
    with a momentum of (its size / segments so far), so the result is the size-weighted mean
    of the batches' statistics (with one batch: exactly the statistics of ``x``). Dropout
    stays off.

    Args:
        model: a trained ordinary (K = 1) model.
        x: the unlabelled audio's features.
        batch: segments per forward pass.

    Shape: x (N, F, T).
    """
    adapted = copy.deepcopy(model).eval()
    layers = batchnorm_layers(adapted)
    if not layers:
        raise UserError(f"test-time adaptation needs BatchNorm layers; "
                        f"{type(model).__name__} has none (set evaluate.adapt = [\"none\"])")
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        m.train()
    seen = 0
    for chunk in x.split(batch):
        seen += len(chunk)
        for m in layers:
            m.momentum = len(chunk) / seen
        adapted(chunk)
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    return adapted.eval()


def tent(model: nn.Module, x: Tensor, steps: int = 10, lr: float = 1e-3, batch: int = 64
         ) -> nn.Module:
    """A copy of ``model`` adapted to ``x`` by TENT (see the module docstring): AdaBN, then
    ``steps`` Adam steps on the BatchNorm scales and shifts minimising the mean prediction
    entropy of a batch (the batches of ``x`` in turn), then AdaBN again.

    Shape: x (N, F, T).
    """
    from transfer.train.optim import FlatParams, PackedOptimizer

    adapted = adabn(model, x, batch)
    layers = batchnorm_layers(adapted)
    for p in adapted.parameters():
        p.requires_grad_(False)
    params = [p for m in layers for p in (m.weight, m.bias) if p is not None]
    for p in params:
        p.requires_grad_(True)
    # the engine's Adam (torch.optim's first step would import torch._dynamo: seconds)
    flat = FlatParams(adapted, 1)
    opt = PackedOptimizer(flat, [{"params": params}], "adam", lr)
    active = torch.ones(1, dtype=torch.bool, device=x.device)
    chunks = x.split(batch)
    for m in layers:
        m.train()  # batch statistics, as TENT; dropout stays off
    for step in range(steps):
        p = torch.softmax(adapted(chunks[step % len(chunks)]).float(), -1)  # (B, C)
        loss = -(p * torch.log(p.clamp_min(1e-8))).sum(-1).mean()
        flat.grad.zero_()
        loss.backward()
        opt.step(active)
    for p in params:
        p.requires_grad_(False)
    return adabn(adapted.eval(), x, batch)


def adapt_predict(model: nn.Module, x: Tensor, groups: np.ndarray, how: str, per: str,
                  steps: int = 10, lr: float = 1e-3, batch: int = 64) -> np.ndarray:
    """Class probabilities of test segments, each set of them seen by a copy of ``model``
    adapted to that set alone.

    Args:
        model: a trained ordinary (K = 1) model.
        x: the test segments' features, standardised as in training.
        groups: (N,) the speaker of every segment.
        how: ``none``, ``adabn`` or ``tent``.
        per: ``fold`` (one adaptation on all of ``x``) or ``speaker`` (one per speaker).
        steps, lr: TENT's steps and learning rate.
        batch: segments per forward pass.

    Shape: x (N, F, T) -> (N, classes).
    """
    if how not in ADAPT:
        raise UserError(f"evaluate.adapt must be one of {', '.join(ADAPT)}, not {how!r}")
    groups = np.asarray(groups)
    sets = ([np.arange(len(x))] if per == "fold"
            else [np.flatnonzero(groups == g) for g in np.unique(groups)])
    out = np.zeros((len(x), 0), np.float32)
    for idx in sets:
        part = x[torch.as_tensor(idx, device=x.device)]
        if how == "adabn":
            adapted = adabn(model, part, batch)
        elif how == "tent":
            adapted = tent(model, part, steps, lr, batch)
        else:
            adapted = model.eval()
        with torch.no_grad():
            prob = torch.softmax(_forward_chunks(adapted, part, batch).float(), -1).cpu().numpy()
        if out.shape[1] == 0:
            out = np.zeros((len(x), prob.shape[1]), np.float32)
        out[idx] = prob
    return out
