"""Evaluation protocols: which target segments train, select the model, and test.

``subject-kfold`` (default) and ``loso`` never put a subject in two of train/validation/test;
validation subjects are drawn from the training subjects. ``segment-random`` reproduces the
research code's random 0.6/0.2/0.2 split of segments (seed 34): subjects leak across the
split, so every result it produces is marked speaker-dependent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import LeaveOneGroupOut, StratifiedKFold, train_test_split

from transfer import UserError
from transfer.recipe import ProtocolConfig

SPEAKER_DEPENDENT = {"segment-random"}


@dataclass(frozen=True)
class Split:
    fold: int
    seed: int
    train: np.ndarray  # segment indices
    val: np.ndarray
    test: np.ndarray


def _subject_labels(groups: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    subjects = np.unique(groups)
    labels = np.array([np.bincount(y[groups == s]).argmax() for s in subjects])
    return subjects, labels


def _pick_val(subjects: np.ndarray, labels: np.ndarray, fraction: float, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Split training subjects into train/validation, stratified when every class allows it."""
    n_val = max(1, int(round(fraction * len(subjects))))
    if n_val >= len(subjects):
        raise UserError(f"cannot hold out validation subjects from only {len(subjects)} "
                        "training subject(s)")
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 and n_val >= (counts > 0).sum() else None
    tr, va = train_test_split(subjects, test_size=n_val, random_state=seed, stratify=stratify)
    return np.asarray(tr), np.asarray(va)


def _indices(groups: np.ndarray, subjects: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.isin(groups, subjects))


def make_splits(cfg: ProtocolConfig, groups: np.ndarray, y: np.ndarray, seeds: list[int]
                ) -> list[Split]:
    """All (fold, seed) splits of the target segments under the protocol."""
    splits: list[Split] = []
    if cfg.name == "segment-random":
        a, b, c = cfg.split
        if abs(a + b + c - 1.0) > 1e-6:
            raise UserError(f"protocol.split must sum to 1, got {cfg.split}")
        idx = np.arange(len(y))
        train, rest = train_test_split(idx, train_size=a, random_state=cfg.split_seed)
        val, test = train_test_split(rest, train_size=b / (b + c), random_state=cfg.split_seed)
        return [Split(0, s, np.sort(train), np.sort(val), np.sort(test)) for s in seeds]

    subjects, labels = _subject_labels(groups, y)
    for seed in seeds:
        if cfg.name == "subject-kfold":
            per_class = np.bincount(labels)
            if cfg.folds < 2 or per_class[per_class > 0].min() < cfg.folds:
                raise UserError(f"subject-kfold with {cfg.folds} folds needs at least {cfg.folds} "
                                f"subjects per class; classes have {per_class.tolist()} subjects")
            folds = StratifiedKFold(cfg.folds, shuffle=True, random_state=seed).split(
                subjects, labels)
        else:  # loso
            folds = LeaveOneGroupOut().split(subjects, labels, groups=subjects)
        for fold, (tr, te) in enumerate(folds):
            tr_subj, va_subj = _pick_val(subjects[tr], labels[tr], cfg.val_fraction, seed + fold)
            splits.append(Split(fold, seed, _indices(groups, tr_subj), _indices(groups, va_subj),
                                _indices(groups, subjects[te])))
    return splits
