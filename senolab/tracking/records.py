"""What a run directory records for MLflow: one parent run per command (a study, a
training run, an ablation, the main job), one child run per unit of work in it.

A unit is ``<target>/<method>/seed<k>`` in a study, ``<method>`` elsewhere. The records
are plain data (JSON in the run directory's ``runs.json``), so a run can be replayed into
any MLflow server later, with the same metric points, times and files:

- a record's ``metrics`` are final values; ``history`` names a ``history.csv`` of the run
  folder whose rows (one per epoch, with ``time_ms``) become step-numbered metric points;
- ``start_ms`` and ``end_ms`` are the real start and end of the work;
- every metric ``{"value": v, "ci": [lo, hi], ...}`` becomes ``<metric>``,
  ``<metric>_ci_lo`` and ``<metric>_ci_hi``.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

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
    ``name``, the key of its ``parent`` run (None for the command's own run), params,
    final metrics, tags, artifacts, the run folder's per-epoch ``history`` (a relative
    path, or None) and its start and end times (ms since the epoch; end None while it runs)."""

    key: str
    name: str
    parent: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)
    history: str | None = None
    start_ms: int | None = None
    end_ms: int | None = None
    datasets: list[dict] = field(default_factory=list)  # see tracking.provenance.part_datasets

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunRecord":
        fields = {**data, "artifacts": [Artifact(**a) for a in data.get("artifacts", [])]}
        return cls(**fields)


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


def unit_metrics(aggregates: Mapping[str, Any], target: str | None) -> dict[str, float]:
    """A unit's metrics from its aggregates ``{site: {metric: entry}, "all": ..., "worst_site": ...}``:
    the target site's (or, without one, the pooled) metrics plain, every site's as
    ``<site>.<metric>``, and the worst site's as ``worst_site.<metric>``."""
    main = aggregates.get(target) if target is not None else aggregates.get(POOLED, {})
    metrics = metric_values(main or {})
    for site, entries in aggregates.items():
        if site not in (POOLED, WORST):
            metrics.update(metric_values(entries, f"{slug(site)}."))
    metrics.update(metric_values(aggregates.get(WORST, {}), WORST_PREFIX))
    return metrics


def unit_display_name(unit: str) -> str:
    """``site_c/erm/seed0`` -> ``erm -> site_c (seed 0)``: how MLflow's run list names it."""
    parts = unit.split("/")
    if len(parts) == 1:
        return unit
    target, method, *rest = parts
    seed = f" ({rest[0].replace('seed', 'seed ')})" if rest else ""
    return f"{method} -> {target}{seed}"


# History columns that are bookkeeping, not metrics to chart
HISTORY_BOOKKEEPING = ("epoch", "time_ms")


def epoch_metrics(row: Mapping[str, Any]) -> tuple[int, int, dict[str, float]]:
    """One history row as MLflow logs it: (step, timestamp in ms, metrics). Live logging
    and a later replay of history.csv both go through here, so they give the same points."""
    metrics: dict[str, float] = {}
    for name, value in row.items():
        if name not in HISTORY_BOOKKEEPING:
            _put(metrics, str(name), value)
    return int(row["epoch"]), int(row["time_ms"]), metrics
