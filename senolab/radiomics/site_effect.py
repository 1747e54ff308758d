"""How much features differ between sites: a per-feature table and a figure.

Used to show a site effect before and after harmonisation, and by
``senolab radiomics describe`` to list the features that shift most between sites.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def site_effect(X: pd.DataFrame, sites: Sequence) -> pd.DataFrame:
    """Per feature (rows, sorted by ``kruskal_h`` descending):

    ``kruskal_h`` / ``kruskal_p``: Kruskal-Wallis test across sites (rank based, robust to
    pyradiomics' heavy-tailed features); ``anova_f`` / ``anova_p``: one-way ANOVA;
    ``max_shift``: the largest distance of a site's median from the pooled median, in
    pooled standard deviations. Missing values are left out feature by feature; a feature
    that is constant gets NaN statistics.
    """
    sites = np.asarray([str(s) for s in sites])
    if len(sites) != len(X):
        raise ValueError(f"site_effect: {len(sites)} sites for {len(X)} rows")
    names = sorted(set(sites))
    if len(names) < 2:
        raise ValueError(f"site_effect: needs at least two sites, got {names}")
    rows = {column: _feature_effect(X[column].to_numpy(np.float64), sites, names) for column in X.columns}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "feature"
    return table.sort_values("kruskal_h", ascending=False, na_position="last")


def site_effect_before_after(before: pd.DataFrame, after: pd.DataFrame, sites: Sequence) -> pd.DataFrame:
    """:func:`site_effect` of the same features before and after harmonisation, side by side."""
    common = [c for c in before.columns if c in after.columns]
    table = site_effect(before[common], sites).add_suffix("_before")
    table = table.join(site_effect(after[common], sites).add_suffix("_after"))
    return table.sort_values("kruskal_h_before", ascending=False, na_position="last")


def site_medians(X: pd.DataFrame, sites: Sequence) -> pd.DataFrame:
    """Per site (columns) the median of each feature (rows) in pooled standard deviations
    from the pooled median: how far each site sits from the others."""
    z = (X - X.median()) / X.std().replace(0, np.nan)
    return z.groupby(np.asarray([str(s) for s in sites])).median().T


def site_effect_figure(
    panels: dict[str, pd.DataFrame], sites: Sequence, path: str | Path, features: Sequence[str], title: str = ""
) -> Path:
    """One row of per-site box plots per panel (e.g. ``{"before": X, "after": X_combat}``)
    for ``features``, each feature z-scored over all sites within its panel."""
    import matplotlib
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sites = np.asarray([str(s) for s in sites])
    names = sorted(set(sites))
    fig = Figure(figsize=(max(6.0, 1.6 * len(features)), 3.2 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    colours = matplotlib.colormaps["tab10"].colors
    width = 0.8 / len(names)
    for ax, (panel, X) in zip(axes[:, 0], panels.items()):
        effect = site_effect(X[list(features)], sites)
        for i, site in enumerate(names):
            data = [_zscore(X[f].to_numpy(np.float64))[sites == site] for f in features]
            data = [d[np.isfinite(d)] for d in data]
            positions = np.arange(len(features)) + (i - (len(names) - 1) / 2) * width
            parts = ax.boxplot(data, positions=positions, widths=width * 0.9, patch_artist=True, showfliers=False)
            for box in parts["boxes"]:
                box.set_facecolor(colours[i % len(colours)])
            ax.plot([], [], "s", color=colours[i % len(colours)], label=site)
        labels = [f"{_short(f)}\nH={effect.loc[f, 'kruskal_h']:.0f}" for f in features]
        ax.set_xticks(np.arange(len(features)), labels, fontsize=7)
        ax.set_ylabel("z (all sites)")
        overall = site_effect(X, sites)["kruskal_h"].median()
        ax.set_title(f"{panel}: median Kruskal-Wallis H over all features = {overall:.1f}", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _feature_effect(values: np.ndarray, sites: np.ndarray, names: list[str]) -> dict[str, float]:
    groups = [values[(sites == s) & np.isfinite(values)] for s in names]
    nan = {"kruskal_h": np.nan, "kruskal_p": np.nan, "anova_f": np.nan, "anova_p": np.nan, "max_shift": np.nan}
    pooled = np.concatenate(groups)
    if any(len(g) < 2 for g in groups) or np.ptp(pooled) == 0:
        return nan
    h, p_h = stats.kruskal(*groups)
    f, p_f = stats.f_oneway(*groups)
    shift = max(abs(np.median(g) - np.median(pooled)) for g in groups) / pooled.std()
    return {"kruskal_h": float(h), "kruskal_p": float(p_h), "anova_f": float(f), "anova_p": float(p_f),
            "max_shift": float(shift)}


def _zscore(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    std = finite.std() if len(finite) else 0.0
    return (values - (finite.mean() if len(finite) else 0.0)) / (std if std > 0 else 1.0)


def _short(feature: str) -> str:
    # "original_glcm_ClusterShade" -> "glcm\nClusterShade": readable tick labels.
    parts = feature.split("_", 2)
    return "\n".join(parts[1:]) if len(parts) == 3 else feature
