"""Mammography: the MG preparation (breast crop, canonical orientation, spacing) and the
synthetic mammography sites (source ``synthetic_mg``), measured on the arrays."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import ndimage

from senolab.cohorts.dataset import CohortDataset
from senolab.cohorts.prepare import breast_frame, prepare
from senolab.cohorts.readers import open_cohort
from senolab.cohorts.schema import Cohort
from senolab.cohorts.synthetic_mammography import (
    DENSITY_LEVELS,
    MammographyConfig,
    default_vendors,
    generate_mammography,
    render_mammogram,
    site_patients,
)
from senolab.engine.config import DataConfig
from senolab.engine.data import load_cohorts

LABEL_LEVEL, LESION_LEVEL = 250, 222


def right_breast_with_label(height=200, width=160):
    """A right breast (chest wall on the image's right edge, as displayed), a lesion in
    it, and a burned-in label in the top-left corner (the nipple side)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:height, :width]
    breast = ((width - 1 - x) / 100.0) ** 2 + ((y - 110) / 80.0) ** 2 < 1
    image = np.where(breast, 120 + rng.integers(-20, 20, (height, width)), rng.integers(0, 6, (height, width)))
    lesion = (x - 110) ** 2 + (y - 100) ** 2 < 12 ** 2
    image[lesion] = LESION_LEVEL
    image[5:20, 8:40] = LABEL_LEVEL  # a label, well apart from the breast
    image[8:10, 12:36] = 40  # its "text"
    return image.astype(np.uint8), lesion, breast


def mg_row(image, laterality=None):
    row = {"modality": "MG", "height": image.shape[0], "width": image.shape[1]}
    return row if laterality is None else {**row, "laterality": laterality}


@pytest.mark.parametrize("laterality", ["R", None])  # known, or inferred from the tissue
def test_preparation_drops_the_label_turns_the_chest_wall_left_and_keeps_masks_aligned(laterality):
    image, lesion, breast = right_breast_with_label()
    prepared, (mask,) = prepare(image, [lesion], mg_row(image, laterality))
    assert (prepared == LABEL_LEVEL).sum() == 0, "the burned-in label survived"
    assert prepared.shape[0] < image.shape[0] and prepared.shape[1] < image.shape[1]  # cropped to the breast
    tissue = prepared > 60
    assert tissue[:, :5].sum() > 5 * tissue[:, -5:].sum(), "the chest wall is not on the left"
    assert mask.shape == prepared.shape and mask.sum() == lesion.sum()
    assert (prepared[mask] == LESION_LEVEL).all() and (prepared[~mask] != LESION_LEVEL).all()


def test_a_left_breast_stays_as_it_is_and_only_a_right_one_is_mirrored():
    image, lesion, _ = right_breast_with_label()
    left, lesion_left = image[:, ::-1].copy(), lesion[:, ::-1].copy()
    assert not breast_frame(left, mg_row(left, "L")).flip and breast_frame(image, mg_row(image, "R")).flip
    from_left, (mask_left,) = prepare(left, [lesion_left], mg_row(left, "L"))
    from_right, (mask_right,) = prepare(image, [lesion], mg_row(image, "R"))
    # the mirrored breast, prepared, is the same picture (bar the label, gone in both)
    assert from_left.shape == from_right.shape and np.array_equal(mask_left, mask_right)


def test_spacing_follows_the_crop_into_the_letterbox():
    image, lesion, _ = right_breast_with_label()
    height, width = image.shape
    base = {"patient_id": "toy/p", "cohort": "toy", "site": "a", "scanner": "x", "image_path": None,
            "mask_paths": [], "other_mask_paths": [], "label": "benign", "pixel_spacing_mm": 0.2, "width": width,
            "height": height, "mask_kind": "outline", "lesion_bboxes": [[0, 0, 1, 1]], "laterality": "R"}
    rows = [{**base, "case_id": "toy/mg", "modality": "MG"}, {**base, "case_id": "toy/us", "modality": "US"}]
    cohort = Cohort("toy", pd.DataFrame(rows), arrays={r["case_id"]: (image, [lesion]) for r in rows}).validate()
    mg, us = CohortDataset(cohort, size=64)
    crop = prepare(image, [], rows[0])[0].shape
    assert max(crop) < max(image.shape)
    # the letterbox scales the crop's longer side: each input pixel covers fewer mm than
    # the stored image's longer side would give
    assert float(mg["spacing_mm"]) == pytest.approx(0.2 * max(crop) / 64)
    assert float(us["spacing_mm"]) == pytest.approx(0.2 * max(image.shape) / 64)  # ultrasound: as stored


# ----------------------------------------------------------------------------- the generator


@pytest.fixture(scope="module")
def cohort():
    return generate_mammography(MammographyConfig(), progress=False)


def test_same_config_same_arrays_another_seed_others(cohort):
    again = generate_mammography(MammographyConfig(), progress=False)
    pd.testing.assert_frame_equal(cohort.table, again.table)
    for case_id, (image, masks) in cohort.arrays.items():
        other, other_masks = again.arrays[case_id]
        assert np.array_equal(image, other) and all(np.array_equal(a, b) for a, b in zip(masks, other_masks))
    reseeded = generate_mammography(MammographyConfig(seed=1), progress=False)
    first = cohort.table["case_id"].iloc[0]
    assert not np.array_equal(reseeded.arrays[first][0], cohort.arrays[first][0])


def test_cases_are_mammograms_with_exact_masks_patients_and_metadata(cohort):
    t = cohort.validate().table
    assert set(t["modality"]) == {"MG"} and set(t["mask_kind"]) == {"outline"}
    assert set(t["site"]) == {"mg_film", "mg_digital"} and (t.groupby("site").size() == 40).all()
    assert set(t["laterality"]) == {"L", "R"} and set(t["view"]) == {"CC", "MLO"}
    assert set(t["breast_density"]) <= set(DENSITY_LEVELS) and t["breast_density"].nunique() >= 3
    assert set(t["label"]) == {"normal", "benign", "malignant"}
    assert cohort.columns["finding"].outcome and not cohort.columns["breast_density"].outcome
    assert (t.groupby("patient_id").size() == 2).all()  # two images per patient: splits must keep them together
    both_breasts = t.groupby("patient_id")["laterality"].nunique() == 2
    assert both_breasts.any() and (~both_breasts).any()
    for row in t.itertuples():
        image, masks = cohort.arrays[row.case_id]
        assert image.dtype == np.uint8 and image.shape == (row.height, row.width)
        assert (len(masks) == 1) == (row.label != "normal"), row.case_id  # every lesion is outlined
        if masks:
            ys, xs = np.nonzero(masks[0])
            assert row.lesion_bboxes == [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]


def test_the_source_is_open_by_name_and_configured_from_its_section():
    made = open_cohort("synthetic_mg", {"synthetic_mg": MammographyConfig(images_per_site=6)}, progress=False)
    assert len(made.table) == 12
    config = DataConfig.model_validate({"cohorts": ["synthetic_mg"], "deduplicate": False,
                                        "synthetic_mg": {"n_sites": 3, "images_per_site": 8, "image_size": 96}})
    loaded = load_cohorts(config, progress=False)
    assert sorted(loaded.table["site"].unique()) == ["mg_cr", "mg_digital", "mg_film"]
    assert set(loaded.table["height"]) == {96}


def breast_pixels(cohort, site):
    case_ids = cohort.table.loc[cohort.table["site"] == site, "case_id"]
    images = [cohort.arrays[c][0].astype(float) for c in case_ids]
    values = np.concatenate([i[i > 30] for i in images])
    grain = np.mean([(i - ndimage.uniform_filter(i, 3))[i > 60].std() for i in images])
    return values, grain


def test_the_film_and_the_digital_vendor_differ_in_curve_and_noise(cohort):
    film, film_grain = breast_pixels(cohort, "mg_film")
    digital, digital_grain = breast_pixels(cohort, "mg_digital")
    hist = lambda v: np.histogram(v, bins=16, range=(0, 256))[0] / v.size  # noqa: E731
    assert np.abs(hist(film) - hist(digital)).sum() / 2 > 0.15  # total variation of the breast histograms
    assert digital.mean() - film.mean() > 15  # the digital LUT shows the breast brighter
    assert film_grain > 1.2 * digital_grain  # grain and the coarse scanner against fine quantum noise


def contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Lesion against its surroundings, in units of the surroundings' spread (CNR)."""
    ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
    image = image.astype(float)
    return (image[mask].mean() - image[ring].mean()) / max(image[ring].std(), 1.0)


def test_density_lowers_the_contrast_of_the_same_mass():
    config = MammographyConfig(images_per_site=40)
    patient = next(p for p in site_patients(config, 0) if p.finding is not None and p.finding.kind == "mass")
    vendor = config.sites[0]
    shown = patient.images.index(next(im for im in patient.images if im[2]))
    cnr = {}
    for density in (0, 3):  # the same mass, the same draws: only the breast's density differs
        image, (mask,) = render_mammogram(replace(patient, density=density), shown, vendor, 128,
                                          np.random.default_rng(5))
        cnr[density] = contrast(image, mask)
    assert cnr[0] > 1.5 * cnr[3] and cnr[0] > 1.0


def test_denser_breasts_hide_masses_across_a_cohort():
    larger = generate_mammography(MammographyConfig(images_per_site=160), progress=False)
    rows = larger.table[larger.table["finding"] == "mass"]
    cnr = pd.Series([contrast(larger.arrays[c][0], larger.arrays[c][1][0]) for c in rows["case_id"]],
                    index=rows["breast_density"].to_numpy())
    fatty, dense = cnr[cnr.index.isin(["1", "2"])], cnr[cnr.index.isin(["3", "4"])]
    assert len(fatty) >= 15 and len(dense) >= 15
    assert fatty.mean() > 1.4 * dense.mean()


def test_images_show_the_display_convention_and_the_model_input_is_canonical(cohort):
    t = cohort.table
    dataset = CohortDataset(cohort, size=64)
    for i, row in t.head(16).iterrows():
        image, masks = cohort.arrays[row["case_id"]]
        tissue = image > 40
        chest_right = tissue[:, -4:].sum() > tissue[:, :4].sum()
        assert chest_right == (row["laterality"] == "R"), row["case_id"]
        item = dataset[i]
        canonical = item["image"][0].numpy()
        side = canonical[:, canonical.any(0)]  # the letterbox pads the narrower side with zeros
        assert (side[:, :3] > 0.15).sum() > (side[:, -3:] > 0.15).sum(), "chest wall not on the left"
        if masks:  # the mask followed the crop and the flip onto the lesion's pixels
            assert item["mask"].sum() > 0 and item["has_mask"]
            assert contrast((canonical * 255).astype(np.uint8), item["mask"][0].numpy() > 0.5) > -1


# ----------------------------------------------------------------------------- a study, end to end

SHRUNK_STUDY = {
    "kind": "study",
    "name": "mammography_smoke",
    "base": {"data": {"cohorts": ["synthetic_mg"],
                      "synthetic_mg": {"n_sites": 2, "images_per_site": 40, "image_size": 96},
                      "image_size": 32, "split": {"val_fraction": 0.25}},
             "model": {"encoder": "unet", "heads": {"classification": True, "segmentation": True, "bbox": False}},
             "train": {"epochs": 1, "batch_size": 8}, "evaluation": {"bootstrap": 20}},
    "protocol": "loso",
    "methods": ["erm", "adabn"],
    "embedding_figure": False,
}


def test_senolab_study_runs_a_mammography_study(tmp_path):
    shipped = yaml.safe_load(Path("configs/study_mammography.yaml").read_text())
    assert shipped["base"]["data"]["cohorts"] == ["synthetic_mg"] and shipped["protocol"] == "loso"
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(SHRUNK_STUDY))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "senolab.cli", "study", "study.yaml", "--out", "out", "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert sorted(zip(results["target_site"], results["method"])) == [
        ("mg_digital", "adabn"), ("mg_digital", "erm"), ("mg_film", "adabn"), ("mg_film", "erm")]
    assert results["auc"].between(0, 1).all()
    states = list((tmp_path / "out" / "runs").glob("*/erm/seed0/model/artifacts/preprocessing.json"))
    assert states and all('"modality": "MG"' in p.read_text() for p in states)  # the model prepares MG
