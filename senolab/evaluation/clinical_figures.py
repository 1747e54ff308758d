"""Figures of the clinical evaluation, one panel per target site (or per corruption):
reliability of the malignancy score before and after temperature scaling, decision
curves, the local-recalibration curve and the stress-test curves.

Each takes a tidy table (one row per point) and draws on a bare ``Figure`` (no pyplot).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

PANEL = 3.6  # inches per panel


def _panels(n: int, height: float = PANEL, columns: int = 4) -> tuple[Figure, list]:
    cols = min(n, columns)
    rows = -(-n // cols)
    fig = Figure(figsize=(PANEL * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_score_reliability(points: pd.DataFrame, path: str | Path, n_bins: int) -> Path:
    """``points``: ``target, method, version ('as trained' / 'temperature-scaled'),
    mean_score, observed, count`` per bin. One panel per target, a line per method and version."""
    targets = sorted(points["target"].unique())
    fig, axes = _panels(len(targets))
    styles = {"as trained": "-", "temperature-scaled": "--"}
    for ax, target in zip(axes, targets):
        ax.plot([0, 1], [0, 1], color="0.6", ls=":", lw=1, label="perfect calibration")
        for i, (method, rows) in enumerate(points[points["target"] == target].groupby("method", sort=False)):
            for version, line in rows.groupby("version", sort=False):
                line = line[line["count"] > 0]
                ax.plot(line["mean_score"], line["observed"], marker="o", ms=3, lw=1.2, ls=styles.get(version, "-"),
                        color=f"C{i}", label=f"{method} ({version})")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean malignancy score (bin)", ylabel="observed malignant fraction",
               title=f"target {target}: reliability, {n_bins} bins")
        ax.legend(fontsize="x-small")
    return _save(fig, path)


def plot_decision_curves(curves: pd.DataFrame, path: str | Path) -> Path:
    """``curves``: ``target, method, threshold, model, treat_all, treat_none``. One panel
    per target: net benefit of each method, of treating all and of treating none."""
    targets = sorted(curves["target"].unique())
    fig, axes = _panels(len(targets))
    for ax, target in zip(axes, targets):
        rows = curves[curves["target"] == target]
        reference = rows.drop_duplicates("threshold")
        ax.plot(reference["threshold"], reference["treat_all"], color="0.4", lw=1, label="treat all")
        ax.plot(reference["threshold"], reference["treat_none"], color="0.7", lw=1, ls="--", label="treat none")
        for i, (method, line) in enumerate(rows.groupby("method", sort=False)):
            ax.plot(line["threshold"], line["model"], color=f"C{i}", lw=1.5, label=method)
        top = max(0.05, float(np.nanmax(rows[["model", "treat_all"]].to_numpy())) * 1.1)
        ax.set(xlim=(0, 1), ylim=(-0.05, top), xlabel="threshold probability", ylabel="net benefit",
               title=f"target {target}: decision curve")
        ax.legend(fontsize="x-small")
    return _save(fig, path)


def plot_recalibration(frame: pd.DataFrame, path: str | Path, rule: str = "sens90") -> Path:
    """Specificity (and sensitivity) at the ``rule`` threshold re-set on k labelled target
    cases, against k, per target; the source threshold at k = 0 and the oracle as a line."""
    frame = frame[frame["rule"] == rule]
    targets = sorted(frame["target_site"].unique())
    fig, axes = _panels(len(targets))
    for ax, target in zip(axes, targets):
        for i, (method, rows) in enumerate(frame[frame["target_site"] == target].groupby("method", sort=False)):
            rows = rows.sort_values("uses_target_labels")
            k = np.r_[0, rows["uses_target_labels"].to_numpy()]
            spec = np.r_[rows["source_specificity"].iloc[0], rows["specificity"].to_numpy()]
            ax.plot(k, spec, marker="o", color=f"C{i}", label=f"{method} specificity")
            ax.fill_between(rows["uses_target_labels"], rows["specificity_lo"], rows["specificity_hi"],
                            color=f"C{i}", alpha=0.12)
            sens = np.r_[rows["source_sensitivity"].iloc[0], rows["sensitivity"].to_numpy()]
            ax.plot(k, sens, marker="^", ls=":", color=f"C{i}", label=f"{method} sensitivity")
            ax.axhline(rows["oracle_specificity"].iloc[0], color=f"C{i}", lw=0.8, ls="--",
                       label=f"{method} oracle specificity")
        ax.set(xlabel="k labelled target cases (0: source threshold)", ylabel="on the other target cases",
               ylim=(0, 1.02), title=f"target {target}: threshold re-set ({rule})")
        ax.legend(fontsize="x-small")
    return _save(fig, path)


def plot_stress(table: pd.DataFrame, path: str | Path, metrics: tuple[str, ...] = ("auc", "dice")) -> Path:
    """``table``: ``model, corruption, severity (0 = clean), <metric>, <metric>_lo, <metric>_hi``.
    One column per corruption, one row per metric present; a line (with its CI band) per model."""
    metrics = tuple(m for m in metrics if m in table.columns and table[m].notna().any())
    corruptions = [c for c in table["corruption"].unique() if c != "clean"]
    clean = table[table["corruption"] == "clean"]
    fig = Figure(figsize=(2.6 * len(corruptions), 2.6 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), len(corruptions), squeeze=False, sharey="row")
    for j, corruption in enumerate(corruptions):
        rows = pd.concat([clean.assign(corruption=corruption), table[table["corruption"] == corruption]])
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            for c, (model, line) in enumerate(rows.groupby("model", sort=False)):
                line = line.sort_values("severity")
                ax.plot(line["severity"], line[metric], marker="o", ms=3, color=f"C{c}", label=model)
                ax.fill_between(line["severity"], line[f"{metric}_lo"], line[f"{metric}_hi"], color=f"C{c}",
                                alpha=0.12)
            ax.set(xticks=range(6), xlabel="severity" if i == len(metrics) - 1 else None,
                   ylabel=metric.upper() if metric == "auc" else metric.capitalize(),
                   title=corruption if i == 0 else None)
    axes[0, 0].legend(fontsize="x-small")
    return _save(fig, path)


def plot_corruption_examples(image: np.ndarray, examples: dict[str, list[np.ndarray]], path: str | Path) -> Path:
    """One row per corruption: the clean image, then severities 1..5."""
    fig = Figure(figsize=(1.6 * 6, 1.6 * len(examples)), layout="constrained")
    axes = fig.subplots(len(examples), 6, squeeze=False)
    for i, (name, images) in enumerate(examples.items()):
        for j, picture in enumerate([image, *images]):
            ax = axes[i, j]
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("clean" if j == 0 else f"severity {j}", fontsize=8)
        axes[i, 0].set_ylabel(name, fontsize=8)
    return _save(fig, path)
