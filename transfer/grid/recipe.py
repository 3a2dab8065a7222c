"""Recipes: TOML files that describe one comparison (data, backbone, protocol, strategies).

A recipe is data, never executed. Every section maps onto a typed dataclass of
:mod:`transfer.common.config` whose defaults are the defaults; an unknown key, a value of the
wrong type or out of range (an ``epochs`` of 0, an ``lr`` of 0) is an error that names the key
and what is allowed.
``--set a.b=value`` uses the same dotted names (the value is read as a TOML value, else as a
string); a strategy's options are ``strategies.<name>.<option>``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any

from backbones import OptionError, build_options
from transfer import UserError
from transfer.common.config import (
    CorpusConfig,
    Recipe,
    StrategyEntry,
    TrainConfig,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


_SPECIAL = {"source", "strategies"}


def _check_value(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise UserError(f"recipe key '{key}' must be a table, got {value!r}")
        return _from_dict(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"recipe key '{key}' must be a list, got {value!r}")
        (inner,) = typing.get_args(hint)
        return [_check_value(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"recipe key '{key}' must be a table, got {value!r}")
        _, inner = typing.get_args(hint)
        return {k: v if inner is Any else _check_value(v, inner, f"{key}.{k}")
                for k, v in value.items()}
    from backbones import _describe, _type_ok

    if not _type_ok(value, hint):
        raise UserError(f"recipe key '{key}' must be {_describe(hint)}, got {value!r}")
    floats = hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType)
                               and float in typing.get_args(hint))
    return float(value) if floats and isinstance(value, int) else value


def _from_dict(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"[{prefix}]" if prefix else "the top level"
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise UserError(f"unknown recipe key '{key}' in {where}; allowed: "
                        f"{', '.join(n for n in names)}")
    kwargs = {k: _check_value(v, hints[k], f"{prefix}.{k}" if prefix else k)
              for k, v in data.items() if k not in _SPECIAL}
    return cls(**kwargs)


def _strategies(raw: Any) -> list[StrategyEntry]:
    from transfer.train.strategies import get_strategy, names

    if not isinstance(raw, list) or not raw:
        raise UserError(f"recipe needs a non-empty [[strategies]] list; available: {names()}")
    entries, labels = [], set()
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or "name" not in item:
            raise UserError(f"strategies[{i}] needs a name; available: {names()}")
        item = dict(item)
        name = item.pop("name")
        label = str(item.pop("label", name))
        cls = get_strategy(name)
        try:
            opts = build_options(cls.Options, item, f"strategy '{label}'")
        except OptionError as err:  # a range check (validate) does not know the strategy
            prefix = "" if str(err).startswith(f"strategy '{label}'") else f"strategy '{label}': "
            raise UserError(prefix + str(err)) from None
        if label in labels:
            raise UserError(f"two strategies are labelled {label!r}: give one a 'label'")
        labels.add(label)
        entries.append(StrategyEntry(name, label, opts))
    return entries


def parse_recipe(data: dict[str, Any], name: str = "recipe") -> Recipe:
    """Validate a recipe already read from TOML."""
    data = _one_adapt_as_list(data)
    recipe = _from_dict(Recipe, data, "")
    sources = data.get("source", [])
    if isinstance(sources, dict):
        sources = [sources]
    recipe.source = [_from_dict(CorpusConfig, s, f"source[{i}]" if len(sources) > 1 else "source")
                     for i, s in enumerate(sources)]
    recipe.strategies = _strategies(data.get("strategies"))
    recipe.name = recipe.name or name
    if not recipe.target.corpus:
        raise UserError("recipe needs [target] with corpus = \"<card name or path>\"")
    if not recipe.seeds:
        raise UserError("recipe key 'seeds' must list at least one seed")
    if recipe.features.kind == "ssl":
        from transfer.data.domain import feature_spec

        feature_spec(recipe.features)  # the ssl checks of FeatureSpec, before any file access
    from transfer.train.strategies import get_strategy

    if any(get_strategy(s.name).needs_source for s in recipe.strategies) and not recipe.source:
        needing = [s.label for s in recipe.strategies if get_strategy(s.name).needs_source]
        raise UserError(f"strategies {needing} need a [source] corpus")
    _check_label_mode(recipe, data)
    try:
        import backbones

        backbones.options_of(recipe.backbone.name)
    except OptionError as err:
        raise UserError(f"backbone.name: {err}") from None
    check_ranges(recipe)
    return recipe


def _one_adapt_as_list(data: dict[str, Any]) -> dict[str, Any]:
    """``evaluate.adapt = "tent"`` means ``["tent"]``."""
    evaluate = data.get("evaluate")
    if isinstance(evaluate, dict) and isinstance(evaluate.get("adapt"), str):
        return {**data, "evaluate": {**evaluate, "adapt": [evaluate["adapt"]]}}
    return data


def _check_label_mode(recipe: Recipe, data: dict[str, Any]) -> None:
    """The unlabelled mode (``[target] labelled = false``): a source to learn the classes from,
    strategies that can run without target labels, and the last epoch kept (choosing an epoch
    by the target's validation labels would read them). With a labelled target, strategies
    that classify with the source's head are refused."""
    from transfer.train.strategies import check_label_mode, get_strategy

    for i, c in enumerate(recipe.source):
        _require(c.labelled, f"source[{i}].labelled" if len(recipe.source) > 1
                 else "source.labelled", "true (a source teaches with its labels)", c.labelled)
    labelled = recipe.target.labelled
    for entry in recipe.strategies:
        check_label_mode(get_strategy(entry.name), labelled, entry.label)
    if labelled:
        return
    if not recipe.source:
        raise UserError("[target] labelled = false needs a [source] corpus whose classes the "
                        "target shares (map them with label_map / keep)")
    train = data.get("train")
    given = train.get("select") if isinstance(train, dict) else None
    _require(given in (None, "last"), "train.select", '"last" with [target] labelled = false',
             given, "the other rules read the target's validation labels")
    recipe.train.select = "last"


def _require(ok: bool, key: str, rule: str, value: Any, hint: str = "") -> None:
    if not ok:
        raise UserError(f"recipe key '{key}' must be {rule}, got {value!r}" + (f"; {hint}" if hint
                                                                                else ""))


def _at_least(value: float, low: float, key: str, hint: str = "") -> None:
    _require(math.isfinite(value) and value >= low, key, f">= {low:g}", value, hint)


def _above(value: float, low: float, key: str, hint: str = "") -> None:
    _require(math.isfinite(value) and value > low, key, f"> {low:g}", value, hint)


def _share(value: float, key: str, *, open_low: bool = False, open_high: bool = False) -> None:
    ok = (math.isfinite(value) and (value > 0 if open_low else value >= 0)
          and (value < 1 if open_high else value <= 1))
    rule = f"in {'(' if open_low else '['}0, 1{')' if open_high else ']'}"
    _require(ok, key, rule, value)


def _check_train(cfg: TrainConfig, prefix: str) -> None:
    _at_least(cfg.epochs, 1, f"{prefix}.epochs", "0 epochs would report an untrained model")
    _at_least(cfg.batch_size, 1, f"{prefix}.batch_size")
    _above(cfg.lr, 0, f"{prefix}.lr", "a learning rate of 0 or less trains nothing")
    _require(len(cfg.betas) == 2 and all(math.isfinite(b) and 0 <= b < 1 for b in cfg.betas),
             f"{prefix}.betas", "two numbers in [0, 1)", cfg.betas)
    _at_least(cfg.momentum, 0, f"{prefix}.momentum")
    _at_least(cfg.weight_decay, 0, f"{prefix}.weight_decay")
    _at_least(cfg.step_size, 1, f"{prefix}.step_size")
    _above(cfg.gamma, 0, f"{prefix}.gamma")
    _share(cfg.label_smoothing, f"{prefix}.label_smoothing", open_high=True)
    _at_least(cfg.grad_clip, 0, f"{prefix}.grad_clip", "0 turns clipping off")
    _at_least(cfg.patience, 0, f"{prefix}.patience", "0 turns early stopping off")


def check_ranges(recipe: Recipe) -> None:
    """Numeric values that type-check but cannot give a meaningful run are errors at load time,
    before any data is read or model trained."""
    _require(len(set(recipe.seeds)) == len(recipe.seeds), "seeds", "distinct seeds",
             recipe.seeds)
    _at_least(recipe.jobs, 0, "jobs", "0 chooses from the device")
    _at_least(recipe.threads, 0, "threads", "0 uses torch's default")
    corpora = [("target", recipe.target)] + [
        (f"source[{i}]" if len(recipe.source) > 1 else "source", c)
        for i, c in enumerate(recipe.source)]
    for where, c in corpora:
        _share(c.max_bad_share, f"{where}.max_bad_share")
        if c.segments.seconds is not None:
            _above(c.segments.seconds, 0, f"{where}.segments.seconds",
                   "leave it out to use the corpus card's length")
        _at_least(c.segments.overlap_s, 0, f"{where}.segments.overlap_s")
    f = recipe.features
    _at_least(f.sample_rate, 1000, "features.sample_rate")
    for name in ("n_mfcc", "n_fft", "hop", "n_mels"):
        _at_least(getattr(f, name), 1, f"features.{name}")
    _require(f.deltas in (0, 1, 2), "features.deltas", "0, 1 or 2", f.deltas)
    _check_train(recipe.train, "train")
    _check_train(recipe.pretrain, "pretrain")
    _share(recipe.pretrain.val_fraction, "pretrain.val_fraction", open_low=True, open_high=True)
    p = recipe.protocol
    if p.name == "subject-kfold":
        _at_least(p.folds, 2, "protocol.folds",
                  "subject-kfold needs a training and a test part; for one held-out subject "
                  "per fold use protocol.name = \"loso\"")
    _share(p.val_fraction, "protocol.val_fraction", open_low=True, open_high=True)
    if p.name == "segment-random":
        _require(len(p.split) == 3 and all(math.isfinite(v) and v > 0 for v in p.split)
                 and abs(sum(p.split) - 1) <= 1e-6, "protocol.split",
                 "three shares > 0 (train, validation, test) that sum to 1", p.split)
    _at_least(recipe.diagnostics.max_samples, 2, "diagnostics.max_samples")
    ev = recipe.evaluate
    _require(bool(ev.adapt) and len(set(ev.adapt)) == len(ev.adapt), "evaluate.adapt",
             'distinct values of "none", "adabn", "tent" (at least one)', ev.adapt)
    _at_least(ev.tent_steps, 1, "evaluate.tent_steps")
    _above(ev.tent_lr, 0, "evaluate.tent_lr")
    _at_least(ev.batch_size, 1, "evaluate.batch_size")


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_set(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``--set dotted.key=value`` to raw recipe data."""
    if "=" not in assignment:
        raise UserError(f"--set needs key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    value = _parse_value(text.strip())
    if parts[0] == "strategies" and len(parts) == 3:
        for item in data.get("strategies", []):
            if isinstance(item, dict) and item.get("label", item.get("name")) == parts[1]:
                item[parts[2]] = value
                return
        raise UserError(f"--set {key}: no strategy labelled {parts[1]!r} in the recipe")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if isinstance(child, list) and len(child) == 1:  # a single [[source]]
            child = child[0]
        if not isinstance(child, dict):
            raise UserError(f"--set {key}: '{'.'.join(parts[:i + 1])}' is not a table")
        node = child
    node[parts[-1]] = value


def load_recipe(path: str | Path, sets: list[str] | None = None) -> Recipe:
    """Read, override (``--set``) and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no recipe file {path}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"recipe {path} is not valid TOML: {err}") from None
    for assignment in sets or []:
        apply_set(data, assignment)
    return parse_recipe(data, path.stem)
