"""DeLong's test for correlated ROC AUCs, in the fast midrank form.

DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more correlated
receiver operating characteristic curves: a nonparametric approach", Biometrics 44:837.
For scores of k classifiers on the same m positive and n negative cases, the structural
components are, per positive case i and per negative case j,

    V10_i = (1/n) sum_j psi(X_i, Y_j),   V01_j = (1/m) sum_i psi(X_i, Y_j),
    psi(x, y) = 1 if x > y, 1/2 if x = y, 0 otherwise,

the AUC is mean_i V10_i, and the covariance of the k AUCs is S10/m + S01/n with S10, S01
the sample covariances (denominator m-1, n-1) of the components. Sun & Xu (2014), "Fast
implementation of DeLong's algorithm for comparing the areas under correlated receiver
operating characteristic curves", IEEE Signal Processing Letters 21:1389, obtain the
components from midranks in O(N log N):

    V10_i = (T_Z(X_i) - T_X(X_i)) / n,   V01_j = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m,

T_X, T_Y, T_Z the midranks within positives, within negatives and over all cases.
For two classifiers, z = (A1 - A2) / sqrt(V1 + V2 - 2 C12) is compared with N(0, 1).

The test treats cases as independent: with several images per patient, prefer the
patient bootstrap of :mod:`senolab.evaluation.bootstrap` for intervals.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class DeLongResult:
    """Two correlated AUCs, their 2x2 DeLong covariance, z and the two-sided p-value."""

    auc_a: float
    auc_b: float
    cov: np.ndarray
    z: float
    p: float

    @property
    def difference(self) -> float:
        return self.auc_a - self.auc_b


def _checked(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.atleast_2d(np.asarray(scores, dtype=float))
    if labels.ndim != 1 or scores.shape[1] != labels.shape[0]:
        raise ValueError(
            f"scores must have shape (n,) or (k, n) with n = len(labels) = {labels.shape[0]}; got {scores.shape}"
        )
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0/1 (1 = positive)")
    n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
    if n_pos < 2 or n_neg < 2:
        raise ValueError(f"DeLong needs at least 2 positive and 2 negative cases; got {n_pos} and {n_neg}")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    return labels.astype(bool), scores


def structural_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V10 (k, m) per positive case, V01 (k, n) per negative case), from midranks."""
    positive, scores = _checked(labels, scores)
    pos, neg = scores[:, positive], scores[:, ~positive]
    m, n = pos.shape[1], neg.shape[1]
    ranks_all = stats.rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v10 = (ranks_all[:, :m] - stats.rankdata(pos, axis=1)) / n
    v01 = 1.0 - (ranks_all[:, m:] - stats.rankdata(neg, axis=1)) / m
    return v10, v01


def delong_covariance(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUCs (k,) and their DeLong covariance (k, k) for scores (k, n) or (n,)."""
    v10, v01 = structural_components(labels, scores)
    m, n = v10.shape[1], v01.shape[1]
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return v10.mean(axis=1), cov


def delong_test(labels: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> DeLongResult:
    """DeLong's test of AUC(a) = AUC(b) for two scores of the same cases (two-sided).

    Identical rankings give a zero variance of the difference: z = 0 and p = 1.
    """
    aucs, cov = delong_covariance(labels, np.vstack([score_a, score_b]))
    var_diff = cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1]
    diff = aucs[0] - aucs[1]
    if var_diff <= 0:
        z, p = 0.0, 1.0
    else:
        z = float(diff / np.sqrt(var_diff))
        p = float(2.0 * stats.norm.sf(abs(z)))
    return DeLongResult(auc_a=float(aucs[0]), auc_b=float(aucs[1]), cov=cov, z=z, p=p)
