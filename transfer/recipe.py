"""Recipes: TOML files that describe one comparison (data, backbone, protocol, strategies).

A recipe is data, never executed. Every section maps onto a typed dataclass below whose
defaults are the defaults; an unknown key, a value of the wrong type or out of range (an
``epochs`` of 0, an ``lr`` of 0) is an error that names the key and what is allowed.
``--set a.b=value`` uses the same dotted names (the value is read as a TOML value, else as a
string); a strategy's options are ``strategies.<name>.<option>``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from backbones import OptionError, build_options
from transfer import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class SegmentsConfig:
    """Segmenting of one corpus; unset values come from the corpus card."""

    seconds: float | None = None  # absent = the card's default
    mode: str = ""  # "" = the card's default; pad | window | concat
    overlap_s: float = 2.5
    align: Literal["start", "center"] = "start"


@dataclass
class CorpusConfig:
    """One corpus: a card (name in datasets/ or path) and where its audio is.

    ``synthetic``: instead of ``root``, generate a synthetic corpus of this size (tiny | small |
    full) into the cache (casia and modma only). ``root`` = "" reads ``$<NAME>_ROOT``.
    """

    corpus: str = ""
    root: str = ""
    synthetic: str = ""
    synthetic_seed: int = 0
    label_map: dict[str, str] = field(default_factory=dict)
    keep: list[str] = field(default_factory=list)
    max_bad_share: float = 0.05
    segments: SegmentsConfig = field(default_factory=SegmentsConfig)
    # What a label belongs to (the decision unit): subject | recording | segment; "" = the
    # card's [labels] unit. Checked against the data; metrics are reported per unit.
    unit: Literal["", "subject", "recording", "segment"] = ""


@dataclass
class FeaturesConfig:
    """Frame features, shared by source and target (the backbone sees one feature size).

    Args:
        kind: ``mfcc`` (n_mfcc coefficients + deltas), ``logmel`` (n_mels log-mel bands) or
            ``ssl`` (hidden states of a WavLM / HuBERT / wav2vec 2.0 checkpoint; needs
            ``pip install -e ".[ssl]"``).
        sample_rate: every recording is resampled to this rate (16000 for ssl checkpoints).
        n_mfcc, deltas: MFCC coefficients and delta orders (0-2): 13 x 3 = 39 dims.
        n_fft, hop, n_mels: STFT window, hop (samples) and mel bands (mfcc and logmel).
        normalize: ``corpus`` standardises each corpus by its training statistics; ``none``.
        model: ssl: a local folder holding the checkpoint saved with save_pretrained
            (config.json + model.safetensors); nothing is downloaded.
        layers: ssl: a hidden-state index (0 = convolutional features, -1 = last layer), a list
            of indices (averaged), or "all" (every layer stacked: (segments, layers * dim,
            frames); the TIM-Net backbones learn softmax layer weights, as SUPERB).
        pool_frames: ssl: average every n frames (50 Hz -> 50 / n Hz); 1 = no pooling.
    """

    kind: Literal["mfcc", "logmel", "ssl"] = "mfcc"
    sample_rate: int = 16000
    n_mfcc: int = 13
    deltas: int = 2
    n_fft: int = 800
    hop: int = 512
    n_mels: int = 128
    normalize: Literal["corpus", "none"] = "corpus"  # standardise each corpus by its train stats
    model: str = ""
    layers: int | list[int] | Literal["all"] = "all"
    pool_frames: int = 1


@dataclass
class BackboneConfig:
    name: str = "timnet"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation of a target run (and, in ``[pretrain]``, of source pretraining)."""

    epochs: int = 60
    batch_size: int = 32
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.93, 0.98])
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["none", "step", "cosine"] = "none"
    step_size: int = 30
    gamma: float = 0.3
    label_smoothing: float = 0.1
    grad_clip: float = 0.0  # 0 = off
    patience: int = 0  # early stopping on the validation metric; 0 = off
    select: Literal["val_uar", "val_loss", "last"] = "val_uar"
    amp: bool = True  # bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX)
    compile: bool = False  # torch.compile the model
    pack: int = 0  # runs of one strategy trained together as one model; 0 = by device, 1 = off
    cuda_graph: bool = True  # on CUDA, capture the training step once and replay it


@dataclass
class PretrainConfig(TrainConfig):
    """Source pretraining: a speaker-independent hold-out selects the epoch."""

    epochs: int = 40
    batch_size: int = 64
    val_fraction: float = 0.25  # share of source speakers held out
    seed: int = 0


@dataclass
class ProtocolConfig:
    """Target evaluation protocol.

    ``subject-kfold``: stratified k-fold over subjects; ``loso``: leave one subject out;
    ``segment-random``: the research code's random split of segments (speaker-dependent).
    ``compare``: further protocols run on the same strategies into the same results folder;
    ``["segment-random"]`` writes the leak report (``leak.md``: honest vs leaky scores).
    """

    name: Literal["subject-kfold", "loso", "segment-random"] = "subject-kfold"
    folds: int = 5
    val_fraction: float = 0.2  # share of training subjects used for model selection
    split: list[float] = field(default_factory=lambda: [0.6, 0.2, 0.2])
    split_seed: int = 34
    compare: list[Literal["subject-kfold", "loso", "segment-random"]] = field(default_factory=list)


@dataclass
class DiagnosticsConfig:
    """Domain gap of ``general`` features after training (MMD, proxy A-distance)."""

    enabled: bool = True
    max_samples: int = 400  # per domain
    plot: bool = True


@dataclass
class StrategyEntry:
    name: str
    label: str
    options: Any


@dataclass
class Recipe:
    name: str = ""
    description: str = ""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    jobs: int = 1  # runs at once (processes); 0 = choose from the device
    export: bool = False
    source: list[CorpusConfig] = field(default_factory=list)
    target: CorpusConfig = field(default_factory=CorpusConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    strategies: list[StrategyEntry] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["strategies"] = [{"name": s.name, "label": s.label, **dataclasses.asdict(s.options)}
                              for s in self.strategies]
        return data


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
    from transfer.strategies import get_strategy, names

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
        except OptionError as err:
            raise UserError(str(err)) from None
        if label in labels:
            raise UserError(f"two strategies are labelled {label!r}: give one a 'label'")
        labels.add(label)
        entries.append(StrategyEntry(name, label, opts))
    return entries


def parse_recipe(data: dict[str, Any], name: str = "recipe") -> Recipe:
    """Validate a recipe already read from TOML."""
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
        from transfer.ssl import check_features

        check_features(recipe.features)
    from transfer.strategies import get_strategy

    if any(get_strategy(s.name).needs_source for s in recipe.strategies) and not recipe.source:
        needing = [s.label for s in recipe.strategies if get_strategy(s.name).needs_source]
        raise UserError(f"strategies {needing} need a [source] corpus")
    try:
        import backbones

        backbones.options_of(recipe.backbone.name)
    except OptionError as err:
        raise UserError(f"backbone.name: {err}") from None
    check_ranges(recipe)
    return recipe


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
