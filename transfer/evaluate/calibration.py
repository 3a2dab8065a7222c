"""Calibration: do the predicted probabilities mean what they say?

- :func:`fit_temperature`: temperature scaling (Guo et al., 2017): one scalar T that divides
  the model's logits, fitted by minimising the negative log-likelihood on held-out data. Here
  it is fitted on a run's validation segments (the validation speakers, never the test fold)
  and applied to its test segments. It changes no argmax decision, only how confident the
  probabilities are.
- :func:`reliability`: per equal-width bin of the confidence (the top class's probability) the
  number of predictions, the sum of their confidences and how many were right. Bins add up
  over runs, so pooled diagrams and errors come from these counts.
- :func:`ece`: the expected calibration error of binned counts: the mean over predictions of
  |accuracy - confidence| of their bin.
- :func:`brier`: the Brier score: for two classes the mean squared difference between the
  positive class's probability and the 0/1 label (the clinical convention); for more classes
  the mean squared distance between the probability vector and the one-hot label.

The probabilities stored in run records are softmax outputs, so their logarithm is the logits
up to a per-row constant, which softmax ignores: scaling ``log p`` by 1/T is exact temperature
scaling without the logits.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from transfer.evaluate.outputs import Calibration, ScoredRun

#: Confidence bins of the calibration error and the reliability diagrams; 10 equal-width bins
#: is the usual choice for a few hundred predictions (Guo et al. use 15 for 10 000 and more).
BINS = 10
#: Temperatures searched: from 20x sharper to 20x softer than the raw model.
T_RANGE = (0.05, 20.0)
#: Probabilities are clipped here before the logarithm (a stored 0.0 is a rounded tiny value).
EPS = 1e-7


def _logp(prob: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(prob, dtype=float), EPS, 1.0))


def scale(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities after temperature scaling.

    Shape:
        prob: (N, K) -> (N, K)
    """
    return softmax(_logp(prob) / temperature, axis=1)


def nll(prob: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels ``y`` (N,) under ``prob`` (N, K) scaled by
    ``temperature``."""
    logq = log_softmax(_logp(prob) / temperature, axis=1)
    return float(-np.mean(logq[np.arange(len(y)), y]))


def fit_temperature(prob: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the NLL of ``y`` under ``prob`` (held-out data only).

    Returns 1.0 (no scaling) when the data cannot fit it: no predictions, labels of one class
    only, or every prediction right. In the last two cases the NLL falls without end as T
    shrinks (there is no best temperature; the fit would run to the sharpest one searched), so
    such data say nothing about how confident the model should be: with a few validation
    speakers this is common.

    Shape:
        prob: (N, K); y: (N,)
    """
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0 or len(np.unique(y)) < 2 or (np.asarray(prob).argmax(1) == y).all():
        return 1.0
    res = minimize_scalar(lambda log_t: nll(prob, y, math.exp(log_t)),
                          bounds=tuple(math.log(t) for t in T_RANGE), method="bounded")
    return float(math.exp(res.x))


def reliability(prob: np.ndarray, y: np.ndarray, bins: int = BINS) -> dict[str, list]:
    """Binned confidence counts: per bin ``count``, ``conf`` (sum of confidences) and
    ``correct`` (how many argmax decisions were right).

    Shape:
        prob: (N, K); y: (N,)
    """
    prob = np.asarray(prob, dtype=float)
    conf = prob.max(1)
    right = prob.argmax(1) == np.asarray(y)
    # bin b holds confidences in [b / bins, (b + 1) / bins); a confidence of 1.0 in the last
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    return {"count": np.bincount(which, minlength=bins).tolist(),
            "conf": np.round(np.bincount(which, conf, minlength=bins), 6).tolist(),
            "correct": np.bincount(which, right, minlength=bins).astype(int).tolist()}


def add_bins(parts: list[dict[str, list]]) -> dict[str, np.ndarray]:
    """The sum of several runs' :func:`reliability` counts."""
    keys = ("count", "conf", "correct")
    if not parts:
        return {k: np.zeros(BINS) for k in keys}
    return {k: np.sum([np.asarray(p[k], dtype=float) for p in parts], axis=0) for k in keys}


def ece(bins: dict[str, list] | dict[str, np.ndarray]) -> float:
    """Expected calibration error of binned counts (NaN without predictions)."""
    count = np.asarray(bins["count"], dtype=float)
    total = count.sum()
    if total == 0:
        return math.nan
    gap = np.abs(np.asarray(bins["correct"], dtype=float) - np.asarray(bins["conf"], dtype=float))
    return float(gap.sum() / total)  # sum_b n_b / N * |acc_b - conf_b|


def brier_sum(prob: np.ndarray, y: np.ndarray, positive: int = -1) -> float:
    """The sum over predictions of the Brier score's squared errors (divide by N for the
    score; sums add up over runs).

    Shape:
        prob: (N, K); y: (N,)
    """
    prob, y = np.asarray(prob, dtype=float), np.asarray(y, dtype=np.int64)
    if prob.shape[1] == 2:
        pos = positive if positive >= 0 else 1
        return float(np.sum((prob[:, pos] - (y == pos)) ** 2))
    onehot = np.eye(prob.shape[1])[y]
    return float(np.sum((prob - onehot) ** 2))


def brier(prob: np.ndarray, y: np.ndarray, positive: int = -1) -> float:
    """The Brier score (see the module docstring); NaN without predictions."""
    return brier_sum(prob, y, positive) / len(y) if len(y) else math.nan


def run_calibration(val_prob: np.ndarray, val_y: np.ndarray, test_prob: np.ndarray,
                    test_y: np.ndarray, positive: int = -1) -> tuple[dict, np.ndarray]:
    """What a run records about its segments' calibration, and its scaled test probabilities.

    The temperature is fitted on the validation segments alone; the test labels only count
    the bins and the Brier sums, before and after scaling.

    Shape:
        val_prob: (V, K); val_y: (V,); test_prob: (N, K); test_y: (N,) -> the record's dict
        and the scaled test probabilities (N, K).
    """
    t = fit_temperature(val_prob, val_y)
    scaled = scale(test_prob, t)
    record = {"temperature": round(t, 4), "n": int(len(test_y))}
    for name, p in (("before", test_prob), ("after", scaled)):
        record[name] = {**reliability(p, test_y), "brier": round(brier_sum(p, test_y, positive), 6)}
    return record, scaled


def _unit_arrays(records: Sequence[ScoredRun], scaled: bool) -> tuple[np.ndarray, np.ndarray]:
    """The test units' probabilities (``scaled``: after temperature scaling) and labels of
    every run that recorded them, pooled: (U, K), (U,)."""
    units = [r.units for r in records if r.units is not None]
    pairs = [(u.prob_ts if scaled else u.prob, u.y) for u in units]
    probs = [np.asarray(p, dtype=float) for p, _ in pairs if p is not None]
    ys = [np.asarray(y) for p, y in pairs if p is not None]
    if not probs:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    return np.concatenate(probs), np.concatenate(ys)


def _temperatures(cal: list[Calibration]) -> dict[str, float]:
    """Mean, min and max of the runs' temperatures (NaN without runs)."""
    temps = np.array([c.temperature for c in cal], dtype=float)
    if not len(temps):
        return {"temperature_mean": math.nan, "temperature_min": math.nan,
                "temperature_max": math.nan}
    return {"temperature_mean": float(temps.mean()), "temperature_min": float(temps.min()),
            "temperature_max": float(temps.max())}


def _pooled(ok: Sequence[ScoredRun], cal: list[Calibration], when: str, positive: int
            ) -> dict[str, Any]:
    """Segment and unit calibration of the runs ``before`` or ``after`` temperature scaling."""
    n_seg = sum(c.n for c in cal)
    parts = [c.before if when == "before" else c.after for c in cal]
    seg = add_bins([dataclasses.asdict(b) for b in parts])
    prob, y = _unit_arrays(ok, scaled=when == "after")
    unit = reliability(prob, y) if len(y) else add_bins([])
    return {f"segment_bins_{when}": seg, f"segment_ece_{when}": ece(seg),
            f"segment_brier_{when}": (sum(b.brier for b in parts) / n_seg if n_seg
                                      else math.nan),
            f"unit_bins_{when}": unit, f"unit_ece_{when}": ece(unit),
            f"unit_brier_{when}": brier(prob, y, positive) if len(y) else math.nan}


def calibration_summary(records: Sequence[ScoredRun], positive: int = -1) -> dict[str, Any]:
    """Pooled calibration of a strategy's finished runs, before and after temperature scaling:
    ``unit_ece_*``/``unit_brier_*`` over every test unit of every run (the unit's mean
    probability), ``segment_ece_*``/``segment_brier_*`` from the runs' segment counts, the
    temperatures' mean, min and max, and the pooled bins (``segment_bins_*``,
    ``unit_bins_*``) for reliability diagrams."""
    ok = [r for r in records if r.scored]
    cal = [r.calibration for r in ok if r.calibration is not None]
    return {"runs": len(ok), "calibrated_runs": len(cal), **_temperatures(cal),
            **_pooled(ok, cal, "before", positive), **_pooled(ok, cal, "after", positive)}
