"""Uncertainty of the comparison table: bootstrap confidence intervals and paired tests (scipy).

- :func:`pooled_uar_ci`: the decision-unit UAR pooled over the test folds of a seed (every
  unit is tested once per seed), averaged over seeds, with a 95 % percentile bootstrap
  interval. The test units are resampled with replacement, the same draw for every seed (a
  unit's predictions under different seeds are not independent samples), 2000 resamples.
- :func:`paired_uar_diff_ci`: a strategy's pooled UAR minus the reference's on the same test
  units, with a paired bootstrap interval (the same resampled units for both).
- :func:`paired_test`: a strategy against the reference (``scratch``) on the same
  (fold, seed) runs: a two-sided paired permutation (sign-flip) test of the mean difference of
  the decision-unit UAR, exact (all 2^n sign patterns) up to 16 pairs. Chosen over the
  Wilcoxon signed-rank test because per-fold UARs of small folds tie and are often equal
  between strategies (Wilcoxon drops zero differences and loses its exact distribution under
  ties), and because the exact test says plainly what few pairs can show: with n pairs the
  smallest possible two-sided p is 2 / 2^n (0.125 with 4 pairs), so fewer than 6 pairs can
  never reach p < 0.05.

Both are computed from the run records alone (``python -m transfer.report.tables`` rebuilds them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from transfer.evaluate.outputs import ScoredRun

N_BOOTSTRAP = 2000
EXACT_UP_TO = 16  # pairs: 2^16 sign patterns are enumerated; more pairs use 2^16 random ones


@dataclass(frozen=True)
class Interval:
    point: float
    low: float
    high: float
    units: int  # distinct test units
    seeds: int


@dataclass(frozen=True)
class PairedResult:
    pairs: int
    mean_diff: float  # strategy - reference
    p: float
    min_p: float  # the smallest p the test can give with this many pairs
    exact: bool


PerSeed = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


def pooled_units(records: Sequence[ScoredRun],
                 predict: Callable[[ScoredRun], np.ndarray] | None = None,
                 keep: Callable[[ScoredRun], np.ndarray] | None = None) -> PerSeed:
    """Per seed, the test units of all its folds: (ids, labels, predicted class).

    ``predict(record)``: the predicted class of each of the record's test units (default: the
    argmax of their mean probabilities); ``keep(record)``: which of them count (default: all),
    e.g. one subgroup. A unit id that occurs in several folds of one seed (only possible with
    overlapping test sets) is kept apart per fold.
    """
    by_seed: dict[int, list[tuple[str, int, int]]] = {}
    for r in records:
        if not r.scored:
            continue
        units = r.units
        pred = (np.asarray(units.prob, dtype=float).argmax(1) if predict is None
                else np.asarray(predict(r)))
        mask = np.ones(len(pred), bool) if keep is None else np.asarray(keep(r), bool)
        rows = by_seed.setdefault(int(r.seed), [])
        rows += [(str(i), int(y), int(p)) for i, y, p, m in zip(units.id, units.y, pred, mask)
                 if m]
    out = {}
    for seed, rows in by_seed.items():
        if not rows:
            continue
        ids = np.array([i for i, _, _ in rows])
        if len(set(ids.tolist())) < len(ids):  # overlapping test sets: keep them apart
            ids = np.array([f"{k}/{i}" for k, i in enumerate(ids)])
        out[seed] = (ids, np.array([y for _, y, _ in rows]), np.array([p for _, _, p in rows]))
    return out


def _uar_matrix(y: np.ndarray, present: np.ndarray, correct: np.ndarray, idx: np.ndarray
                ) -> np.ndarray:
    """Mean over seeds of the UAR on the units ``idx`` (..., n) -> (...)."""
    yy = y[idx]
    classes = np.unique(y)
    total = np.zeros(idx.shape[:-1])
    for s in range(present.shape[0]):
        pres, corr = present[s][idx], correct[s][idx]
        recalls = []
        for c in classes:
            member = (yy == c) & pres
            n = member.sum(-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                recalls.append(np.where(n > 0, (member & corr).sum(-1) / n, np.nan))
        with np.errstate(invalid="ignore"):
            total = total + np.nanmean(np.stack(recalls), axis=0)
    return total / present.shape[0]


def _unit_arrays(per_seed: list[tuple[np.ndarray, np.ndarray, np.ndarray]], ids: list[str]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (n,), and per seed which units were tested and which were right (S, n)."""
    pos = {u: k for k, u in enumerate(ids)}
    y = np.zeros(len(ids), dtype=np.int64)
    present = np.zeros((len(per_seed), len(ids)), bool)
    correct = np.zeros((len(per_seed), len(ids)), bool)
    for s, (uid, uy, up) in enumerate(per_seed):
        k = np.array([pos[u] for u in uid.tolist()], dtype=np.int64)
        y[k], present[s, k], correct[s, k] = uy, True, uy == up
    return y, present, correct


def _bootstrap(statistic, n: int, level: float, n_resamples: int, seed: int
               ) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over n resampled unit indices."""
    res = stats.bootstrap((np.arange(n),), statistic, n_resamples=n_resamples,
                          vectorized=True, confidence_level=level, method="percentile",
                          batch=500, rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return float(low), float(high)


def pooled_uar_ci(records: Sequence[ScoredRun], level: float = 0.95, n_resamples: int = N_BOOTSTRAP,
                  seed: int = 0) -> Interval:
    """Decision-unit UAR pooled over folds per seed, mean over seeds, with a bootstrap CI."""
    return uar_interval(pooled_units(records), level, n_resamples, seed)


def _arrays(per_seed: PerSeed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = sorted({i for v in per_seed.values() for i in v[0].tolist()})
    return _unit_arrays(list(per_seed.values()), ids)


def uar_interval(per_seed: PerSeed, level: float = 0.95, n_resamples: int = N_BOOTSTRAP,
                 seed: int = 0) -> Interval:
    """The UAR of pooled units (:func:`pooled_units`), mean over seeds, with a percentile
    bootstrap CI over the units (the same draw for every seed). Over units of one class it is
    that class's recall: the sensitivity or specificity."""
    if not per_seed:
        return Interval(math.nan, math.nan, math.nan, 0, 0)
    y, present, correct = _arrays(per_seed)
    n, n_seeds = len(y), len(per_seed)
    point = float(_uar_matrix(y, present, correct, np.arange(n)[None])[0])
    if n < 2:
        return Interval(point, math.nan, math.nan, n, n_seeds)

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return _uar_matrix(y, present, correct, np.moveaxis(np.asarray(idx, np.int64), axis, -1))

    return Interval(point, *_bootstrap(statistic, n, level, n_resamples, seed), n, n_seeds)


def uar_gap_interval(a: PerSeed, b: PerSeed, level: float = 0.95,
                     n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> Interval:
    """UAR of the units ``a`` minus that of the disjoint units ``b`` (two subgroups tested by
    the same runs), with a bootstrap CI that resamples each group's units on its own."""
    seeds = [s for s in a if s in b]
    if not seeds:
        return Interval(math.nan, math.nan, math.nan, 0, 0)
    ya, pa, ca = _arrays({s: a[s] for s in seeds})
    yb, pb, cb = _arrays({s: b[s] for s in seeds})

    def statistic(ia: np.ndarray, ib: np.ndarray, axis: int = -1) -> np.ndarray:
        ia = np.moveaxis(np.asarray(ia, np.int64), axis, -1)
        ib = np.moveaxis(np.asarray(ib, np.int64), axis, -1)
        return _uar_matrix(ya, pa, ca, ia) - _uar_matrix(yb, pb, cb, ib)

    point = float(statistic(np.arange(len(ya))[None], np.arange(len(yb))[None])[0])
    if min(len(ya), len(yb)) < 2:
        return Interval(point, math.nan, math.nan, len(ya) + len(yb), len(seeds))
    res = stats.bootstrap((np.arange(len(ya)), np.arange(len(yb))), statistic, paired=False,
                          n_resamples=n_resamples, vectorized=True, confidence_level=level,
                          method="percentile", batch=500, rng=np.random.default_rng(seed))
    low, high = res.confidence_interval
    return Interval(point, float(low), float(high), len(ya) + len(yb), len(seeds))


def paired_uar_diff_ci(records: Sequence[ScoredRun], reference: Sequence[ScoredRun], level: float = 0.95,
                       n_resamples: int = N_BOOTSTRAP, seed: int = 0) -> Interval:
    """Pooled decision-unit UAR of ``records`` minus that of ``reference``, on the units both
    tested under the same seeds, with a paired bootstrap CI: every resample draws the same
    units for both, so what the units share (how hard a subject is) cancels, and the interval
    is that of the difference, much narrower than the two intervals side by side."""
    mine, ref = pooled_units(records), pooled_units(reference)
    seeds = [s for s in mine if s in ref]
    if not seeds:
        return Interval(math.nan, math.nan, math.nan, 0, 0)
    ids = sorted({u for s in seeds for v in (mine[s], ref[s]) for u in v[0].tolist()})
    y, present_a, correct_a = _unit_arrays([mine[s] for s in seeds], ids)
    _, present_b, correct_b = _unit_arrays([ref[s] for s in seeds], ids)
    present = present_a & present_b  # a unit counts where both tested it
    keep = present.any(0)
    y, present, correct_a, correct_b = y[keep], present[:, keep], correct_a[:, keep], correct_b[:, keep]
    n = int(keep.sum())

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.moveaxis(np.asarray(idx, np.int64), axis, -1)
        return (_uar_matrix(y, present, correct_a, idx)
                - _uar_matrix(y, present, correct_b, idx))

    point = float(statistic(np.arange(n)[None])[0])
    if n < 2:
        return Interval(point, math.nan, math.nan, n, len(seeds))
    return Interval(point, *_bootstrap(statistic, n, level, n_resamples, seed), n, len(seeds))


def paired_test(a: np.ndarray, b: np.ndarray, seed: int = 0) -> PairedResult:
    """Two-sided paired permutation test of mean(a - b); ``a``, ``b``: (n,) paired scores."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = len(a)
    if n == 0:
        return PairedResult(0, math.nan, math.nan, math.nan, False)
    diff = float(np.mean(a - b))
    exact = n <= EXACT_UP_TO
    min_p = min(1.0, 2.0 / 2 ** n) if exact else 2.0 / (2 ** EXACT_UP_TO + 1)
    if n < 2:
        return PairedResult(n, diff, math.nan, min_p, exact)

    def mean_diff(x: np.ndarray, z: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(x - z, axis=axis)

    res = stats.permutation_test((a, b), mean_diff, permutation_type="samples", vectorized=True,
                                 n_resamples=2 ** EXACT_UP_TO, alternative="two-sided",
                                 rng=np.random.default_rng(seed))
    return PairedResult(n, diff, float(min(1.0, res.pvalue)), min_p, exact)
