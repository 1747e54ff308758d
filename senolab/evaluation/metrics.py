"""The metric registry and the arrays a metric reads.

Every aggregate metric is a :class:`Metric` registered by name in :data:`METRICS`. A
metric is computed from one group of cases (a method at a site) under a matrix of case
weights ``w`` of shape (B, n): row ``b`` says how many times each case is counted.
The point estimate uses one row of ones; the patient bootstrap uses one row per
resample, where a case's weight is the number of times its patient was drawn (see
:mod:`senolab.evaluation.bootstrap`). Writing every metric once, in weighted form, gives
the point estimate and its bootstrap distribution from the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from senolab.registry import Registry


@dataclass
class CaseArrays:
    """The cases of one group as arrays.

    ``labels`` (n,) int and ``probs`` (n, K) are None when the table has no class
    probabilities; ``values`` holds the per-case segmentation columns (float, NaN when
    not available) and ``lesion_present`` (n,) bool, None without segmentation.
    """

    patients: np.ndarray
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None
    lesion_present: np.ndarray | None = None
    values: dict[str, np.ndarray] = field(default_factory=dict)
    ece_bins: int = 15

    def __len__(self) -> int:
        return len(self.patients)

    @property
    def n_classes(self) -> int:
        return 0 if self.probs is None else self.probs.shape[1]

    def subset(self, rows: np.ndarray) -> "CaseArrays":
        """The cases at ``rows`` (a boolean mask or an index array)."""
        return CaseArrays(
            patients=self.patients[rows],
            labels=None if self.labels is None else self.labels[rows],
            probs=None if self.probs is None else self.probs[rows],
            lesion_present=None if self.lesion_present is None else self.lesion_present[rows],
            values={k: v[rows] for k, v in self.values.items()},
            ece_bins=self.ece_bins,
        )


@dataclass(frozen=True)
class Metric:
    """An aggregate metric.

    ``compute(cases, w)`` returns (B,) values for the (B, n) weights ``w``, NaN where a
    resample is degenerate (e.g. one class only for an AUC). ``support(cases)`` is the
    (n,) mask of the cases that enter the metric (the labelled cases for classification,
    the images with a lesion for Dice). ``applies(cases)`` says whether the metric can be
    computed at all for this table.
    """

    name: str
    kind: str  # "classification" or "segmentation"
    higher_is_better: bool
    compute: Callable[[CaseArrays, np.ndarray], np.ndarray]
    support: Callable[[CaseArrays], np.ndarray]
    applies: Callable[[CaseArrays], bool]
    description: str = ""
    rank: int = 0  # registration order: the column order of results.csv


METRICS: Registry[Metric] = Registry("metric")


def register_metric(
    name: str,
    *,
    kind: str,
    higher_is_better: bool,
    support: Callable[[CaseArrays], np.ndarray],
    applies: Callable[[CaseArrays], bool],
) -> Callable[[Callable], Callable]:
    """Decorator: register ``compute(cases, w) -> (B,)`` as the metric ``name``.

    The function's docstring becomes the metric's description.
    """

    def add(compute: Callable[[CaseArrays, np.ndarray], np.ndarray]):
        METRICS.register(name)(
            Metric(
                name=name,
                kind=kind,
                higher_is_better=higher_is_better,
                compute=compute,
                support=support,
                applies=applies,
                description=(compute.__doc__ or "").strip(),
                rank=len(METRICS),
            )
        )
        return compute

    return add


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is zero (an undefined metric, not an error)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_mean(values: np.ndarray, valid: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) weighted means of ``values`` over the ``valid`` cases; NaN where no weight."""
    return safe_ratio(w @ np.where(valid, values, 0.0), w @ valid.astype(float))


def registered_metrics() -> list[Metric]:
    """Every registered metric, in registration order."""
    return sorted(map(METRICS.get, METRICS.names()), key=lambda m: m.rank)


def metrics_of_kind(kind: str) -> list[Metric]:
    """The registered metrics of one kind, in registration order."""
    return [m for m in registered_metrics() if m.kind == kind]
