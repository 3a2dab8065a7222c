"""From recipe corpus sections to in-memory domains (features, labels, subjects)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from transfer import UserError
from transfer.common.cache import content_hash
from transfer.common.config import CorpusConfig, FeatureSpec, SegmentSpec
from transfer.common.options import Naming
from transfer.data.cards import Card, load_card
from transfer.data.corpora import build_manifest
from transfer.data.covariates import read_covariates
from transfer.data.features import check_segments, load_features
from transfer.data.kinds import bind, get_kind, resolve
from transfer.data.units import unit_ids, unit_labels

log = logging.getLogger(__name__)


@dataclass
class Domain:
    """Every segment of one (or several, for pooled sources) corpora.

    ``x``: (N, F, T) float32; ``y``: (N,) class indices into ``labels``; ``groups``: (N,) the
    speaker/subject of each segment; ``files``: (N,) source file of each segment; ``unit``: what
    a label belongs to (subject | recording | segment); ``units``: (N,) the decision unit of
    each segment (None = the speaker); ``covariates``: per speaker (index) the subject
    covariates the corpus card names (gender, age, ...), or None with ``covariates_note``
    saying why there are none.
    """

    name: str
    x: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    files: np.ndarray
    labels: list[str]
    keys: list[str]  # feature cache keys: identify the data for content hashes
    positive: str = ""
    unit: str = "subject"
    units: np.ndarray | None = None
    stacked_layers: int = 0  # ssl with layers = "all": x is (N, L * dim, T), L layers stacked
    covariates: pd.DataFrame | None = None
    covariates_note: str = ""

    @classmethod
    def from_arrays(cls, x: np.ndarray, y: np.ndarray, speakers: np.ndarray, *,
                    labels: list[str] | None = None, positive: str = "", name: str = "arrays",
                    files: np.ndarray | None = None, unit: str = "subject",
                    covariates: pd.DataFrame | None = None) -> Domain:
        """A domain from features already in memory (a notebook's own arrays), no files read.

        ``x``: (N, F, T) frame features; ``y``: (N,) label strings, or class indices into
        ``labels``; ``speakers``: (N,) the speaker of each segment; ``files``: (N,) the
        recording of each segment (only needed for ``unit = "recording"``). Labels must agree
        with ``unit`` (one label per speaker for ``"subject"``), as for a corpus.
        ``covariates``: subject covariates for subgroup reports, one row per speaker (index)
        and one column per covariate (strings are groups, numbers are banded).
        """
        x = np.asarray(x, dtype=np.float32)
        y, speakers = np.asarray(y), np.asarray(speakers).astype(str)
        if x.ndim != 3:
            raise UserError(f"x must be (segments, features, frames), got shape {x.shape}")
        if not (len(x) == len(y) == len(speakers)) or (files is not None and len(files) != len(x)):
            raise UserError(f"x, y, speakers (and files) need one entry per segment: {len(x)} "
                            f"segments, {len(y)} labels, {len(speakers)} speakers")
        if labels is None:
            labels = [str(v) for v in np.unique(y)]
        labels = [str(v) for v in labels]
        if y.dtype.kind in "US":
            unknown = sorted(set(y.astype(str)) - set(labels))
            if unknown:
                raise UserError(f"labels {unknown} are not in labels={labels}")
            y = np.array([labels.index(v) for v in y.astype(str)], np.int64)
        elif len(y) and (y.min() < 0 or y.max() >= len(labels)):
            raise UserError(f"class indices in y must lie in 0..{len(labels) - 1} (labels={labels})")
        y = y.astype(np.int64)
        if positive and positive not in labels:
            raise UserError(f"positive {positive!r} is not one of the labels {labels}")
        files = (np.array([f"{s}/segment{i}" for i, s in enumerate(speakers)]) if files is None
                 else np.asarray(files).astype(str))
        units = None if unit == "subject" else unit_ids(unit, speakers, files)
        unit_labels(speakers if units is None else units, y, unit, labels, f"{name}: ")
        key = content_hash({"x": hashlib.sha256(x.tobytes()).hexdigest(), "shape": x.shape,
                            "y": y.tolist(), "speakers": speakers.tolist()})
        table, note = _given_covariates(covariates)
        return cls(name, x, y, speakers, files, labels, [key], positive, unit, units,
                   covariates=table, covariates_note=note)

    @property
    def unit_ids(self) -> np.ndarray:
        """(N,) the decision unit of every segment."""
        return self.groups if self.units is None else self.units

    @property
    def positive_index(self) -> int:
        """Index of the positive class in ``labels``, -1 without one."""
        return self.labels.index(self.positive) if self.positive in self.labels else -1

    def unit_covariates(self, ids: list[str]) -> dict[str, list]:
        """The covariates of the decision units ``ids`` (through each unit's speaker): name ->
        one value per unit (a string, a number, or None where the table has none); {} without
        covariates."""
        if self.covariates is None or self.covariates.empty:
            return {}
        speaker_of = dict(zip(self.unit_ids.tolist(), self.groups.tolist()))
        rows = self.covariates.reindex([speaker_of.get(u, "") for u in ids])
        return {str(name): [None if pd.isna(v) else (float(v) if isinstance(v, (int, float))
                                                     else str(v)) for v in rows[name]]
                for name in rows.columns}

    def with_label_order(self, labels: list[str], other: str = "the source") -> Domain:
        """The same domain with its classes in the order ``labels`` (another domain's: the
        unlabelled mode scores the source's classifier on the target). The two label sets must
        be equal; the error names the difference and how to map one onto the other."""
        if sorted(labels) != sorted(self.labels):
            raise UserError(
                f"with [target] labelled = false the target's classes must be {other}'s: target "
                f"{self.name} has {self.labels}, {other} has {labels}; map them with label_map / "
                "keep in [target] and [source]")
        index = np.array([labels.index(lab) for lab in self.labels], np.int64)
        return dataclasses.replace(self, y=index[self.y], labels=list(labels))


def _given_covariates(covariates: pd.DataFrame | None) -> tuple[pd.DataFrame | None, str]:
    """Covariates handed to :meth:`Domain.from_arrays` (index: speaker), or why none."""
    if covariates is None:
        return None, "no covariates were given (Domain.from_arrays(covariates=...))"
    table = pd.DataFrame(covariates)
    table.index = table.index.astype(str)
    return table, ""


def check_per_speaker(unit: str, what: str, corpus: str = "the target") -> None:
    """Refuse per-speaker normalisation or adaptation (``what``) where the label belongs to the
    subject: a speaker's own statistics then carry the label, and removing them removes the
    very signal being classified."""
    if unit == "subject":
        raise UserError(f"{what} normalises every speaker by its own statistics, but the label "
                        f"of {corpus} belongs to the subject (unit 'subject'): that would "
                        "remove the very signal being classified; normalise per corpus or "
                        "adapt per fold (a new site) instead")


def _normalized(x: np.ndarray, groups: np.ndarray, normalize: str, unit: str, corpus: str
                ) -> np.ndarray:
    """``x`` as ``features.normalize`` asks before training: z-scored per speaker for
    ``speaker`` (where the label does not belong to the subject); else as it is (``corpus``
    standardises per run, by the training segments' statistics)."""
    if normalize != "speaker":
        return x
    check_per_speaker(unit, 'features.normalize = "speaker"', corpus)
    return speaker_zscores(x, groups)


def speaker_zscores(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Every speaker's features z-scored by that speaker's own mean and standard deviation per
    feature, over its segments and frames (speaker normalisation; no labels read).

    Shape: x (N, F, T), groups (N,) -> (N, F, T) float32.
    """
    out = np.empty_like(x, dtype=np.float32)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        part = x[idx]
        mean = part.mean(axis=(0, 2), keepdims=True)
        std = np.maximum(part.std(axis=(0, 2), keepdims=True), 1e-5)  # a constant feature
        out[idx] = (part - mean) / std
    return out


def feature_spec(cfg: FeatureSpec) -> FeatureSpec:
    """The recipe's feature spec checked and completed with its kind's options, as a model
    package keeps it (:func:`transfer.data.kinds.resolve`: an ssl checkpoint path made
    absolute, so that an exported model finds it again)."""
    return resolve(cfg)


def segment_spec(cfg: CorpusConfig, card: Card, sample_rate: int, where: str = "") -> SegmentSpec:
    """The segment spec of one corpus: the recipe's settings over the card's, the rest the
    defaults; errors name the recipe keys under ``where`` (``target``), else the corpus."""
    naming = Naming(prefix=f"{where}.segments") if where else Naming(
        f"corpus '{card.name}': segments", noun="key")
    return cfg.segments.resolve(card.segments, sample_rate=sample_rate, naming=naming)


def decision_unit(cfg: CorpusConfig, card: Card) -> str:
    """What a label belongs to: the recipe's ``unit``, else the card's, else ``subject`` for a
    label table keyed by speaker and ``recording`` otherwise."""
    if cfg.unit or card.labels.unit:
        return cfg.unit or card.labels.unit
    table_by_speaker = card.labels.source == "table" and card.labels.key_group == "speaker"
    return "subject" if table_by_speaker else "recording"


def _check_synthetic(cfg: CorpusConfig, card: Card) -> None:
    from transfer.data import synth

    if card.name not in synth.MAKERS:
        raise UserError(f"synthetic corpora exist for {sorted(synth.MAKERS)}, "
                        f"not for '{card.name}'")
    if cfg.synthetic not in synth.SIZES[card.name]:
        raise UserError(f"synthetic must be one of {sorted(synth.SIZES[card.name])}, "
                        f"not {cfg.synthetic!r}")


def corpus_root(cfg: CorpusConfig, card: Card) -> str | None:
    """Where the corpus is: a synthetic one in the cache (generated on first use), the
    recipe's ``root``, or None (the card's ``$<NAME>_ROOT``)."""
    if cfg.synthetic:
        from transfer.data import synth

        _check_synthetic(cfg, card)
        return str(synth.cached(card.name, cfg.synthetic, cfg.synthetic_seed))
    return cfg.root or None


def check_corpus(cfg: CorpusConfig, features: FeatureSpec, base: Path | None = None,
                 where: str = "target") -> None:
    """What can be checked of one corpus section without reading audio (``--dry-run``): the
    card loads, the segment settings (the card's where the recipe leaves them) are valid and
    give enough feature frames, a synthetic corpus exists in that size, and ``concat`` goes
    with labels that belong to the subject."""
    card = load_card(_resolve(cfg.corpus, base))
    seg = segment_spec(cfg, card, features.sample_rate, where)
    if get_kind(features.kind).frames_known:  # else (ssl) checked when data is loaded
        check_segments(seg, features, f"{where}.segments.seconds", f"corpus '{card.name}': ")
    if cfg.synthetic:
        _check_synthetic(cfg, card)
    _check_concat(cfg, card, seg)


def _check_concat(cfg: CorpusConfig, card: Card, seg: SegmentSpec) -> None:
    kind = decision_unit(cfg, card)
    if kind != "subject" and seg.mode == "concat":
        raise UserError(f"corpus '{card.name}': segments.mode = 'concat' joins a subject's "
                        f"recordings, so the label must belong to the subject (unit = "
                        f"\"subject\"), not to the {kind}; use mode 'window' or 'pad'")


def load_domain(configs: list[CorpusConfig], features: FeatureSpec, *, progress: bool = True,
                base: Path | None = None) -> Domain:
    """Load one domain from one or several corpora (several: their union, labels pooled)."""
    parts, keys, label_sets, names, positive, kinds, covs = [], [], [], [], "", [], []
    spec = feature_spec(features)
    bound = bind(spec)
    bound.kind.prepare(bound.opts)  # a missing checkpoint fails before any audio is touched
    for cfg in configs:
        card = load_card(_resolve(cfg.corpus, base))
        seg = segment_spec(cfg, card, features.sample_rate)
        check_segments(seg, spec, prefix=f"corpus '{card.name}': ")
        manifest = build_manifest(card, corpus_root(cfg, card), label_map=cfg.label_map or None,
                                  keep=cfg.keep or None, max_bad_share=cfg.max_bad_share,
                                  min_seconds=bound.min_samples / features.sample_rate)
        kind = decision_unit(cfg, card)
        _check_concat(cfg, card, seg)
        if kind == "subject":  # every file of a subject must carry the subject's label
            unit_labels(manifest.frame["speaker"].to_numpy(str),
                        manifest.frame["label"].to_numpy(str), "subject",
                        where=f"corpus '{card.name}': ")
        kinds.append(kind)
        for warning in manifest.warnings:
            log.warning(f"warning ({card.name}): {warning}")
        if manifest.skipped:
            log.warning(f"{card.name}: skipped {len(manifest.skipped)} unusable file(s), e.g. "
                        f"{manifest.skipped[0][0]}: {manifest.skipped[0][1]}")
        fs = load_features(manifest, seg, spec, progress=progress)
        covs.append(read_covariates(card, manifest.root))
        parts.append((card.name, fs))
        keys.append(fs.key)
        label_sets.append(manifest.labels)
        names.append(card.name)
        positive = positive or cfg.positive or card.labels.positive
    labels: list[str] = []
    for ls in label_sets:
        labels += [lab for lab in ls if lab not in labels]
    frames = {fs.x.shape[-1] for _, fs in parts}
    if len(frames) > 1:
        raise UserError(f"corpora {names} give segments of different lengths {sorted(frames)}: "
                        "set the same segments.seconds for every source")
    index = {lab: i for i, lab in enumerate(labels)}
    x = np.concatenate([fs.x for _, fs in parts])
    y = np.concatenate([fs.segments["label"].map(index).to_numpy(np.int64) for _, fs in parts])
    groups = np.concatenate([(name + ":" + fs.segments["speaker"].astype(str)).to_numpy(str)
                             if len(parts) > 1 else fs.segments["speaker"].to_numpy(str)
                             for name, fs in parts])
    files = np.concatenate([fs.segments["file"].to_numpy(str) for _, fs in parts])
    units = np.concatenate([
        np.char.add(name + ":" if len(parts) > 1 else "",
                    unit_ids(kind, fs.segments["speaker"].to_numpy(str),
                             fs.segments["file"].to_numpy(str)))
        for kind, (name, fs) in zip(kinds, parts)])
    unit = kinds[0] if len(set(kinds)) == 1 else "recording"
    stacked = bound.kind.stacked_layers(bound.opts)
    x = _normalized(x, groups, features.normalize, unit, "+".join(names))
    table, note = _pooled_covariates(covs, names)
    return Domain("+".join(names), x, y, groups, files, labels, keys, positive, unit, units,
                  stacked, table, note)


def _pooled_covariates(covs: list, names: list[str]) -> tuple[pd.DataFrame | None, str]:
    """The covariates of one or several corpora (speakers prefixed as in ``groups``)."""
    tables = [(name, c.table) for name, c in zip(names, covs) if c.table is not None]
    if not tables:
        return None, "; ".join(c.note for c in covs)
    if len(names) == 1:
        return tables[0][1], ""
    return pd.concat([t.set_axis(name + ":" + t.index) for name, t in tables]), ""


def _resolve(corpus: str, base: Path | None) -> str:
    """A card path in a recipe is relative to the recipe's folder."""
    if corpus.endswith(".toml") and base is not None and not Path(corpus).is_absolute():
        candidate = base / corpus
        if candidate.is_file():
            return str(candidate)
    return corpus
