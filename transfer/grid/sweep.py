"""Hyperparameter sweeps: every strategy tuned with the same random-search budget.

A strategy's search space is the union of the shared training settings' (``train.lr``,
``train.weight_decay``), the backbone's (none declared by default; ``[sweep.backbone]`` adds
one, e.g. for ``dropout``) and its own options' declared spaces
(:func:`transfer.common.options.opt`), each narrowed, replaced or turned off by the recipe
(``[sweep.train]``, ``[sweep.backbone]``, a strategy's ``search`` table). Draw 0 is the
recipe's own settings; draw d > 0 draws every field of the space from a generator seeded by
(``sweep.seed``, the strategy's label, d), so a draw is the same setting for every fold and
seed, and the same again in a rerun with more draws.

A draw's values (``{"train.lr": 0.002, "adv_weight": 0.4}``) are applied to the recipe's
training settings, backbone options and strategy options by :func:`apply`; values of fields
declared per-run vary inside one pack, any other value (a width, a dropout rate) puts the draw
in a pack of its own (:func:`pack_key`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from transfer.common import options
from transfer.common.config import Recipe, StrategyEntry, TrainConfig
from transfer.common.options import OptionError, Space

#: Prefixes of shared fields in a draw's values; a strategy's own options have none.
TRAIN, BACKBONE = "train.", "backbone."


def _backbone_options(recipe: Recipe) -> type:
    import backbones

    return backbones.options_of(recipe.backbone.name)


def _declared(cls: type, overrides: dict[str, Any], where: str) -> dict[str, Space]:
    """``cls``'s declared spaces, with the recipe's ``overrides`` applied (checked)."""
    spaces = dict(options.search_space(cls))
    for name, value in overrides.items():
        space = options.parse_space(cls, name, value, f"{where}.{name}")
        if space is None:
            spaces.pop(name, None)
        else:
            spaces[name] = space
    return spaces


def resolve_spaces(recipe: Recipe, entry: StrategyEntry, search: dict[str, Any]) -> dict[str, Space]:
    """The search space of one strategy entry: shared settings first, then its options."""
    sweep = recipe.sweep
    out = {TRAIN + k: v for k, v in _declared(TrainConfig, sweep.train, "sweep.train").items()}
    out.update({BACKBONE + k: v for k, v in
                _declared(_backbone_options(recipe), sweep.backbone, "sweep.backbone").items()})
    from transfer.train.strategies import get_strategy

    own = _declared(get_strategy(entry.name).Options, search,
                    f"strategies.{entry.label}.search")
    out.update(own)
    return out


def draw(recipe: Recipe, entry: StrategyEntry, d: int) -> dict[str, Any]:
    """The values of draw ``d`` of ``entry`` (draw 0: none, the recipe's settings)."""
    if d == 0 or not entry.search:
        return {}
    rng = np.random.default_rng([recipe.sweep.seed, zlib.crc32(entry.label.encode()), d])
    values = {}
    for name, space in entry.search.items():  # a fixed order: the entry's space
        v = space.sample(rng)
        values[name] = v.item() if isinstance(v, np.generic) else v
    return values


@dataclass(frozen=True)
class Applied:
    """A draw applied: the run's training settings, backbone options and strategy options."""

    train: TrainConfig
    backbone: dict[str, Any]
    options: Any


def apply(recipe: Recipe, entry: StrategyEntry, values: dict[str, Any]) -> Applied:
    """The recipe's settings for ``entry`` with a draw's ``values`` set (each checked)."""
    train = {k[len(TRAIN):]: v for k, v in values.items() if k.startswith(TRAIN)}
    backbone = {k[len(BACKBONE):]: v for k, v in values.items() if k.startswith(BACKBONE)}
    own = {k: v for k, v in values.items() if not k.startswith((TRAIN, BACKBONE))}
    try:
        cfg = options.replace(recipe.train, train, options.Naming(prefix="train"))
        opts = options.replace(entry.options, own, f"strategy '{entry.label}'")
    except OptionError as err:
        raise OptionError(f"sweep draw {values}: {err}") from None
    return Applied(cfg, {**recipe.backbone.options, **backbone}, opts)


def pack_key(recipe: Recipe, entry: StrategyEntry, values: dict[str, Any]) -> tuple:
    """What draws of ``entry`` must share to train in one pack: their values of every field
    that is not per-run (widths, step counts, dropout rates, ...)."""
    from transfer.train.strategies import get_strategy

    out = []
    for name, v in sorted(values.items()):
        if name.startswith(TRAIN):
            cls, field = TrainConfig, name[len(TRAIN):]
        elif name.startswith(BACKBONE):
            cls, field = _backbone_options(recipe), name[len(BACKBONE):]
        else:
            cls, field = get_strategy(entry.name).Options, name
        if not options.is_per_run(cls, field):
            out.append((name, v))
    return tuple(out)


def describe_values(values: dict[str, Any]) -> str:
    """``lr=0.0012, adv_weight=0.41`` (``defaults`` for draw 0)."""
    if not values:
        return "defaults"
    return ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in values.items())


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def rung_epochs(recipe: Recipe) -> tuple[int, ...]:
    """The epochs after which successive halving stops half of the draws (none without it)."""
    if not recipe.sweep.halving or recipe.sweep.draws < 2:
        return ()
    epochs = recipe.train.epochs
    return tuple(sorted({min(epochs - 1, max(1, round(f * epochs))) for f in recipe.sweep.rungs}
                        - {0}))


def space_table(entry: StrategyEntry) -> list[tuple[str, str]]:
    """(field, distribution) rows of an entry's search space."""
    return [(name, space.describe()) for name, space in entry.search.items()]


def check_sweep(recipe: Recipe) -> None:
    """Rules of a sweep that involve other sections."""
    if recipe.sweep.draws > 1 and not any(e.search for e in recipe.strategies):
        raise OptionError("sweep.draws > 1 but no strategy has anything to tune: every search "
                          "space was turned off")
    if recipe.sweep.halving and recipe.train.epochs < 3:
        raise OptionError("sweep.halving needs train.epochs >= 3 (a rung before the last epoch)")
