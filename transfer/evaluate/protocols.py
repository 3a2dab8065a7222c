"""Evaluation protocols and decision units: which target segments train, select, and test.

``subject-kfold`` (default) and ``loso`` never put a speaker in two of train/validation/test;
validation speakers are drawn from the training speakers. Folds are stratified over the
decision units (:data:`transfer.data.units.UNITS`): where every speaker carries one label, a
stratified k-fold over speakers; where a speaker carries several labels (an emotion corpus as
target, a label per session), ``StratifiedGroupKFold`` over the units grouped by speaker.
No label is ever replaced by a majority. ``segment-random`` reproduces the research code's
random 0.6/0.2/0.2 split of segments (seed 34): speakers leak across the split, so every
result it produces is marked speaker-dependent.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import (
    LeaveOneGroupOut,
    StratifiedGroupKFold,
    StratifiedKFold,
    train_test_split,
)

from transfer import UserError
from transfer.common.config import ProtocolConfig
from transfer.data.units import unit_labels

SPEAKER_DEPENDENT = {"segment-random"}


@dataclass(frozen=True)
class Split:
    """One (fold, seed) split of the target segments into train, validation and test indices
    (sorted), and the protocol that made it."""

    fold: int
    seed: int
    train: np.ndarray  # segment indices
    val: np.ndarray
    test: np.ndarray
    protocol: str = ""


def protocols(cfg: ProtocolConfig) -> list[str]:
    """The protocol a recipe evaluates with, then those it is compared with (``compare``)."""
    compare = list(getattr(cfg, "compare", []) or [])
    for name in compare:
        if name == cfg.name:
            raise UserError(f"protocol.compare lists {name!r}, which is already protocol.name; "
                            "compare with another protocol, e.g. compare = [\"segment-random\"]")
    if len(set(compare)) != len(compare):
        raise UserError(f"protocol.compare lists a protocol twice: {compare}")
    return [cfg.name, *compare]


def _unit_speakers(units: np.ndarray, groups: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The one speaker of each unit (a unit never spans speakers)."""
    frame = pd.DataFrame({"unit": units, "speaker": groups}).drop_duplicates()
    spread = frame.groupby("unit")["speaker"].nunique()
    if (spread > 1).any():
        bad = spread[spread > 1].index[:3].tolist()
        raise UserError(f"decision unit(s) {bad} contain segments of several speakers; a unit "
                        "(subject, recording, segment) must belong to one speaker")
    return frame.set_index("unit").loc[ids, "speaker"].to_numpy()


def _pick_val(speakers: np.ndarray, labels: np.ndarray | None, units: tuple | None,
              fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training speakers into train/validation, stratified where the data allows it.

    ``labels``: one label per speaker, or None where speakers carry several labels; then
    ``units`` = (unit labels, unit speakers) of the training units and the validation speakers
    are one fold of a ``StratifiedGroupKFold`` over them.
    """
    n_val = max(1, int(round(fraction * len(speakers))))
    if n_val >= len(speakers):
        raise UserError(f"cannot hold out validation speakers from only {len(speakers)} "
                        "training speaker(s)")
    if labels is None:
        uy, usp = units
        k = min(len(speakers), max(2, int(round(len(speakers) / n_val))))
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        _, va = next(splitter.split(uy, uy, groups=usp))
        val = np.unique(usp[va])
        return np.setdiff1d(speakers, val), val
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and n_val >= (counts > 0).sum() else None
    tr, va = train_test_split(speakers, test_size=n_val, random_state=seed, stratify=stratify)
    return np.asarray(tr), np.asarray(va)


def _indices(groups: np.ndarray, speakers: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(groups, speakers))


def make_splits(cfg: ProtocolConfig, groups: np.ndarray, y: np.ndarray, seeds: list[int],
                units: np.ndarray | None = None, kind: str = "subject",
                names: list[str] | None = None) -> list[Split]:
    """All (fold, seed) splits of the target segments under the protocol ``cfg.name``.

    Args:
        groups: (N,) speaker of each segment.
        y: (N,) class index of each segment.
        units: (N,) decision unit of each segment; default: the speaker (``kind`` subject).
        kind: what the units are (for messages); names: class names (for messages).
    """
    groups = np.asarray(groups).astype(str)
    units = groups if units is None else np.asarray(units).astype(str)
    unit_ids_, unit_y = unit_labels(units, y, kind, names)  # a unit with several labels: error
    if cfg.name == "segment-random":
        a, b, c = cfg.split
        if abs(a + b + c - 1.0) > 1e-6:
            raise UserError(f"protocol.split must sum to 1, got {cfg.split}")
        idx = np.arange(len(y))
        train, rest = train_test_split(idx, train_size=a, random_state=cfg.split_seed)
        val, test = train_test_split(rest, train_size=b / (b + c), random_state=cfg.split_seed)
        return [Split(0, s, np.sort(train), np.sort(val), np.sort(test), cfg.name) for s in seeds]

    unit_spk = _unit_speakers(units, groups, unit_ids_)
    speakers = np.unique(unit_spk)
    spk_of_unit = np.searchsorted(speakers, unit_spk)
    n_classes = int(unit_y.max()) + 1
    carries = np.zeros((len(speakers), n_classes), bool)  # speaker x class: has such a unit
    carries[spk_of_unit, unit_y] = True
    one_label = bool((carries.sum(1) == 1).all())
    spk_labels = carries.argmax(1) if one_label else None

    splits: list[Split] = []
    for seed in seeds:
        if cfg.name == "subject-kfold":
            per_class = carries.sum(0)  # speakers carrying each class
            if cfg.folds < 2 or per_class[per_class > 0].min() < cfg.folds:
                what = "subjects" if one_label else "speakers carrying it"
                raise UserError(f"subject-kfold with {cfg.folds} folds needs at least {cfg.folds} "
                                f"subjects per class; classes have {per_class.tolist()} {what}")
            if one_label:
                folds = [(tr, te) for tr, te in StratifiedKFold(
                    cfg.folds, shuffle=True, random_state=seed).split(speakers, spk_labels)]
            else:  # several labels per speaker: stratify the units, keep speakers whole
                sgkf = StratifiedGroupKFold(cfg.folds, shuffle=True, random_state=seed)
                folds = [(np.unique(spk_of_unit[tr]), np.unique(spk_of_unit[te]))
                         for tr, te in sgkf.split(unit_y, unit_y, groups=spk_of_unit)]
        else:  # loso
            folds = list(LeaveOneGroupOut().split(speakers, groups=speakers))
        for fold, (tr, te) in enumerate(folds):
            in_train = np.isin(spk_of_unit, tr)
            tr_spk, va_spk = _pick_val(speakers[tr], None if spk_labels is None else spk_labels[tr],
                                       (unit_y[in_train], unit_spk[in_train]),
                                       cfg.val_fraction, seed + fold)
            splits.append(Split(fold, seed, _indices(groups, tr_spk), _indices(groups, va_spk),
                                _indices(groups, speakers[te]), cfg.name))
    return splits


def with_protocol(cfg: ProtocolConfig, name: str) -> ProtocolConfig:
    """The same protocol settings under another protocol name (for ``compare``)."""
    return dataclasses.replace(cfg, name=name)
