"""The readers on the real cohorts: the exact counts of ../shared/data/README.md."""
from __future__ import annotations

from collections import Counter

import numpy as np

from conftest import requires_data
from senolab.cohorts.dedup import duplicate_report, mark_duplicates
from senolab.cohorts.schema import Kind
from senolab.cohorts.splits import check_folds, official_folds, patient_kfold

pytestmark = requires_data


def test_busi_counts(real_cohorts):
    t = real_cohorts["busi"].table
    assert len(t) == 780
    assert Counter(t["label"]) == {"benign": 437, "malignant": 210, "normal": 133}
    n_masks = t["mask_paths"].map(len)
    assert n_masks.sum() == 437 + 210 + 18  # 18 extra lesion masks
    assert (n_masks[t["label"] == "normal"] == 0).all()  # normals: no lesion
    assert (t["patient_id"] == t["case_id"]).all()  # BUSI has no patient ids
    assert not real_cohorts["busi"].problems


def test_busbra_counts_scanners_and_boxes(real_cohorts):
    cohort = real_cohorts["busbra"]
    t = cohort.table
    assert len(t) == 1711 and t["patient_id"].nunique() == 978
    assert Counter(t["scanner"]) == {"GE Logiq 7 @10-14MHz": 902, "GE Logiq 5 @10-12MHz": 809}
    assert Counter(t["label"]) == {"benign": 1183, "malignant": 528}
    assert cohort.columns["birads"].outcome and cohort.columns["histology"].outcome
    assert "birads" not in cohort.model_inputs()
    boxes = np.array(t["bbox_reported"].tolist())
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= t["width"] + 1).all() and (boxes[:, 3] <= t["height"] + 1).all()
    # the official box and the mask's box agree to within a few pixels
    derived = np.array([b[0] for b in t["lesion_bboxes"]])
    assert np.median(np.abs(derived - boxes)) <= 2


def test_busbra_official_folds_are_patient_disjoint(real_cohorts):
    cohort = real_cohorts["busbra"]
    for name in ("official_5fold", "official_10fold"):
        folds = official_folds(cohort, name)
        assert len(folds) == 1711
        by_patient = cohort.table.assign(fold=folds.loc[cohort.table["case_id"]].values).groupby("patient_id")["fold"]
        assert (by_patient.nunique() == 1).all()


def test_breast_counts_and_typing(real_cohorts):
    cohort = real_cohorts["breast"]
    t = cohort.table
    assert len(t) == 256
    assert Counter(t["label"]) == {"benign": 154, "malignant": 98, "normal": 4}
    assert t["age"].isna().sum() == 42 and t["age"].dtype.kind == "f"
    assert t["mask_paths"].map(len).sum() == 252
    assert t["other_mask_paths"].map(len).sum() == 14
    assert cohort.columns["birads"].kind is Kind.ORDINAL
    assert cohort.columns["birads"].levels == ("1", "2", "3", "4a", "4b", "4c", "5")
    for name in ("tissue_composition", "signs", "symptoms", "margin"):
        assert cohort.columns[name].kind is Kind.MULTI
    assert sorted(t.loc[t["case_id"] == "breast/case005", "signs"].iloc[0]) == ["nipple retraction", "palpable"]
    outcomes = set(cohort.outcome_columns())
    assert {"birads", "diagnosis", "verification", "interpretation", "classification"} <= outcomes
    assert not outcomes & set(cohort.model_inputs())
    # Pixel_size is cm per original pixel; stored as mm per stored pixel (~0.1 mm)
    assert t["pixel_spacing_mm"].between(0.05, 0.3).all()


def test_busi_duplicates_stay_in_one_fold(real_cohorts):
    cohort = mark_duplicates(real_cohorts["busi"], progress=False)
    report = duplicate_report(cohort.table)
    assert len(report) > 50  # BUSI is known to hold many near-duplicates
    assert (report["n_images"] >= 2).all()
    folds = patient_kfold(cohort.table, k=5, seed=0)
    check_folds(cohort.table, folds)
    per_group = cohort.table.assign(fold=folds.loc[cohort.table["case_id"]].values).groupby("duplicate_group")["fold"]
    assert (per_group.nunique() == 1).all()
