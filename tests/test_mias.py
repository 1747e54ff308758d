"""The mini-MIAS reader: the exact counts of ../shared/data/README.md on the real database,
and bad Info.txt lines on a tiny layout written here."""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import DATA, REPO, requires_data
from senolab.cohorts.imaging import load_gray
from senolab.cohorts.pixels import case_masks
from senolab.cohorts.readers import detect_layout, read_cohort
from senolab.cohorts.schema import CohortError

MIAS = DATA / "mias"
UNLOCATED = {"mdb059", "mdb216", "mdb233", "mdb245"}  # the README's four rows without centre or radius


@pytest.fixture(scope="module")
def mias():
    if not MIAS.is_dir():
        pytest.skip(f"mini-MIAS not found at {MIAS} (only CI and dev machines have it)")
    return read_cohort(MIAS, progress=False)


def _info_rows() -> list[list[str]]:
    """Info.txt's lines as fields, read here independently of the reader."""
    return [line.split() for line in (MIAS / "all-mias" / "Info.txt").read_text().splitlines() if line.strip()]


def _by_image(table):
    return table.set_index(table["case_id"].str.removeprefix("mias/"))


@pytest.mark.realdata
@requires_data
def test_counts_of_the_readme(mias):
    t = mias.table
    assert len(t) == 322 and t["patient_id"].nunique() == 161
    assert Counter(t["label"]) == {"normal": 207, "benign": 63, "malignant": 52}
    assert Counter(t["background_tissue"]) == {"F": 106, "G": 104, "D": 112}
    assert not mias.problems and not mias.splits  # mini-MIAS ships no official split
    assert set(t["modality"]) == {"MG"} and set(t["view"]) == {"MLO"} and set(t["site"]) == {"mias"}
    assert np.allclose(t["pixel_spacing_mm"], 0.4)  # 200 micron pixels, halved to 512 px here
    assert (t["width"] == 512).all() and (t["height"] == 512).all()
    assert len(_info_rows()) == 330
    several = [ref for ref, n in Counter(row[0] for row in _info_rows()).items() if n > 1]
    assert len(several) == 7  # 7 images hold several abnormalities, each one case
    assert sorted(mias.outcome_columns()) == ["abnormality", "severity"]
    assert "background_tissue" in mias.model_inputs() and "severity" not in mias.model_inputs()


@pytest.mark.realdata
@requires_data
def test_laterality_and_patient_from_the_file_number(mias):
    t = _by_image(mias.table)
    numbers = t.index.str.removeprefix("mdb").astype(int)
    assert (t["laterality"] == np.where(numbers % 2 == 0, "L", "R")).all()  # even left, odd right
    pairs = t.groupby("patient_id")["laterality"].agg(sorted)
    assert (pairs.map(tuple) == ("L", "R")).all()  # every woman: one left and one right film
    assert t.loc["mdb001", "patient_id"] == t.loc["mdb002", "patient_id"] != t.loc["mdb003", "patient_id"]
    # The films agree: the breast lies in the left half of the even (left) films and in the
    # right half of the odd ones, for all but one pair (mdb151/mdb152).
    breast_left = [load_gray(p)[:, :256].mean() > load_gray(p)[:, 256:].mean() for p in t["image_path"]]
    agree = (np.array(breast_left) == (t["laterality"] == "L").to_numpy()).sum()
    assert agree == 320


@pytest.mark.realdata
@requires_data
def test_unlocated_images_and_circles(mias):
    t = _by_image(mias.table)
    assert set(t.index[t["mask_kind"] == "none"]) == UNLOCATED
    assert (t.loc[sorted(UNLOCATED), "label"] != "normal").all()
    assert (t.loc[sorted(UNLOCATED), "lesion_bboxes"].map(len) == 0).all()
    assert set(t["mask_kind"]) == {"circle", "none"}
    located = Counter(row[0] for row in _info_rows() if len(row) == 7)
    assert sum(located.values()) == 119
    assert t["lesion_bboxes"].map(len).sum() == 119
    for ref, n in located.items():
        assert len(t.loc[ref, "lesion_bboxes"]) == n, ref
    # mdb144 holds a benign and a malignant abnormality: the image is malignant
    assert t.loc["mdb144", "label"] == "malignant" and t.loc["mdb144", "severity"] == "M"
    assert t.loc["mdb001", "abnormality"] == ["CIRC"] and t.loc["mdb003", "abnormality"] == ["NORM"]
    assert pd.isna(t.loc["mdb003", "severity"])  # a normal image has no severity


@pytest.mark.realdata
@requires_data
def test_a_circle_lands_on_its_pixel(mias):
    """mdb002 G CIRC B 522 280 69, by hand: 1024 -> 512 halves everything, and the origin
    is the bottom left, so the centre is at column 522/2 = 261, row (1024 - 280)/2 = 372."""
    x, y, r = (float(v) for v in next(row for row in _info_rows() if row[0] == "mdb002")[4:])
    assert (x, y, r) == (522, 280, 69)
    row = _by_image(mias.table).loc["mdb002"]
    assert row["lesion_bboxes"] == [[261 - 34.5, 372 - 34.5, 261 + 34.5, 372 + 34.5]]
    (disc,) = case_masks(mias, row.to_dict())
    assert disc[372, 261] and disc[372, 261 + 33] and not disc[372, 261 + 36]
    assert not disc[280 // 2, 261]  # where a top-left origin would have put it
    # mdb144's first circle, y = 994 of 1024 from the bottom, is at the top of the image
    box = _by_image(mias.table).loc["mdb144", "lesion_bboxes"][0]
    assert box == [(233 - 29) / 2, (1024 - 994 - 29) / 2, (233 + 29) / 2, (1024 - 994 + 29) / 2]


@pytest.mark.realdata
@requires_data
def test_cohorts_describe_on_mias():
    out = subprocess.run([sys.executable, "-m", "senolab.cli", "cohorts", "describe", str(MIAS), "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    (summary,) = json.loads(out.stdout)
    assert summary["cohort"] == "mias" and summary["n_images"] == 322 and summary["n_patients"] == 161
    assert summary["classes"] == {"normal": 207, "benign": 63, "malignant": 52}
    assert summary["mask_kinds"] == {"circle": 318, "none": 4} and summary["modalities"] == {"MG": 322}
    assert summary["n_lesions"] == 119 and summary["problems"] == []
    # mini-MIAS holds no duplicate films: at the ultrasound threshold the hash linked 267
    # images of different women into 6 "duplicate" groups (dedup.MAX_DISTANCE_BY_MODALITY)
    assert summary["duplicate_groups"] == 0


# -- a tiny layout written here ------------------------------------------------------------

GOOD = ["mdb001 G CIRC B 535 425 197", "mdb002 F NORM ", "mdb003 D CALC M *NOTE 3*"]
SIZE = 64  # stored pixels; the manifest says the originals were 1024


def _layout(root: Path, lines: list[str], images=("mdb001", "mdb002", "mdb003")) -> Path:
    folder = root / "all-mias"
    folder.mkdir(parents=True)
    (folder / "Info.txt").write_text("\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    manifest = ["file,orig_width,orig_height,width,height,sha256"]
    for name in images:
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), "L").save(folder / f"{name}.pgm")
        manifest.append(f"all-mias/{name}.pgm,1024,1024,{SIZE},{SIZE},x")
    (root / "derived_manifest.csv").write_text("\n".join(manifest) + "\n")
    return root


def test_tiny_layout_reads_with_its_manifest_scale(tmp_path):
    root = _layout(tmp_path, GOOD)
    assert detect_layout(root) == "mias" and detect_layout(root / "all-mias") == "mias"
    for cohort in (read_cohort(root, progress=False), read_cohort(root / "all-mias", progress=False)):
        t = _by_image(cohort.table)
        assert not cohort.problems
        assert list(t["label"]) == ["benign", "normal", "malignant"]
        assert list(t["patient_id"]) == ["mias/001", "mias/001", "mias/002"]
        assert list(t["laterality"]) == ["R", "L", "R"]
        assert list(t["mask_kind"]) == ["circle", "circle", "none"]
        s = SIZE / 1024
        assert t.loc["mdb001", "lesion_bboxes"] == [[(535 - 197) * s, (1024 - 425 - 197) * s,
                                                     (535 + 197) * s, (1024 - 425 + 197) * s]]
        assert np.allclose(t["pixel_spacing_mm"], 0.2 / s)


def test_a_circle_past_the_border_is_not_clipped(tmp_path):
    root = _layout(tmp_path, ["mdb001 G CIRC B 16 1000 64", *GOOD[1:]])
    (box,) = _by_image(read_cohort(root, progress=False).table).loc["mdb001", "lesion_bboxes"]
    assert box == [-3.0, -2.5, 5.0, 5.5]  # (16 -+ 64) / 16, (1024 - 1000 -+ 64) / 16


@pytest.mark.parametrize("line, expected", [
    ("mdb001 G CIRC B 535 425", "line 1: 6 fields, expected 4 (no location) or 7"),
    ("mdb001 G BLOB B 535 425 197", "line 1, field 'class': 'BLOB' is not one of"),
    ("mdb001 G CIRC X 535 425 197", "line 1, field 'severity': 'X' is not one of"),
    ("mdb001 Q CIRC B 535 425 197", "line 1, field 'tissue': 'Q' is not one of"),
    ("mdb001 G CIRC B 53x 425 197", "line 1, field 'x': '53x' is not a number"),
    ("mdb001 G CIRC B 535 425 -4", "line 1, field 'radius': '-4' is not a positive number"),
    ("mdb001 G CIRC", "line 1, field 'severity': '' is missing"),
    ("mdb001 G NORM B", "line 1: a NORM line has 3 fields"),
    ("mdb1 G NORM", "line 1, field 'reference': 'mdb1' is not mdbNNN"),
])
def test_a_bad_line_is_reported_by_line_and_field(tmp_path, line, expected):
    root = _layout(tmp_path, [line, *GOOD[1:]])
    cohort = read_cohort(root, progress=False)
    reasons = [p.reason for p in cohort.problems]
    assert any(expected in reason for reason in reasons), reasons
    assert sorted(cohort.table["case_id"]) == ["mias/mdb002", "mias/mdb003"]  # the others are read
    with pytest.raises(CohortError, match="line 1"):
        read_cohort(root, strict=True, progress=False)


def test_missing_files_and_rows_are_reported(tmp_path):
    lines = [*GOOD, "mdb009 F NORM"]  # a reference without its .pgm
    root = _layout(tmp_path, lines, images=("mdb001", "mdb002", "mdb003", "mdb004"))  # mdb004: no row
    cohort = read_cohort(root, progress=False)
    reasons = {Path(p.file).name: p.reason for p in cohort.problems}
    assert reasons["Info.txt"] == "line 4: reference mdb009 has no file all-mias/mdb009.pgm; image skipped"
    assert reasons["mdb004.pgm"] == "image without its row in Info.txt"
    assert len(cohort) == 3
    with pytest.raises(CohortError, match="--strict"):
        read_cohort(root, strict=True, progress=False)


def test_lines_of_one_image_must_agree(tmp_path):
    root = _layout(tmp_path, [*GOOD, "mdb001 D CIRC M 100 100 10"])
    cohort = read_cohort(root, progress=False)
    assert "line 4, field 'tissue': 'D' differs from 'G' on line 1" in cohort.problems[0].reason
    assert "mias/mdb001" not in set(cohort.table["case_id"])


def test_no_readable_row_is_a_one_line_error(tmp_path):
    root = _layout(tmp_path, ["mdb001 G CIRC Z", "mdb002 F NORM extra", "mdb003 X NORM"])
    with pytest.raises(CohortError, match="no case could be read; 3 problems"):
        read_cohort(root, progress=False)
