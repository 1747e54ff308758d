"""Figures of explanations: a case grid per cohort and a bar chart of tabular attributions."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
# A bare Figure draws on its own Agg canvas: no pyplot state, so a notebook's inline backend is left alone.
from matplotlib.figure import Figure

from senolab.explain.image import ImageExplanations


# The overlay's colour scale: each case's positive attribution over its own 99th percentile,
# so the colours compare regions within a case, not cases or models.
ATTRIBUTION_SCALE = "positive attribution\n(1 = the case's 99th percentile)"


def case_grid_figure(explanations: ImageExplanations, max_cases: int = 6, title: str = "") -> Figure:
    """One row per case: the image, the image with the lesion outline, the attribution overlay,
    with a colour bar of the overlay's scale (:data:`ATTRIBUTION_SCALE`)."""
    n = min(max_cases, len(explanations.case_id))
    if n == 0:
        raise ValueError("case_grid: no case to draw")
    fig = Figure(figsize=(8.2, 2.5 * n + (0.5 if title else 0)), layout="constrained")
    axes = fig.subplots(n, 3, squeeze=False)
    for row in range(n):
        image = explanations.image[row].mean(0).numpy()
        mask = explanations.mask[row].amax(0).numpy()
        heat = np.clip(explanations.attribution[row].sum(0).numpy(), 0, None)
        scale = np.percentile(heat, 99) or heat.max() or 1.0
        panels = axes[row]
        for ax in panels:
            ax.imshow(image, cmap="gray")
            ax.set_axis_off()
        if mask.any():
            for ax in panels[1:]:
                ax.contour(mask, levels=[0.5], colors="cyan", linewidths=1)
        overlay = panels[2].imshow(np.clip(heat / scale, 0, 1), cmap="inferno", alpha=0.55, vmin=0, vmax=1)
        panels[0].set_title(explanations.case_id[row], fontsize=8)
        panels[1].set_title("lesion", fontsize=8)
        panels[2].set_title("attribution", fontsize=8)
    fig.colorbar(overlay, ax=axes[:, 2], shrink=min(1.0, 2.0 / n), label=ATTRIBUTION_SCALE)
    if title:
        fig.suptitle(title)
    return fig


def case_grid(explanations: ImageExplanations, path: str | Path, max_cases: int = 6, title: str = "") -> Path:
    """:func:`case_grid_figure`, written to ``path``."""
    return _save(case_grid_figure(explanations, max_cases, title), path)


def cohort_case_grids(explanations: ImageExplanations, out_dir: str | Path, prefix: str = "attributions",
                      max_cases: int = 6, method: str = "") -> dict[str, Path]:
    """A :func:`case_grid` per cohort at :func:`case_grid_path`; cohort -> path.

    ``prefix`` names the explainer and ``method`` the trained model (e.g. an adaptation
    method); the title names both and the cohort, so a figure says what it shows when
    seen on its own (in MLflow, say)."""
    return {
        cohort: case_grid(explanations.subset(cohort), case_grid_path(out_dir, prefix, cohort),
                          max_cases=max_cases, title=case_grid_title(prefix, cohort, method))
        for cohort in explanations.cohorts()
    }


def case_grid_path(out_dir: str | Path, prefix: str, cohort: str) -> Path:
    """Where :func:`cohort_case_grids` writes a cohort's grid: ``<out_dir>/<prefix>_<cohort>.png``."""
    return Path(out_dir) / f"{prefix}_{_slug(cohort)}.png"


def case_grid_title(explainer: str, cohort: str, method: str = "") -> str:
    """``gradcam: erm model at site_c``; without a method, ``gradcam: site_c``."""
    return f"{explainer}: {method} model at {cohort}" if method else f"{explainer}: {cohort}"


def mean_abs_by_cohort(attributions: pd.DataFrame, cohorts: list[str]) -> pd.DataFrame:
    """Mean absolute attribution per cohort (rows) and feature group (columns)."""
    if len(cohorts) != len(attributions):
        raise ValueError(f"{len(cohorts)} cohort names for {len(attributions)} cases")
    return attributions.abs().groupby(np.asarray(cohorts)).mean()


def tabular_bar_chart(importance: pd.DataFrame, path: str | Path, top: int = 15) -> Path:
    """Horizontal bars of the ``top`` feature groups, one panel per cohort (row of ``importance``)."""
    if importance.empty:
        raise ValueError("tabular_bar_chart: no attribution to draw")
    n = len(importance)
    fig = Figure(figsize=(4.2 * n, 0.35 * min(top, importance.shape[1]) + 1.5))
    axes = fig.subplots(1, n, squeeze=False)
    for ax, (cohort, row) in zip(axes[0], importance.iterrows()):
        shown = row.sort_values(ascending=True).tail(top)
        ax.barh(shown.index.astype(str), shown.to_numpy(), color="tab:blue")
        ax.set_title(str(cohort))
        ax.set_xlabel("mean |attribution|")
        ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")  # "tight": long titles and labels are not cut off
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "cohort"
