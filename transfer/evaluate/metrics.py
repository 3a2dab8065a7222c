"""Classification metrics at segment level and at the decision unit (scikit-learn underneath).

The decision unit is what a label belongs to (:data:`transfer.data.units.UNITS`): the
``subject`` (one label per person, e.g. MODMA), the ``recording``/session (e.g. an emotion
corpus, or a longitudinal corpus with a label per session) or the ``segment``. A unit's
decision is the argmax of the mean probability of its test segments. A unit's label is the one
label its segments carry; segments of one unit with different labels are an error, never a
majority vote.
Sensitivity/specificity use the corpus' positive class (MDD) on binary tasks.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    roc_auc_score,
)

from transfer.data.units import unit_labels

METRICS = ["acc", "uar", "f1", "sens", "spec", "auc"]


def classification(y: np.ndarray, prob: np.ndarray, positive: int = -1) -> dict[str, float]:
    """acc, uar (balanced accuracy), macro-F1, sens, spec, ROC-AUC. ``prob``: (N, K)."""
    n_classes = prob.shape[1]
    pred = prob.argmax(1)
    out = {"acc": float(accuracy_score(y, pred))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from a small fold
        out["uar"] = float(balanced_accuracy_score(y, pred))
        out["f1"] = float(f1_score(y, pred, average="macro", labels=range(n_classes),
                                   zero_division=0))
    if n_classes == 2:
        pos = positive if positive >= 0 else 1
        tp = np.sum((pred == pos) & (y == pos))
        tn = np.sum((pred != pos) & (y != pos))
        npos, nneg = np.sum(y == pos), np.sum(y != pos)
        out["sens"] = float(tp / npos) if npos else float("nan")
        out["spec"] = float(tn / nneg) if nneg else float("nan")
    else:
        out["sens"] = out["spec"] = float("nan")
    out["auc"] = _auc(y, prob, positive)
    return out


def _auc(y: np.ndarray, prob: np.ndarray, positive: int) -> float:
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    try:
        if prob.shape[1] == 2:
            pos = positive if positive >= 0 else 1
            return float(roc_auc_score(y == pos, prob[:, pos]))
        if len(present) < prob.shape[1]:
            return float("nan")
        return float(roc_auc_score(y, prob, multi_class="ovr"))
    except ValueError:
        return float("nan")


def unit_level(y: np.ndarray, prob: np.ndarray, units: np.ndarray, kind: str = "unit"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per decision unit: its id, its label and the mean probability of its segments.

    ``prob``: (N, K) -> (U, K); units sorted by id.
    """
    ids, labels = unit_labels(units, y, kind)
    inverse = np.searchsorted(ids, units)
    sums = np.zeros((len(ids), prob.shape[1]))
    np.add.at(sums, inverse, prob)
    counts = np.bincount(inverse, minlength=len(ids))[:, None]
    return ids, labels, sums / counts


def evaluate(y: np.ndarray, prob: np.ndarray, units: np.ndarray, positive: int = -1,
             kind: str = "unit") -> dict[str, float]:
    """``segment_<m>`` and ``unit_<m>`` (at the decision unit) for every metric in
    :data:`METRICS`."""
    seg = classification(y, prob, positive)
    _, uy, up = unit_level(y, prob, units, kind)
    unit = classification(uy, up, positive)
    return {**{f"segment_{k}": v for k, v in seg.items()},
            **{f"unit_{k}": v for k, v in unit.items()}}


def unit_outputs(y: np.ndarray, prob: np.ndarray, units: np.ndarray, kind: str = "unit",
                 decimals: int = 4) -> dict[str, list]:
    """Compact per-unit test outputs for a run record: id, label, mean class probabilities."""
    ids, labels, mean = unit_level(y, prob, units, kind)
    return {"id": [str(i) for i in ids], "y": [int(v) for v in labels],
            "prob": np.round(mean, decimals).tolist()}


def confusion(y: np.ndarray, prob: np.ndarray, n_classes: int) -> list[list[int]]:
    """The confusion matrix of the argmax decisions, rows true classes and columns predicted
    ones (``n_classes`` x ``n_classes``, classes absent from ``y`` included).

    Args:
        y: (N,) true class indices.
        prob: (N, n_classes) class probabilities.
    """
    return confusion_matrix(y, prob.argmax(1), labels=range(n_classes)).tolist()


def validation_scores(y: np.ndarray, prob: np.ndarray, units: np.ndarray, positive: int = -1,
                      kind: str = "unit") -> dict[str, float]:
    """What a run scored on its validation subjects (never the test fold): the decision-unit
    UAR and accuracy, the segment UAR, and the mean negative log-likelihood of the segments'
    true classes (``loss``). A sweep selects draws by ``unit_uar``, ties by lower ``loss``.
    Empty validation sets give NaN."""
    if len(y) == 0:
        return {"unit_uar": float("nan"), "unit_acc": float("nan"),
                "segment_uar": float("nan"), "loss": float("nan")}
    scores = evaluate(y, prob, units, positive, kind)
    nll = -np.log(np.clip(prob[np.arange(len(y)), y], 1e-7, None))
    return {"unit_uar": scores["unit_uar"], "unit_acc": scores["unit_acc"],
            "segment_uar": scores["segment_uar"], "loss": float(nll.mean())}
