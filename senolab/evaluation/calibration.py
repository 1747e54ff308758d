"""Calibration of the malignancy score: ECE, Brier score, reliability, temperature scaling.

Everything here reads the malignancy score ``p`` (probability of the positive class,
malignant) and the binary truth ``y`` (malignant or not):

- ``ece``: expected calibration error of ``p`` with :data:`ECE_BINS` = 10 equal-width bins
  on [0, 1], bin b = (b/10, (b+1)/10] (the first also holds 0):
  ECE = sum_b (n_b / N) |mean(y)_b - mean(p)_b| (Naeini et al. 2015; Guo et al. 2017).
  It differs from the registry's top-label ``ece`` (:mod:`.classification`, 15 bins on the
  largest class probability): this one is the calibration of the score a threshold is put on.
- ``brier``: mean (p - y)^2 (Brier 1950).
- :func:`reliability`: per bin, its case count, mean score and observed malignant fraction.
- Temperature scaling (Guo et al. 2017) with ONE parameter T, fitted on the log-odds of
  the malignancy score: p_T = sigmoid(logit(p) / T), T minimising the negative
  log-likelihood of the SOURCE VALIDATION cases. For a two-class softmax model,
  logit(p_malignant) is the difference of the two logits, so this is exactly temperature
  scaling of the logits; for a three-class model it rescales the one-vs-rest log-odds of
  malignancy. A monotone map: it changes ECE, Brier and net benefit, never the AUC, and
  sensitivity/specificity only through where a fixed probability threshold falls.

Every statistic takes (B, n) case weights (:mod:`senolab.evaluation.metrics`), so the
patient bootstrap of :mod:`senolab.evaluation.bootstrap` gives their intervals.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from senolab.evaluation.bootstrap import DEFAULT_CI_LEVEL, bootstrap
from senolab.evaluation.classification import binned_gap_ece, binned_means
from senolab.evaluation.metrics import safe_ratio

ECE_BINS = 10
EPS = 1e-6  # scores are clipped to [EPS, 1 - EPS] before taking log-odds
TEMPERATURE_RANGE = (0.05, 20.0)
STATISTICS = ("ece", "brier")


def weighted_ece(score: np.ndarray, positive: np.ndarray, w: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """(B,) ECE of the score under (B, n) weights: sum_b |sum_{i in b} w_i (y_i - p_i)| / sum_i w_i."""
    return binned_gap_ece(score, positive.astype(float) - score, n_bins, w)


def weighted_brier(score: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) weighted mean of (p - y)^2."""
    return safe_ratio(w @ (score - positive.astype(float)) ** 2, w.sum(axis=1))


def ece(score, positive, n_bins: int = ECE_BINS) -> float:
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    return float(weighted_ece(score, positive, np.ones((1, len(score))), n_bins)[0])


def brier(score, positive) -> float:
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    return float(weighted_brier(score, positive, np.ones((1, len(score))))[0])


def reliability(score, positive, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Per equal-width bin: ``lo, hi, count, mean_score, observed`` (NaN where empty)."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    return binned_means(score, n_bins, mean_score=score, observed=positive.astype(float))


# --------------------------------------------------------------------------- temperature scaling


def log_odds(score) -> np.ndarray:
    p = np.clip(np.asarray(score, float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def scaled(score, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): the score after temperature scaling."""
    return 1.0 / (1.0 + np.exp(-log_odds(score) / temperature))


def nll(score, positive) -> float:
    """Mean negative log-likelihood (log loss) of the binary truth under the score."""
    p = np.clip(np.asarray(score, float), EPS, 1 - EPS)
    y = np.asarray(positive, bool)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


def fit_temperature(score, positive) -> float:
    """The T in :data:`TEMPERATURE_RANGE` minimising the NLL of sigmoid(logit(p) / T);
    1.0 (no change) when the cases hold one class only."""
    from scipy.optimize import minimize_scalar

    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return 1.0
    z = log_odds(score)
    y = positive.astype(float)

    def loss(log_t: float) -> float:
        logits = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, logits) - y * logits))  # stable NLL of sigmoid(logits)

    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    return float(np.exp(minimize_scalar(loss, bounds=(low, high), method="bounded",
                                        options={"xatol": 1e-5}).x))


# --------------------------------------------------------------------------- per site


def calibration_entry(score, positive, patients, temperature: float = 1.0, n_resamples: int = 1000, seed: int = 0,
                      n_bins: int = ECE_BINS, level: float = DEFAULT_CI_LEVEL) -> dict[str, dict[str, Any]]:
    """ECE and Brier of the score as it is and after temperature scaling (``ece_scaled``,
    ``brier_scaled``), each ``{"value", "ci": [lo, hi], "n"}`` with patient-bootstrap CIs."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    versions = {"": score, "_scaled": scaled(score, temperature)}
    statistics = {}
    for suffix, p in versions.items():
        statistics[f"ece{suffix}"] = lambda w, p=p: weighted_ece(p, positive, w, n_bins)
        statistics[f"brier{suffix}"] = lambda w, p=p: weighted_brier(p, positive, w)
    intervals = bootstrap(statistics, np.asarray(patients), n_resamples=n_resamples, seed=seed, level=level)
    return {name: {"value": iv.value, "ci": [iv.lo, iv.hi], "n": len(score)} for name, iv in intervals.items()}


def site_calibration(cases: pd.DataFrame, temperature: float = 1.0, n_resamples: int = 1000, seed: int = 0,
                     n_bins: int = ECE_BINS) -> dict[str, dict[str, Any]]:
    """Per site of ``cases`` (:func:`senolab.evaluation.operating.binary_cases`): ECE and
    Brier before and after scaling by ``temperature``, and the reliability bins of both."""
    out = {}
    for site, rows in cases.groupby("site", sort=True):
        score, positive = rows["score"].to_numpy(), rows["positive"].to_numpy()
        entry = calibration_entry(score, positive, rows["patient_id"].to_numpy(), temperature, n_resamples, seed,
                                  n_bins)
        entry["reliability"] = reliability(score, positive, n_bins).to_dict(orient="list")
        entry["reliability_scaled"] = reliability(scaled(score, temperature), positive, n_bins).to_dict(orient="list")
        out[str(site)] = entry
    return out


def calibration_columns(entry: dict[str, Any], temperature: float | None) -> dict[str, float]:
    """A site's entry as results.csv columns: ``temperature``, then ``ece_score``,
    ``brier`` and their ``_scaled`` versions with ``_lo`` / ``_hi``."""
    row: dict[str, float] = {"temperature": np.nan if temperature is None else temperature}
    for name in ("ece", "brier", "ece_scaled", "brier_scaled"):
        if name in entry:
            column = name.replace("ece", "ece_score")
            row[column], (row[f"{column}_lo"], row[f"{column}_hi"]) = entry[name]["value"], entry[name]["ci"]
    return row
