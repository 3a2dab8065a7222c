"""Subgroups: how a strategy scores for each group of subjects (gender, age band, ...).

Depression corpora are small and unbalanced in ways that flatter a model: DAIC-WOZ's gender
imbalance inflates reported scores (Bailey & Plumbley, 2021). Per strategy and subject
covariate (from the corpus card, stored with each run's test units), :func:`subgroup_table`
gives every group's decision-unit UAR, sensitivity and specificity pooled over the test folds
(mean over seeds) with 95 % percentile bootstrap intervals over the group's units, and, for
each of the three, the gap between each group and the first one (in sorted order; for bands
the lowest):

- the pooled gap with a bootstrap interval that resamples each group's units on its own: the
  uncertainty of which subjects happen to be in a group, the figure to read;
- a paired test: the two groups are scored by the same runs, so each (fold, seed) run gives
  one gap (its units of one group against its units of the other) and the two-sided
  permutation test of :func:`transfer.evaluate.stats.paired_test` asks whether their mean is
  0: whether the gap holds across the runs (folds, training randomness). Runs of several
  seeds test the same subjects, so it does not replace the interval. Like the table's test
  against ``scratch``, n runs cannot give p below 2/2^n.

Numeric covariates (age) are grouped in bands set in the recipe (``[report] bands``); without
bands, at the median of the tested units.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from transfer.evaluate.operating import positive_index
from transfer.evaluate.outputs import ScoredRun
from transfer.evaluate.stats import (
    Interval,
    paired_test,
    pooled_units,
    uar_gap_interval,
    uar_interval,
)


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def band_names(edges: list[float]) -> list[str]:
    """Labels of the bands cut at ``edges``: [40] -> ['<40', '≥40']."""
    e = [f"{v:g}" for v in edges]
    return [f"<{e[0]}"] + [f"{a}-<{b}" for a, b in zip(e, e[1:])] + [f"≥{e[-1]}"]


def group_of(value: object, edges: list[float] | None) -> str | None:
    """The group of one unit: its category, or its band for a number (None: missing)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if edges is None or not is_number(value):
        return str(value)
    return band_names(edges)[int(np.searchsorted(edges, float(value), side="right"))]


def covariate_edges(records: Sequence[ScoredRun], name: str, bands: dict[str, list[float]]
                    ) -> tuple[list[float] | None, str]:
    """The band edges of covariate ``name`` (None for a category) and how they were set."""
    values = [v for r in records for v in r.units.covariates.get(name, []) if v is not None]
    if not values or not all(is_number(v) for v in values):
        return None, ""
    if name in bands:
        return [float(e) for e in bands[name]], "bands from the recipe"
    median = float(np.median(values))
    return [median], f"split at the median of the tested units ({median:g}); set [report] bands"


def _run_uar(y: np.ndarray, pred: np.ndarray) -> float:
    """UAR over the classes present (NaN without units)."""
    recalls = [np.mean(pred[y == c] == c) for c in np.unique(y)]
    return float(np.mean(recalls)) if recalls else math.nan


def _classes(metric: str, pos: int) -> Callable[[np.ndarray], np.ndarray]:
    """Which units a metric is the UAR of: all (uar), the positive ones (their recall is the
    sensitivity) or the others (specificity)."""
    return {"uar": lambda y: np.ones(len(y), bool), "sens": lambda y: y == pos,
            "spec": lambda y: y != pos}[metric]


def _groups(record: ScoredRun, name: str, edges: list[float] | None) -> np.ndarray:
    """(U,) the group of each of the run's test units (None: no value)."""
    values = record.units.covariates.get(name, [None] * len(record.units.id))
    return np.array([group_of(v, edges) for v in values], dtype=object)


def _row(ok: list[ScoredRun], in_group: Callable[[ScoredRun], np.ndarray], metrics: tuple[str, ...],
         pos: int) -> dict[str, float]:
    """UAR, sensitivity and specificity with their intervals of one group's units."""
    out: dict[str, float] = {}
    for metric in ("uar", "sens", "spec"):
        of_class = _classes(metric, pos)
        ci = (uar_interval(pooled_units(
            ok, keep=lambda r, c=of_class: in_group(r) & c(np.asarray(r.units.y))))
              if metric in metrics else Interval(math.nan, math.nan, math.nan, 0, 0))
        if metric == "uar":
            out["units"] = ci.units
        out.update({metric: ci.point, f"{metric}_low": ci.low, f"{metric}_high": ci.high})
    return out


def _per_run(ok: list[ScoredRun], mine: Callable[[ScoredRun], np.ndarray],
             theirs: Callable[[ScoredRun], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per run that tested units of both sets: the UAR of its units in each set."""
    a, b = [], []
    for r in ok:
        y = np.asarray(r.units.y)
        pred = np.asarray(r.units.prob, dtype=float).argmax(1)
        m, t = mine(r), theirs(r)
        if m.any() and t.any():
            a.append(_run_uar(y[m], pred[m]))
            b.append(_run_uar(y[t], pred[t]))
    return np.array(a), np.array(b)


def _gap(ok: list[ScoredRun], in_group: Callable[[ScoredRun, str], np.ndarray], group: str, ref: str,
         metrics: tuple[str, ...], pos: int) -> dict[str, float]:
    """Per metric: the pooled gap (group - ref) with its bootstrap interval, and the paired
    test of the per-run gaps."""
    out: dict[str, float] = {"gap_vs": ref}
    for metric in metrics:
        of_class = _classes(metric, pos)

        def keep(g: str, c=of_class) -> Callable[[ScoredRun], np.ndarray]:
            return lambda rec: in_group(rec, g) & c(np.asarray(rec.units.y))

        ci = uar_gap_interval(pooled_units(ok, keep=keep(group)), pooled_units(ok, keep=keep(ref)))
        test = paired_test(*_per_run(ok, keep(group), keep(ref)))
        out.update({f"{metric}_gap": ci.point, f"{metric}_gap_low": ci.low,
                    f"{metric}_gap_high": ci.high, f"{metric}_gap_p": test.p,
                    f"{metric}_gap_pairs": test.pairs, f"{metric}_gap_min_p": test.min_p})
    return out


def covariate_names(records: Sequence[ScoredRun]) -> list[str]:
    """The covariates stored with the records' test units, in first-seen order."""
    names: dict[str, None] = {}
    for r in records:
        names.update(dict.fromkeys(r.units.covariates if r.units is not None else {}))
    return list(names)


def subgroup_rows(ok: list[ScoredRun], name: str, edges: list[float] | None) -> list[dict]:
    """One row per group of covariate ``name`` for one strategy's finished runs."""
    pos = positive_index(ok[0])
    metrics = ("uar", "sens", "spec") if pos >= 0 else ("uar",)
    found = sorted({g for r in ok for g in _groups(r, name, edges) if g is not None})
    order = band_names(edges) if edges is not None else found
    groups = [g for g in order if g in found]

    def in_group(r: ScoredRun, g: str) -> np.ndarray:
        return _groups(r, name, edges) == g

    rows = []
    for g in groups:
        row = {"covariate": name, "group": g,
               **_row(ok, lambda r, g=g: in_group(r, g), metrics, pos)}
        if g != groups[0]:
            row.update(_gap(ok, in_group, g, groups[0], metrics, pos))
        rows.append(row)
    return rows


def subgroup_table(records: Sequence[ScoredRun], order: list[str], bands: dict[str, list[float]]
                   ) -> tuple[pd.DataFrame, dict[str, str]]:
    """Per strategy (in ``order``), covariate and group: units, UAR, sensitivity and
    specificity with their intervals, and the gap to the first group with its interval and
    paired test. Returns the table and, per numeric covariate, how its bands were set."""
    ok_all = [r for r in records if r.scored]
    names = covariate_names(ok_all)
    edges = {n: covariate_edges(ok_all, n, bands) for n in names}
    rows = []
    for label in order:
        ok = [r for r in ok_all if r.strategy == label]
        if not ok:
            continue
        for name in names:
            rows += [{"strategy": label, **row} for row in subgroup_rows(ok, name, edges[name][0])]
    return pd.DataFrame(rows), {n: how for n, (_, how) in edges.items() if how}
