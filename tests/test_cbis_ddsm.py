"""The CBIS-DDSM reader on a miniature of the official TCIA release written here with pydicom:
the DICOM tree as the NBIA Data Retriever names it, and the four case-description CSVs."""
from __future__ import annotations

import csv
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO
from dicom_builders import mammogram_dicom
from senolab.cohorts.readers import detect_layout, read_cohort
from senolab.cohorts.schema import CohortError
from senolab.cohorts.splits import official_folds

W, H = 48, 64  # a full mammogram's width and height here
MASS_HEADER = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
               "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
               "image file path", "cropped image file path", "ROI mask file path"]
CALC_HEADER = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
               "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
               "image file path", "cropped image file path", "ROI mask file path"]

# (csv file, subject, abnormality id, shape/type, margins/distribution, assessment, pathology, subtlety,
#  density, lesion box x0 y0 x1 y1, how the ROI series holds mask and crop)
ROWS = [
    ("mass_case_description_train_set.csv", "Mass-Training_P_00001_LEFT_CC", 1, "IRREGULAR-ARCHITECTURAL_DISTORTION",
     "SPICULATED", "5", "MALIGNANT", "4", "3", (5, 10, 15, 20), "mask first"),
    ("mass_case_description_train_set.csv", "Mass-Training_P_00001_LEFT_CC", 2, "OVAL", "CIRCUMSCRIBED", "3",
     "BENIGN", "2", "3", (30, 40, 40, 50), "crop first"),
    ("mass_case_description_train_set.csv", "Mass-Training_P_00001_LEFT_MLO", 1, "ROUND", "N/A", "2",
     "BENIGN_WITHOUT_CALLBACK", "5", "3", (8, 8, 20, 16), "two series"),
    ("mass_case_description_test_set.csv", "Mass-Test_P_00003_RIGHT_MLO", 1, "LOBULATED", "ILL_DEFINED", "4",
     "MALIGNANT", "3", "2", (10, 30, 30, 60), "mask first"),
    ("calc_case_description_train_set.csv", "Calc-Training_P_00004_LEFT_CC", 1, "PUNCTATE", "CLUSTERED", "2",
     "BENIGN", "3", "1", (20, 20, 28, 26), "crop first"),
    ("calc_case_description_test_set.csv", "Calc-Test_P_00002_RIGHT_CC", 1, "PLEOMORPHIC-FINE_LINEAR_BRANCHING",
     "SEGMENTAL", "4", "BENIGN", "1", "4", (2, 50, 12, 62), "mask first"),
]


def _uid(*parts: str) -> str:
    """A DICOM-like UID, the same for the same parts in every run."""
    return "1.3.6.1.4.1.9590.100.1.2." + str(zlib.crc32("/".join(parts).encode()))


def _series_folder(subject: Path, description: str, uid: str) -> Path:
    """Folders as the NBIA Data Retriever names them: date-study and number-description-UID tail."""
    folder = subject / f"07-20-2016-DDSM-{uid[-5:]}" / f"1.000000-{description}-{uid[-5:]}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_full(tree: Path, subject: str) -> str:
    uid = _uid(subject, "full")
    side, view = subject.split("_")[-2:]
    pixels = np.random.default_rng(len(subject)).integers(0, 4096, (H, W), dtype=np.uint16)
    mammogram_dicom(_series_folder(tree / subject, "full mammogram images", uid) / "1-1.dcm", pixels,
                    laterality=side[0], view=view, spacing=(0.05, 0.05), patient_id=subject,
                    SeriesDescription="full mammogram images")
    return f"{subject}/{_uid(subject, 'study')}/{uid}/000000.dcm"


def _write_roi(tree: Path, roi_subject: str, box, holding: str, mask_size=(W, H)) -> tuple[str, str]:
    """The abnormality's ROI mask (0/255, the mammogram's size) and its cropped image."""
    mask = np.zeros(mask_size[::-1], np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    crop = np.random.default_rng(1).integers(0, 4096, (y1 - y0 + 4, x1 - x0 + 4), dtype=np.uint16)
    uid = _uid(roi_subject, "roi")
    if holding == "two series":
        mask_file = _series_folder(tree / roi_subject, "ROI mask images", uid) / "1-1.dcm"
        crop_file = _series_folder(tree / roi_subject, "cropped images", _uid(roi_subject, "crop")) / "1-1.dcm"
    else:  # one "ROI mask images" series holds both, in either order
        folder = _series_folder(tree / roi_subject, "ROI mask images", uid)
        names = ("1-1.dcm", "1-2.dcm") if holding == "mask first" else ("1-2.dcm", "1-1.dcm")
        mask_file, crop_file = folder / names[0], folder / names[1]
    mammogram_dicom(mask_file, mask, SeriesDescription="ROI mask images")
    mammogram_dicom(crop_file, crop, SeriesDescription="cropped images")
    study = _uid(roi_subject, "study")
    return f"{roi_subject}/{study}/{uid}/000000.dcm", f"{roi_subject}/{study}/{uid}/000001.dcm\n"


def build_release(root: Path, rows=ROWS, drop_column: str | None = None) -> Path:
    tree = root / "CBIS-DDSM"
    tables: dict[str, list[list[str]]] = {}
    full_paths: dict[str, str] = {}
    for name, subject, number, shape, margins, assessment, pathology, subtlety, density, box, holding in rows:
        if subject not in full_paths:
            full_paths[subject] = _write_full(tree, subject)
        crop_path, mask_path = _write_roi(tree, f"{subject}_{number}", box, holding)
        _, p, number_part, side, view = subject.split("_")  # Mass-Training, P, 00001, LEFT, CC
        patient = f"{p}_{number_part}"
        kind = "mass" if name.startswith("mass") else "calcification"
        tables.setdefault(name, []).append([patient, density, side, view, str(number), kind, shape, margins, assessment,
                                            pathology, subtlety, full_paths[subject], crop_path, mask_path])
    for name, records in tables.items():
        header = MASS_HEADER if name.startswith("mass") else CALC_HEADER
        keep = [i for i, column in enumerate(header) if column != drop_column]
        with open(root / name, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow([header[i] for i in keep])
            writer.writerows([[record[i] for i in keep] for record in records])
    return root


@pytest.fixture()
def release(tmp_path):
    return build_release(tmp_path)


def _by_subject(cohort):
    t = cohort.table
    return t.set_index(t["case_id"].str.removeprefix("cbis_ddsm/"))


def test_one_case_per_mammogram_with_its_abnormalities_combined(release):
    assert detect_layout(release) == "cbis_ddsm"
    cohort = read_cohort(release, progress=False)
    assert not cohort.problems
    t = _by_subject(cohort)
    assert sorted(t.index) == sorted({row[1] for row in ROWS})  # 5 mammograms from 6 rows
    cc = t.loc["Mass-Training_P_00001_LEFT_CC"]
    assert cc["label"] == "malignant" and cc["pathology"] == "MALIGNANT"  # one malignant mass of two
    assert cc["lesion_bboxes"] == [[5, 10, 15, 20], [30, 40, 40, 50]]  # each mask, not the crop
    assert all("ROI mask images" in p for p in cc["mask_paths"])
    assert cc["assessment"] == "5" and cc["subtlety"] == "4" and cc["abnormality_type"] == ["mass"]
    assert cc["mass_shape"] == ["ARCHITECTURAL_DISTORTION", "IRREGULAR", "OVAL"]
    assert cc["mass_margins"] == ["CIRCUMSCRIBED", "SPICULATED"] and cc["calc_type"] is None
    mlo = t.loc["Mass-Training_P_00001_LEFT_MLO"]
    assert mlo["label"] == "benign" and mlo["pathology"] == "BENIGN_WITHOUT_CALLBACK"
    assert mlo["mass_margins"] is None  # N/A
    assert "cropped" not in mlo["mask_paths"][0] and mlo["lesion_bboxes"] == [[8, 8, 20, 16]]
    calc = t.loc["Calc-Test_P_00002_RIGHT_CC"]
    assert calc["calc_type"] == ["FINE_LINEAR_BRANCHING", "PLEOMORPHIC"] and calc["calc_distribution"] == ["SEGMENTAL"]
    assert calc["breast_density"] == "4"  # the calc CSVs spell it "breast density"
    assert calc["laterality"] == "R" and calc["view"] == "CC"
    assert set(t["modality"]) == {"MG"} and set(t["mask_kind"]) == {"outline"}
    assert np.allclose(t["pixel_spacing_mm"], 0.05)  # from the DICOM header: no CSV has it
    assert (t["width"] == W).all() and (t["height"] == H).all()


def test_patients_split_and_outcomes(release):
    cohort = read_cohort(release, progress=False)
    t = _by_subject(cohort)
    assert t["patient_id"].nunique() == 4
    assert t.loc["Mass-Training_P_00001_LEFT_CC", "patient_id"] == t.loc["Mass-Training_P_00001_LEFT_MLO",
                                                                         "patient_id"] == "cbis_ddsm/P_00001"
    folds = official_folds(cohort, "official_train_test")  # checked for patient leakage too
    assert folds.to_dict() == {f"cbis_ddsm/{s}": int("-Test_" in s) for s in t.index}
    assert cohort.model_inputs() == ["laterality", "view", "breast_density"]
    assert set(cohort.outcome_columns()) == {"assessment", "pathology", "abnormality_type", "subtlety",
                                             "mass_shape", "mass_margins", "calc_type", "calc_distribution"}


def test_a_row_without_its_dicom_is_reported(release):
    full = next((release / "CBIS-DDSM" / "Calc-Test_P_00002_RIGHT_CC").rglob("*.dcm"))
    full.unlink()
    cohort = read_cohort(release, progress=False)
    (problem,) = cohort.problems
    assert Path(problem.file).name == "calc_case_description_test_set.csv"
    assert "row 2, column 'image file path'" in problem.reason and "names no DICOM" in problem.reason
    assert len(cohort) == 4
    with pytest.raises(CohortError, match="names no DICOM"):
        read_cohort(release, strict=True, progress=False)


def test_a_mask_of_another_size_is_reported(tmp_path):
    root = build_release(tmp_path)
    roi = root / "CBIS-DDSM" / "Mass-Test_P_00003_RIGHT_MLO_1"
    mask = next(p for p in roi.rglob("*.dcm") if "1-1" in p.name)  # "mask first"
    small = np.zeros((H, W - 8), np.uint8)
    small[5:9, 5:9] = 255
    mammogram_dicom(mask, small)
    cohort = read_cohort(root, progress=False)
    (problem,) = cohort.problems
    assert "mask size differs from image size 48x64" in problem.reason and "40x64" in problem.reason
    assert "Mass-Test_P_00003_RIGHT_MLO" not in _by_subject(cohort).index


def test_a_csv_missing_a_column_is_a_one_line_error(tmp_path):
    root = build_release(tmp_path, drop_column="pathology")
    with pytest.raises(CohortError, match=r"missing columns \['pathology'\]"):
        read_cohort(root, progress=False)
    out = subprocess.run([sys.executable, "-m", "senolab.cli", "cohorts", "describe", str(root)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2 and "missing columns ['pathology']" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_a_row_that_contradicts_its_subject_is_reported(tmp_path):
    rows = [ROWS[0][:8] + ("7",) + ROWS[0][9:], *ROWS[1:]]  # breast density 7
    root = build_release(tmp_path, rows)
    path = root / "mass_case_description_test_set.csv"
    path.write_text(path.read_text().replace("P_00003,2,RIGHT", "P_00003,2,LEFT"))  # the subject says RIGHT
    cohort = read_cohort(root, progress=False)
    reasons = [p.reason for p in cohort.problems]
    assert any("column 'breast_density': '7' is not one of" in r for r in reasons), reasons
    assert any("column 'left or right breast': 'LEFT' disagrees" in r for r in reasons), reasons
    t = _by_subject(cohort)
    assert t.loc["Mass-Training_P_00001_LEFT_CC", "breast_density"] == "3"  # the other row's value
    assert "Mass-Test_P_00003_RIGHT_MLO" not in t.index


def test_retriever_folder_and_a_mammogram_told_by_its_series_uid(tmp_path):
    """The NBIA Data Retriever writes the tree inside ``manifest-<n>/``; a subject folder
    holding a second series is resolved by the series UID of the CSV path (its last digits)."""
    root = build_release(tmp_path)
    retriever = root / "manifest-1506796355038"
    retriever.mkdir()
    (root / "CBIS-DDSM").rename(retriever / "CBIS-DDSM")
    subject = retriever / "CBIS-DDSM" / "Calc-Training_P_00004_LEFT_CC"
    (right,) = subject.rglob("*.dcm")
    other = _series_folder(subject, "full mammogram images", "1.2.3.99999") / "1-1.dcm"
    mammogram_dicom(other, np.zeros((H, W), np.uint16))
    cohort = read_cohort(root, progress=False)
    assert not cohort.problems
    assert _by_subject(cohort).loc["Calc-Training_P_00004_LEFT_CC", "image_path"] == str(right)
