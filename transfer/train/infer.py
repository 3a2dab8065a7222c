"""Inference for K packed runs: each run's class probabilities, pooled ``general`` features, and
the validation loss and UAR that select its epoch.

Every function takes K index sets of different sizes (padded to the longest, the padding
masked) and gathers batches from a :class:`~transfer.train.tensors.DomainTensors`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from transfer.train.device import autocast
from transfer.train.strategies import Strategy
from transfer.train.tensors import DomainTensors


def padded(sets: list[Tensor | None], device: torch.device) -> tuple[Tensor, Tensor]:
    """K index sets of different sizes -> (K, V) indices (padded with the first) and a mask."""
    sizes = [0 if s is None else len(s) for s in sets]
    v = max(max(sizes), 1)
    idx = torch.zeros(len(sets), v, dtype=torch.long, device=device)
    valid = torch.zeros(len(sets), v, dtype=torch.bool, device=device)
    for k, s in enumerate(sets):
        if s is not None and len(s):
            idx[k, :len(s)] = s
            idx[k, len(s):] = s[0]
            valid[k, :len(s)] = True
    return idx, valid


@torch.no_grad()
def predict_runs(strategy: Strategy, dom: DomainTensors, sets: list[Tensor | None],
                 batch: int = 1024, amp: bool = False) -> list[Tensor]:
    """Class probabilities of each run's target model on its own index set: K tensors (n_k, C)."""
    strategy.eval()
    idx, _ = padded(sets, dom.x.device)
    k = idx.shape[0]
    chunk = max(1, batch // k)
    out = []
    for i in range(0, idx.shape[1], chunk):
        with autocast(dom.x.device, amp):
            logits = strategy.predict(dom.gather(idx[:, i:i + chunk]).x)  # (K, b, C)
        out.append(torch.softmax(logits.float(), -1))
    prob = torch.cat(out, 1)
    return [prob[j, :(0 if s is None else len(s))] for j, s in enumerate(sets)]


def predict_proba(strategy: Strategy, dom: DomainTensors, idx: Tensor | list[Tensor],
                  batch: int = 1024, amp: bool = False) -> Tensor:
    """Class probabilities of a one-run strategy for ``idx`` (on the device): (N, C)."""
    return predict_runs(strategy, dom, idx if isinstance(idx, list) else [idx], batch, amp)[0]


@torch.no_grad()
def embed_runs(strategy: Strategy, dom: DomainTensors, sets: list[Tensor | None],
               batch: int = 1024) -> list[Tensor]:
    """Each run's pooled ``general`` features of its own index set: K tensors (n_k, D)."""
    strategy.eval()
    idx, _ = padded(sets, dom.x.device)
    chunk = max(1, batch // idx.shape[0])
    parts = [strategy.general_embedding(dom.gather(idx[:, i:i + chunk]).x).float()
             for i in range(0, idx.shape[1], chunk)]
    z = torch.cat(parts, 1)
    return [z[j, :(0 if s is None else len(s))] for j, s in enumerate(sets)]


def embed(strategy: Strategy, dom: DomainTensors, idx: Tensor | list[Tensor],
          batch: int = 1024) -> Tensor:
    """Pooled ``general`` features of a one-run strategy for ``idx``: (N, D)."""
    return embed_runs(strategy, dom, idx if isinstance(idx, list) else [idx], batch)[0]


@torch.no_grad()
def validate(strategy: Strategy, dom: DomainTensors, idx: Tensor, valid: Tensor,
              n_classes: int, amp: bool, batch: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-run validation loss (NLL of the probabilities) and UAR on the device: (K,), (K,)."""
    strategy.eval()
    k = idx.shape[0]
    chunk = max(1, batch // k)
    probs = []
    for i in range(0, idx.shape[1], chunk):
        with autocast(dom.x.device, amp):
            logits = strategy.predict(dom.gather(idx[:, i:i + chunk]).x)
        probs.append(torch.softmax(logits.float(), -1))
    prob = torch.cat(probs, 1)  # (K, V, C)
    y = dom.y[idx]  # (K, V)
    w = valid.float()
    nll = -torch.log(prob.gather(-1, y.unsqueeze(-1)).squeeze(-1).clamp_min(1e-7))
    loss = (nll * w).sum(1) / w.sum(1).clamp_min(1)
    onehot = nn.functional.one_hot(y, n_classes).float() * w.unsqueeze(-1)  # (K, V, C)
    hits = (onehot * (prob.argmax(-1) == y).float().unsqueeze(-1)).sum(1)  # (K, C)
    support = onehot.sum(1)
    present = support > 0
    recall = torch.where(present, hits / support.clamp_min(1), 0.0)
    uar = recall.sum(1) / present.sum(1).clamp_min(1)
    return loss, uar


