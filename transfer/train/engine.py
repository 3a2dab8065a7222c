"""The one training loop, for K runs packed into one model (K = 1 is one ordinary run).

The runs of a pack share the data and the model code, and differ in seed, in their
training/validation subjects (a fold) and, in a sweep, in per-run hyperparameters (learning
rates, weight decay, loss weights: see :mod:`transfer.train.packs`). Each run keeps its own:

- batches: counter-based per run (:mod:`transfer.train.sampler`), the same alone or in any pack;
- losses: the engine sums the per-run losses of the active runs, so gradients stay per run;
- optimiser state, step counts, clipping, learning-rate schedule (:mod:`transfer.train.optim`);
- early stopping, model selection and best state (:class:`Selection`). A run with no batch
  left in an epoch (its fold has fewer training segments) or one that has finished is masked:
  no loss, no update, no BatchNorm statistics.

Runs that finish early (patience, successive halving: :class:`Halving`) leave the pack's
computation: once enough have finished, the pack is rebuilt with the live runs only, optimiser
moments and counters carried over (:meth:`_Fit.compact`). The model the caller passed in holds
every run's selected state at the end.

Features stay resident on the device and batches are gathered by index; the step loop never
synchronises with the host (losses are accumulated on the device and read once per epoch). On
CUDA the step can be captured in a CUDA graph and replayed (:mod:`transfer.train.capture`).
Model selection uses the validation subjects only; the test split is never seen here.

Why one file (~440 lines): the loop, its per-run selection (:class:`Selection`), successive
halving (:class:`Halving`) and the pack's compaction act on the same per-run state each epoch;
everything else (optimisers, sampler, capture, inference, tensors) lives in its own module.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backbones.layers import pack_states, unpack_state
from transfer.common.allocator import retain_freed_memory
from transfer.common.config import TrainConfig
from transfer.common.options import is_per_run
from transfer.train.capture import Accumulator, StepRunner
from transfer.train.device import autocast
from transfer.train.infer import padded, validate
from transfer.train.optim import FlatParams, PackedOptimizer, make_optimizer, schedule_factor
from transfer.train.packs import pack_options, per_run
from transfer.train.runs import RunState, install_run_state
from transfer.train.sampler import Plan, Sampler
from transfer.train.strategies import Strategy
from transfer.train.tensors import DomainTensors

#: Rebuild a pack without its finished runs once at most this share of it is still training
#: (a rebuild costs a model copy, and on a CPU a recompilation of the fused kernels for the
#: new size: worth it when it saves a quarter of the pack's work or more).
COMPACT_AT = 0.75


@dataclass
class FitResult:
    """What training one run gave: per-epoch logs, the selected epoch, and how it ended.

    ``stopped``: "" (ran every epoch), ``patience`` (early stopping), ``halving`` (a sweep's
    successive halving stopped it) or ``diverged`` (a non-finite loss).
    """

    curves: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    seconds: float
    diverged: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    stopped: str = ""


@dataclass(frozen=True)
class Halving:
    """Successive halving inside a pack: after each rung epoch, the worse half (by validation
    score) of the live runs of every group stops.

    Args:
        rungs: the epochs (1-based) after which runs are halved.
        groups: per run, the group it competes in (a sweep's draws of one fold and seed).
        protected: per run, whether it never stops (a sweep's default setting, draw 0).
    """

    rungs: tuple[int, ...]
    groups: list[int]
    protected: list[bool]


# --- model selection and early stopping ---------------------------------------------------------
class Selection:
    """Per run: the curves, the best epoch by ``select``, early stopping, divergence.

    ``val_uar`` ranks epochs by validation UAR, ties by lower validation loss (a tuple, so no
    trade-off constant: a small validation set gives few distinct UARs, so ties are common);
    ``val_loss`` by validation loss; ``last`` takes the last epoch.
    """

    def __init__(self, runs: int, select: str, patience: int) -> None:
        self.select, self.patience = select, patience
        self.curves: list[list[dict[str, float]]] = [[] for _ in range(runs)]
        self.best_score: list[tuple[float, ...]] = [(-math.inf,)] * runs
        self.best_epoch, self.bad_epochs = [-1] * runs, [0] * runs
        self.alive, self.stopped = [True] * runs, [""] * runs

    def score(self, row: dict[str, float], epoch: int) -> tuple[float, ...]:
        """The row's rank under ``select`` (larger is better)."""
        if self.select == "val_uar":
            return (row.get("val_uar", 0.0), -row.get("val_loss", 0.0))
        if self.select == "val_loss":
            return (-row.get("val_loss", 0.0),)
        return (float(epoch),)

    def update(self, epoch: int, rows: dict[int, dict[str, float]]) -> list[int]:
        """Record the epoch's rows (run -> row); return the runs whose best state improved."""
        improved = []
        for k, row in rows.items():
            self.curves[k].append(row)
            if not math.isfinite(row.get("loss", 0.0)):
                self.stop(k, "diverged")
                continue
            score = self.score(row, epoch)
            if score > self.best_score[k]:
                self.best_score[k], self.best_epoch[k], self.bad_epochs[k] = score, epoch + 1, 0
                improved.append(k)
            else:
                self.bad_epochs[k] += 1
            if self.patience and self.bad_epochs[k] >= self.patience:
                self.stop(k, "patience")
        return improved

    def stop(self, k: int, why: str) -> None:
        self.alive[k], self.stopped[k] = False, why

    def halve(self, halving: Halving) -> list[int]:
        """Stop half (rounded down) of every group's live runs: the worst by validation score
        among those not protected (a protected run survives even when it ranks lower).
        Returns the stopped runs."""
        out = []
        for g in sorted(set(halving.groups)):
            live = [k for k, gk in enumerate(halving.groups) if gk == g and self.alive[k]]
            candidates = sorted((k for k in live if not halving.protected[k]),
                                key=lambda k: (self.best_score[k], -k))  # worst first
            for k in candidates[:len(live) // 2]:
                self.stop(k, "halving")
                out.append(k)
        return out


# --- one pack's moving parts --------------------------------------------------------------------
class _Trainer:
    """The state of one packed fit: static step inputs, the flat parameters, step runners."""

    def __init__(self, strategy: Strategy, target: DomainTensors, source: DomainTensors | None,
                 cfg: TrainConfig, seeds: list[int], device: torch.device) -> None:
        k = len(seeds)
        self.strategy, self.target, self.source, self.cfg = strategy, target, source, cfg
        self.device, self.runs = device, k
        self.run_state = RunState.create(seeds, device)
        install_run_state(strategy, self.run_state)
        self.flat = FlatParams(strategy, k)
        self.batch = min(cfg.batch_size, *(len(t) for t in target.train))
        b = self.batch
        # static inputs of a step: a captured graph reads them, the loop copies into them
        self.tgt_idx = torch.zeros(k, b, dtype=torch.long, device=device)
        self.src_idx = torch.zeros(k, b, dtype=torch.long, device=device)
        self.progress = torch.zeros(k, device=device)
        self.capture = cfg.cuda_graph and device.type == "cuda"

    def make_step(self, loss_fn: Callable, opt: PackedOptimizer, acc: Accumulator,
                  with_source: bool, prefix: str, log_total: bool) -> StepRunner:
        """A runner of one step: forward, backward, clipping, optimiser, logging."""
        cfg, dev, active = self.cfg, self.device, self.run_state.active

        def step() -> None:
            tgt = self.target.gather(self.tgt_idx)
            src = self.source.gather(self.src_idx) if with_source else None
            with autocast(dev, cfg.amp, cache=not self.capture):
                losses, logs = loss_fn(tgt, src, self.progress)
            losses = losses.float()
            self.flat.grad.zero_()
            torch.where(active, losses, 0.0).sum().backward()
            if cfg.grad_clip > 0:
                opt.clip_(cfg.grad_clip)
            opt.step(active)
            self.run_state.counter.add_(active.long())
            acc.add({"loss": losses, **logs} if log_total else logs, active, prefix)

        return StepRunner(step, dev, self.capture)

    def run(self, runner: StepRunner, plan: Plan) -> None:
        """Run the plan's steps (inputs copied into the static tensors)."""
        self.strategy.train()
        for s in range(plan.tgt.shape[0]):
            self.tgt_idx.copy_(plan.tgt[s])
            if plan.src is not None:
                self.src_idx.copy_(plan.src[s])
            self.run_state.active.copy_(plan.active[s])
            self.progress.copy_(plan.progress[s])
            runner()


def _train_settings(cfgs: list[TrainConfig]) -> tuple[TrainConfig, dict[str, Any]]:
    """K runs' training settings: the shared one and the per-run values (lr, weight decay);
    any other setting must be the same for every run of a pack."""
    base = cfgs[0]
    for f in dataclasses.fields(TrainConfig):
        values = [getattr(c, f.name) for c in cfgs]
        if any(v != values[0] for v in values) and not is_per_run(TrainConfig, f.name):
            raise ValueError(f"runs that differ in train.{f.name} ({values}) cannot share a pack")
    return base, {"lr": [c.lr for c in cfgs], "weight_decay": [c.weight_decay for c in cfgs]}


class _Fit:
    """The live runs of one pack (a subset of the caller's runs, ``slots``) and everything
    that trains them: trainer, optimisers, phases, sampler."""

    def __init__(self, strategy: Strategy, target: DomainTensors, source: DomainTensors | None,
                 cfgs: list[TrainConfig], seeds: list[int], device: torch.device,
                 slots: list[int]) -> None:
        self.strategy, self.cfgs, self.seeds, self.slots = strategy, cfgs, seeds, slots
        self.target, self.source, self.device = target, source, device
        k = len(slots)
        cfg, values = _train_settings(cfgs)
        self.cfg = cfg
        strategy.to(device)
        self.phases = strategy.phases()
        if self.phases and source is None:
            raise ValueError(f"strategy '{strategy.name}' needs source data")
        if cfg.compile:
            strategy.model.forward = torch.compile(strategy.model.forward)
        self.tr = tr = _Trainer(strategy, target, source, cfg, seeds, device)
        lr = per_run(values["lr"], device)
        self.main_opt = make_optimizer(tr.flat, strategy.param_groups(lr), cfg.optimizer, lr, cfg,
                                       weight_decay=per_run(values["weight_decay"], device))
        self.acc = Accumulator(k, device)
        self.with_source = bool(strategy.uses_source_batches and source is not None)
        self.main = tr.make_step(strategy.loss, self.main_opt, self.acc, self.with_source, "",
                                 True)
        self.phase_opts = [make_optimizer(tr.flat, p.params, p.optimizer, p.lr,
                                          momentum=p.momentum) for p in self.phases]
        self.phase_accs = [Accumulator(k, device) for _ in self.phases]
        self.phase_steps = [tr.make_step(p.loss, o, a, source is not None, f"{p.name}_", False)
                            for p, o, a in zip(self.phases, self.phase_opts, self.phase_accs,
                                               strict=True)]
        self.sampler = Sampler(target, source, tr.run_state.seed, tr.batch)
        self.val_idx, self.val_valid = padded(target.val, device)
        self.has_val = [v is not None and len(v) > 0 for v in target.val]

    @property
    def optimizers(self) -> list[PackedOptimizer]:
        return [self.main_opt, *self.phase_opts]

    def warm_up(self) -> None:
        """The phases that run once before training (``every = 0``)."""
        steps = [len(t) // self.tr.batch for t in self.target.train]
        alive = [True] * len(self.slots)
        for i, phase in enumerate(self.phases):
            if phase.every == 0:
                n = [phase.steps or s * int(phase.extra.get("epochs", 1)) for s in steps]
                self.tr.run(self.phase_steps[i], self.sampler.phase(i, 0, n, 0.0, alive))
                self.phase_accs[i].reset()  # warm-up logs are not part of an epoch

    def epoch(self, epoch: int, alive: list[bool]) -> list[dict[str, float] | None]:
        """One epoch of the live runs (``alive``: which of them still train): the main steps,
        the phases due after it, validation. Per live run its row, None for finished ones."""
        cfg = self.cfg
        self.main_opt.set_lr_factor(schedule_factor(cfg.schedule, epoch, cfg.epochs,
                                                    cfg.step_size, cfg.gamma))
        self.acc.reset()
        self.tr.run(self.main, self.sampler.epoch(epoch, cfg.epochs, alive, self.with_source))
        for i, phase in enumerate(self.phases):
            if phase.every and (epoch + 1) % phase.every == 0:
                done = max(0, epoch + 1 - phase.every)  # scheduler steps so far
                self.phase_opts[i].set_lr_factor(phase.gamma ** (done // phase.step_size)
                                                 if phase.step_size > 0 else 1.0)
                self.phase_accs[i].reset()
                plan = self.sampler.phase(i, epoch + 1, [phase.steps] * len(self.slots),
                                          (epoch + 1) / cfg.epochs, alive)
                self.tr.run(self.phase_steps[i], plan)
        rows = _epoch_rows(epoch, [self.acc, *self.phase_accs], alive)
        if any(self.has_val):
            loss, uar = validate(self.strategy, self.target, self.val_idx, self.val_valid,
                                 self.strategy.ctx.target_classes, cfg.amp)
            for k, (lv, uv) in enumerate(zip(*torch.stack([loss, uar]).cpu().tolist(),
                                             strict=True)):
                if rows[k] is not None and self.has_val[k]:
                    rows[k].update(val_loss=lv, val_uar=uv)
        return rows

    def snapshot(self, best: dict[str, Tensor], runs: list[int], total: int) -> None:
        """Copy the current state of the given caller's runs into ``best`` (the caller's
        layout of ``total`` runs)."""
        local = [self.slots.index(k) for k in runs]
        _snapshot(self.strategy, best, local, runs, len(self.slots), total)

    def can_compact(self) -> bool:
        return getattr(self.strategy, "run_options", None) is not None and len(self.slots) > 1

    def compact(self, keep: list[int]) -> _Fit:
        """The same fit with only the local runs ``keep``: a new pack of their current
        weights, optimiser moments, step counts and batch counters."""
        old, k_old = self.strategy, len(self.slots)
        cls, ctx = type(old), old.ctx.with_runs(len(keep))
        state = {n: t.detach() for n, t in old.state_dict().items()}
        runs = [unpack_state(state, k_old, k) for k in keep]
        options = [old.run_options[k] for k in keep]
        strategy = cls(ctx, pack_options(options))
        strategy.load_state_dict(pack_states(runs) if len(keep) > 1 else runs[0])
        strategy.run_options = options
        fit = _Fit(strategy, self.target.select(keep),
                   self.source.select(keep) if self.source is not None else None,
                   [self.cfgs[k] for k in keep], [self.seeds[k] for k in keep], self.device,
                   [self.slots[k] for k in keep])
        fit.tr.run_state.counter.copy_(self.tr.run_state.counter[keep])
        elements = torch.isin(self.tr.flat.rid, torch.tensor(keep, device=self.device))
        for new, prev in zip(fit.optimizers, self.optimizers, strict=True):
            new.steps.copy_(prev.steps[keep])
            new.m.copy_(prev.m[elements])
            if new.v is not None:
                new.v.copy_(prev.v[elements])
        return fit


def _epoch_rows(epoch: int, accs: list[Accumulator], alive: list[bool]
                ) -> list[dict[str, float] | None]:
    """Per-run means of everything logged this epoch (one host sync), None for finished runs."""
    keys, tensors = [], []
    for a in accs:
        for key in a.sums:
            keys.append(key)
            tensors += [a.sums[key], a.counts[key]]
    values = torch.stack(tensors).cpu().numpy() if tensors else np.zeros((0, len(alive)))
    rows: list[dict[str, float] | None] = []
    for k, is_alive in enumerate(alive):
        if not is_alive:
            rows.append(None)
            continue
        row: dict[str, float] = {"epoch": epoch + 1}
        for j, key in enumerate(keys):
            total, count = values[2 * j, k], values[2 * j + 1, k]
            if count > 0:
                row[key] = float(total / count)
        rows.append(row)
    return rows


@torch.no_grad()
def _snapshot(strategy: Strategy, best: dict[str, Tensor], local: list[int], runs: list[int],
              k_live: int, k_total: int) -> None:
    """Copy the live pack's runs ``local`` (of ``k_live``) into the caller's runs ``runs`` (of
    ``k_total``) of ``best``."""
    if not local:
        return
    state = strategy.state_dict()
    if local == runs and k_live == k_total == len(runs):
        for name, t in state.items():
            best[name].copy_(t)
        return
    device = next(iter(state.values())).device
    src_idx = torch.tensor(local, device=device)
    dst_idx = torch.tensor(runs, device=best[next(iter(best))].device)
    for name, t in state.items():
        if t.dim() == 0:
            best[name].copy_(t)
            continue
        src = t.view(k_live, -1).index_select(0, src_idx)
        best[name].view(k_total, -1).index_copy_(0, dst_idx, src)


def fit_runs(strategy: Strategy, target: DomainTensors, source: DomainTensors | None,
             cfg: TrainConfig | list[TrainConfig], seeds: list[int], device: torch.device,
             on_epoch: Callable[[int, list[dict[str, float] | None]], None] | None = None,
             halving: Halving | None = None) -> list[FitResult]:
    """Train the K runs of ``strategy`` (``len(seeds)``; run k on ``target.train[k]``, with the
    training settings ``cfg`` or ``cfg[k]``), selecting each on its own validation indices.
    Loads every run's best state into ``strategy`` and returns one result per run."""
    t0 = time.perf_counter()
    if device.type == "cpu":
        retain_freed_memory()  # large CPU activations: no mmap/munmap per step
    k_runs = len(seeds)
    cfgs = cfg if isinstance(cfg, list) else [cfg] * k_runs
    target = target.for_runs(k_runs)
    source = source.for_runs(k_runs) if source is not None else None
    sizes = {min(c.batch_size, len(t)) for c, t in zip(cfgs, target.train, strict=True)}
    if len(sizes) > 1:
        raise ValueError(f"runs with different batch sizes {sorted(sizes)} cannot share a pack")
    fit = _Fit(strategy, target, source, cfgs, seeds, device, list(range(k_runs)))
    fit.warm_up()
    sel = Selection(k_runs, cfgs[0].select, cfgs[0].patience)
    best_state = {n: t.detach().clone() for n, t in strategy.state_dict().items()}
    last = _train_epochs(fit, sel, best_state, cfgs[0].epochs, on_epoch, halving)
    strategy.load_state_dict(best_state)
    install_run_state(strategy, None)
    install_run_state(last.strategy, None)
    seconds = time.perf_counter() - t0
    return [FitResult(sel.curves[k], sel.best_epoch[k], len(sel.curves[k]), seconds,
                      sel.stopped[k] == "diverged", {"pack": k_runs}, sel.stopped[k])
            for k in range(k_runs)]


def _train_epochs(fit: _Fit, sel: Selection, best_state: dict[str, Tensor], epochs: int,
                  on_epoch: Callable[[int, list[dict[str, float] | None]], None] | None,
                  halving: Halving | None) -> _Fit:
    """The epochs of a fit: train, select, halve, and rebuild the pack without its finished
    runs once few enough are left (:data:`COMPACT_AT`). Returns the last pack."""
    k_runs = len(sel.alive)
    rungs = set(halving.rungs) if halving else set()
    for epoch in range(epochs):
        rows = fit.epoch(epoch, [sel.alive[k] for k in fit.slots])
        by_run = {k: row for k, row in zip(fit.slots, rows, strict=True) if row is not None}
        fit.snapshot(best_state, sel.update(epoch, by_run), k_runs)
        if halving and epoch + 1 in rungs:
            sel.halve(halving)
        if on_epoch:
            on_epoch(epoch + 1, [by_run.get(k) for k in range(k_runs)])
        live = [i for i, k in enumerate(fit.slots) if sel.alive[k]]
        if not live:
            break
        if len(live) <= COMPACT_AT * len(fit.slots) and fit.can_compact():
            fit = fit.compact(live)
    return fit


def fit(strategy: Strategy, target: DomainTensors, source: DomainTensors | None,
        cfg: TrainConfig, seed: int, device: torch.device,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> FitResult:
    """Train a one-run ``strategy`` on the target training indices, selecting on the
    validation ones (:func:`fit_runs` with K = 1)."""

    def one(epoch: int, rows: list[dict[str, float] | None]) -> None:
        if on_epoch and rows[0] is not None:
            on_epoch(epoch, rows[0])

    return fit_runs(strategy, target, source, cfg, [seed], device, one)[0]
