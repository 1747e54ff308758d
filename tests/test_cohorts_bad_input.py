"""Bad input is reported with its file and reason, skipped and counted, or fatal under strict.

Each test builds a small broken copy of an official layout in a temporary folder.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from senolab.cohorts.imaging import MaskValueError, mask_foreground
from senolab.cohorts.readers import read_cohort
from senolab.cohorts.schema import CohortError
from senolab.cohorts.synthetic import SyntheticConfig, write
from senolab.errors import InputError


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
    with pytest.raises(InputError, match="expected a dataset folder, found nothing"):
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


# ----------------------------------------------------------------------------- masks: one foreground rule


@pytest.mark.parametrize("values", [(0, 1), (0, 255), (0, 75)])
def test_binary_mask_foreground_is_its_nonzero_value(values):
    gray = np.full((20, 20), values[0], np.uint8)
    gray[5:10, 5:12] = values[1]
    assert mask_foreground(gray).sum() == 35


def test_near_binary_mask_is_thresholded_at_128():
    # a 0/255 mask after JPEG or bilinear resampling: values near 0 and near 255, a few in between
    gray = np.zeros((40, 40), np.uint8)
    gray[10:30, 10:30] = 250
    gray[10, 10:30] = 120  # a blurred edge: background
    gray[29, 10:30] = 140  # a blurred edge: lesion
    gray[0, 0] = 3
    foreground = mask_foreground(gray)
    assert foreground.sum() == 19 * 20 and not foreground[10].any()


@pytest.mark.parametrize("spoil", ["stray 75 in a 0/1 mask", "grey ramp", "no background"])
def test_mask_neither_binary_nor_0_255_like_is_refused(spoil):
    gray = np.zeros((20, 20), np.uint8)
    gray[5:10, 5:12] = 1
    if spoil == "stray 75 in a 0/1 mask":
        gray[0, 0] = 75
    elif spoil == "grey ramp":
        gray = np.arange(400, dtype=np.uint8).reshape(20, 20)
    else:
        gray[:] = 255
    with pytest.raises(MaskValueError, match="neither binary"):
        mask_foreground(gray)


@pytest.mark.parametrize("label", ["benign", "malignant"])
def test_all_zero_lesion_mask_is_a_problem_and_fatal_under_strict(busi, label):
    mask = busi / "Dataset_BUSI_with_GT" / label / f"{label} (2)_mask.png"
    _png(mask, np.zeros((40, 50), np.uint8))
    cohort = read_cohort(busi)
    assert f"busi/{label}/{label} (2)" not in set(cohort.table["case_id"])
    assert [(Path(p.file).name, p.reason) for p in cohort.problems] == [
        (mask.name, "lesion mask is empty (all zero)")]
    with pytest.raises(CohortError, match=r"_mask\.png: lesion mask is empty"):
        read_cohort(busi, strict=True)


def _with_a_stray_75(path: Path) -> Path:
    """The mask at ``path`` with one pixel of value 75 (as a resampled or hand-edited mask has)."""
    mask = np.asarray(Image.open(path)).copy()
    mask[0, 0] = 75
    _png(path, mask)
    return path


def test_01_mask_with_a_stray_75_is_a_problem_not_a_lesion_pixel(busi):
    path = _with_a_stray_75(busi / "Dataset_BUSI_with_GT" / "benign" / "benign (1)_mask_1.png")
    cohort = read_cohort(busi)
    assert "busi/benign/benign (1)" not in set(cohort.table["case_id"])
    (problem,) = cohort.problems
    assert Path(problem.file).name == path.name and "{0, 1, 75}" in problem.reason


def test_0_255_mask_with_a_stray_75_keeps_its_lesion(busi):
    _with_a_stray_75(busi / "Dataset_BUSI_with_GT" / "malignant" / "malignant (1)_mask.png")
    cohort = read_cohort(busi)
    t = cohort.table.set_index("case_id")
    assert not cohort.problems and t.loc["busi/malignant/malignant (1)", "lesion_bboxes"] == [[15, 10, 30, 20]]


# ----------------------------------------------------------------------------- values named by file, row, column


def _edit_sheet(breast: Path, row: int, column: str, value) -> Path:
    sheet = next(breast.glob("*.xlsx"))
    records = pd.read_excel(sheet, dtype=str)
    records.loc[row, column] = value
    records.to_excel(sheet, index=False)
    return sheet


@pytest.mark.parametrize("column, value, table_column", [
    ("Age", "abc", "age"), ("Age", "-5", "age"), ("Age", "1e9", "age"),
    ("Pixel_size", "abc", "pixel_spacing_mm"), ("Pixel_size", "0", "pixel_spacing_mm"),
])
def test_bad_number_in_the_sheet_becomes_missing_and_is_named(breast, column, value, table_column):
    sheet = _edit_sheet(breast, 1, column, value)
    cohort = read_cohort(breast)
    t = cohort.table.set_index("case_id")
    assert len(t) == 3 and np.isnan(t.loc["breast/case002", table_column])
    (problem,) = cohort.problems
    assert problem.file == str(sheet)
    assert problem.reason.startswith(f"row 3, column {column!r}: {value!r}")
    with pytest.raises(CohortError, match=f"row 3, column '{column}'"):
        read_cohort(breast, strict=True)


def test_bad_birads_cell_skips_only_its_case(breast):
    sheet = _edit_sheet(breast, 0, "BIRADS", "9")
    cohort = read_cohort(breast)
    assert cohort.table["case_id"].tolist() == ["breast/case002", "breast/case003"]
    (problem,) = cohort.problems
    assert problem.file == str(sheet) and problem.reason.startswith("row 2, column 'BIRADS': '9'")
    assert "case001.png" in problem.reason


@pytest.mark.parametrize("bbox", ["abc", "[1,2,3]", "[15,10,-4,10]"])
def test_busbra_bbox_that_does_not_parse_is_named(busbra, bbox):
    csv = busbra / "BUSBRA" / "bus_data.csv"
    records = pd.read_csv(csv, dtype=str)
    records.loc[1, "BBOX"] = bbox
    records.to_csv(csv, index=False)
    cohort = read_cohort(busbra)
    t = cohort.table.set_index("case_id")
    assert len(t) == 3 and t.loc["busbra/bus_0001-r", "bbox_reported"] is None
    assert t.loc["busbra/bus_0001-l", "bbox_reported"] == [15.0, 10.0, 30.0, 20.0]
    (problem,) = cohort.problems
    assert problem.file == str(csv) and problem.reason.startswith(f"row 3, column 'BBOX': {bbox!r}")
    with pytest.raises(CohortError, match="row 3, column 'BBOX'"):
        read_cohort(busbra, strict=True)


# ----------------------------------------------------------------------------- table paths stay in the dataset


@pytest.mark.parametrize("column", ["Image_filename", "Mask_tumor_filename"])
def test_sheet_path_leaving_the_dataset_is_refused(breast, column):
    elsewhere = breast.parent / "busi"
    image, mask = _lesion_pair((50, 50))
    _png(elsewhere / "secret.png", image if column == "Image_filename" else mask)
    sheet = _edit_sheet(breast, 0, column, "../../busi/secret.png")
    cohort = read_cohort(breast)
    assert "breast/case001" not in set(cohort.table["case_id"]) and "breast/secret" not in set(cohort.table["case_id"])
    problems = [p for p in cohort.problems if p.file == str(sheet)]
    assert len(problems) == 1 and problems[0].reason.startswith(f"row 2, column {column!r}")
    assert "leaves the dataset folder" in problems[0].reason
    assert not any("secret" in str(p) for p in cohort.table["image_path"])


@pytest.mark.parametrize("image_id, says", [("../bus_x", "does not start with 'bus_'"),
                                             ("bus_0001-l/../../bus_x", "leaves the dataset folder")])
def test_busbra_id_leaving_the_images_folder_is_refused(busbra, image_id, says):
    base = busbra / "BUSBRA"
    image, mask = _lesion_pair((60, 40))
    _png(base / "bus_x.png", image)  # outside Images/, where the row below points
    _png(base / "Masks" / "mask_x.png", mask)
    records = pd.read_csv(base / "bus_data.csv", dtype=str)
    records.loc[0, "ID"] = image_id
    records.to_csv(base / "bus_data.csv", index=False)
    cohort = read_cohort(busbra)
    assert len(cohort.table) == 2 and f"busbra/{image_id}" not in set(cohort.table["case_id"])
    reasons = [p.reason for p in cohort.problems if p.file == str(base / "bus_data.csv")]
    assert len(reasons) == 1 and reasons[0].startswith("row 2, column 'ID': ") and says in reasons[0]


def test_busbra_id_without_its_prefix_is_named_not_a_traceback(busbra):
    csv = busbra / "BUSBRA" / "bus_data.csv"
    records = pd.read_csv(csv, dtype=str)
    records.loc[2, "ID"] = "0002"
    records.to_csv(csv, index=False)
    cohort = read_cohort(busbra)
    assert len(cohort.table) == 2
    assert any(p.reason.startswith("row 4, column 'ID': '0002'") for p in cohort.problems)


def test_synthetic_table_path_leaving_the_dataset_is_refused(tmp_path):
    root = write(SyntheticConfig(images_per_site=4, image_size=64), tmp_path / "synthetic", progress=False)
    outside = tmp_path / "outside.png"
    _png(outside, np.zeros((64, 64), np.uint8))
    records = pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)
    records.loc[0, "image"] = "../outside.png"
    records.to_csv(root / "metadata.csv", index=False)
    cohort = read_cohort(root)
    assert records.loc[0, "case_id"] not in set(cohort.table["case_id"])
    assert any(p.file == str(root / "metadata.csv") and p.reason.startswith("row 2, column 'image'")
               and "leaves the dataset folder" in p.reason for p in cohort.problems)


# ----------------------------------------------------------------------------- unreadable tables and odd paths


@pytest.mark.parametrize("content, says", [(b"", "is empty"), (b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary", "CSV")])
def test_empty_or_binary_bus_data_csv_is_one_line_error(busbra, content, says):
    csv = busbra / "BUSBRA" / "bus_data.csv"
    csv.write_bytes(content)
    with pytest.raises(CohortError, match=says) as err:
        read_cohort(busbra)
    assert str(err.value).startswith(str(csv)) and "\n" not in str(err.value)


def test_breast_sheet_that_is_not_an_xlsx_is_one_line_error(breast):
    sheet = next(breast.glob("*.xlsx"))
    sheet.write_text("CaseID,Image_filename\n1,case001.png\n")
    with pytest.raises(CohortError, match="not an xlsx spreadsheet") as err:
        read_cohort(breast)
    assert str(err.value).startswith(str(sheet)) and "\n" not in str(err.value)


def test_a_file_or_symlink_loop_given_as_dataset_folder_is_called_what_it_is(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(InputError, match="expected a dataset folder, found a file"):
        read_cohort(tmp_path / "notes.txt")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(InputError, match="found a symlink loop"):
        read_cohort(tmp_path / "loop")


def test_folder_or_symlink_loop_named_like_an_image_is_reported_as_such(busi):
    benign = busi / "Dataset_BUSI_with_GT" / "benign"
    (benign / "benign (3).png").mkdir()
    (benign / "benign (4).png").symlink_to(benign / "benign (4).png")
    problems = {Path(p.file).name: p.reason for p in read_cohort(busi).problems}
    assert problems["benign (3).png"] == "the image is a folder, not a file"
    assert problems["benign (4).png"] == "the image is a symlink loop, not a file"


# ----------------------------------------------------------------------------- the command line


def senolab(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "senolab.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _one_line_error(out) -> str:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    return lines[0]


def test_cli_bad_tables_and_folders_exit_2_with_one_line(busbra, breast, tmp_path):
    (busbra / "BUSBRA" / "bus_data.csv").write_bytes(b"")
    assert "bus_data.csv" in _one_line_error(senolab("cohorts", "describe", str(busbra)))
    next(breast.glob("*.xlsx")).write_text("not a spreadsheet")
    assert "not an xlsx spreadsheet" in _one_line_error(senolab("cohorts", "describe", str(breast)))
    (tmp_path / "notes.txt").write_text("x")
    assert "found a file" in _one_line_error(senolab("cohorts", "describe", str(tmp_path / "notes.txt")))
    assert "not a known dataset layout" in _one_line_error(senolab("cohorts", "describe", str(tmp_path)))


def test_cli_strict_bad_age_exits_2_naming_row_and_column(breast):
    _edit_sheet(breast, 0, "Age", "abc")
    line = _one_line_error(senolab("cohorts", "describe", str(breast), "--strict"))
    assert ".xlsx: row 2, column 'Age': 'abc'" in line


def test_cli_describe_writes_no_file_unless_asked(busi, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = senolab("cohorts", "describe", str(busi), cwd=work)
    assert out.returncode == 0, out.stderr
    assert "busi" in out.stdout and list(work.iterdir()) == []
    out = senolab("cohorts", "describe", str(busi), "--figure", "fig.png", cwd=work)
    assert out.returncode == 0, out.stderr
    assert [p.name for p in work.iterdir()] == ["fig.png"]


def test_cli_figure_path_that_is_a_folder_is_refused_before_reading(busi, tmp_path):
    line = _one_line_error(senolab("cohorts", "describe", str(busi), "--figure", str(tmp_path)))
    assert str(tmp_path) in line and "a folder" in line


def test_cohort_without_a_readable_case_is_one_line_error(busi):
    for mask in (busi / "Dataset_BUSI_with_GT").glob("*/*_mask*.png"):
        mask.unlink()
    for image in (busi / "Dataset_BUSI_with_GT" / "normal").glob("*.png"):
        image.unlink()
    with pytest.raises(CohortError, match=r"busi: no case could be read; 4 problems, the first: .*without a lesion"):
        read_cohort(busi)
    for image in (busi / "Dataset_BUSI_with_GT").glob("*/*.png"):
        image.unlink()
    with pytest.raises(CohortError, match="busi: no cases found"):
        read_cohort(busi)
