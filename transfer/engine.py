"""The one training loop: epochs, optimisers, schedules, phases, evaluation, model selection.

Features stay resident on the device for the whole run and batches are gathered by index; the
step loop never synchronises with the host (losses are accumulated on the device and read once
per epoch). bf16 autocast on CUDA and on CPUs with native bf16. Model selection uses the
validation subjects only; the test split is never seen here.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from transfer.recipe import TrainConfig
from transfer.strategies import Batch, Phase, Strategy


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from transfer import UserError

            raise UserError("device = 'cuda' but no CUDA device is available")
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass
class Standardizer:
    """Per-feature mean/std over (segments, time) of a training set; applied per batch."""

    mean: Tensor  # (1, F, 1)
    std: Tensor
    enabled: bool = True

    @classmethod
    def fit(cls, x: Tensor, idx: Tensor | None, enabled: bool = True) -> Standardizer:
        f = x.shape[1]
        if not enabled:
            return cls(x.new_zeros(1, f, 1), x.new_ones(1, f, 1), enabled=False)
        sub = x if idx is None else x[idx]
        mean = sub.mean(dim=(0, 2), keepdim=True)
        std = sub.std(dim=(0, 2), keepdim=True).clamp_min(1e-5)
        return cls(mean, std)

    def __call__(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std if self.enabled else x

    def to_dict(self) -> dict[str, Tensor]:
        return {"mean": self.mean.cpu(), "std": self.std.cpu()}


@dataclass
class DomainTensors:
    """One domain on the device: raw features, labels, a standardizer and index sets."""

    x: Tensor  # (N, F, T)
    y: Tensor  # (N,)
    norm: Standardizer
    train: Tensor  # indices
    val: Tensor | None = None

    def batch(self, idx: Tensor) -> Batch:
        return Batch(self.norm(self.x[idx]), self.y[idx])

    def sample(self, n: int, generator: torch.Generator) -> Batch:
        pick = torch.randint(len(self.train), (n,), generator=generator, device=self.train.device)
        return self.batch(self.train[pick])


@dataclass
class FitResult:
    curves: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    state: dict[str, Tensor]
    seconds: float
    diverged: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def make_optimizer(groups: list[dict], kind: str, lr: float, cfg: TrainConfig | None = None,
                   momentum: float = 0.9) -> torch.optim.Optimizer:
    wd = cfg.weight_decay if cfg else 0.0
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g.setdefault("lr", lr)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum if cfg else momentum,
                               weight_decay=wd)
    betas = tuple(cfg.betas) if cfg else (0.9, 0.999)
    cls = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, betas=betas, weight_decay=wd)


def make_scheduler(opt: torch.optim.Optimizer, kind: str, epochs: int, step_size: int,
                   gamma: float) -> torch.optim.lr_scheduler.LRScheduler | None:
    if kind == "step" and step_size > 0:
        return torch.optim.lr_scheduler.StepLR(opt, step_size, gamma)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(epochs, 1))
    return None


@torch.no_grad()
def predict_proba(strategy: Strategy, dom: DomainTensors, idx: Tensor, batch: int = 1024,
                  amp: bool = False) -> Tensor:
    """Class probabilities of the target model for ``idx`` (on the device)."""
    strategy.eval()
    out = []
    for i in range(0, len(idx), batch):
        with _autocast(dom.x.device, amp):
            logits = strategy.predict(dom.batch(idx[i:i + batch]).x)
        out.append(torch.softmax(logits.float(), -1))
    return torch.cat(out) if out else dom.x.new_zeros(0, 1)


@torch.no_grad()
def embed(strategy: Strategy, dom: DomainTensors, idx: Tensor, batch: int = 1024) -> Tensor:
    strategy.eval()
    return torch.cat([strategy.general_embedding(dom.batch(idx[i:i + batch]).x).float()
                      for i in range(0, len(idx), batch)])


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 convolutions and matmuls run faster than fp32 there."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_enabled(device: torch.device, amp: bool) -> bool:
    """bf16 autocast (fp32 master weights) on CUDA, and on CPUs with native bf16."""
    return amp and (device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()))


def _autocast(device: torch.device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=amp_enabled(device, amp))


def _uar(y: Tensor, pred: Tensor, n_classes: int) -> Tensor:
    """Unweighted average recall on the device (classes absent from ``y`` are ignored)."""
    onehot = nn.functional.one_hot(y, n_classes).float()
    hits = (onehot * (pred == y).float().unsqueeze(1)).sum(0)
    support = onehot.sum(0)
    present = support > 0
    return (hits[present] / support[present]).mean()


class _Accumulator:
    """Sums of logged tensors on the device; read once per epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, logs: dict[str, Tensor], prefix: str = "") -> None:
        for k, v in logs.items():
            key = prefix + k
            v = v.detach().float()
            self.sums[key] = self.sums[key] + v if key in self.sums else v
            self.counts[key] = self.counts.get(key, 0) + 1

    def means(self) -> dict[str, float]:
        if not self.sums:
            return {}
        keys = list(self.sums)
        values = torch.stack([self.sums[k] for k in keys]).cpu().tolist()  # one sync
        return {k: v / self.counts[k] for k, v in zip(keys, values)}


def fit(strategy: Strategy, target: DomainTensors, source: DomainTensors | None,
        cfg: TrainConfig, seed: int, device: torch.device,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> FitResult:
    """Train ``strategy`` on the target training indices, selecting on the validation ones."""
    t0 = time.perf_counter()
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    strategy.to(device)
    if cfg.compile:
        strategy.model.forward = torch.compile(strategy.model.forward)
    opt = make_optimizer(strategy.param_groups(cfg.lr), cfg.optimizer, cfg.lr, cfg)
    sched = make_scheduler(opt, cfg.schedule, cfg.epochs, cfg.step_size, cfg.gamma)
    phases = strategy.phases()
    if phases and source is None:
        raise ValueError(f"strategy '{strategy.name}' needs source data")
    phase_opts = [make_optimizer(p.params, p.optimizer, p.lr, momentum=p.momentum) for p in phases]
    phase_scheds = [torch.optim.lr_scheduler.StepLR(o, p.step_size, p.gamma)
                    if p.step_size > 0 else None for p, o in zip(phases, phase_opts)]
    params = [p for g in opt.param_groups for p in g["params"]]
    n_train = len(target.train)
    bs = min(cfg.batch_size, n_train)
    steps = max(1, n_train // bs)  # drop the last partial batch: BatchNorm needs > 1 sample
    total_steps = steps * cfg.epochs
    n_classes = strategy.ctx.target_classes
    amp = cfg.amp

    def run_phase(i: int, phase: Phase, n_steps: int, progress: float, acc: _Accumulator) -> None:
        strategy.train()
        for _ in range(n_steps):
            tgt = target.sample(bs, gen)
            src = source.sample(bs, gen) if source is not None else None
            with _autocast(device, amp):
                loss, logs = phase.loss(tgt, src, progress)
            phase_opts[i].zero_grad(set_to_none=True)
            loss.backward()
            phase_opts[i].step()
            acc.add(logs, prefix=f"{phase.name}_")

    for i, phase in enumerate(phases):  # warm-up phases run once before training
        if phase.every == 0:
            warm = _Accumulator()
            run_phase(i, phase, phase.steps or steps * int(phase.extra.get("epochs", 1)), 0.0, warm)

    curves: list[dict[str, float]] = []
    best_score, best_epoch, best_state, bad_epochs = -math.inf, -1, None, 0
    diverged = False
    for epoch in range(cfg.epochs):
        strategy.train()
        acc = _Accumulator()
        perm = target.train[torch.randperm(n_train, generator=gen, device=device)]
        for s in range(steps):
            progress = (epoch * steps + s) / max(total_steps - 1, 1)
            tgt = target.batch(perm[s * bs:(s + 1) * bs])
            src = source.sample(bs, gen) if strategy.uses_source_batches and source else None
            with _autocast(device, amp):
                loss, logs = strategy.loss(tgt, src, progress)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            acc.add({"loss": loss.detach(), **logs})
        progress = (epoch + 1) / cfg.epochs
        for i, phase in enumerate(phases):
            if phase.every and (epoch + 1) % phase.every == 0:
                run_phase(i, phase, phase.steps, progress, acc)
        if sched is not None:
            sched.step()
        for i, sch in enumerate(phase_scheds):  # a phase's schedule starts once it has run
            if sch is not None and phases[i].every and epoch + 1 >= phases[i].every:
                sch.step()
        row = {"epoch": epoch + 1, **acc.means()}
        if target.val is not None and len(target.val):
            prob = predict_proba(strategy, target, target.val, amp=amp)
            yv = target.y[target.val]
            val_loss = nn.functional.nll_loss(torch.log(prob.clamp_min(1e-7)), yv)
            uar = _uar(yv, prob.argmax(1), n_classes)
            val_loss, uar = torch.stack([val_loss, uar]).cpu().tolist()
            row.update(val_loss=val_loss, val_uar=uar)
        curves.append(row)
        if not math.isfinite(row.get("loss", 0.0)):
            diverged = True
            break
        score = {"val_uar": row.get("val_uar", 0.0) - 1e-3 * row.get("val_loss", 0.0),
                 "val_loss": -row.get("val_loss", 0.0), "last": float(epoch)}[cfg.select]
        if score > best_score:
            best_score, best_epoch, bad_epochs = score, epoch + 1, 0
            best_state = {k: v.detach().clone() for k, v in strategy.state_dict().items()}
        else:
            bad_epochs += 1
        if on_epoch:
            on_epoch(epoch + 1, row)
        if cfg.patience and bad_epochs >= cfg.patience:
            break
    if best_state is not None:
        strategy.load_state_dict(best_state)
    return FitResult(curves, best_epoch, len(curves), best_state or {}, time.perf_counter() - t0,
                     diverged)


def to_device(x: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.require(x, requirements=["C", "W"])).to(device)  # copies read-only
