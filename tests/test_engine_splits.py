"""Per-cohort splits (one cohort's official fold plus another's holdout) and the exclusion
of training images that are near-duplicates of a fixed test set."""
from __future__ import annotations

import pytest

from senolab.cohorts.splits import patient_kfold
from senolab.cohorts.synthetic import generate
from senolab.engine.config import ConfigError, SplitConfig, SyntheticOptions, parse_config
from senolab.engine.data import assign_parts

OFFICIAL = "site_a:official"


@pytest.fixture(scope="module")
def two_cohorts():
    """A synthetic study whose two sites pose as two cohorts; site_a has 'official' folds 1..3."""
    cohort = generate(SyntheticOptions(n_sites=2, images_per_site=48, image_size=64).build())
    table = cohort.table
    table["cohort"] = table["site"]
    table["duplicate_group"] = table["case_id"]
    rows_a = table[table["cohort"] == "site_a"]
    cohort.splits[OFFICIAL] = patient_kfold(rows_a, k=3, seed=0) + 1
    return cohort


def per_cohort(fold: int = 1, **others) -> SplitConfig:
    return SplitConfig(kind="per_cohort", val_fraction=0.2, cohorts={
        "site_a": SplitConfig(kind="official", name=OFFICIAL, fold=fold),
        "site_b": SplitConfig(kind="holdout", test_fraction=0.25, seed=3),
        **others,
    })


def test_each_cohort_is_split_its_own_way(two_cohorts):
    table = two_cohorts.table
    parts = assign_parts(table, per_cohort(), two_cohorts)
    folds = two_cohorts.splits[OFFICIAL]
    test_a = set(parts.index[(parts == "test") & parts.index.str.contains("site_a")])
    assert test_a == set(folds.index[folds == 1])
    by_case = table.set_index("case_id")
    b = by_case[by_case["cohort"] == "site_b"]
    test_b = parts.loc[b.index] == "test"
    assert 0.15 < test_b.mean() < 0.35
    # site_b's holdout keeps patients whole, and validation is drawn from both cohorts' training part
    assert not set(b["patient_id"][test_b]) & set(b["patient_id"][~test_b])
    assert set(by_case.loc[parts.index[parts == "val"], "cohort"]) == {"site_a", "site_b"}


def test_training_duplicates_of_a_fixed_test_set_are_excluded_and_named(two_cohorts):
    table = two_cohorts.table.copy()
    folds = two_cohorts.splits[OFFICIAL]
    in_test, in_train = folds.index[folds == 1][0], folds.index[folds == 2][0]
    table.loc[table["case_id"].isin([in_test, in_train]), "duplicate_group"] = "dup00001"
    with pytest.warns(UserWarning, match=in_train):
        parts = assign_parts(table, per_cohort(), two_cohorts)
    assert parts[in_test] == "test" and parts[in_train] == "excluded"
    assert (parts == "excluded").sum() == 1


def test_per_cohort_split_errors_name_the_problem(two_cohorts):
    table = two_cohorts.table
    with pytest.raises(ValueError, match=r"missing \['site_b'\]"):
        assign_parts(table, SplitConfig(kind="per_cohort", cohorts={"site_a": per_cohort().cohorts["site_a"]}),
                     two_cohorts)
    with pytest.raises(ValueError, match=r"not in the study \['site_c'\]"):
        assign_parts(table, per_cohort(site_c=SplitConfig()), two_cohorts)
    with pytest.raises(ValueError, match=r"split.fold 0 is not a fold of 'site_a:official'; its folds: \[1, 2, 3\]"):
        assign_parts(table, per_cohort(fold=0), two_cohorts)


def test_per_cohort_config_is_validated():
    with pytest.raises(ConfigError, match="data.split: .*needs `cohorts`"):
        parse_config({"data": {"split": {"kind": "per_cohort"}}})
    with pytest.raises(ConfigError, match="only read when kind is 'per_cohort'"):
        parse_config({"data": {"split": {"kind": "holdout", "cohorts": {"busi": {}}}}})
    with pytest.raises(ConfigError, match="data.split.cohorts.busi.kind"):
        parse_config({"data": {"split": {"kind": "per_cohort", "cohorts": {"busi": {"kind": "halfout"}}}}})
