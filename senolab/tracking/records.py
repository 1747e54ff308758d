"""What a run directory records for MLflow: one parent run per method, one child per site.

The records are plain data (JSON in the run directory's ``runs.json``), so a study can be
replayed into any MLflow server later. Builders turn a method's evaluation aggregates
(``summary.json`` shape, :mod:`senolab.evaluation.report`) into records:

- parent (method): the pooled metrics (site ``all``), the worst-site metrics as
  ``worst_site.<metric>`` (which site as a tag), params = the flattened config;
- child (site): that site's metrics, tags ``cohort``, ``site``, ``scanner``;
- every metric ``{"value": v, "ci": [lo, hi], ...}`` becomes ``<metric>``,
  ``<metric>_ci_lo`` and ``<metric>_ci_hi``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import pandas as pd

from senolab.evaluation.report import POOLED, WORST

WORST_PREFIX = f"{WORST}."


@dataclass(frozen=True)
class Artifact:
    """A file or folder of the run directory (``path``, relative) and where it goes in
    the MLflow run's artifacts (``folder``, "" for the top level)."""

    path: str
    folder: str = ""


@dataclass
class RunRecord:
    """One MLflow run: its stable ``key`` (the senolab run key it is found by), display
    ``name``, params, metrics, tags and artifacts."""

    key: str
    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunRecord":
        return cls(key=data["key"], name=data["name"], params=dict(data["params"]), metrics=dict(data["metrics"]),
                   tags=dict(data["tags"]), artifacts=[Artifact(**a) for a in data["artifacts"]])


@dataclass
class MethodRecord:
    """A parent run (the method) and its children (one per site)."""

    parent: RunRecord
    children: list[RunRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"parent": self.parent.to_dict(), "children": [c.to_dict() for c in self.children]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MethodRecord":
        return cls(RunRecord.from_dict(data["parent"]), [RunRecord.from_dict(c) for c in data["children"]])

    def keys(self) -> list[str]:
        return [self.parent.key, *(c.key for c in self.children)]


def slug(name: str) -> str:
    """A name made safe for run keys and file names (letters, digits, ``_.-``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)) or "_"


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"model": {"encoder": "unet"}}`` -> ``{"model.encoder": "unet"}``; lists as JSON."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return flat


def metric_values(entries: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten ``{metric: {"value": v, "ci": [lo, hi], ...}}`` (or ``{metric: v}``) to
    ``<metric>``, ``<metric>_ci_lo``, ``<metric>_ci_hi``.

    Case counts and other bookkeeping stay in the summary.json artifact. Missing values
    (None, NaN: a metric undefined at that site) are left out rather than logged as NaN,
    so MLflow's charts and sorting only see defined numbers.
    """
    metrics: dict[str, float] = {}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping):
            _put(metrics, f"{prefix}{name}", entry)
            continue
        _put(metrics, f"{prefix}{name}", entry.get("value"))
        lo, hi = entry.get("ci") or (None, None)
        _put(metrics, f"{prefix}{name}_ci_lo", lo)
        _put(metrics, f"{prefix}{name}_ci_hi", hi)
    return metrics


def _put(metrics: dict[str, float], name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # site names and other text go to tags, not metrics
    if math.isfinite(value):
        metrics[name] = float(value)


def worst_site_tags(worst: Mapping[str, Any]) -> dict[str, str]:
    """``{"auc": {"site": "busi", ...}}`` -> ``{"worst_site.auc": "busi"}``."""
    return {f"{WORST_PREFIX}{name}": str(entry["site"]) for name, entry in worst.items()
            if isinstance(entry, Mapping) and "site" in entry}


def site_tags_from_predictions(predictions: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per site, the ``cohort`` and ``scanner`` values of its cases (comma-joined if several)."""
    if "site" not in predictions.columns:
        raise KeyError(f"predictions need a 'site' column; columns: {list(predictions.columns)}")
    tags: dict[str, dict[str, str]] = {}
    for site, rows in predictions.groupby("site", sort=True):
        tags[str(site)] = {
            column: ",".join(sorted(rows[column].dropna().astype(str).unique()))
            for column in ("cohort", "scanner") if column in rows.columns
        }
    return tags


def method_record(run_id: str, method: str, aggregates: Mapping[str, Any], *, params: Mapping[str, str],
                  tags: Mapping[str, str], site_tags: Mapping[str, Mapping[str, str]],
                  artifacts: Sequence[Artifact] = (),
                  site_artifacts: Mapping[str, Sequence[Artifact]] | None = None,
                  unit: str | None = None) -> MethodRecord:
    """The records of one method from its aggregates ``{site: {metric: entry}, "worst_site": ...}``.

    ``params`` and ``tags`` go to the parent and every child; ``site_tags[site]`` and
    ``site_artifacts[site]`` to that site's child. ``unit`` (default: the method) is what
    the parent stands for, e.g. ``site_c/erm/seed0`` in a study with several targets: it
    makes the key and the run name, so two targets of one method never share a run.
    """
    site_artifacts = site_artifacts or {}
    unit = unit or method
    parent_key = "/".join([run_id, *(slug(part) for part in unit.split("/"))])
    worst = aggregates.get(WORST, {})
    parent = RunRecord(
        key=parent_key, name=unit_display_name(unit), params=dict(params),
        metrics={**metric_values(aggregates.get(POOLED, {})), **metric_values(worst, WORST_PREFIX)},
        tags={**tags, "method": method, **worst_site_tags(worst)},
        artifacts=list(artifacts),
    )
    children = [
        RunRecord(
            key=f"{parent_key}/{slug(site)}", name=f"{unit_display_name(unit)} @ {site}", params=dict(params),
            metrics=metric_values(entries),
            tags={**tags, "method": method, "site": site, **site_tags.get(site, {})},
            artifacts=list(site_artifacts.get(site, [])),
        )
        for site, entries in aggregates.items() if site not in (POOLED, WORST)
    ]
    return MethodRecord(parent, children)


def unit_display_name(unit: str) -> str:
    """``site_c/erm/seed0`` -> ``erm -> site_c (seed 0)``: how MLflow's run list names it."""
    parts = unit.split("/")
    if len(parts) == 1:
        return unit
    target, method, *rest = parts
    seed = f" ({rest[0].replace('seed', 'seed ')})" if rest else ""
    return f"{method} -> {target}{seed}"
