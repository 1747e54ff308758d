"""Clinical operating points: thresholds chosen on source validation, measured at each site.

A clinician deploys a threshold, not an AUC. Each rule of :data:`RULES` picks a threshold
on the malignancy score (a case is called malignant when ``score >= threshold``) from one
set of labelled cases:

- ``youden``: the largest sensitivity + specificity - 1 (Youden 1950); among ties, the
  lowest threshold (the more sensitive one);
- ``sens90``: the highest threshold whose sensitivity is at least 0.90 (the best
  specificity at that sensitivity);
- ``spec90``: the lowest threshold whose specificity is at least 0.90.

Candidate thresholds are 0 (everything malignant), the midpoints between consecutive
distinct scores and a value just above the highest score (nothing malignant), so a
threshold never sits exactly on a case's score.

The thresholds a model is deployed with are chosen on its SOURCE VALIDATION predictions
only (:func:`choose_thresholds`) and stored with the model. At a target site,
:func:`at_threshold` gives sensitivity, specificity, PPV and NPV at a fixed threshold with
patient-bootstrap intervals (:mod:`senolab.evaluation.bootstrap`). The target's own
thresholds, chosen with its labels, are the *oracle*: reported beside the source ones to
show the threshold shift, never used to choose anything.

Cases: the labelled ones (``label`` not NaN); malignant is the last class (the positive
class of :mod:`senolab.evaluation.classification`), the others are negatives.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from senolab.evaluation.bootstrap import DEFAULT_CI_LEVEL, bootstrap
from senolab.evaluation.classification import probability_columns
from senolab.evaluation.metrics import safe_ratio
from senolab.registry import Registry

RATES = ("sensitivity", "specificity", "ppv", "npv")
ORACLE = "oracle"  # the prefix of every value chosen with the target's own labels
TARGET_SENSITIVITY = 0.90
TARGET_SPECIFICITY = 0.90

# A rule: (scores, positives) -> threshold, from one set of labelled cases.
RULES: Registry[Callable[[np.ndarray, np.ndarray], float]] = Registry("operating-point rule")


# --------------------------------------------------------------------------- the cases


def binary_cases(table: pd.DataFrame) -> pd.DataFrame:
    """The labelled cases of a prediction table as ``patient_id, site, score, positive``
    (positive: the last class, malignant). The score is ``score`` when present, else the
    last ``prob_<class>`` column."""
    labelled = table[table["label"].notna()]
    columns = probability_columns(table)
    if not columns:
        raise ValueError("operating points need prob_<class> columns")
    score = labelled["score"] if "score" in labelled.columns else labelled[columns[-1]]
    positive = labelled["label"].to_numpy(float) == max(len(columns), 2) - 1  # a lone column is the positive class
    return pd.DataFrame({"patient_id": labelled["patient_id"].astype(str).to_numpy(),
                         "site": labelled["site"].astype(str).to_numpy(),
                         "score": score.to_numpy(float), "positive": positive})


# --------------------------------------------------------------------------- thresholds


def candidate_thresholds(score: np.ndarray) -> np.ndarray:
    """0, the midpoints between consecutive distinct scores, and just above the highest."""
    distinct = np.unique(score)
    if distinct.size == 0:
        return np.array([0.0])
    top = np.nextafter(distinct[-1], np.inf)
    return np.unique(np.r_[0.0, (distinct[1:] + distinct[:-1]) / 2, top])


def roc_points(score: np.ndarray, positive: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity at each threshold (called malignant: score >= threshold)."""
    called = score[None, :] >= thresholds[:, None]
    sensitivity = safe_ratio((called & positive).sum(1).astype(float), np.full(len(thresholds), positive.sum(), float))
    specificity = safe_ratio((~called & ~positive).sum(1).astype(float),
                             np.full(len(thresholds), (~positive).sum(), float))
    return sensitivity, specificity


def _checked(score, positive) -> tuple[np.ndarray, np.ndarray]:
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    if positive.all() or not positive.any():
        raise ValueError("choosing a threshold needs both malignant and non-malignant cases")
    return score, positive


@RULES.register("youden")
def youden_threshold(score, positive) -> float:
    """Largest sensitivity + specificity - 1; the lowest threshold among ties."""
    score, positive = _checked(score, positive)
    thresholds = candidate_thresholds(score)
    sensitivity, specificity = roc_points(score, positive, thresholds)
    return float(thresholds[np.argmax(sensitivity + specificity - 1)])  # argmax: first (lowest) of ties


@RULES.register("sens90")
def sensitivity_threshold(score, positive, target: float = TARGET_SENSITIVITY) -> float:
    """The highest threshold with sensitivity >= 0.90: the best specificity there."""
    score, positive = _checked(score, positive)
    thresholds = candidate_thresholds(score)
    sensitivity, _ = roc_points(score, positive, thresholds)
    return float(thresholds[sensitivity >= target - 1e-12].max())  # threshold 0 always qualifies


@RULES.register("spec90")
def specificity_threshold(score, positive, target: float = TARGET_SPECIFICITY) -> float:
    """The lowest threshold with specificity >= 0.90: the best sensitivity there."""
    score, positive = _checked(score, positive)
    thresholds = candidate_thresholds(score)
    _, specificity = roc_points(score, positive, thresholds)
    return float(thresholds[specificity >= target - 1e-12].min())  # above the top score always qualifies


def choose_thresholds(score, positive) -> dict[str, float]:
    """Every rule's threshold on one set of labelled cases (source validation for a model)."""
    return {rule: float(RULES.build(rule, score, positive)) for rule in RULES.names()}


# --------------------------------------------------------------------------- rates at a threshold


def weighted_rates(score: np.ndarray, positive: np.ndarray, threshold: float, w: np.ndarray) -> dict[str, np.ndarray]:
    """(B,) sensitivity, specificity, PPV and NPV at ``threshold`` under (B, n) case weights."""
    called = score >= threshold
    tp, fn = w @ (called & positive), w @ (~called & positive)
    fp, tn = w @ (called & ~positive), w @ (~called & ~positive)
    return {"sensitivity": safe_ratio(tp, tp + fn), "specificity": safe_ratio(tn, tn + fp),
            "ppv": safe_ratio(tp, tp + fp), "npv": safe_ratio(tn, tn + fn)}


def rates(score, positive, threshold: float) -> dict[str, float]:
    """Point estimates of :func:`weighted_rates` (NaN where undefined)."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    return {k: float(v[0]) for k, v in weighted_rates(score, positive, threshold, np.ones((1, len(score)))).items()}


def at_threshold(score, positive, patients, threshold: float, n_resamples: int = 1000, seed: int = 0,
                 level: float = DEFAULT_CI_LEVEL) -> dict[str, dict[str, Any]]:
    """Sensitivity, specificity, PPV and NPV at a fixed ``threshold``, each
    ``{"value", "ci": [lo, hi], "n"}`` with a patient-bootstrap interval."""
    score, positive = np.asarray(score, float), np.asarray(positive, bool)
    statistics = {name: (lambda w, name=name: weighted_rates(score, positive, threshold, w)[name]) for name in RATES}
    intervals = bootstrap(statistics, np.asarray(patients), n_resamples=n_resamples, seed=seed, level=level)
    called = score >= threshold
    support = {"sensitivity": positive, "specificity": ~positive, "ppv": called, "npv": ~called}
    return {name: {"value": iv.value, "ci": [iv.lo, iv.hi], "n": int(support[name].sum())}
            for name, iv in intervals.items()}


# --------------------------------------------------------------------------- per site


def operating_points(cases: pd.DataFrame, thresholds: dict[str, float], n_resamples: int = 1000,
                     seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per site of ``cases`` (from :func:`binary_cases`): at each stored threshold the four
    rates with CIs, and the oracle (the site's own threshold by the same rule, with its
    sensitivity and specificity, labelled as such)::

        {site: {"youden": {"threshold": t, "sensitivity": {...}, ...},
                "oracle": {"youden": {"threshold": t', "sensitivity": s, "specificity": s'}, ...}}}
    """
    out = {}
    for site, rows in cases.groupby("site", sort=True):
        score, positive, patients = rows["score"].to_numpy(), rows["positive"].to_numpy(), rows["patient_id"].to_numpy()
        entry: dict[str, Any] = {rule: {"threshold": t, **at_threshold(score, positive, patients, t, n_resamples, seed)}
                                 for rule, t in thresholds.items() if t is not None and np.isfinite(t)}
        entry[ORACLE] = oracle_points(score, positive)
        out[str(site)] = entry
    return out


def oracle_points(score, positive) -> dict[str, dict[str, float]]:
    """The site's own threshold per rule (chosen WITH its labels) and its rates there;
    empty when the site lacks one of the classes."""
    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return {}
    out = {}
    for rule, t in choose_thresholds(score, positive).items():
        point = rates(score, positive, t)
        out[rule] = {"threshold": t, "sensitivity": point["sensitivity"], "specificity": point["specificity"]}
    return out


def operating_columns(entry: dict[str, Any]) -> dict[str, float]:
    """One site's :func:`operating_points` entry as flat results.csv columns:
    ``threshold_<rule>``, ``<rate>_<rule>`` with ``_lo`` / ``_hi``, and
    ``oracle_threshold_<rule>``, ``oracle_sensitivity_<rule>``, ``oracle_specificity_<rule>``."""
    row: dict[str, float] = {}
    for rule in RULES.names():
        if rule not in entry:
            continue
        row[f"threshold_{rule}"] = entry[rule]["threshold"]
        for name in RATES:
            metric = entry[rule][name]
            row[f"{name}_{rule}"], (row[f"{name}_{rule}_lo"], row[f"{name}_{rule}_hi"]) = metric["value"], metric["ci"]
    for rule, point in entry.get(ORACLE, {}).items():
        for name in ("threshold", "sensitivity", "specificity"):
            row[f"{ORACLE}_{name}_{rule}"] = point[name]
    return row


def operating_metrics(entry: dict[str, Any]) -> dict[str, Any]:
    """One site's entry as ``{"<rule>.<rate>": {"value", "ci"}}`` and thresholds, the shape
    :func:`senolab.tracking.records.metric_values` flattens into MLflow metrics."""
    out: dict[str, Any] = {}
    for rule in RULES.names():
        if rule in entry:
            out[f"{rule}.threshold"] = entry[rule]["threshold"]
            out.update({f"{rule}.{name}": entry[rule][name] for name in RATES})
    for rule, point in entry.get(ORACLE, {}).items():
        out.update({f"{ORACLE}.{rule}.{name}": value for name, value in point.items()})
    return out
