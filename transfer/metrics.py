"""Classification metrics at segment and subject level (scikit-learn underneath).

Subject level: a subject's decision is the argmax of the mean probability of its segments.
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


def subject_level(y: np.ndarray, prob: np.ndarray, groups: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Per subject: its label (majority) and the mean probability of its segments."""
    subjects, inverse = np.unique(groups, return_inverse=True)
    sums = np.zeros((len(subjects), prob.shape[1]))
    np.add.at(sums, inverse, prob)
    counts = np.bincount(inverse, minlength=len(subjects))[:, None]
    labels = np.array([np.bincount(y[inverse == i]).argmax() for i in range(len(subjects))])
    return labels, sums / counts


def evaluate(y: np.ndarray, prob: np.ndarray, groups: np.ndarray, positive: int = -1
             ) -> dict[str, float]:
    """``segment_<m>`` and ``subject_<m>`` for every metric in :data:`METRICS`."""
    seg = classification(y, prob, positive)
    sy, sp = subject_level(y, prob, groups)
    subj = classification(sy, sp, positive)
    return {**{f"segment_{k}": v for k, v in seg.items()},
            **{f"subject_{k}": v for k, v in subj.items()}}


def confusion(y: np.ndarray, prob: np.ndarray, n_classes: int) -> list[list[int]]:
    return confusion_matrix(y, prob.argmax(1), labels=range(n_classes)).tolist()
