"""Evaluate a per-case prediction table: per-site and worst-site metrics with intervals.

The prediction table has one row per case (and method) with at least ``case_id``,
``patient_id`` and ``site``; ``method`` is optional (one method, :data:`DEFAULT_METHOD`,
when absent). Classification needs ``label`` and the ``prob_<class>`` columns
(:mod:`senolab.evaluation.classification`); a case whose label is missing (NaN: an
unlabelled image, or a normal image in a benign/malignant task) enters no
classification metric but still counts for segmentation. Segmentation needs ``lesion_present`` and
any of the per-case columns of :mod:`senolab.evaluation.segmentation` (``dice``,
``iou``, ``hd95_px``, ``hd95_mm``, ``box_iou``, ``pred_area_px``,
``pred_area_fraction``), as written by ``segmentation_case_metrics``.

For every method, every site and all sites pooled (:data:`POOLED`), every registered
metric that applies gets a point estimate and a patient-bootstrap interval. Per method,
``worst_site`` names, per metric, the site with the worst value (lowest AUC or Dice,
highest HD95 or ECE). ``summary.json`` follows docs/contracts.md#evaluation-outputs, in the spirit of nnU-Net's
``summary.json``, plus the settings that produced it under ``"evaluation"``::

    {"config": {...}, "evaluation": {...},
     "aggregates": {"<method>": {"<site>": {"auc": {"value": x, "ci": [lo, hi], "n": .., ...}},
                                 "worst_site": {"auc": {"site": s, "value": x, "ci": [lo, hi]}}}},
     "cases": [{"case_id": .., "site": .., "method": .., ...}]}

``results.csv`` has one row per method and site: ``method, site, n_cases, n_patients``
then ``<metric>, <metric>_lo, <metric>_hi`` per metric.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from senolab.evaluation.bootstrap import DEFAULT_CI_LEVEL, DEFAULT_RESAMPLES, bootstrap
from senolab.evaluation.classification import (
    DEFAULT_ECE_BINS,
    UNLABELLED,
    class_labels,
    class_names,
    class_probabilities,
    predicted_classes,
    probability_columns,
)
from senolab.evaluation.delong import delong_test
from senolab.evaluation.metrics import METRICS, CaseArrays, Metric, registered_metrics
from senolab.evaluation.segmentation import CASE_COLUMNS, HD95_DEFINITION, LESION_COLUMN, LESION_FREE_POLICY

REQUIRED_COLUMNS = ("case_id", "patient_id", "site")
DEFAULT_METHOD = "model"
POOLED = "all"  # the key of all sites together; no real site may carry this name
WORST = "worst_site"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.csv"
SUMMARY_KEYS = ("config", "aggregates", "cases")


@dataclass
class Evaluation:
    """The outcome of :func:`evaluate`.

    ``aggregates[method][site][metric]`` is ``{"value", "ci": [lo, hi], "n", "n_patients",
    "n_degenerate"}`` (``n``: cases that entered the metric; ``n_degenerate``: bootstrap
    resamples skipped as undefined); ``aggregates[method]["worst_site"][metric]`` is
    ``{"site", "value", "ci"}``. ``cases`` is the validated prediction table with the
    predicted class (``pred``) added. ``groups`` counts cases and patients per method
    and site.
    """

    aggregates: dict[str, dict[str, dict[str, dict[str, Any]]]]
    cases: pd.DataFrame
    groups: pd.DataFrame
    settings: dict[str, Any] = field(default_factory=dict)

    def metric_names(self) -> list[str]:
        """Metrics present in the aggregates, in registry order."""
        seen = {name for per_method in self.aggregates.values() for entries in per_method.values() for name in entries}
        return sorted(seen, key=lambda name: METRICS.get(name).rank)

    def results_table(self) -> pd.DataFrame:
        """One row per method and site: counts, then each metric with its interval."""
        rows = []
        for group in self.groups.itertuples(index=False):
            row = {"method": group.method, "site": group.site, "n_cases": group.n_cases, "n_patients": group.n_patients}
            entries = self.aggregates[group.method][group.site]
            for name in self.metric_names():
                entry = entries.get(name, {"value": np.nan, "ci": [np.nan, np.nan]})
                row[name], (row[f"{name}_lo"], row[f"{name}_hi"]) = entry["value"], entry["ci"]
            rows.append(row)
        return pd.DataFrame(rows)

    def to_summary(self, config: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
        """The summary.json content: JSON-safe (NaN and infinities become null); ``extra``
        adds top-level sections (e.g. the ``skipped`` cases)."""
        return json_safe(
            {
                "config": config or {},
                "evaluation": self.settings,
                "aggregates": self.aggregates,
                "cases": self.cases.to_dict(orient="records"),
                **(extra or {}),
            }
        )

    def write(self, out_dir: str | Path, config: dict | None = None, extra: dict | None = None) -> dict[str, Path]:
        """Write ``summary.json`` (see :meth:`to_summary`) and ``results.csv`` into ``out_dir``; their paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary_path, results_path = out / SUMMARY_FILE, out / RESULTS_FILE
        summary_path.write_text(json.dumps(self.to_summary(config, extra), indent=1, allow_nan=False) + "\n")
        self.results_table().to_csv(results_path, index=False)
        return {"summary": summary_path, "results": results_path}


def evaluate(
    predictions: pd.DataFrame,
    *,
    classes: Sequence[str] | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    ci_level: float = DEFAULT_CI_LEVEL,
    ece_bins: int = DEFAULT_ECE_BINS,
    progress: bool = True,
) -> Evaluation:
    """Per-site, pooled and worst-site metrics with patient-bootstrap intervals.

    ``classes`` orders the ``prob_<class>`` columns (default: every ``prob_*`` column, in
    ``LABELS`` order when they are labels). Raises ValueError naming the column when the
    table is malformed.
    """
    if not (isinstance(ece_bins, int) and ece_bins >= 1):
        raise ValueError(f"ece_bins must be a positive integer; got {ece_bins!r}")
    table = validate_predictions(predictions)
    prob_columns = probability_columns(table, classes)
    names = class_names(prob_columns) if prob_columns else []
    if prob_columns:
        table["pred"] = predicted_classes(class_probabilities(table, prob_columns))
    aggregates: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    group_rows = []
    plan = list(table.groupby("method", sort=True))
    work = sum(part["site"].nunique() + 1 for _, part in plan)
    with tqdm(total=work, desc="evaluate", unit="group", disable=not progress) as bar:
        for method, part in plan:
            cases = case_arrays(part, prob_columns, names, ece_bins)
            metrics = [m for m in registered_metrics() if m.applies(cases)]
            per_site: dict[str, dict[str, dict[str, Any]]] = {}
            for site, rows in site_groups(part["site"].to_numpy()):
                group = cases.subset(rows)
                per_site[site] = group_aggregates(group, metrics, n_resamples, seed, ci_level)
                n_patients = len(np.unique(group.patients))
                group_rows.append({"method": method, "site": site, "n_cases": len(group), "n_patients": n_patients})
                bar.update()
            per_site[WORST] = worst_sites(per_site, metrics)
            aggregates[method] = per_site
    settings = {
        "classes": names,
        "n_resamples": n_resamples,
        "seed": seed,
        "ci_level": ci_level,
        "ci_method": "percentile, patient (cluster) bootstrap",
        "ece_bins": ece_bins,
        "lesion_free_policy": LESION_FREE_POLICY,
        "hd95": HD95_DEFINITION,
        "positive_class": names[-1] if names else None,
    }
    return Evaluation(aggregates=aggregates, cases=table, groups=pd.DataFrame(group_rows), settings=settings)


def site_groups(sites: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """(site, row mask) for each site in sorted order, then (POOLED, all rows)."""
    for site in sorted(np.unique(sites)):
        yield site, sites == site
    yield POOLED, np.ones(len(sites), dtype=bool)


def validate_predictions(predictions: pd.DataFrame) -> pd.DataFrame:
    """A copy of the table with ``method`` filled in, or a ValueError naming the problem."""
    if not isinstance(predictions, pd.DataFrame):
        raise ValueError(f"predictions must be a pandas DataFrame; got {type(predictions).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in predictions.columns]
    if missing:
        raise ValueError(f"prediction table lacks required columns {missing}; it has {list(predictions.columns)}")
    if predictions.empty:
        raise ValueError("prediction table has no rows")
    table = predictions.reset_index(drop=True).copy()
    if "method" not in table.columns:
        table["method"] = DEFAULT_METHOD
    for column in (*REQUIRED_COLUMNS, "method"):
        if table[column].isna().any():
            raise ValueError(f"column {column!r} has {int(table[column].isna().sum())} missing values")
        table[column] = table[column].astype(str)
    if (table["site"] == POOLED).any():
        raise ValueError(f"site name {POOLED!r} is reserved for the pooled aggregate; rename that site")
    duplicated = table.duplicated(["method", "case_id"])
    if duplicated.any():
        example = table.loc[duplicated, ["method", "case_id"]].iloc[0].tolist()
        raise ValueError(f"{int(duplicated.sum())} duplicate (method, case_id) rows, e.g. {example}")
    seg_columns = [c for c in CASE_COLUMNS if c in table.columns]
    if seg_columns and LESION_COLUMN not in table.columns:
        raise ValueError(
            f"segmentation columns {seg_columns} need the {LESION_COLUMN!r} column (reference mask non-empty)"
        )
    if not seg_columns and not any(str(c).startswith("prob_") for c in table.columns):
        raise ValueError(
            "nothing to evaluate: the table has neither prob_<class> columns nor segmentation columns "
            f"{list(CASE_COLUMNS)}"
        )
    if LESION_COLUMN in table.columns:
        lesion = table[LESION_COLUMN]
        if lesion.isna().any() or not lesion.isin([True, False, 0, 1]).all():
            raise ValueError(f"column {LESION_COLUMN!r} must be boolean without missing values")
        table[LESION_COLUMN] = lesion.astype(bool)
    return table


def case_arrays(table: pd.DataFrame, prob_columns: Sequence[str], names: Sequence[str], ece_bins: int) -> CaseArrays:
    """The arrays the metrics read, from a validated table."""
    probs = class_probabilities(table, prob_columns) if prob_columns else None
    return CaseArrays(
        patients=table["patient_id"].to_numpy(),
        labels=class_labels(table, probs.shape[1], names) if probs is not None else None,
        probs=probs,
        lesion_present=table[LESION_COLUMN].to_numpy(bool) if LESION_COLUMN in table.columns else None,
        values={c: pd.to_numeric(table[c], errors="raise").to_numpy(float) for c in CASE_COLUMNS if c in table.columns},
        ece_bins=ece_bins,
    )


def group_aggregates(
    cases: CaseArrays, metrics: Sequence[Metric], n_resamples: int, seed: int, ci_level: float
) -> dict[str, dict[str, Any]]:
    """Each metric's value, interval and support on one group of cases."""
    statistics = {m.name: (lambda w, m=m: m.compute(cases, w)) for m in metrics}
    intervals = bootstrap(statistics, cases.patients, n_resamples=n_resamples, seed=seed, level=ci_level)
    out = {}
    for m in metrics:
        support = m.support(cases)
        interval = intervals[m.name]
        out[m.name] = {
            "value": interval.value,
            "ci": [interval.lo, interval.hi],
            "n": int(support.sum()),
            "n_patients": int(len(np.unique(cases.patients[support]))),
            "n_degenerate": interval.n_degenerate,
        }
    return out


def worst_sites(per_site: dict[str, dict[str, dict[str, Any]]], metrics: Sequence[Metric]) -> dict[str, dict[str, Any]]:
    """Per metric, the site (not the pooled group) with the worst defined value."""
    out = {}
    for m in metrics:
        candidates = [
            (site, entries[m.name])
            for site, entries in per_site.items()
            if site != POOLED and m.name in entries and np.isfinite(entries[m.name]["value"])
        ]
        if not candidates:
            continue
        pick = min if m.higher_is_better else max
        site, entry = pick(candidates, key=lambda item: item[1]["value"])
        out[m.name] = {"site": site, "value": entry["value"], "ci": list(entry["ci"])}
    return out


def compare_methods(
    predictions: pd.DataFrame, method_a: str, method_b: str, *, classes: Sequence[str] | None = None
) -> pd.DataFrame:
    """DeLong's test of the positive-class AUC of two methods, per site and pooled.

    Both methods must have predictions for the same cases (a paired test); unlabelled
    cases are left out. Sites with
    fewer than two positive or negative cases get NaN. Cases are taken as independent
    (see :mod:`senolab.evaluation.delong`).
    """
    table = validate_predictions(predictions)
    columns = probability_columns(table, classes)
    if not columns:
        raise ValueError("compare_methods needs prob_<class> columns")
    names = class_names(columns)
    sides = {}
    for method in (method_a, method_b):
        part = table[table["method"] == method].set_index("case_id")
        if part.empty:
            raise ValueError(f"no predictions for method {method!r}; methods: {sorted(table['method'].unique())}")
        sides[method] = part
    a, b = sides[method_a], sides[method_b]
    if set(a.index) != set(b.index):
        raise ValueError(
            f"methods {method_a!r} and {method_b!r} must cover the same cases for a paired test; "
            f"{len(set(a.index) ^ set(b.index))} cases differ"
        )
    b = b.loc[a.index]
    labels = class_labels(a.reset_index(), len(names), names)
    labelled = labels != UNLABELLED
    a, b = a[labelled], b[labelled]
    positive = len(names) - 1
    labels = (labels[labelled] == positive).astype(int)
    score_a = class_probabilities(a.reset_index(), columns)[:, positive]
    score_b = class_probabilities(b.reset_index(), columns)[:, positive]
    rows = []
    for site, rows_mask in site_groups(a["site"].to_numpy()):
        y = labels[rows_mask]
        row = {"site": site, "n_cases": int(rows_mask.sum()), "n_positive": int(y.sum())}
        if min(y.sum(), len(y) - y.sum()) >= 2:
            result = delong_test(y, score_a[rows_mask], score_b[rows_mask])
            row.update(auc_a=result.auc_a, auc_b=result.auc_b, difference=result.difference, z=result.z, p=result.p)
        else:
            row.update(auc_a=np.nan, auc_b=np.nan, difference=np.nan, z=np.nan, p=np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def json_safe(obj: Any) -> Any:
    """A copy made of dict/list/str/int/float/bool/None only; NaN and infinities -> None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, str):
        return obj
    raise TypeError(f"cannot write a {type(obj).__name__} to summary.json: {obj!r}")


def load_summary(path: str | Path) -> dict[str, Any]:
    """Read a ``summary.json`` (a file or the run directory holding it), checking its shape."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no summary.json there") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    missing = [k for k in SUMMARY_KEYS if k not in summary] if isinstance(summary, dict) else list(SUMMARY_KEYS)
    if missing:
        raise ValueError(f"{path}: not a senolab summary, missing keys {missing}")
    for method, per_site in summary["aggregates"].items():
        if not isinstance(per_site, dict) or WORST not in per_site:
            raise ValueError(f"{path}: aggregates[{method!r}] lacks {WORST!r}")
    return summary
