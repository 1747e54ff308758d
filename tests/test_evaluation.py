"""senolab.evaluation: metrics against scikit-learn and hand-computed values, the empty-mask
policy, the patient bootstrap, DeLong against R pROC's published numbers and an O(mn)
reference, per-site / worst-site reports, summary.json round trip, plots.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from senolab.evaluation import (
    POOLED,
    box_iou,
    classification_metrics,
    compare_methods,
    delong_covariance,
    delong_test,
    dice,
    evaluate,
    hd95,
    iou,
    load_summary,
    reliability_table,
    segmentation_case_metrics,
    structural_components,
)
from senolab.evaluation.bootstrap import bootstrap, resample_counts
from senolab.evaluation.classification import weighted_auc
from senolab.evaluation.plots import plot_reliability, plot_roc_by_site

# --------------------------------------------------------------------------- helpers


def _binary_scores(n, rng, shift=1.0, decimals=1):
    """Labels and rounded scores (rounding forces ties within and across classes)."""
    y = rng.integers(0, 2, n)
    return y, np.round(rng.normal(size=n) + shift * y, decimals)


def _softmax_probs(y, n_classes, rng, strength=1.2):
    logits = rng.normal(size=(len(y), n_classes))
    logits[np.arange(len(y)), y] += strength
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def _table(y, probs, names, sites, patients=None, method=None):
    df = pd.DataFrame(
        {
            "case_id": [f"c{i}" for i in range(len(y))],
            "patient_id": patients if patients is not None else [f"p{i}" for i in range(len(y))],
            "site": sites,
            "label": y,
        }
    )
    for k, name in enumerate(names):
        df[f"prob_{name}"] = probs[:, k]
    if method is not None:
        df["method"] = method
    return df


# --------------------------------------------------------------------------- classification


def test_binary_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    y, s = _binary_scores(400, rng)
    p1 = 1 / (1 + np.exp(-s))
    probs = np.column_stack([1 - p1, p1])
    pred = (p1 > 0.5).astype(int)
    got = classification_metrics(y, probs)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y, p1), abs=1e-12)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert got["sensitivity"] == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert got["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0), abs=1e-12)
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    assert "auc_positive" not in got  # binary: identical to auc, not repeated


def test_three_class_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 500)
    probs = _softmax_probs(y, 3, rng)
    pred = probs.argmax(axis=1)
    got = classification_metrics(y, probs)
    assert got["auc"] == pytest.approx(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-12)
    assert got["auc_positive"] == pytest.approx(skm.roc_auc_score(y == 2, probs[:, 2]), abs=1e-12)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert got["f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    assert got["sensitivity"] == pytest.approx(skm.recall_score(y == 2, pred == 2), abs=1e-12)
    assert got["specificity"] == pytest.approx(skm.recall_score(y == 2, pred == 2, pos_label=False), abs=1e-12)
    # A class absent from the truth but predicted: scikit-learn's conventions still hold.
    keep = y != 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_bacc = skm.balanced_accuracy_score(y[keep], pred[keep])
    sub = classification_metrics(y[keep], probs[keep])
    assert sub["balanced_accuracy"] == pytest.approx(ref_bacc, abs=1e-12)
    assert sub["f1"] == pytest.approx(skm.f1_score(y[keep], pred[keep], average="macro"), abs=1e-12)
    assert np.isnan(sub["auc"])  # one-vs-rest macro AUC is undefined without class 0


def test_hand_computed_binary_example():
    # positives score .9, .4; negatives .6, .1: of the 4 pairs, 3 are ordered -> AUC 3/4.
    # Predictions (p > .5): 1, 0, 1, 0 -> TP 1, FN 1, FP 1, TN 1.
    # Top-label confidences .9 (right), .6 (wrong), .6 (wrong), .9 (right):
    # ECE = 2/4 |1 - .9| + 2/4 |0 - .6| = 0.35.
    y = np.array([1, 1, 0, 0])
    p1 = np.array([0.9, 0.4, 0.6, 0.1])
    got = classification_metrics(y, np.column_stack([1 - p1, p1]))
    assert got == pytest.approx(
        {"auc": 0.75, "accuracy": 0.5, "balanced_accuracy": 0.5, "sensitivity": 0.5, "specificity": 0.5,
         "f1": 0.5, "ece": 0.35}
    )


def test_ece_matches_an_independent_loop_and_bins_are_right_closed():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 300)
    probs = _softmax_probs(y, 3, rng, strength=0.8)
    n_bins = 10
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    expected = 0.0
    for lo, hi in zip(np.linspace(0, 1, n_bins + 1)[:-1], np.linspace(0, 1, n_bins + 1)[1:]):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            expected += inside.mean() * abs(correct[inside].mean() - conf[inside].mean())
    assert classification_metrics(y, probs, ece_bins=n_bins)["ece"] == pytest.approx(expected, abs=1e-12)
    # Edges: 0 falls in the first bin, 1/2 closes the first of two bins, 1 the last.
    table = reliability_table(np.array([0, 0, 0]), np.array([[0.5, 0.5], [1.0, 0.0], [0.75, 0.25]]), n_bins=2)
    assert table["count"].tolist() == [1, 2]


def test_weighted_auc_equals_auc_of_the_replicated_sample():
    rng = np.random.default_rng(3)
    y, s = _binary_scores(120, rng)
    w = rng.integers(0, 4, size=(5, 120)).astype(float)
    got = weighted_auc(s, y == 1, w)
    for row, weights in zip(got, w):
        idx = np.repeat(np.arange(120), weights.astype(int))
        assert row == pytest.approx(skm.roc_auc_score(y[idx], s[idx]), abs=1e-12)
    assert np.isnan(weighted_auc(s, y == 1, (y == 1)[None, :].astype(float)))[0]  # positives only


# --------------------------------------------------------------------------- segmentation


def _square(shape, top, left, size):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_dice_iou_box_iou_by_hand():
    true = _square((20, 20), 4, 4, 4)  # 16 px
    pred = _square((20, 20), 4, 6, 4)  # shifted 2 columns: 8 px overlap
    assert dice(pred, true) == pytest.approx(16 / 32)
    assert iou(pred, true) == pytest.approx(8 / 24)
    # [0,0,2,2] and [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7.
    assert box_iou(np.array([0, 0, 2, 2]), np.array([1, 1, 3, 3])) == pytest.approx(1 / 7)
    got = box_iou(np.array([[0, 0, 2, 2], [0, 0, 1, 1]]), np.array([[0, 0, 2, 2], [2, 2, 3, 3]]))
    assert got.tolist() == [1.0, 0.0]


def test_hd95_single_points_in_pixels_and_mm():
    pred = np.zeros((10, 10), bool)
    true = np.zeros((10, 10), bool)
    pred[0, 0] = True
    true[3, 4] = True
    assert hd95(pred, true) == pytest.approx(5.0)  # 3-4-5 triangle
    assert hd95(pred, true, spacing_mm=(2.0, 1.0)) == pytest.approx(np.hypot(6.0, 4.0))
    assert hd95(pred, true, spacing_mm=0.5) == pytest.approx(2.5)


def _brute_hd95(pred, true, spacing):
    """Surfaces via padding and neighbour shifts, distances by all pairs."""

    def surface(mask):
        padded = np.pad(mask, 1)
        interior = padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return np.argwhere(mask & ~interior) * np.asarray(spacing)

    a, b = surface(pred), surface(true)
    d = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2))
    return max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_all_pairs_reference_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    blob = lambda: ndimage.gaussian_filter(rng.random((48, 40)), 3) > 0.5  # noqa: E731
    pred, true = blob(), blob()
    if not pred.any() or not true.any():
        pytest.skip("empty blob")
    for spacing in ((1.0, 1.0), (0.3, 0.7)):
        assert hd95(pred, true, spacing) == pytest.approx(_brute_hd95(pred, true, spacing), rel=1e-12)


def test_case_metrics_follow_the_lesion_free_policy():
    shape = (32, 32)
    lesion = _square(shape, 8, 8, 8)
    empty = np.zeros(shape, bool)
    # Lesion-free image, nothing predicted: no Dice of 1 sneaks in.
    quiet = segmentation_case_metrics(empty, empty, spacing_mm=0.1)
    assert quiet["lesion_present"] is False and np.isnan(quiet["dice"]) and np.isnan(quiet["hd95_px"])
    assert quiet["pred_area_px"] == 0
    # Missed lesion: Dice 0 and HD95 = the image diagonal, in pixels and in mm.
    missed = segmentation_case_metrics(empty, lesion, spacing_mm=0.1)
    assert missed["dice"] == 0 and missed["iou"] == 0
    assert missed["hd95_px"] == pytest.approx(np.hypot(32, 32))
    assert missed["hd95_mm"] == pytest.approx(0.1 * np.hypot(32, 32))
    # Unknown spacing: the mm value is NaN, the pixel value is still there.
    unknown = segmentation_case_metrics(lesion, lesion, spacing_mm=float("nan"))
    assert unknown["dice"] == 1 and unknown["hd95_px"] == 0 and np.isnan(unknown["hd95_mm"])


def test_lesion_free_images_do_not_inflate_dice_and_are_reported_separately():
    shape = (32, 32)
    lesion = _square(shape, 8, 8, 8)
    half = _square(shape, 8, 12, 8)  # 32 of 64 px overlap: Dice 0.5
    empty = np.zeros(shape, bool)
    blip = _square(shape, 0, 0, 2)  # 4 px false positive
    cases = [(half, lesion), (half, lesion), (empty, empty), (empty, empty), (empty, empty), (blip, empty)]
    rows = [segmentation_case_metrics(p, t) for p, t in cases]
    df = pd.DataFrame(rows).assign(
        case_id=[f"c{i}" for i in range(6)], patient_id=[f"p{i}" for i in range(6)], site="A"
    )
    agg = evaluate(df, n_resamples=50, progress=False).aggregates["model"]["A"]
    assert agg["dice"]["value"] == pytest.approx(0.5) and agg["dice"]["n"] == 2  # not (0.5+0.5+1+1+1+0)/6
    assert agg["fp_rate_lesion_free"]["value"] == pytest.approx(1 / 4) and agg["fp_rate_lesion_free"]["n"] == 4
    assert agg["pred_area_lesion_free"]["value"] == pytest.approx(4 / 1024 / 4)


def test_bad_masks_are_refused_with_a_clear_message():
    with pytest.raises(ValueError, match=r"shape \(4, 4\) differs from true_mask shape \(4, 5\)"):
        dice(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="binary"):
        segmentation_case_metrics(np.full((4, 4), 255), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="2-D"):
        hd95(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="xyxy"):
        box_iou(np.array([2, 0, 1, 1]), np.array([0, 0, 1, 1]))


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_resamples_patients_not_images():
    rng = np.random.default_rng(4)
    n_patients, copies = 60, 4
    y = rng.integers(0, 2, n_patients)
    probs = _softmax_probs(y, 2, rng, strength=0.7)
    names = ("benign", "malignant")
    one_each = _table(y, probs, names, ["A"] * n_patients)
    # Every patient imaged `copies` times with identical predictions.
    many = _table(np.repeat(y, copies), np.repeat(probs, copies, axis=0), names, ["A"] * n_patients * copies,
                  patients=np.repeat(one_each["patient_id"].to_numpy(), copies))
    as_images = many.assign(patient_id=many["case_id"])  # wrongly treats images as patients
    ci = {
        key: evaluate(df, n_resamples=400, seed=7, progress=False).aggregates["model"]["A"]["accuracy"]["ci"]
        for key, df in (("one", one_each), ("many", many), ("images", as_images))
    }
    # Identical images of one patient add no information: the patient bootstrap sees
    # the same resamples and gives the same interval as one image per patient ...
    assert ci["many"] == pytest.approx(ci["one"], abs=1e-12)
    # ... while resampling images would pretend to know twice as much (width / sqrt(4)).
    width = lambda c: c[1] - c[0]  # noqa: E731
    assert width(ci["images"]) < 0.7 * width(ci["many"])


def test_bootstrap_is_seeded_and_counts_degenerate_resamples():
    y = np.zeros(40, int)
    y[0] = 1  # one positive patient: every resample that misses it has no AUC
    scores = np.linspace(0, 1, 40)
    patients = np.array([f"p{i:02d}" for i in range(40)])
    stat = {"auc": lambda w: weighted_auc(scores, y == 1, w)}
    first = bootstrap(stat, patients, n_resamples=300, seed=3)["auc"]
    again = bootstrap(stat, patients, n_resamples=300, seed=3)["auc"]
    other = bootstrap(stat, patients, n_resamples=300, seed=4)["auc"]
    assert first == again and first != other
    counts = resample_counts(40, 300, seed=3)  # patient p00 is the first sorted id
    assert first.n_degenerate == int((counts[:, 0] == 0).sum()) > 0


# --------------------------------------------------------------------------- DeLong

# pROC::aSAH (Turck et al. 2010, Intensive Care Medicine 36:107; shipped with the R
# package pROC): outcome Poor = 1, S100B and WFNS of 113 patients. Checked against the
# per-case DeLong placements in pROC's tests (helper-deLongPlacementsCpp-expected.R).
# Expected numbers from pROC's own tests (test-var.R, test-cov.R, test-roc.test.R):
# var(r.s100b), var(r.wfns), cov(r.s100b, r.wfns), roc.test(r.wfns, r.s100b).
ASAH_POOR = [
    0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 1,
    1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 0, 0, 0,
]  # fmt: skip
ASAH_S100B = [
    0.13, 0.14, 0.10, 0.04, 0.13, 0.10, 0.47, 0.16, 0.18, 0.10, 0.12, 0.10, 0.44, 0.71, 0.04, 0.08,
    0.49, 0.04, 0.07, 0.33, 0.09, 0.09, 0.07, 0.11, 0.07, 0.17, 0.07, 0.11, 0.13, 0.19, 0.05, 0.16,
    0.41, 0.14, 0.34, 0.35, 0.48, 0.09, 0.96, 0.25, 0.50, 0.46, 0.16, 0.07, 0.43, 0.45, 0.11, 0.08,
    0.09, 0.86, 0.52, 0.08, 0.06, 0.13, 2.07, 0.10, 0.14, 0.15, 0.07, 0.06, 0.77, 0.05, 0.09, 0.30,
    0.03, 0.09, 0.04, 0.23, 0.70, 0.09, 0.27, 0.71, 0.08, 0.26, 0.08, 0.16, 0.09, 0.13, 0.10, 0.08,
    0.11, 0.33, 0.11, 0.28, 0.07, 0.10, 0.32, 0.22, 0.07, 0.05, 0.24, 0.38, 0.10, 0.15, 0.08, 0.14,
    0.10, 0.07, 0.04, 0.19, 0.56, 0.14, 0.58, 0.32, 0.82, 0.74, 0.15, 0.47, 0.17, 0.44, 0.15, 0.50,
    0.48,
]  # fmt: skip
ASAH_WFNS = [
    1, 1, 1, 1, 3, 2, 5, 4, 1, 2, 5, 2, 5, 5, 1, 2, 5, 2, 2, 5, 2, 1, 1, 1, 1, 2, 1, 2, 1, 1, 3, 4,
    2, 1, 4, 5, 4, 1, 4, 2, 5, 5, 1, 1, 2, 4, 1, 1, 2, 5, 5, 2, 1, 2, 5, 1, 2, 2, 2, 1, 5, 1, 1, 2,
    5, 2, 1, 4, 5, 2, 4, 4, 1, 4, 1, 2, 1, 4, 2, 1, 2, 3, 2, 4, 2, 1, 4, 5, 1, 1, 5, 4, 2, 2, 1, 1,
    1, 3, 1, 2, 5, 2, 2, 5, 5, 5, 2, 4, 4, 5, 1, 1, 1,
]  # fmt: skip


def test_delong_reproduces_pROC_on_asah():
    y = np.array(ASAH_POOR)
    assert (len(y), y.sum()) == (113, 41)
    s100b, wfns = np.array(ASAH_S100B), np.array(ASAH_WFNS, float)
    aucs, cov = delong_covariance(y, np.vstack([s100b, wfns]))
    assert aucs == pytest.approx([0.731368563685637, 0.823678861788618], rel=1e-12)
    assert cov[0, 0] == pytest.approx(0.00266868245717244, rel=1e-9)
    assert cov[1, 1] == pytest.approx(0.00146991470882363, rel=1e-9)
    assert cov[0, 1] == pytest.approx(0.00119615567376754, rel=1e-9)
    result = delong_test(y, wfns, s100b)
    assert result.z == pytest.approx(2.20898359144091, rel=1e-9)
    assert result.p == pytest.approx(0.0271757822291882, rel=1e-9)
    # pROC's placements of the first cases (Poor outcome, in data order), s100b:
    v10, _ = structural_components(y, s100b)
    assert v10[0, :4] == pytest.approx([0.5625, 0.4375, 0.715277777777778, 0.541666666666667], abs=1e-12)


def _slow_components(y, scores):
    """O(m n) structural components straight from the definition, no ranks."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    return psi.mean(axis=2), psi.mean(axis=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_fast_delong_equals_the_quadratic_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y, a = _binary_scores(150, rng, shift=0.8)
    b = np.round(0.6 * a + rng.normal(size=150), 1)
    c = np.round(rng.normal(size=150))  # heavy ties, no signal
    scores = np.vstack([a, b, c])
    v10, v01 = structural_components(y, scores)
    ref10, ref01 = _slow_components(y, scores)
    np.testing.assert_allclose(v10, ref10, atol=1e-12)
    np.testing.assert_allclose(v01, ref01, atol=1e-12)
    aucs, cov = delong_covariance(y, scores)
    m, n = ref10.shape[1], ref01.shape[1]
    np.testing.assert_allclose(cov, np.cov(ref10) / m + np.cov(ref01) / n, rtol=1e-10)
    np.testing.assert_allclose(aucs, [skm.roc_auc_score(y, s) for s in scores], atol=1e-12)


def test_delong_covariance_agrees_with_the_bootstrap_on_a_large_sample():
    rng = np.random.default_rng(5)
    n = 1500
    y = rng.integers(0, 2, n)
    a = rng.normal(size=n) + 1.0 * y
    b = 0.7 * a + rng.normal(size=n) * 0.8 + 0.3 * y
    _, cov = delong_covariance(y, np.vstack([a, b]))
    counts = resample_counts(n, 1500, seed=11)
    boot = np.array([weighted_auc(s, y == 1, counts.astype(float)) for s in (a, b)])
    boot_cov = np.cov(boot)
    # With 1500 resamples the bootstrap variance itself is known to ~4% (sqrt(2/B)).
    assert cov[0, 0] == pytest.approx(boot_cov[0, 0], rel=0.15)
    assert cov[1, 1] == pytest.approx(boot_cov[1, 1], rel=0.15)
    assert cov[0, 1] == pytest.approx(boot_cov[0, 1], rel=0.2)


def test_single_auc_variance_is_close_to_hanley_mcneil():
    # Hanley & McNeil (1982) Radiology 143:29, eq. 2 with Q1 = A/(2-A), Q2 = 2A^2/(1+A):
    # exact for exponential score distributions, close for others.
    rng = np.random.default_rng(6)
    m, n = 400, 600
    y = np.r_[np.ones(m, int), np.zeros(n, int)]
    s = np.r_[rng.exponential(2.5, m), rng.exponential(1.0, n)]
    aucs, cov = delong_covariance(y, s)
    a = aucs[0]
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    hanley_mcneil = (a * (1 - a) + (m - 1) * (q1 - a**2) + (n - 1) * (q2 - a**2)) / (m * n)
    assert cov[0, 0] == pytest.approx(hanley_mcneil, rel=0.15)


def test_delong_edge_cases_and_bad_input():
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
    same = delong_test(y, s, s)
    assert (same.z, same.p, same.difference) == (0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="0/1"):
        delong_test(np.array([0, 2, 1, 1]), s[:4], s[:4])
    with pytest.raises(ValueError, match="at least 2 positive"):
        delong_test(np.array([0, 0, 0, 1]), s[:4], s[:4])
    with pytest.raises(ValueError, match="shape"):
        delong_covariance(y, s[:5])


# --------------------------------------------------------------------------- report


@pytest.fixture(scope="module")
def two_site_table():
    """Two methods on the same cases at sites A (easy) and B (hard), 2 images per patient."""
    rng = np.random.default_rng(8)
    n = 240
    sites = np.where(np.arange(n) < 120, "A", "B")
    y = rng.integers(0, 3, n)
    frames = []
    for method, strength in (("erm", 1.0), ("dann", 1.6)):
        probs = np.vstack(
            [_softmax_probs(y[sites == s], 3, rng, strength * (2.0 if s == "A" else 0.6)) for s in ("A", "B")]
        )
        df = _table(y, probs, ("normal", "benign", "malignant"), sites,
                    patients=[f"p{i // 2}" for i in range(n)], method=method)
        lesion = y > 0
        df["lesion_present"] = lesion
        df["dice"] = np.where(lesion, np.where(sites == "A", 0.85, 0.6) + rng.normal(0, 0.05, n), np.nan)
        df["hd95_px"] = np.where(lesion, np.where(sites == "A", 4.0, 12.0) + rng.normal(0, 1, n), np.nan)
        df["pred_area_px"] = np.where(lesion, 300.0, rng.choice([0.0, 25.0], n))
        df["pred_area_fraction"] = df["pred_area_px"] / 128**2
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def two_site_evaluation(two_site_table):
    return evaluate(two_site_table, n_resamples=200, seed=0, progress=False)


def test_per_site_values_equal_direct_computation(two_site_table, two_site_evaluation):
    agg = two_site_evaluation.aggregates
    for method in ("erm", "dann"):
        for site in ("A", "B", POOLED):
            part = two_site_table[two_site_table["method"] == method]
            if site != POOLED:
                part = part[part["site"] == site]
            probs = part[["prob_normal", "prob_benign", "prob_malignant"]].to_numpy()
            entry = agg[method][site]
            assert entry["auc"]["value"] == pytest.approx(
                skm.roc_auc_score(part["label"], probs, multi_class="ovr"), abs=1e-12
            )
            lesion = part[part["lesion_present"]]
            assert entry["dice"]["value"] == pytest.approx(lesion["dice"].mean(), abs=1e-12)
            assert entry["dice"]["n"] == len(lesion)
            assert entry["auc"]["n_patients"] == part["patient_id"].nunique()
            lo, hi = entry["auc"]["ci"]
            assert lo <= entry["auc"]["value"] <= hi


def test_worst_site_names_the_worst_site_per_metric(two_site_evaluation):
    for method in ("erm", "dann"):
        worst = two_site_evaluation.aggregates[method]["worst_site"]
        assert worst["auc"]["site"] == "B"  # lowest AUC
        assert worst["dice"]["site"] == "B"  # lowest Dice
        assert worst["hd95_px"]["site"] == "B"  # highest HD95
        b = two_site_evaluation.aggregates[method]["B"]
        assert worst["auc"]["value"] == b["auc"]["value"] and worst["auc"]["ci"] == b["auc"]["ci"]


def test_summary_json_and_results_csv_round_trip(tmp_path, two_site_table):
    table = two_site_table.copy()
    # Site C holds only benign cases: its AUC is undefined and must be written as null.
    extra = table[table["case_id"].isin(["c0", "c1", "c2", "c3", "c4", "c5"])].copy()  # both methods
    extra["site"], extra["label"], extra["patient_id"] = "C", 1, extra["patient_id"] + "_c"
    extra["case_id"] = extra["case_id"] + "_c"
    table = pd.concat([table, extra], ignore_index=True)
    ev = evaluate(table, n_resamples=30, seed=1, progress=False)
    paths = ev.write(tmp_path, config={"name": "unit", "seed": 1})
    raw = paths["summary"].read_text()
    assert "NaN" not in raw
    summary = load_summary(tmp_path)
    assert summary["config"] == {"name": "unit", "seed": 1}
    assert set(summary) == {"config", "evaluation", "aggregates", "cases"}
    assert summary["evaluation"]["classes"] == ["normal", "benign", "malignant"]
    assert summary["aggregates"]["erm"]["C"]["auc"]["value"] is None
    assert summary["aggregates"]["erm"]["worst_site"]["auc"]["site"] == "B"  # C has no AUC to compare
    assert {"case_id", "site", "method", "pred"} <= set(summary["cases"][0])
    assert len(summary["cases"]) == len(table)
    results = pd.read_csv(paths["results"])
    assert sorted(zip(results["method"], results["site"])) == sorted(
        (m, s) for m in ("dann", "erm") for s in ("A", "B", "C", POOLED)
    )
    assert {"n_cases", "n_patients", "auc", "auc_lo", "auc_hi", "dice", "dice_lo", "dice_hi"} <= set(results)
    assert results.loc[(results["method"] == "erm") & (results["site"] == "C"), "auc"].isna().all()
    (tmp_path / "bad.json").write_text(json.dumps({"config": {}}))
    with pytest.raises(ValueError, match="missing keys"):
        load_summary(tmp_path / "bad.json")


def test_evaluation_is_deterministic(two_site_table):
    first = evaluate(two_site_table, n_resamples=40, seed=2, progress=False).to_summary()
    second = evaluate(two_site_table, n_resamples=40, seed=2, progress=False).to_summary()
    assert first == second


def test_compare_methods_is_delong_per_site(two_site_table):
    table = compare_methods(two_site_table, "dann", "erm").set_index("site")
    part = two_site_table[two_site_table["site"] == "B"]
    a, b = (part[part["method"] == m].set_index("case_id") for m in ("dann", "erm"))
    b = b.loc[a.index]
    ref = delong_test((a["label"] == 2).astype(int).to_numpy(), a["prob_malignant"].to_numpy(),
                      b["prob_malignant"].to_numpy())
    assert table.loc["B", "z"] == pytest.approx(ref.z) and table.loc["B", "p"] == pytest.approx(ref.p)
    assert list(table.index) == ["A", "B", POOLED]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda df: df.drop(columns=["patient_id"]), r"lacks required columns \['patient_id'\]"),
        (lambda df: df.assign(label=df["label"] + 1), r"'label' must be an integer in 0..2"),
        (lambda df: df.assign(prob_benign=df["prob_benign"] * 0.5), "must sum to 1"),
        (lambda df: df.assign(prob_benign=df["prob_benign"] + 1.0), r"prob_benign must be a probability in \[0, 1\]"),
        (lambda df: df.assign(site="all"), "reserved"),
        (lambda df: pd.concat([df, df.iloc[:1]]), "duplicate"),
        (lambda df: df.drop(columns=["lesion_present"]), "need the 'lesion_present' column"),
        (lambda df: df[["case_id", "patient_id", "site"]], "nothing to evaluate"),
    ],
)
def test_bad_prediction_tables_are_refused_by_name(two_site_table, change, message):
    table = two_site_table[two_site_table["method"] == "erm"].drop(columns=["method"])
    with pytest.raises(ValueError, match=message):
        evaluate(change(table), n_resamples=0, progress=False)


def test_binary_table_with_one_probability_column():
    rng = np.random.default_rng(9)
    y, s = _binary_scores(80, rng)
    p = 1 / (1 + np.exp(-s))
    df = pd.DataFrame({"case_id": range(80), "patient_id": range(80), "site": "A", "label": y,
                       "prob_malignant": p})
    ev = evaluate(df, n_resamples=0, progress=False)
    entry = ev.aggregates["model"]["A"]["auc"]
    assert entry["value"] == pytest.approx(skm.roc_auc_score(y, p)) and np.isnan(entry["ci"][0])
    assert ev.settings["positive_class"] == "malignant"


def test_unlabelled_cases_count_for_segmentation_only():
    # A benign/malignant task: normal images have no class target (label NaN) but are the
    # lesion-free images on which false-positive segmentations show.
    rng = np.random.default_rng(10)
    y, s = _binary_scores(60, rng)
    p = 1 / (1 + np.exp(-s))
    normal = np.arange(60) >= 40
    df = pd.DataFrame({"case_id": range(60), "patient_id": range(60), "site": "A",
                       "label": np.where(normal, np.nan, y), "prob_benign": 1 - p, "prob_malignant": p,
                       "lesion_present": ~normal, "dice": np.where(normal, np.nan, 0.8),
                       "pred_area_px": np.where(normal, (np.arange(60) % 2) * 10.0, 50.0)})
    agg = evaluate(df, n_resamples=20, progress=False).aggregates["model"]["A"]
    assert agg["auc"]["value"] == pytest.approx(skm.roc_auc_score(y[~normal], p[~normal]))
    assert agg["auc"]["n"] == agg["accuracy"]["n"] == 40
    assert agg["fp_rate_lesion_free"]["n"] == 20 and agg["fp_rate_lesion_free"]["value"] == pytest.approx(0.5)
    compared = compare_methods(pd.concat([df.assign(method="a"), df.assign(method="b")]), "a", "b")
    assert compared.set_index("site").loc[POOLED, "n_cases"] == 40


# --------------------------------------------------------------------------- plots


def test_plots_write_png_files(tmp_path, two_site_table):
    for plot, name in ((plot_roc_by_site, "roc.png"), (plot_reliability, "reliability.png")):
        path = plot(two_site_table, tmp_path / "figures" / name, method="erm")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    with pytest.raises(ValueError, match="several methods"):
        plot_roc_by_site(two_site_table, tmp_path / "x.png")
