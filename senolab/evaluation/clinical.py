"""A model's clinical evaluation: what it is deployed with, and how that holds at each site.

:func:`deployment_state` is chosen on the model's SOURCE VALIDATION predictions only and
stored with the model (``preprocessing.json`` of the package, the run's summary.json): the
threshold of every rule of :data:`senolab.evaluation.operating.RULES` and the temperature
of :mod:`senolab.evaluation.calibration`. :func:`clinical_sections` measures it on test
predictions, per site: the rates at each stored threshold with patient-bootstrap CIs and
the oracle threshold beside (:mod:`.operating`), ECE and Brier before and after the
temperature with reliability bins (:mod:`.calibration`), and decision curves
(:mod:`.decision`). Those are summary.json sections; :func:`clinical_columns` flattens one
site for results.csv and :func:`clinical_metrics` for MLflow. No target label is used to
choose anything here: the oracle is reported, never applied. The shapes are in
docs/contracts.md#clinical-outputs.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from senolab.evaluation.calibration import ECE_BINS, calibration_columns, fit_temperature, site_calibration
from senolab.evaluation.decision import site_decision_curves
from senolab.evaluation.operating import (
    RULES,
    TARGET_SENSITIVITY,
    TARGET_SPECIFICITY,
    binary_cases,
    choose_thresholds,
    operating_columns,
    operating_metrics,
    operating_points,
)

CHOSEN_ON = "source validation"
TEMPERATURE_ON = "log-odds of the malignancy score: p_T = sigmoid(logit(p) / T)"
SECTIONS = ("operating_points", "calibration", "decision_curves")
RULE_TEXT = {"youden": "Youden (max sensitivity + specificity - 1)",
             "sens90": f"sensitivity >= {TARGET_SENSITIVITY:.2f}", "spec90": f"specificity >= {TARGET_SPECIFICITY:.2f}"}


def deployment_state(validation: pd.DataFrame | None) -> dict[str, Any]:
    """Thresholds and temperature chosen on source validation predictions (a prediction
    table); without both classes there, no threshold (and temperature 1)."""
    cases = binary_cases(validation) if validation is not None and len(validation) else None
    state = {"chosen_on": CHOSEN_ON, "n_cases": 0 if cases is None else len(cases),
             "n_malignant": 0 if cases is None else int(cases["positive"].sum()),
             "rules": {rule: RULE_TEXT.get(rule, rule) for rule in RULES.names()},
             "thresholds": {}, "temperature": 1.0, "temperature_on": TEMPERATURE_ON, "ece_bins": ECE_BINS,
             "threshold_convention": "malignant when score >= threshold"}
    if cases is not None and 0 < state["n_malignant"] < len(cases):
        state["thresholds"] = choose_thresholds(cases["score"].to_numpy(), cases["positive"].to_numpy())
        state["temperature"] = fit_temperature(cases["score"].to_numpy(), cases["positive"].to_numpy())
    return state


def clinical_sections(predictions: pd.DataFrame, state: dict[str, Any], n_resamples: int = 1000, seed: int = 0,
                      pooled: str | None = None) -> dict[str, Any]:
    """summary.json sections of test ``predictions`` (one model) under the deployment
    ``state``: ``operating_points``, ``calibration`` and ``decision_curves``, each
    ``{"source": ..., "sites": {site: ...}}``. ``pooled``: also all sites together under
    that name (when there are several)."""
    if "label" not in predictions.columns or predictions["label"].notna().sum() == 0:
        return {}
    cases = binary_cases(predictions)
    if pooled is not None and cases["site"].nunique() > 1:
        cases = pd.concat([cases, cases.assign(site=pooled)], ignore_index=True)
    temperature = state.get("temperature", 1.0)
    curves = site_decision_curves(cases)
    return {
        "operating_points": {"source": state, "sites": operating_points(cases, state.get("thresholds", {}),
                                                                        n_resamples, seed)},
        "calibration": {"source": {"temperature": temperature, "temperature_on": TEMPERATURE_ON, "ece_bins": ECE_BINS},
                        "sites": site_calibration(cases, temperature, n_resamples, seed)},
        "decision_curves": {"sites": {site: rows.drop(columns="site").to_dict(orient="list")
                                      for site, rows in curves.groupby("site", sort=True)}},
    }


def clinical_columns(sections: dict[str, Any], site: str) -> dict[str, float]:
    """One site's results.csv columns: operating points, then calibration."""
    if "operating_points" not in sections or site not in sections["operating_points"]["sites"]:
        return {}
    temperature = sections["calibration"]["source"]["temperature"]
    return {**operating_columns(sections["operating_points"]["sites"][site]),
            **calibration_columns(sections["calibration"]["sites"][site], temperature)}


def clinical_metrics(sections: dict[str, Any], site: str) -> dict[str, Any]:
    """One site's MLflow metrics as ``{name: {"value", "ci"}}`` or numbers:
    ``<rule>.<rate>``, ``<rule>.threshold``, ``oracle.<rule>.*``, ``ece_score``, ``brier``,
    their ``_scaled`` versions and ``temperature``."""
    if "operating_points" not in sections or site not in sections["operating_points"]["sites"]:
        return {}
    calibration = sections["calibration"]["sites"][site]
    out = operating_metrics(sections["operating_points"]["sites"][site])
    out.update({name.replace("ece", "ece_score"): calibration[name]
                for name in ("ece", "brier", "ece_scaled", "brier_scaled") if name in calibration})
    out["temperature"] = sections["calibration"]["source"]["temperature"]
    return out


def reliability_points(sections: dict[str, Any], site: str) -> pd.DataFrame:
    """The site's reliability bins as trained and temperature-scaled, for a figure."""
    entry = sections["calibration"]["sites"][site]
    return pd.concat([pd.DataFrame(entry["reliability"]).assign(version="as trained"),
                      pd.DataFrame(entry["reliability_scaled"]).assign(version="temperature-scaled")],
                     ignore_index=True)


def decision_points(sections: dict[str, Any], site: str) -> pd.DataFrame:
    return pd.DataFrame(sections["decision_curves"]["sites"][site])


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))
