"""Numbers as the markdown tables of studies, stress tests and recalibrations print them."""
from __future__ import annotations

import numpy as np


def number_text(value) -> str:
    """``0.781``; ``-`` when missing (None or not finite)."""
    return "-" if value is None or not np.isfinite(value) else f"{value:.3f}"


def interval_text(row: dict, metric: str) -> str:
    """``0.781 [0.606, 0.922]`` from ``row[metric]`` and its ``_lo`` / ``_hi``; ``-`` when missing."""
    value = row.get(metric)
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.3f} [{row[metric + '_lo']:.3f}, {row[metric + '_hi']:.3f}]"
