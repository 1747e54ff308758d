"""Operating points, calibration, decision curves and local recalibration, against values
computed by hand (no model needed: these are the metrics every study reports)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_curve

from senolab.evaluation.calibration import brier, ece, fit_temperature, nll, reliability, scaled
from senolab.evaluation.clinical import clinical_columns, clinical_sections, deployment_state
from senolab.evaluation.decision import decision_curve, net_benefit, treat_all
from senolab.evaluation.operating import (at_threshold, choose_thresholds, rates, sensitivity_threshold,
                                          specificity_threshold, youden_threshold)
from senolab.evaluation.recalibration import (_one_draw, calibration_draws, draw_calibration, local_recalibration,
                                              patient_classes)

# six cases: called malignant at 0.35 are the last four (TP 3, FP 1, FN 0, TN 2)
SIX_SCORES = np.array([0.1, 0.3, 0.4, 0.6, 0.7, 0.9])
SIX_MALIGNANT = np.array([0, 0, 1, 0, 1, 1], bool)


def test_rates_at_a_threshold_are_the_hand_counted_ones():
    assert rates(SIX_SCORES, SIX_MALIGNANT, 0.35) == pytest.approx(
        {"sensitivity": 1.0, "specificity": 2 / 3, "ppv": 3 / 4, "npv": 1.0})
    # at 0.5: TP 2 (0.7, 0.9), FP 1 (0.6), FN 1 (0.4), TN 2
    assert rates(SIX_SCORES, SIX_MALIGNANT, 0.5) == pytest.approx(
        {"sensitivity": 2 / 3, "specificity": 2 / 3, "ppv": 2 / 3, "npv": 2 / 3})
    # a case exactly at the threshold is called malignant
    assert rates(SIX_SCORES, SIX_MALIGNANT, 0.4)["sensitivity"] == 1.0


def test_rates_carry_patient_bootstrap_intervals():
    patients = np.array(["p1", "p1", "p2", "p3", "p4", "p4"])
    entry = at_threshold(SIX_SCORES, SIX_MALIGNANT, patients, 0.35, n_resamples=200, seed=0)
    assert entry["specificity"]["value"] == pytest.approx(2 / 3) and entry["specificity"]["n"] == 3
    lo, hi = entry["specificity"]["ci"]
    assert 0 <= lo <= 2 / 3 <= hi <= 1 and lo < hi
    assert entry["sensitivity"]["ci"] == [1.0, 1.0]  # every malignant case is above 0.35 in every resample


def test_thresholds_on_a_known_roc():
    """Negatives 0.1, 0.2, 0.3, 0.8; positives 0.35, 0.6, 0.7, 0.9. Youden's J is 0.75 just
    below 0.35 (sensitivity 1, specificity 3/4) and lower everywhere else; specificity 0.90
    needs every negative below: a threshold above 0.8."""
    score = np.array([0.1, 0.2, 0.3, 0.8, 0.35, 0.6, 0.7, 0.9])
    malignant = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    assert youden_threshold(score, malignant) == pytest.approx(0.325)
    assert sensitivity_threshold(score, malignant) == pytest.approx(0.325)  # 0.475 would give 3/4
    assert specificity_threshold(score, malignant) == pytest.approx(0.85)
    # scikit-learn's ROC agrees: its best J sits at the score 0.35, ours midway below it
    fpr, tpr, cuts = roc_curve(malignant, score)
    assert cuts[np.argmax(tpr - fpr)] == pytest.approx(0.35)
    assert choose_thresholds(score, malignant) == pytest.approx({"youden": 0.325, "sens90": 0.325, "spec90": 0.85})


def test_youden_ties_go_to_the_more_sensitive_threshold():
    # J = 0.5 both at 0.275 (sens 1, spec 1/2) and at 0.5 (3/4, 3/4)
    score = np.array([0.1, 0.2, 0.4, 0.8, 0.35, 0.6, 0.7, 0.9])
    malignant = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    assert youden_threshold(score, malignant) == pytest.approx(0.275)
    with pytest.raises(ValueError, match="both"):
        youden_threshold(score[:4], malignant[:4])


def test_ece_and_brier_of_calibrated_and_miscalibrated_toys():
    calibrated_score = np.r_[np.full(10, 0.3), np.full(10, 0.8)]
    calibrated_truth = np.r_[np.arange(10) < 3, np.arange(10) < 8]
    assert ece(calibrated_score, calibrated_truth) == pytest.approx(0.0)
    # ten cases at 0.9 of which five are malignant: |0.5 - 0.9| = 0.4
    over_score, over_truth = np.full(10, 0.9), np.arange(10) < 5
    assert ece(over_score, over_truth) == pytest.approx(0.4)
    assert ece(np.r_[calibrated_score[:10], over_score], np.r_[calibrated_truth[:10], over_truth]) == pytest.approx(0.2)
    assert brier(over_score, over_truth) == pytest.approx((5 * 0.1**2 + 5 * 0.9**2) / 10)
    bins = reliability(over_score, over_truth)
    assert len(bins) == 10 and bins.loc[8, "count"] == 10 and bins.loc[8, "observed"] == pytest.approx(0.5)


def test_temperature_scaling_lowers_the_nll_of_an_overconfident_toy():
    rng = np.random.default_rng(0)
    truth_p = rng.uniform(0.05, 0.95, 4000)
    malignant = rng.uniform(size=4000) < truth_p
    overconfident = scaled(truth_p, 1 / 3)  # log-odds tripled
    temperature = fit_temperature(overconfident, malignant)
    assert temperature == pytest.approx(3.0, rel=0.15)
    assert nll(scaled(overconfident, temperature), malignant) < nll(overconfident, malignant) - 0.05
    assert ece(scaled(overconfident, temperature), malignant) < ece(overconfident, malignant) / 2
    assert fit_temperature(truth_p, malignant) == pytest.approx(1.0, abs=0.15)  # calibrated: left alone


def test_net_benefit_is_the_decision_curve_formula():
    # at p_t = 0.25 the model calls the last five: TP 3, FP 2 of N = 6
    assert net_benefit(SIX_SCORES, SIX_MALIGNANT, 0.25) == pytest.approx(3 / 6 - 2 / 6 * 0.25 / 0.75)
    assert treat_all(SIX_MALIGNANT, 0.25) == pytest.approx(0.5 - 0.5 * 0.25 / 0.75)
    curve = decision_curve(SIX_SCORES, SIX_MALIGNANT, [0.25, 0.5])
    assert curve["treat_none"].eq(0).all()
    assert curve["model"].tolist() == pytest.approx([3 / 6 - 2 / 6 / 3, 2 / 6 - 1 / 6])


def site_table(n_patients=40, seed=0) -> pd.DataFrame:
    """A target site of 40 patients with one to three images each; malignant ones score higher."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        malignant = p % 3 == 0
        for i in range(rng.integers(1, 4)):
            score = float(np.clip(rng.normal(0.65 if malignant else 0.35, 0.15), 0.01, 0.99))
            rows.append({"case_id": f"c{p}_{i}", "patient_id": f"p{p}", "site": "t", "label": float(malignant),
                         "prob_benign": 1 - score, "prob_malignant": score, "score": score})
    return pd.DataFrame(rows)


def test_recalibration_draws_whole_patients_of_both_classes():
    table = site_table()
    patients, malignant = table["patient_id"].to_numpy(), table["label"].to_numpy() == 1
    masks = list(calibration_draws(patients, malignant, 10, n_draws=50, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(masks, calibration_draws(patients, malignant, 10, 50, 3)))
    assert len({m.tobytes() for m in masks}) > 40  # the draws differ
    for mask in masks:
        assert not set(patients[mask]) & set(patients[~mask]), "a patient on both sides"
        assert malignant[mask].any() and not malignant[mask].all()
        assert 10 <= mask.sum() <= 14  # whole patients: up to two images over k
    classes = patient_classes(patients, malignant)
    assert classes.sum() == 14  # patients 0, 3, ..., 39
    assert draw_calibration(patients, malignant, 10, np.random.default_rng(3)).sum() == masks[0].sum()


def test_recalibration_evaluates_on_the_other_cases_only():
    table = site_table()
    score, malignant = table["score"].to_numpy(), table["label"].to_numpy() == 1
    mask = next(calibration_draws(table["patient_id"], malignant, 10, n_draws=1, seed=0))
    draw = _one_draw(score, malignant, mask, {"youden": 0.5}, 1.0)
    local = draw["local"]["youden"]
    assert local["threshold"] == pytest.approx(youden_threshold(score[mask], malignant[mask]))
    held_out = rates(score[~mask], malignant[~mask], local["threshold"])
    assert local["specificity"] == pytest.approx(held_out["specificity"])
    assert local["sensitivity"] == pytest.approx(held_out["sensitivity"])
    assert local != pytest.approx({**rates(score, malignant, local["threshold"]), "threshold": local["threshold"]})
    assert draw["n_evaluated"] == (~mask).sum() and draw["source"]["youden"] == pytest.approx(
        rates(score[~mask], malignant[~mask], 0.5))


def test_local_recalibration_is_labelled_and_kept_to_the_target():
    target = site_table().assign(domain="target", method="erm", seed=0)
    source = site_table(seed=1).assign(domain="source_val", method="erm", seed=0)
    source["case_id"] = "s" + source["case_id"]
    frame = local_recalibration(pd.concat([target, source]), ks=(10, 20), n_draws=30, seed=0)
    assert sorted(set(zip(frame["uses_target_labels"], frame["rule"]))) == [
        (k, r) for k in (10, 20) for r in ("sens90", "spec90", "youden")]
    assert set(frame["target_site"]) == {"t"} and frame["n_draws"].eq(30).all()
    assert (frame["n_calibration"] + frame["n_evaluated"] == len(target)).all()
    # the frozen source threshold is the one chosen on the source_val rows
    state = deployment_state(source)
    youden = frame[frame["rule"] == "youden"].iloc[0]
    assert youden["source_threshold"] == pytest.approx(state["thresholds"]["youden"])
    assert youden["oracle_threshold"] == pytest.approx(youden_threshold(target["score"], target["label"] == 1))


def test_clinical_sections_give_the_results_columns():
    table = site_table()
    state = deployment_state(site_table(seed=1))
    assert state["chosen_on"] == "source validation" and set(state["thresholds"]) == {"youden", "sens90", "spec90"}
    sections = clinical_sections(table, state, n_resamples=50, seed=0)
    columns = clinical_columns(sections, "t")
    assert columns["threshold_youden"] == state["thresholds"]["youden"]
    assert columns["specificity_youden"] == pytest.approx(
        rates(table["score"], table["label"] == 1, state["thresholds"]["youden"])["specificity"])
    assert columns["specificity_youden_lo"] <= columns["specificity_youden"] <= columns["specificity_youden_hi"]
    assert {"oracle_threshold_youden", "ppv_sens90", "npv_spec90", "ece_score", "brier_scaled_hi",
            "temperature"} <= set(columns)
    assert deployment_state(table[table["label"] == 0])["thresholds"] == {}  # one class: nothing chosen


def test_a_study_recalibrates_each_unit_with_its_own_source_thresholds(tmp_path):
    """Leave-one-site-out: the same method has one unit per target, each with its own
    source validation cases; each unit's frozen threshold must be its own."""
    from senolab.runners.study import write_recalibration

    units = []
    for target, seed in (("t1", 1), ("t2", 2)):
        source = site_table(seed=seed + 10)
        source["score"] = source["prob_malignant"] = source["score"] ** (seed * 2)  # another threshold per unit
        source["prob_benign"] = 1 - source["score"]
        source["case_id"] = f"{target}-source-" + source["case_id"]
        units.append(pd.concat([site_table(seed=seed).assign(site=target, domain="target"),
                                source.assign(site="s", domain="source_val")]).assign(method="erm", seed=0))
    write_recalibration(tmp_path, units, ks=(10,), n_draws=5)
    frame = pd.read_csv(tmp_path / "recalibration.csv")
    youden = frame[frame["rule"] == "youden"].set_index("target_site")["source_threshold"]
    for target, unit in zip(("t1", "t2"), units):
        own = deployment_state(unit[unit["domain"] == "source_val"])["thresholds"]["youden"]
        assert youden[target] == pytest.approx(own)
    assert youden["t1"] != pytest.approx(youden["t2"])
    assert (tmp_path / "recalibration.png").is_file()
