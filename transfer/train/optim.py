"""Optimisers for K packed runs: one flat parameter buffer, per-run steps, masks and settings.

All trainable parameters of a strategy live in one flat buffer (:class:`FlatParams`; the
modules' parameters are views of it), so an optimiser step is a handful of full-buffer kernels
whatever K is. :class:`PackedOptimizer` implements Adam, AdamW and SGD with momentum with the
update rules of ``torch.optim`` (no amsgrad, maximize, nesterov or dampening), per-run step
counts and a per-run mask (a masked run's parameters and moments do not move).

Per-run hyperparameters: a group's learning rate, the weight decay and the momentum may be
numbers (the same for every run) or (K,) tensors (one value per run: the draws of a sweep
packed into one model); the learning-rate factor of a schedule too.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from transfer.common.config import TrainConfig

#: A hyperparameter: one number for every run, or a (K,) tensor with one value per run.
PerRun = float | Tensor


class FlatParams:
    """All trainable parameters of a module in one flat buffer, gradients in another.

    The module's parameters become views of ``data`` and their ``.grad`` views of ``grad``
    (autograd accumulates in place into a gradient that exists), so optimisers and gradient
    clipping act on two tensors. Each parameter's K run chunks are contiguous; ``rid`` (N,)
    names the run of every element.
    """

    def __init__(self, module: torch.nn.Module, runs: int) -> None:
        seen: set[int] = set()
        self.params = [p for p in module.parameters()
                       if p.requires_grad and not (id(p) in seen or seen.add(id(p)))]
        for p in self.params:
            if p.shape[0] % runs:
                raise ValueError(f"a parameter of shape {tuple(p.shape)} is not packed by {runs} "
                                 "runs along its first dimension")
        device = self.params[0].device if self.params else torch.device("cpu")
        self.runs = runs
        self.data = (torch.cat([p.detach().reshape(-1) for p in self.params]) if self.params
                     else torch.zeros(0, device=device))
        self.grad = torch.zeros_like(self.data)
        self.slices: dict[int, tuple[int, int]] = {}
        offset, rid = 0, []
        for p in self.params:
            n = p.numel()
            p.data = self.data[offset:offset + n].view_as(p)
            p.grad = self.grad[offset:offset + n].view_as(p)
            self.slices[id(p)] = (offset, n)
            rid.append(torch.arange(runs, device=device).repeat_interleave(n // runs))
            offset += n
        self.rid = torch.cat(rid) if rid else torch.zeros(0, dtype=torch.long, device=device)

    def mask(self, params: list[Tensor]) -> Tensor:
        """(N,) bool: the elements of ``params``."""
        out = torch.zeros_like(self.data, dtype=torch.bool)
        for p in params:
            if id(p) not in self.slices:
                raise ValueError("an optimiser was given a parameter that does not train "
                                 "(requires_grad is off or it is not part of the strategy)")
            a, n = self.slices[id(p)]
            out[a:a + n] = True
        return out

    def grad_norms(self, params: list[Tensor]) -> Tensor:
        """Per-run gradient norms over ``params``: (K,). Row sums per parameter, then a sum
        over parameters in a fixed order: the same sums for a run in a pack of any size."""
        if not params:
            return self.data.new_zeros(self.runs)
        rows = [p.grad.view(self.runs, -1) for p in params]
        return torch.stack([(r * r).sum(1) for r in rows], 1).sum(1).sqrt()  # (K, P) rows

    def per_element(self, value: PerRun) -> PerRun:
        """A per-run value spread over the buffer's elements ((K,) -> (N,)); a number stays a
        number (the same kernels as one run alone)."""
        if isinstance(value, Tensor):
            return value.to(self.data.device, self.data.dtype)[self.rid]
        return value


class PackedOptimizer:
    """Adam, AdamW or SGD (momentum) over the elements of a :class:`FlatParams` that belong to
    its parameter groups (each ``{"params": [...], "lr": number or (K,)}``).

    ``set_lr_factor`` scales every group's learning rate (the schedule; a number or one per
    run); the factor lives on the device, so a captured step sees it.
    """

    def __init__(self, flat: FlatParams, groups: list[dict[str, Any]], kind: str, lr: PerRun,
                 betas: tuple[float, float] = (0.9, 0.999), momentum: PerRun = 0.9,
                 weight_decay: PerRun = 0.0, eps: float = 1e-8) -> None:
        self.flat, self.kind = flat, kind
        self.betas, self.eps = betas, eps
        self.momentum, self.wd = flat.per_element(momentum), flat.per_element(weight_decay)
        data = flat.data
        self.owned = torch.zeros_like(data, dtype=torch.bool)
        self.lr_el = torch.zeros_like(data)
        self.params: list[Tensor] = []
        for g in groups:
            if not g["params"]:
                continue
            self.params += list(g["params"])
            m = flat.mask(g["params"])
            if (self.owned & m).any():
                raise ValueError("a parameter appears in two groups of one optimiser")
            self.owned |= m
            group_lr = flat.per_element(g.get("lr", lr))
            self.lr_el[m] = group_lr[m] if isinstance(group_lr, Tensor) else group_lr
        self.factor = torch.ones(flat.runs, device=data.device)
        self.steps = torch.zeros(flat.runs, device=data.device)
        self.m = torch.zeros_like(data)
        self.v = torch.zeros_like(data) if kind in ("adam", "adamw") else None

    def set_lr_factor(self, factor: PerRun) -> None:
        """The schedule's factor for the coming steps: a number, or (K,) one per run."""
        if isinstance(factor, Tensor):
            self.factor.copy_(factor)
        else:
            self.factor.fill_(factor)

    @torch.no_grad()
    def clip_(self, max_norm: float) -> None:
        """Per-run gradient-norm clipping over this optimiser's parameters (as
        ``torch.nn.utils.clip_grad_norm_`` does for one model)."""
        norms = self.flat.grad_norms(self.params)
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        self.flat.grad.mul_(coef[self.flat.rid])

    @torch.no_grad()
    def step(self, active: Tensor) -> None:
        """One update of the runs marked in ``active`` (K,) bool."""
        p, g, rid = self.flat.data, self.flat.grad, self.flat.rid
        mask = self.owned & active[rid]
        lr = self.lr_el * self.factor[rid]
        wd = self.wd
        decays = isinstance(wd, Tensor) or wd != 0
        if self.kind == "sgd":
            if decays:
                g = g + wd * p
            self.m.copy_(torch.where(mask, self.momentum * self.m + g, self.m))
            p.copy_(torch.where(mask, p - lr * self.m, p))
            return
        b1, b2 = self.betas
        self.steps.add_(active.to(self.steps.dtype))
        if self.kind == "adamw" and decays:
            p.copy_(torch.where(mask, p * (1 - lr * wd), p))
        elif decays:
            g = g + wd * p
        self.m.copy_(torch.where(mask, torch.lerp(self.m, g, 1 - b1), self.m))
        self.v.copy_(torch.where(mask, self.v * b2 + (1 - b2) * g * g, self.v))
        t = self.steps.clamp_min(1.0)
        bc1, bc2 = (1 - b1 ** t)[rid], (1 - b2 ** t).sqrt()[rid]
        denom = self.v.sqrt() / bc2 + self.eps
        p.copy_(torch.where(mask, p - (lr / bc1) * self.m / denom, p))


def make_optimizer(flat: FlatParams, groups: list[dict], kind: str, lr: PerRun,
                   cfg: TrainConfig | None = None, *, momentum: PerRun = 0.9,
                   weight_decay: PerRun | None = None) -> PackedOptimizer:
    """An optimiser of the training settings ``cfg`` (betas, momentum, weight decay; per-run
    ``weight_decay`` overrides ``cfg``'s), or with ``momentum`` alone (a strategy's phase)."""
    if cfg is None:
        return PackedOptimizer(flat, groups, kind, lr, momentum=momentum)
    return PackedOptimizer(flat, groups, kind, lr, betas=tuple(cfg.betas), momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay if weight_decay is None else weight_decay)


def schedule_factor(kind: str, epoch: int, epochs: int, step_size: int, gamma: float) -> float:
    """The learning-rate factor during ``epoch`` (0-based): StepLR or cosine annealing."""
    if kind == "step" and step_size > 0:
        return gamma ** (epoch // step_size)
    if kind == "cosine":
        return (1 + math.cos(math.pi * epoch / max(epochs, 1))) / 2
    return 1.0
