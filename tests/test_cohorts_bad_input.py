"""Bad input is reported with its file and reason, skipped and counted, or fatal under strict.

Each test builds a small broken copy of an official layout in a temporary folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from senolab.cohorts.readers import read_cohort
from senolab.cohorts.schema import CohortError


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(path)


def _lesion_pair(size=(40, 50), value=255):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size, dtype=np.uint8)
    mask = np.zeros(size, np.uint8)
    mask[10:20, 15:30] = value
    return image, mask


@pytest.fixture
def busi(tmp_path):
    root = tmp_path / "busi"
    base = root / "Dataset_BUSI_with_GT"
    image, mask = _lesion_pair()
    for label in ("benign", "malignant", "normal"):
        for i in (1, 2):
            _png(base / label / f"{label} ({i}).png", image, "RGB")  # official BUSI: RGB
            _png(base / label / f"{label} ({i})_mask.png", mask if label != "normal" else mask * 0)
    _png(base / "benign" / "benign (1)_mask_1.png", np.where(mask > 0, 1, 0).astype(np.uint8))  # a 0/1 mask
    return root


def test_busi_reads_rgb_images_and_01_masks(busi):
    cohort = read_cohort(busi)
    t = cohort.table.set_index("case_id")
    assert len(t) == 6 and not cohort.problems
    assert len(t.loc["busi/benign/benign (1)", "mask_paths"]) == 2
    assert t.loc["busi/benign/benign (1)", "lesion_bboxes"] == [[15, 10, 30, 20], [15, 10, 30, 20]]
    assert t.loc["busi/normal/normal (1)", "mask_paths"] == []


def test_missing_folder_names_expected_layouts(tmp_path):
    with pytest.raises(CohortError, match="no such folder"):
        read_cohort(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CohortError, match="not a known dataset layout") as err:
        read_cohort(tmp_path / "empty")
    for expected in ("Dataset_BUSI_with_GT/{benign,malignant,normal}", "BUSBRA/bus_data.csv", "_tumor.png"):
        assert expected in str(err.value)


def test_truncated_image_is_reported_and_skipped_or_fatal_under_strict(busi):
    path = busi / "Dataset_BUSI_with_GT" / "benign" / "benign (2).png"
    path.write_bytes(path.read_bytes()[:60])
    cohort = read_cohort(busi)
    assert len(cohort.table) == 5
    assert [(Path(p.file).name, "truncated" in p.reason) for p in cohort.problems] == [("benign (2).png", True)]
    with pytest.raises(CohortError, match=r"benign \(2\)\.png.*--strict"):
        read_cohort(busi, strict=True)


def test_mask_of_another_size_is_reported(busi):
    _png(busi / "Dataset_BUSI_with_GT" / "malignant" / "malignant (1)_mask.png", np.zeros((10, 10), np.uint8))
    cohort = read_cohort(busi)
    assert len(cohort.table) == 5
    assert "differs from image size" in cohort.problems[0].reason


def test_mask_without_image_and_lesion_image_without_mask(busi):
    base = busi / "Dataset_BUSI_with_GT"
    _png(base / "benign" / "benign (9)_mask.png", np.zeros((40, 50), np.uint8))
    (base / "malignant" / "malignant (2)_mask.png").unlink()
    reasons = sorted(p.reason for p in read_cohort(busi).problems)
    assert reasons == ["malignant image without a lesion mask", "mask without its image"]


@pytest.fixture
def busbra(tmp_path):
    root = tmp_path / "busbra"
    base = root / "BUSBRA"
    image, mask = _lesion_pair((60, 40))
    rows = []
    for i, (case, side, path_) in enumerate([(1, "left", "benign"), (1, "right", "malignant"), (2, "single", "benign")]):
        image_id = f"bus_000{case}-{side[0]}"
        _png(base / "Images" / f"{image_id}.png", image)
        _png(base / "Masks" / f"mask_000{case}-{side[0]}.png", mask)
        rows.append({"ID": image_id, "Case": case, "Histology": "x", "Pathology": path_, "BIRADS": 3,
                     "Device": "GE Logiq 7 @10-14MHz", "Width": 40, "Height": 60, "Side": side,
                     "BBOX": "[15,10,15,10]"})
    pd.DataFrame(rows).to_csv(base / "bus_data.csv", index=False)
    pd.DataFrame({"ID": [r["ID"] for r in rows], "Pathology": [r["Pathology"] for r in rows], "kFold": [1, 1, 2]}).to_csv(
        base / "5-fold-cv.csv", index=False)
    return root


def test_busbra_row_without_file_file_without_row_and_unknown_label(busbra):
    base = busbra / "BUSBRA"
    records = pd.read_csv(base / "bus_data.csv")
    records.loc[len(records)] = {**records.iloc[0].to_dict(), "ID": "bus_0009-l"}  # a row without its file
    records.loc[2, "Pathology"] = "uncertain"  # an unknown label
    records.to_csv(base / "bus_data.csv", index=False)
    _png(base / "Images" / "bus_0007-s.png", np.zeros((60, 40), np.uint8))  # a file without its row
    cohort = read_cohort(busbra)
    assert len(cohort.table) == 2
    problems = {Path(p.file).name: p.reason for p in cohort.problems}
    assert problems["bus_0007-s.png"] == "image without its row in bus_data.csv"
    assert problems["bus_0009-l.png"] == "image file is missing"
    assert "unknown label 'uncertain'" in problems["bus_0002-s.png"]
    assert cohort.table["patient_id"].tolist() == ["busbra/1", "busbra/1"]
    assert cohort.splits["official_5fold"].to_dict() == {"busbra/bus_0001-l": 1, "busbra/bus_0001-r": 1}


@pytest.fixture
def breast(tmp_path):
    root = tmp_path / "breast"
    folder = root / "BrEaST-Lesions_USG-images_and_masks"
    image, mask = _lesion_pair((50, 50))
    rgba = np.dstack([image, image // 2, image, np.full_like(image, 255)])  # tinted RGBA, as officially shipped
    rows = []
    for i, label in enumerate(["benign", "malignant", "normal"], start=1):
        _png(folder / f"case00{i}.png", rgba)
        if label != "normal":
            _png(folder / f"case00{i}_tumor.png", np.where(mask > 0, 75, 0).astype(np.uint8))  # a stray-valued mask
        rows.append({"CaseID": i, "Image_filename": f"case00{i}.png",
                     "Mask_tumor_filename": f"case00{i}_tumor.png" if label != "normal" else None,
                     "Mask_other_filename": None, "Pixel_size": 0.01, "Age": "not available" if i == 1 else 50,
                     "Tissue_composition": "lactating&homogeneous: fat", "Signs": "no", "Symptoms": "not available",
                     "Shape": "oval", "Margin": "not circumscribed - angular&indistinct", "Echogenicity": "hypoechoic",
                     "Posterior_features": "no", "Halo": "no", "Calcifications": "no", "Skin_thickening": "no",
                     "Interpretation": "Fibroadenoma", "BIRADS": "4a", "Verification": "confirmed by biopsy",
                     "Diagnosis": "Fibroadenoma", "Classification": label})
    pd.DataFrame(rows).to_excel(root / "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.xlsx", index=False)
    return root


def test_breast_rgba_typing_and_spacing(breast):
    cohort = read_cohort(breast)
    t = cohort.table.set_index("case_id")
    assert not cohort.problems and len(t) == 3
    assert np.isnan(t.loc["breast/case001", "age"]) and t.loc["breast/case002", "age"] == 50
    assert t.loc["breast/case001", "tissue_composition"] == ["homogeneous: fat", "lactating"]
    assert t.loc["breast/case001", "margin"] == ["angular", "indistinct"]
    assert t.loc["breast/case001", "symptoms"] is None
    assert t.loc["breast/case001", "pixel_spacing_mm"] == pytest.approx(0.1)  # 0.01 cm, no manifest
    assert t.loc["breast/case001", "lesion_bboxes"] == [[15, 10, 30, 20]]
    assert t.loc["breast/case003", "mask_paths"] == []


def test_breast_manifest_rescales_pixel_size(breast):
    (breast / "derived_manifest.csv").write_text(
        "file,orig_width,orig_height,width,height,sha256\ncase001.png,100,100,50,50,x\n")
    t = read_cohort(breast).table.set_index("case_id")
    assert t.loc["breast/case001", "pixel_spacing_mm"] == pytest.approx(0.2)  # pixels twice as large
    assert t.loc["breast/case002", "pixel_spacing_mm"] == pytest.approx(0.1)


def test_breast_spreadsheet_and_files_disagree(breast):
    folder = breast / "BrEaST-Lesions_USG-images_and_masks"
    (folder / "case002.png").unlink()
    _png(folder / "case009.png", np.zeros((50, 50), np.uint8))
    sheet = next(breast.glob("*.xlsx"))
    records = pd.read_excel(sheet)
    records.loc[0, "Classification"] = "suspicious"
    records.to_excel(sheet, index=False)
    cohort = read_cohort(breast)
    problems = {Path(p.file).name: p.reason for p in cohort.problems}
    assert problems == {
        "case009.png": "file without its row in the clinical spreadsheet",
        "case002.png": "image file is missing",
        "case001.png": "unknown label 'suspicious'; expected one of ('normal', 'benign', 'malignant')",
    }
    assert cohort.table["case_id"].tolist() == ["breast/case003"]
    with pytest.raises(CohortError):
        read_cohort(breast, strict=True)
