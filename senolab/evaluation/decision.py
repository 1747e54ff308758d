"""Decision curves: the net benefit of acting on the model against threshold probability.

Decision-curve analysis (Vickers & Elkin 2006, Med Decis Making 26:565): at a threshold
probability p_t (the risk of malignancy at which a clinician would biopsy), calling
malignant every case with score >= p_t has

    net benefit = TP / N - FP / N * p_t / (1 - p_t)

(a true positive's benefit minus a false positive's harm, weighted by the odds at which a
clinician is indifferent). The two reference strategies: *treat all* (biopsy everyone,
prevalence - (1 - prevalence) p_t / (1 - p_t)) and *treat none* (0). A model is useful
at p_t where its curve lies above both. The score must be a calibrated probability for
p_t to mean a risk; decision curves of temperature-scaled scores
(:mod:`senolab.evaluation.calibration`) show what recalibration buys.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

DEFAULT_THRESHOLDS = np.round(np.arange(0.02, 0.96, 0.02), 2)
STRATEGIES = ("model", "treat_all", "treat_none")


def net_benefit(score, positive, threshold: float) -> float:
    """TP/N - FP/N * p_t / (1 - p_t) of calling malignant every case with score >= p_t."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    if not 0 < threshold < 1:
        raise ValueError(f"a threshold probability lies in (0, 1); got {threshold}")
    called = score >= threshold
    n = len(score)
    return float((called & positive).sum() / n - (called & ~positive).sum() / n * threshold / (1 - threshold))


def treat_all(positive, threshold: float) -> float:
    """Net benefit of calling every case malignant."""
    prevalence = float(np.mean(np.asarray(positive, bool)))
    return prevalence - (1 - prevalence) * threshold / (1 - threshold)


def decision_curve(score, positive, thresholds=DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """``threshold, model, treat_all, treat_none`` at each threshold probability."""
    thresholds = np.asarray(thresholds, float)
    return pd.DataFrame({"threshold": thresholds,
                         "model": [net_benefit(score, positive, t) for t in thresholds],
                         "treat_all": [treat_all(positive, t) for t in thresholds],
                         "treat_none": np.zeros(len(thresholds))})


def site_decision_curves(cases: pd.DataFrame, thresholds=DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """One :func:`decision_curve` per site of ``cases`` (``site, score, positive``), stacked
    with a ``site`` column."""
    return pd.concat([decision_curve(rows["score"], rows["positive"], thresholds).assign(site=site)
                      for site, rows in cases.groupby("site", sort=True)], ignore_index=True)
