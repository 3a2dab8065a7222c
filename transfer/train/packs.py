"""Packs: K runs of one strategy built as one model, and each run taken out again.

A run of a pack starts exactly as it would alone (:func:`build_pack`: its seed's initial
weights and fresh heads) and is recovered as an ordinary model (:func:`unpack_model`). The runs
of a pack may differ in per-run hyperparameters (the draws of a sweep): :func:`pack_options`
turns K option values into one object whose fields are numbers where the runs agree and (K,)
tensors where they differ (:class:`RunValues`), so a strategy's arithmetic
(``ce + self.opts.adv_weight * adv``, ``lr * self.opts.general_lr_scale``) works per run
unchanged.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from backbones.layers import pack_states, unpack_state
from transfer.common.options import is_per_run
from transfer.train.strategies import Context, Strategy


class RunValues(nn.Module):
    """The options of K runs as one object: ``values.name`` is the field's value where every
    run has the same, else a (K,) float32 buffer (it moves with the strategy to its device).

    Only fields declared per-run (:func:`transfer.common.options.is_per_run`) may differ; runs
    that differ in any other field cannot share a pack.
    """

    def __init__(self, values: list[Any]) -> None:
        super().__init__()
        cls = type(values[0])
        self.options_class = cls
        self.varying: list[str] = []
        for f in dataclasses.fields(cls):
            column = [getattr(v, f.name) for v in values]
            if all(c == column[0] for c in column):
                object.__setattr__(self, f.name, column[0])
                continue
            if not is_per_run(cls, f.name):
                raise ValueError(f"runs that differ in {cls.__name__}.{f.name} ({column}) cannot "
                                 "share a pack")
            self.register_buffer(f.name, torch.tensor(column, dtype=torch.float32),
                                 persistent=False)
            self.varying.append(f.name)

    def extra_repr(self) -> str:
        """The options class and the fields that differ between runs, for ``print(model)``."""
        return f"{self.options_class.__name__}, per run: {', '.join(self.varying) or 'none'}"


def pack_options(values: list[Any]) -> Any:
    """K runs' options: the one dataclass value when they agree, else :class:`RunValues`."""
    if all(v == values[0] for v in values):
        return values[0]
    return RunValues(values)


def per_run(values: list[float], device: torch.device | None = None) -> float | Tensor:
    """K runs' values of one setting: a number when they agree, else a (K,) float32 tensor."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, dtype=torch.float32, device=device)


def build_pack(cls: type[Strategy], ctx: Context, opts: Any | list[Any], seeds: list[int]
               ) -> Strategy:
    """A strategy of ``len(seeds)`` runs whose run k starts exactly as ``cls`` built alone with
    ``torch.manual_seed(seeds[k])`` and options ``opts[k]`` (one options value: every run's).
    """
    options = opts if isinstance(opts, list) else [opts] * len(seeds)
    if len(options) != len(seeds):
        raise ValueError(f"{len(options)} options for {len(seeds)} runs")
    states = []
    for seed, o in zip(seeds, options, strict=True):
        torch.manual_seed(seed)
        single = cls(ctx.with_runs(1), o)
        if len(seeds) == 1:
            single.run_options = options
            return single
        states.append(single.state_dict())
    packed = cls(ctx.with_runs(len(seeds)), pack_options(options))
    packed.load_state_dict(pack_states(states))
    packed.run_options = options  # what a pack rebuilt without its finished runs needs
    return packed


def unpack_model(strategy: Strategy, k: int) -> nn.Module:
    """Run ``k``'s target backbone as an ordinary (one-run) model, on the CPU."""
    ctx = strategy.ctx
    model = ctx.backbone_factory(ctx.target_classes, 1)
    state = {n: t.detach().cpu() for n, t in strategy.model.state_dict().items()}
    model.load_state_dict(unpack_state(state, ctx.runs, k))
    return model.eval()
