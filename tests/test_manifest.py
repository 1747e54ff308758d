"""A case manifest (CSV or JSON plus its YAML sidecar) reads any cohort: typed metadata,
relative paths, DICOM headers, every bad cell named by row and column, and the starter
manifest of `senolab cohorts manifest` read back by `senolab cohorts describe`.

Every cohort here is real files in a temporary folder; the command-line tests run the
installed CLI in a subprocess from that folder, with relative paths.
"""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import dicom_builders
import yaml
from PIL import Image

from senolab.cohorts.dedup import mark_duplicates
from senolab.cohorts.describe import describe
from senolab.cohorts.readers import detect_layout, read_cohort
from senolab.cohorts.schema import CohortError, Kind
from senolab.cohorts.tabular import OutcomeInputError, select_inputs

SIDECAR = {
    "name": "clinic",
    "modality": "US",
    "columns": {
        "age": {"kind": "numeric", "unit": "years", "range": [18, 100]},
        "density": {"kind": "ordinal", "levels": ["A", "B", "C", "D"]},
        "shape": {"kind": "categorical", "levels": ["oval", "round", "irregular"]},
        "symptoms": {"kind": "multi", "levels": ["pain", "lump", "discharge"], "separator": "&"},
        "birads": {"kind": "ordinal", "levels": [2, 3, 4, 5], "outcome": True},
    },
}
LABELS = ("normal", "benign", "malignant")


def png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path.name


def gray(seed: int, size=(48, 48)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size, dtype=np.uint8)


def square_mask(size=(48, 48)) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    mask[10:20, 12:30] = 255
    return mask


def case_rows(folder: Path, n: int = 6, sites=("clinic",), start: int = 0, metadata: bool = True) -> list[dict]:
    """``n`` images per site, classes in turn; benign ones with a mask file, malignant ones
    with a box; the metadata cells of :data:`SIDECAR` filled unless not ``metadata``."""
    rows = []
    for s, site in enumerate(sites):
        for i in range(n):
            k = start + s * n + i
            label = LABELS[k % 3]
            image = f"images/{site}/img{k}.png"
            png(folder / image, gray(k))
            row = {"image": image, "label": label, "patient": f"p{k // 2}", "site": site,
                   "age": str(40 + k), "density": "ABCD"[k % 4], "shape": "oval", "symptoms": "pain&lump",
                   "birads": str(2 + k % 4), "mask": "", "box": ""}
            if label == "benign":
                row["mask"] = f"images/{site}/img{k}_mask.png"
                png(folder / row["mask"], square_mask())
            elif label == "malignant":
                row["box"] = "5,6,25,30"
            rows.append(row if metadata else {k: v for k, v in row.items() if k not in SIDECAR["columns"]})
    return rows


def write_manifest(folder: Path, rows: list[dict], fmt: str = "csv", sidecar: dict | None = SIDECAR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if sidecar is not None:
        (folder / "manifest.yaml").write_text(yaml.safe_dump(sidecar))
    if fmt == "json":
        listed = [{k: (_json_value(k, v)) for k, v in row.items() if v != ""} for row in rows]
        (folder / "manifest.json").write_text(json.dumps(listed))
        return folder / "manifest.json"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with (folder / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


def _json_value(key: str, value: str):
    """The JSON spelling of a CSV cell: masks as lists, boxes as lists of numbers, ages as numbers."""
    if key == "mask":
        return value.split(";")
    if key == "box":
        return [[float(v) for v in box.split(",")] for box in value.split(";")]
    if key == "age":
        return float(value)
    if key == "symptoms":
        return value.split("&")
    return value


def senolab(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "senolab.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


# ------------------------------------------------------------------------- reading


def test_csv_and_json_manifests_give_the_same_table(tmp_path):
    folder = tmp_path / "cohort"
    rows = case_rows(folder)
    csv_path = write_manifest(folder, rows, "csv")
    from_csv = read_cohort(folder, progress=False)
    csv_path.unlink()
    write_manifest(folder, rows, "json")
    from_json = read_cohort(folder, progress=False)
    assert detect_layout(folder) == "manifest"
    pd.testing.assert_frame_equal(from_csv.table, from_json.table)
    assert from_csv.columns == from_json.columns
    assert not from_csv.problems and not from_json.problems
    t = from_csv.table.set_index("case_id")
    assert list(t.index) == [f"clinic/images/clinic/img{k}" for k in range(6)]
    assert t.loc["clinic/images/clinic/img1", "mask_kind"] == "outline"
    assert t.loc["clinic/images/clinic/img1", "lesion_bboxes"] == [[12, 10, 30, 20]]
    assert t.loc["clinic/images/clinic/img2", "mask_kind"] == "box"
    assert t.loc["clinic/images/clinic/img2", "lesion_bboxes"] == [[5.0, 6.0, 25.0, 30.0]]
    assert t.loc["clinic/images/clinic/img0", "mask_kind"] == "outline"  # a normal image: an empty outline
    assert t["patient_id"].tolist() == ["clinic/p0", "clinic/p0", "clinic/p1", "clinic/p1", "clinic/p2", "clinic/p2"]
    assert set(t["modality"]) == {"US"} and set(t["cohort"]) == {"clinic"}


def test_sidecar_kinds_type_the_columns_and_outcomes_are_never_inputs_by_default(tmp_path):
    folder = tmp_path / "cohort"
    rows = case_rows(folder)
    rows[0].update(age="18", symptoms="lump & pain & lump")  # the range's bounds are inside it
    rows[1].update(age="100", symptoms="")
    write_manifest(folder, rows)
    cohort = read_cohort(folder, progress=False)
    cols = cohort.columns
    assert cols["age"].kind is Kind.NUMERIC and cols["age"].description == "unit: years"
    assert cols["density"].kind is Kind.ORDINAL and cols["density"].levels == ("A", "B", "C", "D")
    assert cols["birads"].levels == ("2", "3", "4", "5") and cols["birads"].outcome  # YAML numbers read as text
    assert cols["symptoms"].kind is Kind.MULTI and cols["shape"].kind is Kind.CATEGORICAL
    t = cohort.table
    assert t["age"].tolist()[:2] == [18.0, 100.0] and t["age"].dtype == float
    assert t["symptoms"].tolist()[:3] == [["lump", "pain"], None, ["lump", "pain"]]
    assert "birads" not in cohort.model_inputs() and "age" in cohort.model_inputs()
    assert "birads" not in select_inputs(cols)
    with pytest.raises(OutcomeInputError):
        select_inputs(cols, ["age", "birads"])
    assert "birads" in select_inputs(cols, ["age", "birads"], opt_in=["birads"])
    assert not cohort.problems


def test_sites_scanner_laterality_view_spacing_and_folds(tmp_path):
    folder = tmp_path / "cohort"
    rows = case_rows(folder, n=4, sites=("north", "south"), metadata=False)
    for k, row in enumerate(rows):
        row.update(laterality="lr"[k % 2], view=("cc", "MLO")[k % 2], pixel_spacing_mm="0.07", scanner="Voluson",
                   fold=str(k % 2))
    rows[3]["fold"] = "x"
    write_manifest(folder, rows, sidecar={"name": "twosite"})  # no metadata declared
    cohort = read_cohort(folder, progress=False)
    t = cohort.table
    assert sorted(t["site"].unique()) == ["north", "south"]
    assert t["laterality"].tolist()[:2] == ["L", "R"] and t["view"].tolist()[:2] == ["CC", "MLO"]
    assert cohort.columns["laterality"].levels == ("L", "R") and cohort.columns["view"].levels == ("CC", "MLO")
    assert set(t["pixel_spacing_mm"]) == {0.07} and set(t["scanner"]) == {"Voluson"}
    folds = cohort.splits["manifest_folds"]
    assert len(folds) == 7 and "twosite/images/north/img3" not in folds.index
    assert [str(p) for p in cohort.problems] == [
        f"twosite: {folder / 'manifest.csv'}: row 5, column 'fold': 'x' is not a fold number; "
        "case left out of split manifest_folds"]
    # undeclared metadata columns are named once each and ignored
    write_manifest(folder, case_rows(folder, n=3), sidecar={"name": "twosite"})
    problems = [p.reason for p in read_cohort(folder, progress=False).problems]
    assert problems == [f"column {c!r} is not declared in manifest.yaml; ignored"
                        for c in ("age", "density", "shape", "symptoms", "birads")]


def test_without_a_site_column_the_cohort_is_one_site_and_image_level_labels_have_no_location(tmp_path):
    folder = tmp_path / "my-study"
    rows = [{"image": png(folder / f"a{k}.png", gray(k)), "label": LABELS[k % 3], "patient": f"p{k}"}
            for k in range(6)]
    write_manifest(folder, rows, sidecar=None)  # no sidecar: the folder names the cohort
    cohort = read_cohort(folder, progress=False)
    summary = describe(mark_duplicates(cohort, progress=False))
    assert summary["cohort"] == "my-study" and summary["sites"] == ["my-study"]
    assert summary["mask_kinds"] == {"none": 6}  # labels only: abnormal ones unlocated, normal ones too
    assert not cohort.problems


def test_duplicates_are_grouped_and_strict_stops_at_the_first_problem(tmp_path):
    folder = tmp_path / "cohort"
    rows = case_rows(folder)
    png(folder / "images/copy.png", gray(3))  # the same pixels as img3, under another patient
    rows.append({**rows[3], "image": "images/copy.png", "patient": "other"})
    write_manifest(folder, rows)
    cohort = mark_duplicates(read_cohort(folder, progress=False), progress=False)
    t = cohort.table.set_index("case_id")
    assert t.loc["clinic/images/copy", "duplicate_group"] == t.loc["clinic/images/clinic/img3", "duplicate_group"]
    rows[2]["age"] = "7"
    write_manifest(folder, rows)
    with pytest.raises(CohortError, match=r"row 4, column 'age': '7' is outside the declared range \[18, 100\]"):
        read_cohort(folder, strict=True, progress=False)


# ------------------------------------------------------------------------- bad input


def bad_cell(tmp_path, column: str, value: str, row: int = 2) -> tuple[pd.DataFrame, list[str]]:
    folder = tmp_path / "cohort"
    rows = case_rows(folder)
    rows[row][column] = value
    write_manifest(folder, rows)
    cohort = read_cohort(folder, progress=False)
    return cohort.table, [p.reason for p in cohort.problems]


@pytest.mark.parametrize("column, value, reason, kept", [
    ("age", "300", "row 4, column 'age': '300' is outside the declared range [18, 100]; kept as missing", True),
    ("age", "old", "row 4, column 'age': 'old' is not a number; kept as missing", True),
    ("shape", "square", "row 4, column 'shape': 'square' is not one of ('oval', 'round', 'irregular'); "
                        "kept as missing", True),
    ("symptoms", "pain&itch", "row 4, column 'symptoms': 'pain&itch' holds ['itch'], not among the levels "
                              "['pain', 'lump', 'discharge']; kept as missing", True),
    ("image", "../outside.png", "row 4, column 'image': '../outside.png' leaves the dataset folder", False),
    ("image", "/etc/passwd", "row 4, column 'image': '/etc/passwd' leaves the dataset folder", False),
    ("mask", "../../m.png", "row 4, column 'mask': '../../m.png' leaves the dataset folder", False),
    ("image", "images/none.png", "row 4, column 'image': 'images/none.png' cannot be read: image file is "
                                 "missing; case skipped", False),
    ("label", "suspicious", "row 4, column 'label': 'suspicious' is not one of ('normal', 'benign', 'malignant'); "
                            "case skipped", False),
    ("patient", "", "row 4, column 'patient': '' is empty", False),
    ("box", "5,6,2,30", "row 4, column 'box': '5,6,2,30' is not x0,y0,x1,y1", False),
    ("box", "5,6,25,300", "row 4, column 'image': 'images/clinic/img2.png': a box reaches past the image's "
                          "48x48 pixels; case skipped", False),
])
def test_a_bad_cell_is_a_problem_naming_row_and_column(tmp_path, column, value, reason, kept):
    table, problems = bad_cell(tmp_path, column, value)
    assert len(problems) == 1 and problems[0].startswith(reason), problems
    assert ("clinic/images/clinic/img2" in set(table["case_id"])) is kept
    if kept:
        row = table.set_index("case_id").loc["clinic/images/clinic/img2"]
        assert row[column] is None or (isinstance(row[column], float) and np.isnan(row[column]))


def test_a_mask_of_another_size_than_its_image_names_row_and_column(tmp_path):
    folder = tmp_path / "cohort"
    rows = case_rows(folder)
    png(folder / rows[1]["mask"], square_mask((40, 48)))
    write_manifest(folder, rows)
    cohort = read_cohort(folder, progress=False)
    assert [p.reason for p in cohort.problems] == [
        "row 3, column 'mask': 'images/clinic/img1_mask.png' has size 48x40 but its image is 48x48; case skipped"]
    assert len(cohort) == 5


def test_masks_and_boxes_on_one_row_and_a_repeated_image_are_problems(tmp_path):
    folder = tmp_path / "cohort"
    rows = case_rows(folder)
    rows[1]["box"] = "1,1,5,5"
    rows.append(dict(rows[4]))
    write_manifest(folder, rows)
    problems = [p.reason for p in read_cohort(folder, progress=False).problems]
    assert problems[0].startswith("row 3, column 'box': '1,1,5,5' and masks on one row")
    assert "is listed again" in problems[1] and len(problems) == 2


@pytest.mark.parametrize("change, message", [
    (lambda s: s["columns"]["age"].update(kind="number"),
     "manifest.yaml: columns.age.kind: Input should be 'numeric', 'categorical', 'ordinal' or 'multi'"),
    (lambda s: s["columns"]["age"].pop("range"),
     "manifest.yaml: columns.age: a numeric column needs `range: [low, high]`"),
    (lambda s: s["columns"]["shape"].pop("levels"), "manifest.yaml: columns.shape: a categorical column needs `levels"),
    (lambda s: s["columns"].update(label={"kind": "categorical", "levels": ["x"]}),
     "manifest.yaml: columns.label: 'label' is a manifest column, not a metadata column"),
    (lambda s: s.update(modality="CT"), "manifest.yaml: modality: Input should be 'US', 'MG' or 'MR'"),
    (lambda s: s["columns"].update(weight={"kind": "numeric", "range": [0, 200]}),
     "manifest.csv: column 'weight' is declared in manifest.yaml but not in the manifest"),
])
def test_a_broken_sidecar_is_one_line_naming_file_and_key(tmp_path, change, message):
    folder = tmp_path / "cohort"
    sidecar = json.loads(json.dumps(SIDECAR))
    change(sidecar)
    write_manifest(folder, case_rows(folder), sidecar=sidecar)
    with pytest.raises(CohortError) as err:
        read_cohort(folder, progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_yaml_syntax_error_and_missing_column_are_one_line_errors_from_the_cli(tmp_path):
    folder = tmp_path / "cohort"
    rows = case_rows(folder)
    write_manifest(folder, rows)
    (folder / "manifest.yaml").write_text("name: clinic\ncolumns: {age: [\n")
    run = senolab("cohorts", "describe", "cohort", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert run.stderr.startswith("error: cohort/manifest.yaml: not valid YAML at line 3")
    write_manifest(folder, [{k: v for k, v in row.items() if k != "patient"} for row in rows])
    run = senolab("cohorts", "describe", "cohort", cwd=tmp_path)
    assert run.returncode == 2 and run.stderr == "error: cohort/manifest.csv: missing columns ['patient']\n"


def test_strict_cli_names_the_row_and_column_of_a_value_outside_its_range(tmp_path):
    folder = tmp_path / "cohort"
    rows = case_rows(folder)
    rows[4]["age"] = "130"
    write_manifest(folder, rows)
    run = senolab("cohorts", "describe", "cohort", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    [summary] = json.loads(run.stdout)
    assert summary["problems"] == ["clinic: cohort/manifest.csv: row 6, column 'age': '130' is outside the "
                                   "declared range [18, 100]; kept as missing"]
    run = senolab("cohorts", "describe", "cohort", "--strict", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: clinic: cohort/manifest.csv: row 6, column 'age': '130'")


# ------------------------------------------------------------------------- DICOM


def mammogram(path: Path, seed: int, **options) -> str:
    pixels = np.random.default_rng(seed).integers(0, 4096, (64, 48), dtype=np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    dicom_builders.mammogram_dicom(path, pixels, **options)
    return path.name


def test_dicom_images_fill_modality_laterality_view_spacing_and_patient_from_the_header(tmp_path):
    folder = tmp_path / "mg"
    mammogram(folder / "a.dcm", 0, laterality="L", view="CC", spacing=(0.1, 0.1), patient_id="W1")
    mammogram(folder / "b.dcm", 1, laterality="R", view="MLO", spacing=(0.07, 0.07), imager_spacing=True,
              patient_id="W1", manufacturer="Hologic", model="Selenia")
    mammogram(folder / "c.dcm", 2, laterality="L", view="CC", patient_id="W2")
    mask = np.zeros((64, 48), np.uint8)
    mask[5:15, 5:15] = 255
    png(folder / "a_mask.png", mask)
    png(folder / "c_mask.png", mask[:40])
    rows = [{"image": "a.dcm", "mask": "a_mask.png", "label": "benign", "patient": "dicom"},
            {"image": "b.dcm", "label": "normal", "patient": "dicom", "view": "CC", "modality": ""},
            {"image": "c.dcm", "mask": "c_mask.png", "label": "malignant", "patient": "dicom"}]
    write_manifest(folder, rows, sidecar={"name": "mg", "modality": "US"})
    cohort = read_cohort(folder, progress=False)
    t = cohort.table.set_index("case_id")
    assert list(t.index) == ["mg/a", "mg/b"]
    assert t["modality"].tolist() == ["MG", "MG"]  # the header's, over the sidecar's default
    assert t["laterality"].tolist() == ["L", "R"]
    assert t["view"].tolist() == ["CC", "CC"]  # the row's own value wins over the header's MLO
    assert t["pixel_spacing_mm"].tolist() == pytest.approx([0.1, 0.07])
    assert t["scanner"].tolist() == ["Acme M1", "Hologic Selenia"]
    assert t["patient_id"].tolist() == ["mg/W1", "mg/W1"]
    assert t["windowing"].str.len().gt(0).all()
    assert "windowing" not in cohort.columns and "laterality" in cohort.model_inputs()
    assert [p.reason for p in cohort.problems] == [
        "row 4, column 'mask': 'c_mask.png' has size 48x40 but its image is 48x64; case skipped"]
    text = cohort.table.to_csv() + json.dumps(describe(mark_duplicates(cohort, progress=False)))
    leaked = [value for value in dicom_builders.IDENTIFYING.values() if value in text]
    assert not leaked
    # a salt replaces the PatientID by its hash
    write_manifest(folder, rows, sidecar={"name": "mg", "dicom": {"patient_salt": "pepper"}})
    salted = read_cohort(folder, progress=False).table["patient_id"]
    assert salted.str.startswith("mg/anon-").all() and "W1" not in "".join(salted)


def test_a_dicom_without_pixel_data_or_in_an_unknown_transfer_syntax_is_a_problem_naming_its_row(tmp_path):
    folder = tmp_path / "mg"
    for k in range(3):
        mammogram(folder / f"m{k}.dcm", k)
    dicom_builders.strip_pixel_data(folder / "m1.dcm")
    dicom_builders.claim_transfer_syntax(folder / "m2.dcm", "1.2.840.10008.1.2.4.100")  # MPEG2: no decoder here
    rows = [{"image": f"m{k}.dcm", "label": "benign", "patient": f"p{k}", "box": "1,1,9,9"} for k in range(3)]
    write_manifest(folder, rows, sidecar={"name": "mg"})
    cohort = read_cohort(folder, progress=False)
    assert cohort.table["case_id"].tolist() == ["mg/m0"]
    reasons = [p.reason for p in cohort.problems]
    assert len(reasons) == 2
    assert reasons[0].startswith("row 3, column 'image': 'm1.dcm' is an unreadable DICOM file (")
    assert reasons[1].startswith("row 4, column 'image': 'm2.dcm' is an unreadable DICOM file (")
    run = senolab("cohorts", "describe", "mg", "--strict", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("error: mg: mg/manifest.csv: row 3, column 'image': 'm1.dcm'")


# ------------------------------------------------------------------------- starter


def test_starter_manifest_from_a_class_folder_tree_is_read_by_describe(tmp_path):
    tree = tmp_path / "tree"
    for k, label in enumerate(("Benign", "MALIGNANT", "normal") * 2):
        name = png(tree / "scans" / label / f"{label.lower()}{k}.png", gray(k))
        if label.lower() != "normal":
            png(tree / "scans" / label / f"{Path(name).stem}_mask.png", square_mask())
            png(tree / "scans" / label / f"{Path(name).stem}_mask_1.png", square_mask())
    png(tree / "scans" / "Benign" / "lost_mask.png", square_mask())
    mammogram(tree / "mg" / "malignant" / "w.dcm", 9, patient_id="W9")
    run = senolab("cohorts", "manifest", "tree", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "wrote tree/manifest.csv (7 images: 2 normal, 2 benign, 3 malignant; 4 with masks; 1 DICOM)" in run.stdout
    assert "scans/Benign/lost_mask.png: a mask file without its image" in run.stdout
    assert "then: senolab cohorts describe tree" in run.stdout
    assert "edit patient: one patient per image assumed" in (tree / "manifest.yaml").read_text()
    table = pd.read_csv(tree / "manifest.csv", dtype=str, keep_default_na=False).set_index("image")
    assert table.loc["scans/Benign/benign0.png", "mask"] == (
        "scans/Benign/benign0_mask.png;scans/Benign/benign0_mask_1.png")
    assert table.loc["mg/malignant/w.dcm", ["modality", "laterality", "view", "patient"]].tolist() == [
        "MG", "L", "CC", "dicom"]
    assert table.loc["scans/normal/normal2.png", "patient"] == "normal2"
    again = senolab("cohorts", "manifest", "tree", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr == (
        "error: tree/manifest.csv exists; not overwritten (--force replaces it)\n")
    run = senolab("cohorts", "describe", "tree", "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    [summary] = json.loads(run.stdout)
    assert summary["n_images"] == 7 and summary["n_patients"] == 7 and summary["problems"] == []
    assert summary["classes"] == {"normal": 2, "benign": 2, "malignant": 3}
    assert summary["modalities"] == {"MG": 1, "US": 6} and summary["n_lesions"] == 8
    assert summary["mask_kinds"] == {"none": 1, "outline": 6}
    json_run = senolab("cohorts", "manifest", "tree", "--out", "tree/manifest.json", "--force", cwd=tmp_path)
    assert json_run.returncode == 0, json_run.stderr
    assert not (tree / "manifest.csv").exists()
    assert len(read_cohort(tree, progress=False)) == 7


# ------------------------------------------------------------------------- a study across cohorts


def test_a_study_holds_out_a_manifest_site_beside_a_built_in_cohort(tmp_path):
    """`senolab study` on a two-site manifest plus the synthetic cohort, by relative path:
    the manifest's `site` column defines its sites, one of which is the unseen target."""
    folder = tmp_path / "hospitals"
    rows = [{k: v for k, v in row.items() if k in ("image", "mask", "box", "label", "site")}
            for row in case_rows(folder, n=8, sites=("north", "south"), metadata=False)]
    for k, row in enumerate(rows):
        row["patient"] = f"w{k}"
    write_manifest(folder, rows, sidecar={"name": "hospitals"})
    study = {
        "kind": "study", "name": "manifest_and_synthetic",
        "base": {"data": {"cohorts": ["hospitals", "synthetic"], "image_size": 32,
                          "synthetic": {"n_sites": 2, "images_per_site": 8, "image_size": 64},
                          "split": {"val_fraction": 0.25}},
                 "model": {"heads": {"classification": True, "segmentation": True, "bbox": True}},
                 "train": {"epochs": 1, "batch_size": 8}, "evaluation": {"bootstrap": 10}},
        "protocol": "pairwise",
        "pairs": [{"sources": ["north", "site_a", "site_b"], "target": "south"}],
        "methods": ["erm"],
        "embedding_figure": False,
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    run = senolab("study", "study.yaml", "--out", "out", "--quiet", cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    results = pd.read_csv(tmp_path / "out" / "results.csv")
    assert results[["method", "target_site"]].values.tolist() == [["erm", "south"]]
    assert results["n_target"].tolist() == [8]
    predictions = pd.read_parquet(tmp_path / "out" / "runs" / "south" / "erm" / "seed0" / "predictions.parquet")
    assert set(predictions.loc[predictions["domain"] == "target", "site"]) == {"south"}
    assert predictions.loc[predictions["site"] == "south", "cohort"].eq("hospitals").all()
