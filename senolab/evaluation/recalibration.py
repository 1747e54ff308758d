"""Local recalibration with k labelled target cases. USES TARGET LABELS: kept apart.

The question a hospital asks before deploying a model trained elsewhere: if we label k
of our own cases, how close does re-setting the threshold (and the temperature) on them
bring us to the threshold we would choose knowing all our labels (the oracle)?

Protocol, per model (method, seed) and target site, from its saved per-case predictions
(no retraining):

1. draw k calibration cases of the target site, stratified by class and at PATIENT level:
   whole patients are drawn, malignant and non-malignant patients separately, until each
   class holds its share of k (the site's malignant fraction, at least one case of each
   class); a patient with several images can overshoot by a few cases, and the number
   actually drawn is reported (``n_calibration``);
2. on those cases alone, re-set each rule's threshold (:data:`senolab.evaluation.operating.RULES`)
   and the temperature (:mod:`senolab.evaluation.calibration`);
3. evaluate on the REMAINING target cases only (never the k): sensitivity, specificity,
   PPV and NPV at the local threshold, and at the frozen source threshold on the same
   cases (paired); ECE and Brier with the source and the local temperature;
4. repeat for ``n_draws`` random draws (default 200); report the mean over draws and the
   2.5th-97.5th percentiles (the spread due to which k cases were labelled).

The oracle (the site's own threshold per rule, chosen on all its cases) is given beside.
Every row carries ``uses_target_labels = k``: these results are written apart
(``recalibration.csv``), never merged into the label-free results, never used to choose a
method. :func:`local_recalibration` works on any prediction table, e.g. from a notebook::

    local_recalibration(pd.read_parquet("runs/study/runs/site_c/erm/seed0/predictions.parquet"))
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from senolab.evaluation.calibration import brier, ece, fit_temperature, scaled
from senolab.evaluation.operating import RATES, binary_cases, choose_thresholds, oracle_points, rates
from senolab.evaluation.formatting import interval_text, number_text

K_VALUES = (10, 20, 50)
N_DRAWS = 200
SOURCE = "source_val"  # the domain of the source validation cases in a study's predictions
TARGET = "target"
LABEL_FLAG = "uses_target_labels"
GROUP_KEYS = ("method", "seed")


def patient_classes(patients: np.ndarray, positive: np.ndarray) -> pd.Series:
    """Each patient's class for stratification: malignant if any of its cases is."""
    return pd.Series(positive, index=patients).groupby(level=0).any()


class _Strata:
    """A site's patients by class, with their case counts: what every draw reads."""

    def __init__(self, patients: np.ndarray, positive: np.ndarray):
        self.patients, positive = np.asarray(patients).astype(str), np.asarray(positive, bool)
        by_patient = patient_classes(self.patients, positive)
        self.counts = pd.Series(self.patients).value_counts()
        self.pools = {True: np.array(by_patient.index[by_patient]), False: np.array(by_patient.index[~by_patient])}
        self.malignant_fraction = float(positive.mean())

    def draw(self, k: int, rng: np.random.Generator) -> np.ndarray:
        n_positive = int(np.clip(round(k * self.malignant_fraction), 1, k - 1))
        chosen: list[str] = []
        for is_positive, quota in ((True, n_positive), (False, k - n_positive)):
            pool, taken = self.pools[is_positive], 0
            for patient in pool[rng.permutation(len(pool))]:
                if taken >= quota:
                    break
                chosen.append(patient)
                taken += int(self.counts[patient])
        return np.isin(self.patients, chosen)


def draw_calibration(patients: np.ndarray, positive: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) bool: the cases of the patients drawn for calibration (protocol step 1)."""
    return _Strata(patients, positive).draw(k, rng)


def calibration_draws(patients, positive, k: int, n_draws: int = N_DRAWS, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_draws`` calibration masks of :func:`draw_calibration`, reproducible from ``seed``."""
    rng, strata = np.random.default_rng(seed), _Strata(patients, positive)
    for _ in range(n_draws):
        yield strata.draw(k, rng)


def recalibrate_site(cases: pd.DataFrame, source_thresholds: dict[str, float], source_temperature: float,
                     ks=K_VALUES, n_draws: int = N_DRAWS, seed: int = 0) -> list[dict]:
    """Rows of the protocol for one target site's labelled cases (``binary_cases`` shape)."""
    score, positive = cases["score"].to_numpy(float), cases["positive"].to_numpy(bool)
    patients = cases["patient_id"].to_numpy().astype(str)
    oracle = oracle_points(score, positive)
    rows = []
    for k in ks:
        if k >= len(score) - 1 or positive.sum() < 2 or (~positive).sum() < 2:
            continue  # too few cases left to evaluate on
        draws = [_one_draw(score, positive, mask, source_thresholds, source_temperature)
                 for mask in calibration_draws(patients, positive, k, n_draws, seed)]
        draws = [d for d in draws if d is not None]
        for rule in oracle:
            rows.append(_summarised(draws, rule, k, oracle[rule], source_thresholds.get(rule)))
    return rows


def _one_draw(score, positive, mask, source_thresholds, source_temperature) -> dict | None:
    """One draw: thresholds and temperature set on ``mask``, measured on ``~mask``."""
    calib, rest = mask, ~mask
    if positive[calib].all() or not positive[calib].any():
        return None
    local = choose_thresholds(score[calib], positive[calib])
    temperature = fit_temperature(score[calib], positive[calib])
    held_score, held_positive = score[rest], positive[rest]
    return {
        "n_calibration": int(calib.sum()), "n_evaluated": int(rest.sum()), "temperature": temperature,
        "local": {rule: {"threshold": t, **rates(held_score, held_positive, t)} for rule, t in local.items()},
        "source": {rule: rates(held_score, held_positive, t) for rule, t in source_thresholds.items()
                   if t is not None and np.isfinite(t)},
        "ece_source_temperature": ece(scaled(held_score, source_temperature), held_positive),
        "ece_local_temperature": ece(scaled(held_score, temperature), held_positive),
        "brier_source_temperature": brier(scaled(held_score, source_temperature), held_positive),
        "brier_local_temperature": brier(scaled(held_score, temperature), held_positive),
    }


def _summarised(draws: list[dict], rule: str, k: int, oracle: dict, source_threshold: float | None) -> dict:
    def spread(values) -> tuple[float, float, float]:
        values = np.asarray(values, float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return np.nan, np.nan, np.nan
        return float(values.mean()), float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))

    row = {"rule": rule, LABEL_FLAG: k, "n_draws": len(draws),
           "n_calibration": spread([d["n_calibration"] for d in draws])[0],
           "n_evaluated": spread([d["n_evaluated"] for d in draws])[0],
           "threshold": spread([d["local"][rule]["threshold"] for d in draws])[0]}
    for name in RATES:
        row[name], row[f"{name}_lo"], row[f"{name}_hi"] = spread([d["local"][rule][name] for d in draws])
    row["source_threshold"] = source_threshold
    for name in RATES:
        row[f"source_{name}"] = spread([d["source"][rule][name] for d in draws if rule in d["source"]])[0]
    row.update({f"oracle_{name}": oracle[name] for name in ("threshold", "sensitivity", "specificity")})
    row["local_temperature"] = spread([d["temperature"] for d in draws])[0]
    for name in ("ece_source_temperature", "ece_local_temperature", "brier_source_temperature",
                 "brier_local_temperature"):
        row[name] = spread([d[name] for d in draws])[0]
    return row


def local_recalibration(predictions: pd.DataFrame, ks=K_VALUES, n_draws: int = N_DRAWS, seed: int = 0,
                        source_thresholds: dict[str, float] | None = None,
                        source_temperature: float | None = None) -> pd.DataFrame:
    """The protocol (module docstring) for every model and target site of ``predictions``.

    ``predictions``: a prediction table (``senolab/engine/predict.py``) of one study unit
    (or of models told apart by ``method``, ``seed`` that share their source cases; a
    leave-one-site-out study's units do not: call it per unit). With a ``domain`` column
    (a study's), the ``source_val`` rows give the model's source thresholds and
    temperature and the ``target`` rows are recalibrated; without one, every row is a target case and
    ``source_thresholds`` / ``source_temperature`` give the frozen ones (else only the
    local results are filled). One row per (model, target site, k, rule)."""
    table = predictions.copy()
    keys = [c for c in GROUP_KEYS if c in table.columns]
    if not keys:
        table["method"], keys = "model", ["method"]
    rows = []
    for key, model in table.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        thresholds, temperature = _source_state(model, source_thresholds, source_temperature)
        target = model[model["domain"] == TARGET] if "domain" in model.columns else model
        for site, cases in binary_cases(target).groupby("site", sort=True):
            for row in recalibrate_site(cases, thresholds, temperature, ks, n_draws, seed):
                rows.append({**dict(zip(keys, key)), "target_site": site, **row})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame.insert(len(keys) + 1, LABEL_FLAG, frame.pop(LABEL_FLAG))
    return frame


def _source_state(model: pd.DataFrame, thresholds, temperature) -> tuple[dict[str, float], float]:
    """The frozen source thresholds and temperature: given, or from the source_val rows."""
    if thresholds is None and "domain" in model.columns and (model["domain"] == SOURCE).any():
        cases = binary_cases(model[model["domain"] == SOURCE])
        if cases["positive"].any() and not cases["positive"].all():
            thresholds = choose_thresholds(cases["score"], cases["positive"])
            temperature = fit_temperature(cases["score"], cases["positive"]) if temperature is None else temperature
    return thresholds or {}, 1.0 if temperature is None else temperature


def recalibration_markdown(frame: pd.DataFrame) -> str:
    """The recalibration table, headed by what it uses: k labelled cases of the target site."""
    lines = ["Local recalibration: USES k LABELLED TARGET CASES (never used to choose a method). Mean over draws "
             "[2.5-97.5th percentile], evaluated on the target cases not drawn.", "",
             "| method | target | k (target labels) | rule | sensitivity | specificity | source-threshold specificity "
             "| oracle specificity |", "|---|---|---|---|---|---|---|---|"]
    for r in frame.to_dict("records"):
        lines.append(f"| {r.get('method', '-')} | {r['target_site']} | {r[LABEL_FLAG]} | {r['rule']} "
                     f"| {interval_text(r, 'sensitivity')} | {interval_text(r, 'specificity')} "
                     f"| {number_text(r.get('source_specificity'))} | {number_text(r.get('oracle_specificity'))} |")
    return "\n".join(lines) + "\n"

