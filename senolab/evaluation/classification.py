"""Classification metrics from a prediction table's class probabilities.

The table carries one ``prob_<class>`` column per class, in class order, and ``label``:
the index of the true class in that order (``LABELS`` for three classes, (benign,
malignant) for the binary task, as in the batch contract), or NaN for a case without a
class target, which then enters no classification metric. A binary table may instead
carry only the positive class's column (e.g. ``prob_malignant``); the other class's
probability is its complement.

Definitions (all computed under case weights, see :mod:`senolab.evaluation.metrics`):

- predicted class: argmax of the probabilities (binary: positive iff p > 0.5).
- ``auc``: binary, the Mann-Whitney estimate of P(score_pos > score_neg) + 1/2 P(tie)
  (Hanley & McNeil 1982, Radiology 143:29); with K > 2 classes, the unweighted mean of
  the K one-vs-rest AUCs (``roc_auc_score(multi_class="ovr", average="macro")``),
  undefined when a class is absent.
- ``auc_positive`` (K > 2 only): one-vs-rest AUC of the positive class (the last one,
  ``malignant``), the malignancy AUC of a three-class model.
- ``sensitivity`` / ``specificity``: of the positive class (the last) against the rest:
  TP / (TP + FN) and TN / (TN + FP).
- ``accuracy``; ``balanced_accuracy``: mean recall over the classes present in the truth
  (as scikit-learn's ``balanced_accuracy_score``).
- ``f1``: binary, the positive class's F1 = 2TP / (2TP + FP + FN); K > 2, the macro mean
  over the classes present in truth or prediction (scikit-learn's ``average="macro"``).
- ``ece``: top-label expected calibration error with equal-width confidence bins
  (Guo et al. 2017, "On calibration of modern neural networks", ICML; Naeini et al.
  2015): ECE = sum_b (n_b / N) |acc_b - conf_b|, where the confidence is the largest
  class probability, bin b = (b/M, (b+1)/M] (the first bin also holds 0), M = 15 bins
  by default.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from senolab.cohorts.schema import LABELS
from senolab.evaluation.metrics import CaseArrays, metrics_of_kind, register_metric, safe_ratio

KIND = "classification"
PROB_PREFIX = "prob_"
UNLABELLED = -1  # the label index of a case without a classification target
DEFAULT_ECE_BINS = 15
# Softmax outputs sum to one; a looser sum means the columns are not one distribution.
PROB_SUM_TOLERANCE = 1e-3


def probability_columns(table: pd.DataFrame, classes: Sequence[str] | None = None) -> list[str]:
    """The ``prob_*`` columns in class order.

    With ``classes`` given, exactly those columns (an error names the missing ones);
    otherwise every ``prob_*`` column, ordered as in ``LABELS`` when they all are labels,
    else in table order.
    """
    if classes is not None:
        wanted = [PROB_PREFIX + c for c in classes]
        missing = [c for c in wanted if c not in table.columns]
        if missing:
            raise ValueError(f"prediction table lacks probability columns {missing} for classes {list(classes)}")
        return wanted
    found = [c for c in table.columns if str(c).startswith(PROB_PREFIX)]
    names = [c[len(PROB_PREFIX):] for c in found]
    if all(n in LABELS for n in names):
        found = [PROB_PREFIX + n for n in LABELS if n in names]
    return found


def class_names(columns: Sequence[str]) -> list[str]:
    """Class names of the probability columns; a lone column is the positive class."""
    names = [c[len(PROB_PREFIX):] for c in columns]
    return [f"not_{names[0]}", names[0]] if len(names) == 1 else names


def _case_name(table: pd.DataFrame, row: int) -> str:
    return str(table["case_id"].iloc[row]) if "case_id" in table.columns else f"row {row}"


def class_probabilities(table: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """(n, K) probabilities from the given columns, validated; K >= 2."""
    probs = table[list(columns)].to_numpy(dtype=float)
    bad = ~np.isfinite(probs) | (probs < 0) | (probs > 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{columns[col]} must be a probability in [0, 1]; case "
            f"{_case_name(table, row)} has {probs[row, col]}"
        )
    if probs.shape[1] == 1:
        return np.column_stack([1.0 - probs[:, 0], probs[:, 0]])
    off = np.abs(probs.sum(axis=1) - 1.0) > PROB_SUM_TOLERANCE
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"probability columns {list(columns)} must sum to 1 per case (softmax outputs); "
            f"case {_case_name(table, row)} sums to {probs[row].sum():.4f}"
        )
    return probs


def class_labels(table: pd.DataFrame, n_classes: int, names: Sequence[str]) -> np.ndarray:
    """(n,) int labels from the ``label`` column, checked to index ``names``.

    A missing label (NaN: an unlabelled image, or one outside the task's classes) becomes
    :data:`UNLABELLED`; such cases enter no classification metric but still count for
    segmentation.
    """
    if "label" not in table.columns:
        raise ValueError("prediction table has probability columns but no 'label' column")
    raw = table["label"]
    if not pd.api.types.is_numeric_dtype(raw):
        raise ValueError(
            f"'label' must hold integer class indices into {list(names)} (NaN when unlabelled); got dtype {raw.dtype}"
        )
    values = raw.to_numpy(dtype=float)
    known = ~np.isnan(values)
    outside = known & ((values != np.round(values)) | (values < 0) | (values >= n_classes))
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise ValueError(
            f"'label' must be an integer in 0..{n_classes - 1} (indices into {list(names)}) or NaN; "
            f"case {_case_name(table, row)} has {values[row]}"
        )
    return np.where(known, values, UNLABELLED).astype(int)


def predicted_classes(probs: np.ndarray) -> np.ndarray:
    return np.argmax(probs, axis=1)


# --------------------------------------------------------------------------- kernels


def weighted_auc(score: np.ndarray, positive: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(B,) Mann-Whitney AUCs of ``score`` for the ``positive`` cases under weights ``w``.

    AUC = sum_{i pos, j neg} w_i w_j [s_i > s_j + 1/2 (s_i = s_j)] / (W_pos W_neg). With
    integer weights this equals the AUC of the sample in which case i appears w_i times.
    Ties are grouped once after sorting, so each row costs O(n). NaN when a row has no
    positive or no negative weight.
    """
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    pos = positive[order]
    wp = np.add.reduceat(w[:, order] * pos, starts, axis=1)
    wn = np.add.reduceat(w[:, order] * ~pos, starts, axis=1)
    below = np.cumsum(wn, axis=1) - wn
    return safe_ratio((wp * (below + 0.5 * wn)).sum(axis=1), wp.sum(axis=1) * wn.sum(axis=1))


def weighted_confusion(labels: np.ndarray, pred: np.ndarray, n_classes: int, w: np.ndarray) -> np.ndarray:
    """(B, K, K) weighted confusion matrices; [b, true, predicted]."""
    onehot = np.zeros((len(labels), n_classes * n_classes))
    onehot[np.arange(len(labels)), labels * n_classes + pred] = 1.0
    return (w @ onehot).reshape(-1, n_classes, n_classes)


def confidence_bins(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin index of each confidence: bin b holds (b/M, (b+1)/M], bin 0 also 0."""
    return np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)


def binned_gap_ece(predicted: np.ndarray, gap: np.ndarray, n_bins: int, w: np.ndarray) -> np.ndarray:
    """(B,) sum_b |sum_{i in b} w_i gap_i| / sum_i w_i over equal-width bins of ``predicted``:
    the ECE of any predicted probability against its outcome (gap = outcome - predicted)."""
    onehot = np.zeros((len(predicted), n_bins))
    onehot[np.arange(len(predicted)), confidence_bins(predicted, n_bins)] = gap
    return safe_ratio(np.abs(w @ onehot).sum(axis=1), w.sum(axis=1))


def binned_means(predicted: np.ndarray, n_bins: int, **values: np.ndarray) -> pd.DataFrame:
    """Per equal-width bin of ``predicted``: its edges, case count and the mean of each of
    ``values`` (by name, in order; NaN where a bin is empty): a reliability table."""
    bins = confidence_bins(predicted, n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    means = {name: safe_ratio(np.bincount(bins, weights=v, minlength=n_bins), counts) for name, v in values.items()}
    return pd.DataFrame({"lo": edges[:-1], "hi": edges[1:], "count": counts, **means})


def weighted_ece(labels: np.ndarray, probs: np.ndarray, n_bins: int, w: np.ndarray) -> np.ndarray:
    """(B,) top-label ECE: sum_b |sum_{i in b} w_i (correct_i - conf_i)| / sum_i w_i."""
    confidence = probs.max(axis=1)
    return binned_gap_ece(confidence, (predicted_classes(probs) == labels).astype(float) - confidence, n_bins, w)


def reliability_table(labels: np.ndarray, probs: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> pd.DataFrame:
    """Per confidence bin: its edges, case count, mean confidence and accuracy (NaN if empty)."""
    confidence = probs.max(axis=1)
    return binned_means(confidence, n_bins, confidence=confidence,
                        accuracy=(predicted_classes(probs) == labels).astype(float))


# --------------------------------------------------------------------------- metrics


def _labelled(cases: CaseArrays) -> np.ndarray:
    return cases.labels != UNLABELLED


def _has_labels(cases: CaseArrays) -> bool:
    return cases.probs is not None and bool(_labelled(cases).any())


def _has_three_or_more(cases: CaseArrays) -> bool:
    return _has_labels(cases) and cases.n_classes > 2


def _classification_metric(name: str, *, higher_is_better: bool, applies=_has_labels):
    """Register ``compute`` as a metric of the labelled cases only (the others have no target)."""

    def add(compute):
        def on_labelled(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
            rows = _labelled(cases)
            return compute(cases.subset(rows), w[:, rows])

        on_labelled.__doc__ = compute.__doc__
        register_metric(name, kind=KIND, higher_is_better=higher_is_better, support=_labelled, applies=applies)(
            on_labelled
        )
        return compute

    return add


def _confusion(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    return weighted_confusion(cases.labels, predicted_classes(cases.probs), cases.n_classes, w)


def _positive_counts(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TP, FN, FP, TN of the positive (last) class against the rest, each (B,)."""
    tp = conf[:, -1, -1]
    fn = conf[:, -1, :].sum(axis=1) - tp
    fp = conf[:, :, -1].sum(axis=1) - tp
    tn = conf.sum(axis=(1, 2)) - tp - fn - fp
    return tp, fn, fp, tn


@_classification_metric("auc", higher_is_better=True)
def _auc(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    """ROC AUC; one-vs-rest macro mean for more than two classes."""
    if cases.n_classes == 2:
        return weighted_auc(cases.probs[:, 1], cases.labels == 1, w)
    per_class = [weighted_auc(cases.probs[:, k], cases.labels == k, w) for k in range(cases.n_classes)]
    return np.mean(per_class, axis=0)  # NaN when any class is absent, as scikit-learn refuses


@_classification_metric("auc_positive", higher_is_better=True, applies=_has_three_or_more)
def _auc_positive(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of the positive (last) class."""
    k = cases.n_classes - 1
    return weighted_auc(cases.probs[:, k], cases.labels == k, w)


@_classification_metric("accuracy", higher_is_better=True)
def _accuracy(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    """Fraction of cases whose argmax class is the true class."""
    conf = _confusion(cases, w)
    return safe_ratio(np.trace(conf, axis1=1, axis2=2), conf.sum(axis=(1, 2)))


@_classification_metric("balanced_accuracy", higher_is_better=True)
def _balanced_accuracy(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    """Mean per-class recall over the classes present in the truth."""
    conf = _confusion(cases, w)
    recall = safe_ratio(np.diagonal(conf, axis1=1, axis2=2), conf.sum(axis=2))
    present = ~np.isnan(recall)
    return safe_ratio(np.where(present, recall, 0.0).sum(axis=1), present.sum(axis=1).astype(float))


@_classification_metric("sensitivity", higher_is_better=True)
def _sensitivity(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    """Recall of the positive (last) class: TP / (TP + FN)."""
    tp, fn, _, _ = _positive_counts(_confusion(cases, w))
    return safe_ratio(tp, tp + fn)


@_classification_metric("specificity", higher_is_better=True)
def _specificity(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    """Recall of the other classes against the positive one: TN / (TN + FP)."""
    _, _, fp, tn = _positive_counts(_confusion(cases, w))
    return safe_ratio(tn, tn + fp)


@_classification_metric("f1", higher_is_better=True)
def _f1(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    """F1 of the positive class (binary) or macro F1 over classes seen (K > 2)."""
    conf = _confusion(cases, w)
    if cases.n_classes == 2:
        tp, fn, fp, _ = _positive_counts(conf)
        return safe_ratio(2 * tp, 2 * tp + fp + fn)
    tp = np.diagonal(conf, axis1=1, axis2=2)
    den = 2 * tp + (conf.sum(axis=2) - tp) + (conf.sum(axis=1) - tp)
    seen = den > 0
    per_class = safe_ratio(2 * tp, den)
    return safe_ratio(np.where(seen, per_class, 0.0).sum(axis=1), seen.sum(axis=1).astype(float))


@_classification_metric("ece", higher_is_better=False)
def _ece(cases: CaseArrays, w: np.ndarray) -> np.ndarray:
    """Top-label expected calibration error, equal-width bins."""
    return weighted_ece(cases.labels, cases.probs, cases.ece_bins, w)


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, ece_bins: int = DEFAULT_ECE_BINS
) -> dict[str, float]:
    """Point estimates of every classification metric that applies, without intervals.

    ``probs`` is (n, K) with K >= 2 (rows summing to one); ``labels`` (n,) int in 0..K-1.
    Undefined values (an AUC with one class) are NaN.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] < 2 or len(probs) != len(labels):
        raise ValueError(f"probs must be (n, K>=2) with n = len(labels) = {len(labels)}; got {probs.shape}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= probs.shape[1]:
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    cases = CaseArrays(patients=np.arange(len(labels)), labels=labels.astype(int), probs=probs, ece_bins=ece_bins)
    ones = np.ones((1, len(labels)))
    return {m.name: float(m.compute(cases, ones)[0]) for m in metrics_of_kind(KIND) if m.applies(cases)}
