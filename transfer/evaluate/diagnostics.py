"""Alignment diagnostics: how far apart source and target ``general`` features are.

After training, on held-out data (held-out source speakers, the target test subjects):
- ``gap_mmd``: the multi-kernel MMD between the standardised features of both domains;
- ``gap_a_distance``: the proxy A-distance 2 (1 - 2 err) of a logistic-regression domain
  classifier under 5-fold cross-validation (0 = indistinguishable, 2 = fully separable);
- a 2-D PCA of both domains' features, for one fold (the plot).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from transfer.evaluate.distances import MultiKernelMMD


def _subsample(z: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return z if len(z) <= n else z[rng.choice(len(z), n, replace=False)]


def domain_gap(source: np.ndarray, target: np.ndarray, *, max_samples: int = 400, seed: int = 0,
               projection: bool = False) -> dict:
    """MMD and proxy A-distance between two feature sets (N, D) and (M, D)."""
    rng = np.random.default_rng(seed)
    s = _subsample(source, max_samples, rng)
    t = _subsample(target, max_samples, rng)
    both = np.concatenate([s, t])
    mu, sd = both.mean(0), both.std(0) + 1e-6
    zs, zt = (s - mu) / sd, (t - mu) / sd
    mmd = float(MultiKernelMMD()(torch.from_numpy(zs).float(), torch.from_numpy(zt).float()))
    labels = np.r_[np.ones(len(zs)), np.zeros(len(zt))]
    folds = min(5, len(zs), len(zt))
    if folds >= 2:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            acc = cross_val_score(clf, np.concatenate([zs, zt]), labels,
                                  cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                  scoring="balanced_accuracy").mean()
        a_dist = float(2 * (1 - 2 * (1 - acc)))
    else:
        a_dist = float("nan")
    out = {"gap_mmd": mmd, "gap_a_distance": a_dist}
    if projection:
        pts = PCA(2, random_state=seed).fit_transform(np.concatenate([zs, zt]))
        out["projection"] = {"source": np.round(pts[:len(zs)], 4).tolist(),
                             "target": np.round(pts[len(zs):], 4).tolist()}
    return out
