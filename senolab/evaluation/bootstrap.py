"""Patient-level (cluster) bootstrap confidence intervals, percentile method.

Images of one patient are correlated, so resampling images would understate the
uncertainty. Each resample draws as many patients as the group has, with replacement,
and takes all images of every drawn patient, as often as the patient was drawn (Field &
Welsh 2007, "Bootstrapping clustered data", JRSS-B 69:369; Efron & Tibshirani 1993,
ch. 13, percentile intervals). A resample is a row of case weights (the patient's draw
count), which every metric of :mod:`senolab.evaluation.metrics` accepts directly.

Resamples on which a metric is undefined (an AUC drawn with one class only, a Dice
drawn without any lesion) are skipped for that metric and counted in
``Interval.n_degenerate``. The draws depend only on the seed and the sorted patient ids,
so two methods evaluated on the same patients see the same resamples.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_CI_LEVEL = 0.95
# Resamples are weighted in chunks so that one chunk's (B, n) weights stay near this size.
CHUNK_CELLS = 2_000_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with its percentile interval (NaN when undefined)."""

    value: float
    lo: float
    hi: float
    n_degenerate: int  # resamples skipped because the metric was undefined on them


def patient_codes(patients: np.ndarray) -> tuple[np.ndarray, int]:
    """Each case's patient as an index into the sorted distinct patient ids."""
    ids, codes = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    return codes, len(ids)


def resample_counts(n_patients: int, n_resamples: int, seed: int) -> np.ndarray:
    """(B, P) draw counts: each row draws P patients uniformly with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n_resamples)


def percentile_interval(samples: np.ndarray, level: float = DEFAULT_CI_LEVEL) -> tuple[float, float, int]:
    """(lo, hi, n_degenerate) from bootstrap samples; NaN samples are skipped and counted."""
    finite = samples[np.isfinite(samples)]
    skipped = int(samples.size - finite.size)
    if finite.size == 0:
        return float("nan"), float("nan"), skipped
    tail = 100.0 * (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [tail, 100.0 - tail])
    return float(lo), float(hi), skipped


def bootstrap(
    statistics: Mapping[str, Callable[[np.ndarray], np.ndarray]],
    patients: np.ndarray,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_CI_LEVEL,
) -> dict[str, Interval]:
    """Point estimates and patient-bootstrap intervals of several statistics at once.

    Each statistic maps (B, n) case weights to (B,) values (NaN when undefined). All
    statistics see the same resamples. ``n_resamples=0`` gives point estimates only.
    """
    if n_resamples < 0:
        raise ValueError(f"n_resamples must be >= 0; got {n_resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    codes, n_patients = patient_codes(patients)
    if n_patients == 0:
        raise ValueError("cannot bootstrap an empty group of cases")
    ones = np.ones((1, len(codes)))
    points = {name: float(stat(ones)[0]) for name, stat in statistics.items()}
    samples = {name: np.empty(n_resamples) for name in statistics}
    if n_resamples:
        counts = resample_counts(n_patients, n_resamples, seed)
        chunk = max(1, CHUNK_CELLS // len(codes))
        for start in range(0, n_resamples, chunk):
            weights = counts[start : start + chunk][:, codes].astype(float)
            for name, stat in statistics.items():
                samples[name][start : start + chunk] = stat(weights)
    out = {}
    for name, value in points.items():
        lo, hi, skipped = percentile_interval(samples[name], level) if n_resamples else (np.nan, np.nan, 0)
        out[name] = Interval(value=value, lo=lo, hi=hi, n_degenerate=skipped)
    return out
