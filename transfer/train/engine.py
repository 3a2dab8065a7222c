"""The one training loop, for K runs packed into one model (K = 1 is one ordinary run).

The runs of a pack share the data and the model code, and differ in seed and in their
training/validation subjects (a fold). Each run keeps its own:

- batches: a per-run permutation and source draws, counter-based (a hash of the run's seed and
  the epoch), so a run sees the same batches alone or in any pack, on any device;
- losses: the engine sums the per-run losses of the active runs, so gradients stay per run;
- optimiser state and step counts, gradient clipping, learning-rate schedule, early stopping,
  model selection and best state. A run with no batch left in an epoch (its fold has fewer
  training segments) or one that has finished is masked: no loss, no update, no BatchNorm
  statistics.

Features stay resident on the device and batches are gathered by index; the step loop never
synchronises with the host (losses are accumulated on the device and read once per epoch). All
trainable parameters live in one flat buffer (the modules' parameters are views of it), so an
optimiser step is a handful of kernels whatever K is. On CUDA the step (forward, backward,
clipping, optimiser) can be captured once in a CUDA graph and replayed (``train.cuda_graph``).
bf16 autocast on CUDA and on CPUs with native bf16. Model selection uses the validation
subjects only; the test split is never seen here.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from backbones.layers import hash_uniform, pack_states
from transfer.common.allocator import retain_freed_memory
from transfer.common.config import TrainConfig
from transfer.train.runs import RunState, install_run_state
from transfer.train.strategies import Batch, Context, Strategy

# Streams of the counter-based sampler (any distinct constants).
_PERM, _SOURCE, _PHASE = 0x5EED01, 0x5EED02, 0x5EED10


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
        return len(self.train)

    def for_runs(self, k: int) -> DomainTensors:
        """The same domain for ``k`` runs (one run's sets repeated)."""
        if self.runs == k:
            return self
        if self.runs != 1:
            raise ValueError(f"a domain of {self.runs} runs cannot serve {k}")
        return DomainTensors(self.x, self.y, self.norm * k, self.train * k, self.val * k)

    def gather(self, idx: Tensor) -> Batch:
        """idx (K, B) -> Batch(x (K, B, F, T) standardised per run, y (K, B))."""
        x = self.x[idx]
        if self._enabled:
            x = (x - self._mean) / self._std
        return Batch(x, self.y[idx])


@dataclass
class FitResult:
    curves: list[dict[str, float]]
    best_epoch: int
    epochs_run: int
    seconds: float
    diverged: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


# --- packing ------------------------------------------------------------------------------------
def build_pack(cls: type[Strategy], ctx: Context, opts: Any, seeds: list[int]) -> Strategy:
    """A strategy of ``len(seeds)`` runs whose run k starts exactly as ``cls`` built alone with
    ``torch.manual_seed(seeds[k])`` (its initial weights, its fresh heads)."""
    states = []
    for seed in seeds:
        torch.manual_seed(seed)
        single = cls(ctx.with_runs(1), opts)
        if len(seeds) == 1:
            return single
        states.append(single.state_dict())
    packed = cls(ctx.with_runs(len(seeds)), opts)
    packed.load_state_dict(pack_states(states))
    return packed


def unpack_model(strategy: Strategy, k: int) -> nn.Module:
    """Run ``k``'s target backbone as an ordinary (one-run) model, on the CPU."""
    from backbones.layers import unpack_state

    ctx = strategy.ctx
    model = ctx.backbone_factory(ctx.target_classes, 1)
    state = {n: t.detach().cpu() for n, t in strategy.model.state_dict().items()}
    model.load_state_dict(unpack_state(state, ctx.runs, k))
    return model.eval()


class FlatParams:
    """All trainable parameters of a module in one flat buffer, gradients in another.

    The module's parameters become views of ``data`` and their ``.grad`` views of ``grad``
    (autograd accumulates in place into a gradient that exists), so optimisers and gradient
    clipping act on two tensors. Each parameter's K run chunks are contiguous; ``rid`` (N,)
    names the run of every element.
    """

    def __init__(self, module: nn.Module, runs: int) -> None:
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
        over parameters in a fixed order: the same bits for a run in a pack of any size."""
        if not params:
            return self.data.new_zeros(self.runs)
        rows = [p.grad.view(self.runs, -1) for p in params]
        return torch.stack([(r * r).sum(1) for r in rows], 1).sum(1).sqrt()  # (K, P) rows


class PackedOptimizer:
    """Adam, AdamW or SGD (momentum) over the elements of a :class:`FlatParams` that belong to
    its parameter groups, with per-run step counts and a per-run mask: a masked run's
    parameters and moments do not move. Same update rules as ``torch.optim`` (no amsgrad,
    maximize, nesterov or dampening), as a few full-buffer kernels.

    ``set_lr_factor`` scales every group's learning rate (the schedule); the factor lives on
    the device, so a captured step sees it.
    """

    def __init__(self, flat: FlatParams, groups: list[dict[str, Any]], kind: str, lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), momentum: float = 0.9,
                 weight_decay: float = 0.0, eps: float = 1e-8) -> None:
        self.flat, self.kind = flat, kind
        self.betas, self.momentum, self.wd, self.eps = betas, momentum, weight_decay, eps
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
            self.lr_el[m] = g.get("lr", lr)
        self.factor = torch.ones((), device=data.device)
        self.steps = torch.zeros(flat.runs, device=data.device)
        self.m = torch.zeros_like(data)
        self.v = torch.zeros_like(data) if kind in ("adam", "adamw") else None

    def set_lr_factor(self, factor: float) -> None:
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
        p, g, rid = self.flat.data, self.flat.grad, self.flat.rid
        mask = self.owned & active[rid]
        lr = self.lr_el * self.factor
        if self.kind == "sgd":
            if self.wd:
                g = g + self.wd * p
            self.m.copy_(torch.where(mask, self.momentum * self.m + g, self.m))
            p.copy_(torch.where(mask, p - lr * self.m, p))
            return
        b1, b2 = self.betas
        self.steps.add_(active.to(self.steps.dtype))
        if self.kind == "adamw" and self.wd:
            p.copy_(torch.where(mask, p * (1 - lr * self.wd), p))
        elif self.wd:
            g = g + self.wd * p
        self.m.copy_(torch.where(mask, torch.lerp(self.m, g, 1 - b1), self.m))
        self.v.copy_(torch.where(mask, self.v * b2 + (1 - b2) * g * g, self.v))
        t = self.steps.clamp_min(1.0)
        bc1, bc2 = (1 - b1 ** t)[rid], (1 - b2 ** t).sqrt()[rid]
        denom = self.v.sqrt() / bc2 + self.eps
        p.copy_(torch.where(mask, p - (lr / bc1) * self.m / denom, p))


def _optimizer(flat: FlatParams, groups: list[dict], kind: str, lr: float,
               cfg: TrainConfig | None = None, momentum: float = 0.9) -> PackedOptimizer:
    if cfg is None:
        return PackedOptimizer(flat, groups, kind, lr, momentum=momentum)
    return PackedOptimizer(flat, groups, kind, lr, betas=tuple(cfg.betas), momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def schedule_factor(kind: str, epoch: int, epochs: int, step_size: int, gamma: float) -> float:
    """The learning-rate factor during ``epoch`` (0-based): StepLR or cosine annealing."""
    if kind == "step" and step_size > 0:
        return gamma ** (epoch // step_size)
    if kind == "cosine":
        return (1 + math.cos(math.pi * epoch / max(epochs, 1))) / 2
    return 1.0


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


def _autocast(device: torch.device, amp: bool, cache: bool = True):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                          enabled=amp_enabled(device, amp), cache_enabled=cache)


# --- evaluation ---------------------------------------------------------------------------------
def _padded(sets: list[Tensor | None], device: torch.device) -> tuple[Tensor, Tensor]:
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
    idx, _ = _padded(sets, dom.x.device)
    k = idx.shape[0]
    chunk = max(1, batch // k)
    out = []
    for i in range(0, idx.shape[1], chunk):
        with _autocast(dom.x.device, amp):
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
    idx, _ = _padded(sets, dom.x.device)
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
def _validate(strategy: Strategy, dom: DomainTensors, idx: Tensor, valid: Tensor,
              n_classes: int, amp: bool, batch: int = 1024) -> tuple[Tensor, Tensor]:
    """Per-run validation loss (NLL of the probabilities) and UAR on the device: (K,), (K,)."""
    strategy.eval()
    k = idx.shape[0]
    chunk = max(1, batch // k)
    probs = []
    for i in range(0, idx.shape[1], chunk):
        with _autocast(dom.x.device, amp):
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


# --- the step -----------------------------------------------------------------------------------
class _Accumulator:
    """Per-run sums of logged values on the device, over the active steps; read once per
    epoch. Its tensors persist (zeroed in place) so a captured step keeps writing to them."""

    def __init__(self, runs: int, device: torch.device) -> None:
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, Tensor] = {}
        self.runs, self.device = runs, device

    def add(self, logs: dict[str, Tensor], active: Tensor, prefix: str = "") -> None:
        for key, value in logs.items():
            key = prefix + key
            if key not in self.sums:
                self.sums[key] = torch.zeros(self.runs, device=self.device)
                self.counts[key] = torch.zeros(self.runs, device=self.device)
            v = value.detach().float().reshape(self.runs)
            self.sums[key].add_(torch.where(active, v, 0.0))
            self.counts[key].add_(active.float())

    def reset(self) -> None:
        for t in (*self.sums.values(), *self.counts.values()):
            t.zero_()


class StepRunner:
    """Runs one training step function, eagerly or as a replayed CUDA graph.

    With ``capture``, the first ``warmup`` calls run eagerly on a side stream (as PyTorch's
    whole-network capture recipe asks), the next one is captured and every call from then on
    replays the graph. A capture that fails falls back to eager execution with a warning.
    """

    def __init__(self, fn: Callable[[], None], device: torch.device, capture: bool,
                 warmup: int = 3) -> None:
        self.fn, self.device, self.warmup = fn, device, warmup
        self.capture = capture  # the caller decides (on CUDA; a test stands in on the CPU)
        self.graph: Any = None
        self.calls = 0

    def __call__(self) -> None:
        if not self.capture:
            self.fn()
            return
        if self.graph is not None:
            self.graph.replay()
            return
        if self.calls < self.warmup:
            self.calls += 1
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                self.fn()
            torch.cuda.current_stream(self.device).wait_stream(stream)
            return
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.fn()
        except Exception as err:  # noqa: BLE001 - any capture problem: run eagerly instead
            torch.cuda.synchronize(self.device)
            warnings.warn(f"CUDA graph capture failed ({type(err).__name__}: {err}); training "
                          "this pack eagerly", stacklevel=2)
            self.capture = False
            self.fn()
            return
        self.graph = graph
        graph.replay()


@dataclass
class _Plan:
    """One epoch's (or phase's) batches for all runs: indices, activity and progress."""

    tgt: Tensor  # (S, K, B)
    src: Tensor | None  # (S, K, B)
    active: Tensor  # (S, K) bool
    progress: Tensor  # (S, K)


class _Sampler:
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

    def epoch(self, epoch: int, epochs: int, alive: list[bool], with_source: bool) -> _Plan:
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
        return _Plan(self._stack(tgt_rows, steps, s_max),
                     self._stack(src_rows, steps, s_max) if src_rows else None,
                     self._activity(steps, s_max, alive), progress)

    def _source_rows(self, k: int, stream: int, counter: int, n_steps: int) -> Tensor:
        train = self.source.train[k]
        u = self._uniform(k, stream, counter, n_steps * self.batch)
        pick = (u * len(train)).long().clamp_max(len(train) - 1)
        return train[pick].view(n_steps, self.batch)

    def phase(self, index: int, counter: int, steps: list[int], progress: float,
              alive: list[bool]) -> _Plan:
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
        return _Plan(self._stack(tgt_rows, steps, s_max),
                     self._stack(src_rows, steps, s_max) if src_rows else None,
                     self._activity(steps, s_max, alive), prog)


class _Trainer:
    """The state of one packed fit: static step inputs, optimisers, step runners."""

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

    def make_step(self, loss_fn: Callable, opt: PackedOptimizer, acc: _Accumulator,
                  with_source: bool, prefix: str, log_total: bool) -> StepRunner:
        cfg, dev, active = self.cfg, self.device, self.run_state.active

        def step() -> None:
            tgt = self.target.gather(self.tgt_idx)
            src = self.source.gather(self.src_idx) if with_source else None
            with _autocast(dev, cfg.amp, cache=not self.capture):
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

    def run(self, runner: StepRunner, plan: _Plan) -> None:
        self.strategy.train()
        for s in range(plan.tgt.shape[0]):
            self.tgt_idx.copy_(plan.tgt[s])
            if plan.src is not None:
                self.src_idx.copy_(plan.src[s])
            self.run_state.active.copy_(plan.active[s])
            self.progress.copy_(plan.progress[s])
            runner()


def fit_runs(strategy: Strategy, target: DomainTensors, source: DomainTensors | None,
             cfg: TrainConfig, seeds: list[int], device: torch.device,
             on_epoch: Callable[[int, list[dict[str, float] | None]], None] | None = None
             ) -> list[FitResult]:
    """Train the K runs of ``strategy`` (``len(seeds)``; run k on ``target.train[k]``),
    selecting each on its own validation indices. Loads every run's best state into
    ``strategy`` and returns one result per run."""
    t0 = time.perf_counter()
    if device.type == "cpu":
        retain_freed_memory()  # large CPU activations: no mmap/munmap per step
    k_runs = len(seeds)
    strategy.to(device)
    target = target.for_runs(k_runs)
    source = source.for_runs(k_runs) if source is not None else None
    phases = strategy.phases()
    if phases and source is None:
        raise ValueError(f"strategy '{strategy.name}' needs source data")
    if cfg.compile:
        strategy.model.forward = torch.compile(strategy.model.forward)
    tr = _Trainer(strategy, target, source, cfg, seeds, device)
    sizes = [min(cfg.batch_size, len(t)) for t in target.train]
    if len(set(sizes)) > 1:
        raise ValueError(f"runs with different batch sizes {sizes} cannot share a pack")
    main_opt = _optimizer(tr.flat, strategy.param_groups(cfg.lr), cfg.optimizer, cfg.lr, cfg)
    acc = _Accumulator(k_runs, device)
    with_source = bool(strategy.uses_source_batches and source is not None)
    main = tr.make_step(strategy.loss, main_opt, acc, with_source, "", True)
    phase_opts = [_optimizer(tr.flat, p.params, p.optimizer, p.lr, momentum=p.momentum)
                  for p in phases]
    phase_accs = [_Accumulator(k_runs, device) for _ in phases]
    phase_steps = [tr.make_step(p.loss, o, a, source is not None, f"{p.name}_", False)
                   for p, o, a in zip(phases, phase_opts, phase_accs, strict=True)]
    sampler = _Sampler(target, source, tr.run_state.seed, tr.batch)
    steps = [len(t) // tr.batch for t in target.train]
    alive = [True] * k_runs

    for i, phase in enumerate(phases):  # warm-up phases run once before training
        if phase.every == 0:
            n = [phase.steps or s * int(phase.extra.get("epochs", 1)) for s in steps]
            tr.run(phase_steps[i], sampler.phase(i, 0, n, 0.0, alive))
            phase_accs[i].reset()  # warm-up logs are not part of an epoch

    val_idx, val_valid = _padded(target.val, device)
    has_val = [v is not None and len(v) > 0 for v in target.val]
    curves: list[list[dict[str, float]]] = [[] for _ in range(k_runs)]
    best_score = [-math.inf] * k_runs
    best_epoch, bad_epochs = [-1] * k_runs, [0] * k_runs
    diverged = [False] * k_runs
    best_state = {n: t.detach().clone() for n, t in strategy.state_dict().items()}
    n_classes = strategy.ctx.target_classes
    for epoch in range(cfg.epochs):
        main_opt.set_lr_factor(schedule_factor(cfg.schedule, epoch, cfg.epochs, cfg.step_size,
                                               cfg.gamma))
        acc.reset()
        tr.run(main, sampler.epoch(epoch, cfg.epochs, alive, with_source))
        for i, phase in enumerate(phases):
            if phase.every and (epoch + 1) % phase.every == 0:
                done = max(0, epoch + 1 - phase.every)  # scheduler steps so far
                phase_opts[i].set_lr_factor(phase.gamma ** (done // phase.step_size)
                                            if phase.step_size > 0 else 1.0)
                phase_accs[i].reset()
                plan = sampler.phase(i, epoch + 1, [phase.steps] * k_runs,
                                     (epoch + 1) / cfg.epochs, alive)
                tr.run(phase_steps[i], plan)
        rows = _epoch_rows(epoch, [acc, *phase_accs], alive)
        if any(has_val):
            loss, uar = _validate(strategy, target, val_idx, val_valid, n_classes, cfg.amp)
            for k, (lv, uv) in enumerate(zip(*torch.stack([loss, uar]).cpu().tolist(),
                                             strict=True)):
                if rows[k] is not None and has_val[k]:
                    rows[k].update(val_loss=lv, val_uar=uv)
        improved = []
        for k, row in enumerate(rows):
            if row is None:
                continue
            curves[k].append(row)
            if not math.isfinite(row.get("loss", 0.0)):
                diverged[k], alive[k] = True, False
                continue
            score = {"val_uar": row.get("val_uar", 0.0) - 1e-3 * row.get("val_loss", 0.0),
                     "val_loss": -row.get("val_loss", 0.0), "last": float(epoch)}[cfg.select]
            if score > best_score[k]:
                best_score[k], best_epoch[k], bad_epochs[k] = score, epoch + 1, 0
                improved.append(k)
            else:
                bad_epochs[k] += 1
            if cfg.patience and bad_epochs[k] >= cfg.patience:
                alive[k] = False
        _snapshot(strategy, best_state, improved, k_runs)
        if on_epoch:
            on_epoch(epoch + 1, rows)
        if not any(alive):
            break
    strategy.load_state_dict(best_state)
    seconds = time.perf_counter() - t0
    install_run_state(strategy, None)
    return [FitResult(curves[k], best_epoch[k], len(curves[k]), seconds, diverged[k],
                      {"pack": k_runs}) for k in range(k_runs)]


def _epoch_rows(epoch: int, accs: list[_Accumulator], alive: list[bool]
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
def _snapshot(strategy: Strategy, best: dict[str, Tensor], runs: list[int], k_runs: int) -> None:
    """Copy the current state of the runs in ``runs`` into ``best``."""
    if not runs:
        return
    state = strategy.state_dict()
    if len(runs) == k_runs:
        for name, t in state.items():
            best[name].copy_(t)
        return
    idx = torch.tensor(runs, device=next(iter(state.values())).device)
    for name, t in state.items():
        if t.dim() == 0:
            best[name].copy_(t)
            continue
        src = t.view(k_runs, -1)
        best[name].view(k_runs, -1).index_copy_(0, idx, src.index_select(0, idx))


def fit(strategy: Strategy, target: DomainTensors, source: DomainTensors | None,
        cfg: TrainConfig, seed: int, device: torch.device,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None) -> FitResult:
    """Train a one-run ``strategy`` on the target training indices, selecting on the
    validation ones (:func:`fit_runs` with K = 1)."""

    def one(epoch: int, rows: list[dict[str, float] | None]) -> None:
        if on_epoch and rows[0] is not None:
            on_epoch(epoch, rows[0])

    return fit_runs(strategy, target, source, cfg, [seed], device, one)[0]


def to_device(x: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.require(x, requirements=["C", "W"])).to(device)  # copies read-only
