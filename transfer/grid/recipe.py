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
import sys
from pathlib import Path
from typing import Any

from transfer import UserError
from transfer.common import options
from transfer.common.config import CorpusConfig, FeatureSpec, Recipe, StrategyEntry
from transfer.common.options import OptionError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


_SPECIAL = frozenset({"source", "strategies", "features"})


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
        label = item.pop("label", name)
        if not isinstance(name, str) or not isinstance(label, str):
            raise UserError(f"strategies[{i}]: 'name' and 'label' must be strings, got "
                            f"{name!r} and {label!r}; available: {names()}")
        search = item.pop("search", {})
        if not isinstance(search, dict):
            raise UserError(f"strategy '{label}': 'search' must be a table of option = space, "
                            f"got {search!r}")
        cls = get_strategy(name)
        opts = options.build(cls.Options, item, f"strategy '{label}'")
        if label in labels:
            raise UserError(f"two strategies are labelled {label!r}: give one a 'label'")
        labels.add(label)
        entries.append(StrategyEntry(name, label, opts, search))
    return entries


def _features(raw: Any) -> FeatureSpec:
    """``[features]``: the shared keys and the options of its kind, checked against the kind's
    declaration (:mod:`transfer.data.kinds`)."""
    from transfer.data.kinds import parse

    return parse(raw, options.Naming(prefix="features"))


def _sources(sources: Any) -> list[CorpusConfig]:
    """``[source]`` (one table) or ``[[source]]`` (a list of tables) as corpus configs."""
    if isinstance(sources, dict):
        sources = [sources]
    if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
        raise UserError(f"recipe key 'source' must be a [source] table or [[source]] tables, "
                        f"got {sources!r}")
    return [options.build(CorpusConfig, s, options.Naming(
        prefix=f"source[{i}]" if len(sources) > 1 else "source")) for i, s in enumerate(sources)]


def parse_recipe(data: dict[str, Any], name: str = "recipe") -> Recipe:
    """Validate a recipe already read from TOML: every key's type and declared range
    (:mod:`transfer.common.options`), the strategies and their options, the backbone's options,
    and the rules over several keys."""
    data = _one_adapt_as_list(data)
    recipe = options.build(Recipe, data, skip=_SPECIAL)
    recipe.source = _sources(data.get("source", []))
    recipe.features = _features(data.get("features", {}))
    recipe.strategies = _strategies(data.get("strategies"))
    recipe.name = recipe.name or name
    if not recipe.target.corpus:
        raise UserError("recipe needs [target] with corpus = \"<card name or path>\"")
    check_name(recipe.name)
    check_data_settings(recipe)
    from transfer.train.strategies import get_strategy

    if any(get_strategy(s.name).needs_source for s in recipe.strategies) and not recipe.source:
        needing = [s.label for s in recipe.strategies if get_strategy(s.name).needs_source]
        raise UserError(f"strategies {needing} need a [source] corpus")
    _check_label_mode(recipe, data)
    check_backbone(recipe)
    from transfer.grid import sweep

    for entry in recipe.strategies:  # the raw search tables become resolved spaces
        entry.search = sweep.resolve_spaces(recipe, entry, entry.search)
    sweep.check_sweep(recipe)
    return recipe


def check_name(name: str) -> None:
    """A recipe's name is the folder its results go in (``<results-dir>/<name>/``): one folder
    name, so that no name (``../../x``, ``/abs``) writes outside the results folder."""
    bad = (not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0")
           or name != name.strip())
    if bad:
        raise UserError(f"recipe key 'name' must be a folder name (no '/', '\\', NUL or "
                        f"surrounding spaces; not '.' or '..'), got {name!r}; it names the "
                        "results folder <results-dir>/<name>/")


def check_data_settings(recipe: Recipe) -> None:
    """Feature and segment settings that each pass their own range but not together
    (``n_mfcc`` above ``n_mels``, a segment of fewer feature frames than a model needs), at
    load time; for ssl, the checkpoint checks, before any audio is touched. Segment lengths
    left to the corpus card are checked when the card is read."""
    from transfer.common.config import SegmentsConfig
    from transfer.data.domain import feature_spec
    from transfer.data.features import check_segments
    from transfer.data.kinds import get_kind

    spec = feature_spec(recipe.features)
    corpora = [("target", recipe.target)] + [
        (f"source[{i}]" if len(recipe.source) > 1 else "source", c)
        for i, c in enumerate(recipe.source)]
    for where, c in corpora:
        s = c.segments
        if s.seconds is None:
            continue
        # without the card (read by --dry-run), a mode left out is taken as "pad"
        seg = s.resolve(SegmentsConfig(mode="pad"), sample_rate=recipe.features.sample_rate,
                        naming=options.Naming(prefix=f"{where}.segments"))
        if get_kind(spec.kind).frames_known:  # else (ssl) checked when data is loaded
            check_segments(seg, spec, f"{where}.segments.seconds", f"recipe key '{where}': ")


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
        if not c.labelled:
            key = f"source[{i}].labelled" if len(recipe.source) > 1 else "source.labelled"
            raise UserError(f"recipe key '{key}' must be true: a source teaches with its labels")
    labelled = recipe.target.labelled
    for entry in recipe.strategies:
        check_label_mode(get_strategy(entry.name), labelled, entry.label)
    select = recipe.sweep.select
    if labelled:
        if select != "validation":
            raise UserError(f"recipe key 'sweep.select' = {select!r} is a label-free rule, for "
                            "[target] labelled = false; with target labels use \"validation\"")
        return
    if recipe.sweep.draws > 1 and select == "validation":
        raise UserError("recipe key 'sweep.select' must be a label-free rule with [target] "
                        "labelled = false (the validation labels are hidden): source_acc, iwv, "
                        "dev, entropy, info_max or snd")
    if recipe.sweep.halving:
        raise UserError("recipe key 'sweep.halving' ranks draws by the target's validation "
                        "labels while they train, which [target] labelled = false hides")
    if not recipe.source:
        raise UserError("[target] labelled = false needs a [source] corpus whose classes the "
                        "target shares (map them with label_map / keep)")
    train = data.get("train")
    given = train.get("select") if isinstance(train, dict) else None
    if given not in (None, "last"):
        raise UserError(f"recipe key 'train.select' must be \"last\" with [target] labelled = "
                        f"false, got {given!r}; the other rules read the target's validation "
                        "labels")
    recipe.train.select = "last"


def check_backbone(recipe: Recipe) -> None:
    """The backbone's name and the options the recipe gives it (types, declared ranges), at
    load time; the options the data decide (``in_features``, ``num_classes``) are checked when
    the model is built."""
    import backbones

    try:
        opts_cls = backbones.options_of(recipe.backbone.name)
    except OptionError as err:
        raise UserError(f"backbone.name: {err}") from None
    given = recipe.backbone.options
    defaults = {f.name: getattr(opts_cls(), f.name) for f in dataclasses.fields(opts_cls)}
    options.build(opts_cls, {**defaults, **given},
                  options.Naming(f"[backbone.options] of {recipe.backbone.name!r}"))


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
    from transfer.data.cards import read_toml

    data = read_toml(path, "recipe")
    for assignment in sets or []:
        apply_set(data, assignment)
    return parse_recipe(data, path.stem)
