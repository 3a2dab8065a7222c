"""Label-free model selection: scores that rank trained models when the target has no labels.

Each rule turns one run's outputs into a score (higher = the rule prefers the run); the
selection report (:mod:`transfer.report.selection`) says how far each rule's choice falls
below the best choice that the test labels reveal (its regret), so a user sees how far to
trust it.

Rules, what they read, and their source:

- ``source_acc``: accuracy on held-out source speakers (source audio and labels): the
  classic choice, blind to the target.
- ``iwv``: importance-weighted validation (Sugiyama et al. 2007): the source held-out loss,
  each segment weighted by p(target | x) / p(source | x) from a domain classifier on the
  model's features, so that source segments that look like the target count more (source
  audio and labels, target audio).
- ``dev``: deep embedded validation (You et al. 2019): the same weighted loss with a control
  variate that removes much of its variance.
- ``entropy``: minus the mean entropy of the target predictions (target audio only).
- ``info_max``: information maximisation, the entropy of the mean target prediction minus the
  mean entropy (confident and diverse; target audio only).
- ``snd``: soft neighbourhood density (Saito et al. 2021): the entropy of each target
  segment's softmax similarity to the others' predictions, high where neighbours form dense
  clusters (target audio only).

A source-free user (``shot``) has only the last three.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import softmax
from scipy.stats import entropy as _entropy
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

#: rule -> what it reads
RULES = {
    "source_acc": "source held-out audio and labels",
    "iwv": "source held-out audio and labels, target audio",
    "dev": "source held-out audio and labels, target audio",
    "entropy": "target audio",
    "info_max": "target audio",
    "snd": "target audio",
}

#: SND's softmax temperature over cosine similarities (the paper's 0.05).
SND_TEMPERATURE = 0.05


def _entropies(prob: np.ndarray) -> np.ndarray:
    """Entropy (nats) of every row of (N, C) probabilities."""
    return _entropy(np.clip(prob, 1e-12, None), axis=1)


def entropy_score(prob: np.ndarray) -> float:
    """Minus the mean prediction entropy. ``prob``: (N, C) target probabilities."""
    return float(-_entropies(prob).mean())


def info_max_score(prob: np.ndarray) -> float:
    """Entropy of the mean prediction minus the mean entropy. ``prob``: (N, C)."""
    mean = prob.mean(0, keepdims=True)
    return float(_entropies(mean)[0] - _entropies(prob).mean())


def snd_score(prob: np.ndarray, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density of the target predictions: L2-normalised probabilities,
    their cosine similarities without the self-similarity, a softmax per row at
    ``temperature``, and the mean entropy of the rows. ``prob``: (N, C), N >= 2."""
    if len(prob) < 2:
        return float("nan")
    f = prob / np.maximum(np.linalg.norm(prob, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T / temperature  # (N, N)
    np.fill_diagonal(sim, -np.inf)
    return float(_entropies(softmax(sim, axis=1)).mean())


def importance_weights(z_source: np.ndarray, z_target: np.ndarray, seed: int = 0
                       ) -> np.ndarray:
    """Density ratios p_target(x) / p_source(x) of the source segments, from a logistic domain
    classifier on standardised features (scikit-learn), scaled by the sample sizes so that they
    average about 1.

    Shapes: z_source (N, D), z_target (M, D) -> (N,).
    """
    x = np.concatenate([z_source, z_target]).astype(np.float64)
    d = np.r_[np.zeros(len(z_source)), np.ones(len(z_target))]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a separable pair converges slowly: weights are extreme
        clf.fit(x, d)
    p = np.clip(clf.predict_proba(z_source.astype(np.float64))[:, 1], 1e-6, 1 - 1e-6)
    return p / (1 - p) * len(z_source) / len(z_target)


def iwv_score(losses: np.ndarray, weights: np.ndarray) -> float:
    """Minus the importance-weighted source loss. ``losses``, ``weights``: (N,)."""
    return float(-(weights * losses).mean())


def dev_score(losses: np.ndarray, weights: np.ndarray) -> float:
    """Minus the deep-embedded-validation risk: the weighted loss plus the control variate
    eta * (mean weight - 1), eta = -Cov(weighted loss, weight) / Var(weight)."""
    wl = weights * losses
    var = weights.var(ddof=1) if len(weights) > 1 else 0.0
    eta = -np.cov(wl, weights)[0, 1] / var if var > 0 else 0.0
    return float(-(wl.mean() + eta * weights.mean() - eta))


def uar(y: np.ndarray, prob: np.ndarray) -> float:
    """Balanced accuracy of the argmax predictions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class absent from a small validation split
        return float(balanced_accuracy_score(y, prob.argmax(1)))


def label_free_scores(p_target: np.ndarray, p_source: np.ndarray, y_source: np.ndarray,
                      z_target: np.ndarray, z_source: np.ndarray, seed: int = 0
                      ) -> dict[str, float]:
    """Every rule of :data:`RULES` for one run.

    Args:
        p_target: (M, C) class probabilities of target segments (their labels are not read).
        p_source, y_source: (N, C) probabilities and (N,) labels of held-out source segments.
        z_target, z_source: (M, D) and (N, D) the model's features of the same segments (for
            the domain classifier of ``iwv`` and ``dev``).
        seed: the domain classifier's seed.
    """
    losses = -np.log(np.clip(p_source[np.arange(len(y_source)), y_source], 1e-12, None))
    w = importance_weights(z_source, z_target, seed)
    return {"source_acc": float((p_source.argmax(1) == y_source).mean()),
            "iwv": iwv_score(losses, w), "dev": dev_score(losses, w),
            "entropy": entropy_score(p_target), "info_max": info_max_score(p_target),
            "snd": snd_score(p_target)}
