"""The registries that replaced if-chains: split kinds, the config's head flags, cohort sources."""
from __future__ import annotations

import re
from typing import get_args

import numpy as np
import pandas as pd
import pytest

from senolab.cohorts.readers import SOURCES, open_cohort
from senolab.cohorts.splits import patient_kfold
from senolab.cohorts.synthetic import generate
from senolab.engine.config import DataConfig, HeadsConfig, SplitConfig, SyntheticOptions, parse_config
from senolab.engine.data import SPLITS, assign_parts, load_cohorts, prepare
from senolab.engine.trainer import HEADS_BY_FLAG, model_from_config
from senolab.errors import InputError
from senolab.models import HEADS

SMALL = SyntheticOptions(n_sites=2, images_per_site=24, image_size=64)
OFFICIAL = "site_a:official"


@pytest.fixture(scope="module")
def two_cohorts():
    """Two synthetic sites posing as two cohorts, de-duplicated; site_a has 'official' folds 1..3."""
    cohort = load_cohorts(DataConfig(synthetic=SMALL), progress=False)
    table = cohort.table
    table["cohort"] = table["site"]
    cohort.splits[OFFICIAL] = patient_kfold(table[table["cohort"] == "site_a"], k=3, seed=0) + 1
    return cohort


# One split per kind, and the test part it must give (holdout's is random: checked by size).
SPLIT_OF_KIND = {
    "holdout": SplitConfig(kind="holdout", test_fraction=0.25),
    "kfold": SplitConfig(kind="kfold", k=3, fold=1),
    "official": SplitConfig(kind="official", name=OFFICIAL, fold=2),
    "sites": SplitConfig(kind="sites", test_sites=["site_b"]),
    "per_cohort": SplitConfig(kind="per_cohort", cohorts={
        "site_a": SplitConfig(kind="official", name=OFFICIAL, fold=1),
        "site_b": SplitConfig(kind="kfold", k=3, fold=0),
    }),
}


def expected_test(kind: str, cohort) -> set[str]:
    table, official = cohort.table, cohort.splits[OFFICIAL]
    if kind == "kfold":
        folds = patient_kfold(table, 3, seed=0)
        return set(folds.index[folds == 1])
    if kind == "official":
        return set(official.index[official == 2])
    if kind == "sites":
        return set(table["case_id"][table["site"] == "site_b"])
    own = patient_kfold(table[table["site"] == "site_b"], 3, seed=0)  # per_cohort
    return set(official.index[official == 1]) | set(own.index[own == 0])


def test_split_kinds_are_the_configs_kinds():
    assert sorted(get_args(SplitConfig.model_fields["kind"].annotation)) == SPLITS.names()


@pytest.mark.parametrize("kind", SPLITS.names())
def test_every_split_kind_gives_patient_disjoint_parts(kind, two_cohorts):
    table = two_cohorts.table
    parts = assign_parts(table, SPLIT_OF_KIND[kind], two_cohorts)
    patients = table.set_index("case_id")["patient_id"]
    by_part = {part: set(patients[parts.index[parts == part]]) for part in ("train", "val", "test")}
    assert all(by_part.values()), f"{kind}: an empty part"
    assert not (by_part["train"] & by_part["val"] or by_part["train"] & by_part["test"]
                or by_part["val"] & by_part["test"])
    test = set(parts.index[parts == "test"])
    if kind == "holdout":
        assert abs(len(test) / len(table) - 0.25) < 0.1
    else:
        assert test == expected_test(kind, two_cohorts)


def test_an_unknown_split_kind_lists_the_known_ones(two_cohorts):
    known = ", ".join(SPLITS.names())
    with pytest.raises(KeyError, match=re.escape(f"unknown split kind 'leave_one_out'; known: {known}")):
        assign_parts(two_cohorts.table, SplitConfig.model_construct(kind="leave_one_out"), two_cohorts)


def test_the_synthetic_source_gives_the_generators_cohort():
    config = DataConfig(synthetic=SMALL, deduplicate=False)
    loaded, generated = load_cohorts(config, progress=False), generate(SMALL.build(), progress=False)
    pd.testing.assert_frame_equal(loaded.table, generated.table)
    assert loaded.arrays.keys() == generated.arrays.keys()
    assert all(np.array_equal(loaded.arrays[k][0], generated.arrays[k][0]) for k in generated.arrays)
    reseeded = DataConfig(synthetic=SMALL.model_copy(update={"seed": 1}), deduplicate=False)
    assert not np.array_equal(load_cohorts(reseeded, progress=False).arrays[next(iter(generated.arrays))][0],
                              generated.arrays[next(iter(generated.arrays))][0])


def test_a_cohort_entry_that_is_no_source_is_a_dataset_folder(tmp_path):
    assert "synthetic" in SOURCES
    with pytest.raises(InputError, match="dataset folder"):
        open_cohort(str(tmp_path / "nowhere"), {})


def test_head_flags_are_the_configs_and_name_registered_heads():
    assert list(HEADS_BY_FLAG) == list(HeadsConfig.model_fields)
    assert all(head in HEADS for head, _ in HEADS_BY_FLAG.values())


def test_a_model_has_the_heads_its_config_enables():
    config = parse_config({"data": {"synthetic": SMALL.model_dump(), "image_size": 32},
                           "model": {"heads": {"classification": True, "segmentation": False, "bbox": True}}})
    model = model_from_config(config, prepare(config.data, progress=False))
    assert list(model.heads) == ["cls", "box"]
    assert model.heads["cls"].classifier[-1].out_features == 2  # sized for the binary classes, not the default 3


def test_study_protocols_and_selection_rules_match_their_config_fields():
    """A study's protocol and selection rule are registries; the config's choices are their names."""
    import typing

    from senolab.runners.study import PROTOCOLS, SELECTIONS, StudyConfig

    fields = StudyConfig.model_fields
    assert sorted(typing.get_args(fields["protocol"].annotation)) == PROTOCOLS.names()
    assert sorted(typing.get_args(fields["selection"].annotation)) == SELECTIONS.names()
    assert SELECTIONS.get("source_val").score is None  # the trainer's own source-validation score
    assert all(SELECTIONS.get(name).score is not None for name in ("target_entropy", "oracle"))
