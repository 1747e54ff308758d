"""Splits, leakage checks, metadata encoding and the torch Dataset on small in-memory cohorts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from senolab.cohorts.dataset import CohortDataset, letterbox
from senolab.cohorts.schema import Cohort, Column, Kind, LeakageError
from senolab.cohorts.splits import (check_folds, check_leakage, holdout, leave_one_site_out, patient_kfold,
                                    read_split, split_groups, write_split)
from senolab.cohorts.tabular import MetadataEncoder, OutcomeInputError

COLUMNS = {
    "age": Column("age", Kind.NUMERIC),
    "tissue": Column("tissue", Kind.CATEGORICAL, ("fat", "dense")),
    "symptoms": Column("symptoms", Kind.MULTI, ("lump", "pain")),
    "birads": Column("birads", Kind.ORDINAL, ("2", "3", "4", "5"), outcome=True),
}


def make_cohort(n_patients=30, images_per_patient=2, size=(48, 64), seed=0) -> Cohort:
    rng = np.random.default_rng(seed)
    rows, arrays = [], {}
    for p in range(n_patients):
        label = ["normal", "benign", "malignant"][p % 3]
        for k in range(images_per_patient):
            case_id = f"toy/p{p:03d}_{k}"
            image = rng.integers(0, 256, size, dtype=np.uint8)
            masks = []
            if label != "normal":
                m = np.zeros(size, bool)
                m[10:20, 20 + k : 40 + k] = True
                masks.append(m)
            arrays[case_id] = (image, masks)
            rows.append({
                "case_id": case_id, "patient_id": f"toy/p{p:03d}", "cohort": "toy", "site": f"s{p % 2}",
                "scanner": "x", "modality": "US", "image_path": None, "mask_paths": [], "other_mask_paths": [], "label": label,
                "pixel_spacing_mm": 0.1, "width": size[1], "height": size[0], "mask_kind": "outline",
                "lesion_bboxes": [[20 + k, 10, 40 + k, 20]] if masks else [],
                "age": float(40 + p) if p % 4 else np.nan, "tissue": ["fat", "dense", None][p % 3],
                "symptoms": [["lump"], [], None][p % 3], "birads": ["2", "3", "5"][p % 3],
            })
    return Cohort("toy", pd.DataFrame(rows), dict(COLUMNS), arrays=arrays).validate()


def test_kfold_is_patient_and_duplicate_disjoint_and_stratified():
    t = make_cohort().table
    # tie two patients through a near-duplicate: they must land in one fold
    t["duplicate_group"] = t["case_id"]
    t.loc[t["case_id"].isin(["toy/p000_0", "toy/p005_1"]), "duplicate_group"] = "dup00001"
    groups = split_groups(t)
    assert groups[t["patient_id"] == "toy/p000"].iloc[0] == groups[t["patient_id"] == "toy/p005"].iloc[0]
    folds = patient_kfold(t, k=5, seed=1)
    check_folds(t, folds)
    assert folds.loc["toy/p000_0"] == folds.loc["toy/p005_0"]
    counts = pd.crosstab(folds.loc[t["case_id"]].values, t["label"].values)
    assert counts.min().min() >= 2  # every fold sees every class
    assert patient_kfold(t, k=5, seed=1).equals(folds)  # seeded


def test_leakage_check_raises_on_shared_patient_or_duplicate():
    t = make_cohort().table
    with pytest.raises(LeakageError, match="patient_id"):
        check_leakage(t, ["toy/p000_0"], ["toy/p000_1"])
    t["duplicate_group"] = t["case_id"]
    t.loc[t["case_id"].isin(["toy/p001_0", "toy/p002_0"]), "duplicate_group"] = "dup7"
    with pytest.raises(LeakageError, match="duplicate_group"):
        check_leakage(t, ["toy/p001_0", "toy/p001_1"], ["toy/p002_0", "toy/p002_1"])
    check_leakage(t, ["toy/p001_0", "toy/p001_1"], ["toy/p003_0"])


def test_holdout_loso_and_split_file_round_trip(tmp_path):
    t = make_cohort().table
    part = holdout(t, 0.2, seed=0)
    assert 0.1 < (part == "test").mean() < 0.3
    check_leakage(t, part.index[part == "train"], part.index[part == "test"])
    loso = leave_one_site_out(t)
    assert sorted(loso) == ["s0", "s1"]
    assert set(t.loc[t["case_id"].isin(loso["s0"].index[loso["s0"] == "test"]), "site"]) == {"s0"}
    path = write_split(tmp_path / "split.json", part, {"seed": 0})
    assert read_split(path).equals(part)


def test_metadata_encoder_types_missing_and_outcome_refusal():
    cohort = make_cohort()
    enc = MetadataEncoder(cohort.columns)
    assert enc.inputs == ["age", "tissue", "symptoms"]  # birads is an outcome
    with pytest.raises(OutcomeInputError, match="birads"):
        MetadataEncoder(cohort.columns, inputs=["age", "birads"])
    opted = MetadataEncoder(cohort.columns, inputs=["age", "birads"], opt_in=["birads"])
    assert opted.opted_in == ["birads"]
    train = cohort.table.iloc[:40]
    out = enc.fit(train).transform(cohort.table)
    assert out["meta_num"].shape == (60, 3) and out["meta_cat"].shape == (60, 1)
    age_present = ~out["meta_num_missing"][:, 0]
    assert age_present.sum() == cohort.table["age"].notna().sum()
    assert abs(out["meta_num"][:40][age_present[:40], 0].mean()) < 1e-6  # standardised on train
    assert (out["meta_num"][out["meta_num_missing"]] == 0).all()
    assert set(out["meta_cat"][:, 0]) == {0, 1, 2}  # fat=1, dense=2, missing=0
    lump = cohort.table["symptoms"].map(lambda s: s is not None and "lump" in s).to_numpy()
    assert (out["meta_num"][:, 1] == lump).all()


def test_letterbox_keeps_aspect_ratio():
    image = np.full((50, 100), 200, np.uint8)
    mask = np.zeros((50, 100), bool)
    mask[10:20, 40:60] = True
    boxed = letterbox(image, [mask], 64)
    rows_with_image = np.nonzero(boxed.image.max(1) > 0)[0]
    assert len(rows_with_image) == 32 and rows_with_image[0] == 16  # 50x100 -> 32x64, centred
    ys, xs = np.nonzero(boxed.mask)
    assert xs.min() == pytest.approx(40 * 0.64, abs=1) and ys.min() == pytest.approx(16 + 10 * 0.64, abs=1)


def test_dataset_batch_contract_and_seeded_augmentation():
    cohort = make_cohort()
    enc = MetadataEncoder(cohort.columns).fit(cohort.table)
    ds = CohortDataset(cohort, size=32, augment=True, seed=3, metadata=enc, classes=("benign", "malignant"))
    batch = torch.utils.data.default_collate([ds[i] for i in range(6)])
    assert batch["image"].shape == (6, 1, 32, 32) and batch["mask"].shape == (6, 1, 32, 32)
    assert batch["bbox"].shape == (6, 4) and batch["meta_num"].shape == (6, 3)
    assert batch["has_label"].tolist() == [False, False, True, True, True, True]  # normals: no binary label
    assert batch["has_bbox"].tolist() == [False, False, True, True, True, True]
    assert batch["label"][2:].tolist() == [0, 0, 1, 1]
    again = CohortDataset(cohort, size=32, augment=True, seed=3, metadata=enc)
    assert torch.equal(again[2]["image"], ds[2]["image"])
    ds.set_epoch(1)
    assert not torch.equal(again[2]["image"], ds[2]["image"])
    plain = CohortDataset(cohort, size=32)
    x0, y0, x1, y1 = plain[2]["bbox"].tolist()
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    ys, xs = torch.nonzero(plain[2]["mask"][0], as_tuple=True)
    assert x0 == pytest.approx(xs.min().item() / 32) and y1 == pytest.approx((ys.max().item() + 1) / 32)
    unlabelled = CohortDataset(cohort, size=32, labelled=False)
    assert not unlabelled[2]["has_label"]


def test_a_pair_is_linked_within_the_smaller_of_its_modalities_distances():
    from senolab.cohorts.dedup import duplicate_groups

    hashes = np.array([0x0, 0x3, 0xF00, 0xF03], dtype=np.uint64)  # two pairs 2 bits apart, 4+ between
    limits = np.array([10, 10, 1, 1])  # two ultrasound images, then two mammograms
    groups = duplicate_groups(hashes, limits)
    assert groups[0] == groups[1]  # ultrasound: a near-duplicate
    assert groups[2] != groups[3]  # mammography: 2 bits is another woman's film
