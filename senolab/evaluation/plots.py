"""Figures of an evaluation, written as PNG files: ROC curves per site, reliability diagram.

Drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas), so they never touch pyplot's
global state or need a display.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from senolab.evaluation.classification import (
    DEFAULT_ECE_BINS,
    UNLABELLED,
    class_labels,
    class_names,
    class_probabilities,
    probability_columns,
    reliability_table,
    weighted_auc,
    weighted_ece,
)
from senolab.evaluation.report import POOLED, site_groups, validate_predictions


def _one_method(predictions: pd.DataFrame, method: str | None, classes: Sequence[str] | None):
    """(labelled cases of one method, their labels, probs, class names), validated."""
    table = validate_predictions(predictions)
    methods = sorted(table["method"].unique())
    if method is None and len(methods) > 1:
        raise ValueError(f"the table holds several methods {methods}: name one with method=")
    if method is not None:
        if method not in methods:
            raise ValueError(f"no predictions for method {method!r}; methods: {methods}")
        table = table[table["method"] == method].reset_index(drop=True)
    columns = probability_columns(table, classes)
    if not columns:
        raise ValueError("plots of classification need prob_<class> columns")
    names = class_names(columns)
    probs = class_probabilities(table, columns)
    labels = class_labels(table, probs.shape[1], names)
    labelled = labels != UNLABELLED
    return table[labelled].reset_index(drop=True), labels[labelled], probs[labelled], names


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_roc_by_site(
    predictions: pd.DataFrame, path: str | Path, *, method: str | None = None, classes: Sequence[str] | None = None
) -> Path:
    """ROC curves of the positive (last) class against the rest, one per site plus pooled."""
    table, labels, probs, names = _one_method(predictions, method, classes)
    positive = labels == len(names) - 1
    score = probs[:, -1]
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls=":")
    for site, rows in site_groups(table["site"].to_numpy()):
        if positive[rows].all() or not positive[rows].any():
            ax.plot([], [], label=f"{site}: one class only, no ROC")
            continue
        fpr, tpr, _ = roc_curve(positive[rows], score[rows])
        auc = weighted_auc(score[rows], positive[rows], np.ones((1, rows.sum())))[0]
        style = {"color": "black", "ls": "--"} if site == POOLED else {}
        ax.plot(fpr, tpr, lw=1.5, label=f"{site}: AUC {auc:.3f} (n={rows.sum()})", **style)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC, {names[-1]} vs rest" + (f" ({method})" if method else ""))
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_reliability(
    predictions: pd.DataFrame,
    path: str | Path,
    *,
    method: str | None = None,
    classes: Sequence[str] | None = None,
    n_bins: int = DEFAULT_ECE_BINS,
) -> Path:
    """Reliability diagram of the top-label confidence (bars: all sites; lines: per site).

    Bars show the accuracy in each equal-width confidence bin against the diagonal of
    perfect calibration; the lower panel shows how many cases fall in each bin. The
    title gives the ECE of :mod:`senolab.evaluation.classification`.
    """
    table, labels, probs, _ = _one_method(predictions, method, classes)
    pooled = reliability_table(labels, probs, n_bins)
    ece = weighted_ece(labels, probs, n_bins, np.ones((1, len(labels))))[0]
    fig = Figure(figsize=(5, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / n_bins
    centres = pooled["lo"] + width / 2
    top.bar(centres, pooled["accuracy"].fillna(0), width=width, edgecolor="black", color="tab:blue",
            alpha=0.6, label="all sites")
    top.plot([0, 1], [0, 1], color="0.4", ls=":", lw=1, label="perfect calibration")
    for site, rows in site_groups(table["site"].to_numpy()):
        if site == POOLED:
            continue  # the bars show all sites together
        per_site = reliability_table(labels[rows], probs[rows], n_bins)
        filled = per_site["count"] > 0
        top.plot(per_site.loc[filled, "confidence"], per_site.loc[filled, "accuracy"], marker="o", ms=3, lw=1,
                 label=site)
    title = f"Reliability (top label), ECE {ece:.3f}" + (f" ({method})" if method else "")
    top.set(ylabel="accuracy", ylim=(0, 1), title=title)
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(centres, pooled["count"], width=width, edgecolor="black", color="0.6")
    bottom.set(xlabel="confidence", ylabel="cases", xlim=(0, 1))
    return _save(fig, path)


# Panels of a training history: the column prefix each panel draws, and its axis label.
HISTORY_PANELS = (("loss_", "training loss"), ("val_", "validation metric"), ("weight_", "task weight"))
# Human names of the heads' and methods' history columns; others are shown as they are.
TASK_NAMES = {"cls": "classification", "seg": "segmentation", "box": "box", "auc": "AUC", "dice": "Dice",
              "score": "mean of AUC and Dice"}


def plot_training_curves(history: pd.DataFrame, path: str | Path, *, title: str = "",
                         selected_epoch: int | None = None) -> Path:
    """Per epoch: the training loss of each task, the validation metrics and the task weights
    of a run's ``history.csv`` (one panel each, for the columns present).

    Epochs are drawn counting from 1; ``selected_epoch`` (0-based, as ``history.csv`` and
    ``best_epoch`` count) is marked in every panel.
    """
    panels = [(prefix, label) for prefix, label in HISTORY_PANELS if any(c.startswith(prefix) for c in history)]
    if history.empty or not panels:
        raise ValueError("plot_training_curves: the history holds no epoch or no loss/val_/weight_ column")
    epochs = history["epoch"].to_numpy() + 1
    fig = Figure(figsize=(4.2 * len(panels), 3.4), layout="constrained")
    for ax, (prefix, label) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for column in [c for c in history if c.startswith(prefix)]:
            name = column.removeprefix(prefix)
            # markers: a one-epoch run still shows its single point
            ax.plot(epochs, history[column], marker="o", ms=3, lw=1.2, label=TASK_NAMES.get(name, name))
        if selected_epoch is not None:
            ax.axvline(selected_epoch + 1, color="0.5", ls=":", lw=1, label="selected epoch")
        # whole epochs only, and room around them (a one-epoch run otherwise gets ticks at 0.96...1.04)
        ax.set(xlabel="epoch", ylabel=label, xlim=(0.5, epochs.max() + 0.5))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
