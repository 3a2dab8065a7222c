"""Operating points: a decision threshold on the positive class's probability, chosen on the
validation speakers of a run and applied, unchanged, to its test fold.

A screening tool is used at one threshold; the argmax (0.5 for two classes) is one choice
among many, and one a model's calibration decides by accident. :func:`choose_threshold` picks
it from a run's validation units only:

- ``youden``: the threshold that maximises Youden's J = sensitivity + specificity - 1;
- ``specificity``: the lowest threshold whose validation specificity reaches a target (the
  clinical way: "as sensitive as possible while keeping specificity at 0.8").

Among equal choices the highest threshold is taken (the fewest positive calls). Where the
validation units cannot set a threshold (one class only; no J above 0), the run falls back to
0.5 and says so. A unit is called positive when its probability is at least the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_curve

from transfer.evaluate.outputs import ScoredRun, positive_index
from transfer.evaluate.stats import Interval, pooled_units, uar_interval

RULES = ("youden", "specificity")
FALLBACK = 0.5  # the argmax decision of two classes


@dataclass(frozen=True)
class Threshold:
    value: float
    fallback: str = ""  # why the rule could not be applied ("" = it was)


def choose_threshold(is_positive: np.ndarray, score: np.ndarray, rule: str = "youden",
                     specificity: float = 0.8) -> Threshold:
    """The threshold on ``score`` (the positive class's probability) of one run.

    Args:
        is_positive: (V,) bool, the validation units' labels (positive class or not).
        score: (V,) their probability of the positive class.
        rule: ``youden`` or ``specificity`` (see the module docstring).
        specificity: the target of the ``specificity`` rule.
    """
    is_positive = np.asarray(is_positive, bool)
    score = np.asarray(score, dtype=float)
    if rule not in RULES:
        raise ValueError(f"threshold rule must be one of {RULES}, not {rule!r}")
    if len(np.unique(is_positive)) < 2:
        return Threshold(FALLBACK, "validation units of one class only")
    fpr, tpr, thr = roc_curve(is_positive, score, drop_intermediate=False)
    # thr[0] is +inf (nothing positive); finite thresholds are the validation scores
    if rule == "youden":
        j = tpr - fpr
        # the first maximum (rounding aside: 2/3 - 0 and 1 - 1/3 tie): the highest threshold
        k = int(np.flatnonzero(j >= j.max() - 1e-12)[0])
        if j[k] <= 0:
            return Threshold(FALLBACK, "no validation threshold beats chance (J <= 0)")
    else:
        k = int(np.flatnonzero(1 - fpr >= specificity - 1e-12)[-1])
    return Threshold(float(min(thr[k], 1.0 + 1e-9)))  # +inf: above every probability


def positive_calls(score: np.ndarray, threshold: float) -> np.ndarray:
    """(N,) bool: the units called positive at ``threshold``."""
    return np.asarray(score, dtype=float) >= threshold


def record_threshold(record: ScoredRun, rule: str = "youden", specificity: float = 0.8
                     ) -> Threshold | None:
    """The threshold of one run, from its validation units only (``val_units``); None where
    the run has none or the task has no positive class."""
    pos = positive_index(record)
    val = record.val_units
    if pos < 0 or val is None or not val.id:
        return None
    score = np.asarray(val.prob, dtype=float)[:, pos]
    return choose_threshold(np.asarray(val.y) == pos, score, rule, specificity)


@dataclass(frozen=True)
class OperatingPoint:
    """A strategy's pooled test sensitivity and specificity at the runs' validation
    thresholds and at the argmax, and the thresholds themselves."""

    runs: int  # runs with a threshold
    fallbacks: int  # of them, runs whose validation units could not set one (0.5 used)
    threshold_mean: float
    threshold_min: float
    threshold_max: float
    sens: Interval
    spec: Interval
    sens_argmax: Interval
    spec_argmax: Interval


def operating_point(records: Sequence[ScoredRun], rule: str = "youden", specificity: float = 0.8
                    ) -> OperatingPoint | None:
    """Every finished run's threshold applied to its own test units; the units of all folds
    pooled per seed (mean over seeds), with bootstrap intervals as the table's UAR. None for a
    task without a positive class or runs without validation units."""
    ok = [r for r in records if r.scored]
    found = {r.key: record_threshold(r, rule, specificity) for r in ok}
    ok = [r for r in ok if found[r.key] is not None]
    if not ok:
        return None
    pos = positive_index(ok[0])

    def at_threshold(r: ScoredRun) -> np.ndarray:
        score = np.asarray(r.units.prob, dtype=float)[:, pos]
        return np.where(positive_calls(score, found[r.key].value), pos, 1 - pos)

    def of_class(positive: bool):
        return lambda r: (np.asarray(r.units.y) == pos) == positive

    values = np.array([found[r.key].value for r in ok])
    return OperatingPoint(
        len(ok), sum(1 for r in ok if found[r.key].fallback),
        float(values.mean()), float(values.min()), float(values.max()),
        uar_interval(pooled_units(ok, at_threshold, of_class(True))),
        uar_interval(pooled_units(ok, at_threshold, of_class(False))),
        uar_interval(pooled_units(ok, keep=of_class(True))),
        uar_interval(pooled_units(ok, keep=of_class(False))))


def pooled_scores(records: Sequence[ScoredRun], scaled: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Every finished run's test units pooled (all folds and seeds): (is positive, the
    positive class's probability; ``scaled``: after temperature scaling), for pooled ROC and
    PR curves."""
    ys, scores = [], []
    for r in records:
        pos = positive_index(r)
        prob = (r.units.prob_ts if scaled else r.units.prob) if r.scored else None
        if prob is None or pos < 0:
            continue
        ys.append(np.asarray(r.units.y) == pos)
        scores.append(np.asarray(prob, dtype=float)[:, pos])
    if not ys:
        return np.zeros(0, bool), np.zeros(0)
    return np.concatenate(ys), np.concatenate(scores)


def nan_interval() -> Interval:
    return Interval(math.nan, math.nan, math.nan, 0, 0)
